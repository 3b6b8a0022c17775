"""Domain XML: golden files for the shapes goldfleet defines, and the rules behind them.

The golden files are the exact XML handed to libvirt. After an intended change, regenerate them
with ``GOLDFLEET_REGEN_GOLDEN=1 .venv/bin/pytest tests/drivers/test_domxml.py`` and read the diff.
test_libvirt.py checks that libvirt itself accepts this XML and keeps the declared chains.
"""

from __future__ import annotations

import dataclasses
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from goldfleet.drivers.base import DiskSpec, DomainSpec, KernelBoot
from goldfleet.drivers.domxml import (
    AGENT_CHANNEL,
    DiskXML,
    DomainXML,
    disk_target,
    from_spec,
    resolve_chain,
)
from goldfleet.store.edge import EdgeStores
from goldfleet.store.qemu import QemuImg

GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("GOLDFLEET_REGEN_GOLDEN") == "1"

LAYER_TOP = "sha256-" + "b" * 64 + ".qcow2"
LAYER_BASE = "sha256-" + "a" * 64 + ".qcow2"

# a linked clone as the store lays it out: system overlay → two layers, by relative references
LINKED_CLONE = DomainSpec(
    name="desk-0001",
    disks=(
        DiskSpec(role="data", path="/srv/goldfleet/store/clones/u1/data0.qcow2"),
        DiskSpec(role="temp", path="/srv/goldfleet/store/clones/u1/temp0.qcow2"),
        DiskSpec(
            role="system",
            path="/srv/goldfleet/store/clones/u1/system.qcow2",
            backing=(f"../../layers/{LAYER_TOP}", LAYER_BASE),
        ),
        DiskSpec(role="data", path="/srv/goldfleet/store/clones/u1/data1.qcow2"),
    ),
    memory_mib=4096,
    vcpus=2,
)

# the tiny guest of the real-boot test: direct kernel boot, serial console to a file
KERNEL_BOOT = DomainSpec(
    name="gf-boot",
    disks=(
        DiskSpec(
            role="system",
            path="/tmp/store/clones/c1/system.qcow2",
            backing=("/tmp/store/layers/" + LAYER_BASE,),
        ),
        DiskSpec(role="temp", path="/tmp/store/clones/c1/temp0.qcow2"),
        DiskSpec(role="data", path="/tmp/store/clones/c1/data0.qcow2"),
    ),
    memory_mib=256,
    vcpus=1,
    boot=KernelBoot(
        kernel="/cache/vmlinuz", initrd="/tmp/initrd.gz", cmdline="console=ttyS0 quiet"
    ),
    serial_log="/tmp/serial.log",
)

# the same clone with edge stores on, on host kvm-01: its volumes stay in the site store, its
# chain is declared on the host's own copies, laid out as store/edge.py lays them out
EDGE = EdgeStores(Path("/srv/goldfleet/edge"), QemuImg())
LINKED_CLONE_EDGE = DomainSpec(
    name="desk-0001",
    disks=(
        DiskSpec(
            role="system",
            path="/srv/goldfleet/store/clones/u1/system.qcow2",
            backing=EDGE.backing("kvm-01", ("sha256:" + "b" * 64, "sha256:" + "a" * 64)),
        ),
        DiskSpec(role="temp", path="/srv/goldfleet/store/clones/u1/temp0.qcow2"),
        DiskSpec(role="data", path="/srv/goldfleet/store/clones/u1/data0.qcow2"),
    ),
    memory_mib=4096,
    vcpus=2,
)

CASES = {
    "linked_clone_edge": from_spec(LINKED_CLONE_EDGE, domain_type="kvm"),
    "linked_clone_kvm": from_spec(LINKED_CLONE, domain_type="kvm"),
    "kernel_boot_tcg": from_spec(KERNEL_BOOT, domain_type="qemu"),
    "redefined_keeps_uuid": from_spec(
        LINKED_CLONE, domain_type="kvm", uuid="6f1c0d7e-2a59-4c8f-9d3e-0b6a1e2f3c4d"
    ),
    # a clone on a network, redefined (recreated) while restricted: its filter is kept
    "linked_clone_quarantined": from_spec(
        dataclasses.replace(LINKED_CLONE, network="desks"),
        domain_type="kvm",
        kept_filter="goldfleet-restricted-desk",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_golden_file(case: str) -> None:
    xml = CASES[case].to_xml()
    path = GOLDEN / f"{case}.xml"
    if REGEN:
        path.write_text(xml)
    assert path.exists(), f"{path} is missing: run with GOLDFLEET_REGEN_GOLDEN=1"
    assert xml == path.read_text()


def test_one_field_per_line() -> None:
    for case in CASES.values():
        for line in case.to_xml().splitlines():
            assert line.strip().startswith("<"), line
            assert line.count("<") <= 2, line  # an element, or one with its text and end tag


def _disks(domain: DomainXML) -> list[ET.Element]:
    return ET.fromstring(domain.to_xml()).findall("devices/disk")


def test_disks_are_virtio_qcow2_system_first_then_temp_then_data() -> None:
    disks = _disks(CASES["linked_clone_kvm"])
    assert [d.find("target").attrib for d in disks] == [
        {"dev": dev, "bus": "virtio"} for dev in ("vda", "vdb", "vdc", "vdd")
    ]
    assert [d.findtext("serial") for d in disks] == ["system", "temp0", "data0", "data1"]
    assert [d.find("source").get("file") for d in disks] == [
        "/srv/goldfleet/store/clones/u1/system.qcow2",
        "/srv/goldfleet/store/clones/u1/temp0.qcow2",
        "/srv/goldfleet/store/clones/u1/data0.qcow2",
        "/srv/goldfleet/store/clones/u1/data1.qcow2",
    ]
    assert {d.find("driver").get("type") for d in disks} == {"qcow2"}


def test_backing_chain_is_declared_to_its_end() -> None:
    system, temp, *_ = _disks(CASES["linked_clone_kvm"])
    chain = []
    node = system.find("backingStore")
    while node is not None and node.get("type") == "file":
        assert node.find("format").get("type") == "qcow2"
        chain.append(node.find("source").get("file"))
        node = node.find("backingStore")
    assert chain == [
        f"/srv/goldfleet/store/layers/{LAYER_TOP}",
        f"/srv/goldfleet/store/layers/{LAYER_BASE}",
    ]
    assert node is not None and node.attrib == {} and len(node) == 0  # the end: <backingStore/>
    # a standalone volume says so too: libvirt must not look for a backing file in it
    end = temp.find("backingStore")
    assert end is not None and end.attrib == {} and len(end) == 0


def test_an_edge_clone_reads_its_chain_from_its_hosts_copies() -> None:
    system = _disks(CASES["linked_clone_edge"])[0]
    assert system.find("source").get("file") == "/srv/goldfleet/store/clones/u1/system.qcow2"
    chain, node = [], system.find("backingStore")
    while node is not None and node.get("type") == "file":
        assert node.find("format").get("type") == "qcow2"
        chain.append(node.find("source").get("file"))
        node = node.find("backingStore")
    assert chain == [
        f"/srv/goldfleet/edge/kvm-01/layers/{LAYER_TOP}",
        f"/srv/goldfleet/edge/kvm-01/layers/{LAYER_BASE}",
    ]
    assert node is not None and node.attrib == {} and len(node) == 0


def test_kernel_boot_serial_log_and_agent_channel() -> None:
    root = ET.fromstring(CASES["kernel_boot_tcg"].to_xml())
    assert root.get("type") == "qemu"
    assert root.findtext("os/kernel") == "/cache/vmlinuz"
    assert root.findtext("os/initrd") == "/tmp/initrd.gz"
    assert root.findtext("os/cmdline") == "console=ttyS0 quiet"
    assert root.find("os/boot") is None
    assert root.find("devices/serial/source").get("path") == "/tmp/serial.log"
    assert root.find("devices/channel/target").attrib == {"type": "virtio", "name": AGENT_CHANNEL}
    assert root.find("memory").attrib == {"unit": "MiB"} and root.findtext("memory") == "256"
    assert root.findtext("vcpu") == "1"
    clone = ET.fromstring(CASES["linked_clone_kvm"].to_xml())
    assert clone.find("os/boot").get("dev") == "hd" and clone.find("os/kernel") is None
    assert clone.find("devices/serial") is None


def test_text_is_escaped() -> None:
    spec = DomainSpec(
        name="x",
        disks=(DiskSpec(role="system", path="/a&b/<c>'d\".qcow2"),),
        boot=KernelBoot(kernel="/k", initrd="/i", cmdline="a=<b> & c='d'"),
    )
    root = ET.fromstring(from_spec(spec).to_xml())
    assert root.find("devices/disk/source").get("file") == "/a&b/<c>'d\".qcow2"
    assert root.findtext("os/cmdline") == "a=<b> & c='d'"


@pytest.mark.parametrize(
    ("index", "target"),
    [
        (0, "vda"),
        (1, "vdb"),
        (25, "vdz"),
        (26, "vdaa"),
        (27, "vdab"),
        (701, "vdzz"),
        (702, "vdaaa"),
    ],
)
def test_disk_target(index: int, target: str) -> None:
    assert disk_target(index) == target


@pytest.mark.parametrize(
    ("path", "backing", "chain"),
    [
        ("/s/clones/u/system.qcow2", (), ()),
        ("/s/clones/u/system.qcow2", ("../../layers/t.qcow2",), ("/s/layers/t.qcow2",)),
        (
            "/s/clones/u/system.qcow2",
            ("../../layers/t.qcow2", "b.qcow2", "/elsewhere/c.qcow2", "d.qcow2"),
            ("/s/layers/t.qcow2", "/s/layers/b.qcow2", "/elsewhere/c.qcow2", "/elsewhere/d.qcow2"),
        ),
    ],
)
def test_relative_backing_is_read_like_qemu_reads_it(
    path: str, backing: tuple[str, ...], chain: tuple[str, ...]
) -> None:
    assert resolve_chain(path, backing) == chain


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        (DomainSpec(name="x", disks=()), "has no disks"),
        (DomainSpec(name="x", disks=(DiskSpec(role="swap", path="/a"),)), "unknown role 'swap'"),
        (DomainSpec(name="x", disks=(DiskSpec(role="system", path="a.qcow2"),)), "absolute"),
        (
            DomainSpec(name="x", disks=(DiskSpec(role="system", path="/a", backing=("",)),)),
            "empty entry",
        ),
        (
            DomainSpec(name="x", disks=(DiskSpec(role="system", path="/a"),), memory_mib=0),
            "at least 1 MiB",
        ),
        (
            DomainSpec(
                name="x",
                disks=(DiskSpec(role="system", path="/a"),),
                boot=KernelBoot(kernel="vmlinuz", initrd="/i"),
            ),
            "kernel 'vmlinuz' is not an absolute path",
        ),
    ],
)
def test_refuses_what_libvirt_could_not_use(spec: DomainSpec, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        from_spec(spec)


def test_typed_values_are_frozen() -> None:
    disk = DiskXML(target="vda", path="/a")
    with pytest.raises(AttributeError):
        disk.path = "/b"  # type: ignore[misc]
