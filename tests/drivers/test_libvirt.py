"""The libvirt driver against libvirt's own test driver (``test:///``): no daemon, no VM.

``test:///default`` is one hypervisor shared by the whole process (it starts with a running VM
named ``test``), so every test uses VM names of its own and removes them. A
``test:///<file>.xml`` URI is a separate, empty hypervisor per connection: two of them make a
two-host setup. What is checked is what libvirt itself reports: its XML of the defined VM, its
power states, its error messages.
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import pytest

from goldfleet.drivers.base import (
    Capabilities,
    DiskSpec,
    DomainSpec,
    DriverError,
    KernelBoot,
    Unsupported,
)
from goldfleet.drivers.libvirt import LibvirtDriver, host_name

DEFAULT = "test:///default"
LAYER = "sha256-" + "a" * 64 + ".qcow2"
TOP = "sha256-" + "b" * 64 + ".qcow2"


def clone_spec(name: str, root: str = "/srv/store", **kw: object) -> DomainSpec:
    """A linked clone's spec as goldfleet makes it: system overlay on two layers, temp, data."""
    return DomainSpec(
        name=name,
        disks=(
            DiskSpec(
                role="system",
                path=f"{root}/clones/{name}/system.qcow2",
                backing=(f"../../layers/{TOP}", LAYER),
            ),
            DiskSpec(role="temp", path=f"{root}/clones/{name}/temp0.qcow2"),
            DiskSpec(role="data", path=f"{root}/clones/{name}/data0.qcow2"),
        ),
        **kw,  # type: ignore[arg-type]
    )


def libvirt_xml(name: str) -> ET.Element:
    """libvirt's own description of a VM on test:///default (a second connection to it)."""
    conn = libvirt.open(DEFAULT)
    try:
        return ET.fromstring(conn.lookupByName(name).XMLDesc(0))
    finally:
        conn.close()


@pytest.fixture
def driver() -> Iterator[LibvirtDriver]:
    d = LibvirtDriver(uris=[DEFAULT])
    yield d
    d.close()


@pytest.fixture
def new_name(driver: LibvirtDriver) -> Iterator[Callable[[], str]]:
    """Fresh VM names on the shared test:///default, removed after the test."""
    made: list[str] = []

    def make() -> str:
        made.append(f"gf-{uuid.uuid4().hex[:10]}")
        return made[-1]

    yield make
    for name in made:
        if driver.state(name=name) == "running":
            driver.shutdown(name=name, timeout=0)
        driver.undefine(name=name)


@pytest.fixture
def two_hosts(tmp_path: Path) -> Iterator[tuple[LibvirtDriver, str, str]]:
    uris = []
    for host in ("a", "b"):
        node = tmp_path / f"node-{host}.xml"
        node.write_text("<node>\n</node>\n")
        uris.append(f"test://{node}")
    d = LibvirtDriver(uris=uris)
    yield d, uris[0], uris[1]
    d.close()


# --- definition --------------------------------------------------------------------------------


def test_define_declares_every_disk_and_its_backing_chain(
    driver: LibvirtDriver, new_name: Callable[[], str]
) -> None:
    name = new_name()
    assert driver.define(spec=clone_spec(name)) == DEFAULT
    root = libvirt_xml(name)
    disks = root.findall("devices/disk")
    assert [(d.find("target").get("dev"), d.find("target").get("bus")) for d in disks] == [
        ("vda", "virtio"),
        ("vdb", "virtio"),
        ("vdc", "virtio"),
    ]
    assert [d.find("source").get("file") for d in disks] == [
        f"/srv/store/clones/{name}/system.qcow2",
        f"/srv/store/clones/{name}/temp0.qcow2",
        f"/srv/store/clones/{name}/data0.qcow2",
    ]
    assert {d.find("driver").get("type") for d in disks} == {"qcow2"}
    # the system chain as libvirt keeps it: both layers, their format, then the end marker
    chain, node = [], disks[0].find("backingStore")
    while node is not None and node.get("type") == "file":
        chain.append((node.find("format").get("type"), node.find("source").get("file")))
        node = node.find("backingStore")
    assert chain == [("qcow2", f"/srv/store/layers/{TOP}"), ("qcow2", f"/srv/store/layers/{LAYER}")]
    assert node is not None and len(node) == 0 and node.attrib == {}
    for standalone in disks[1:]:
        end = standalone.find("backingStore")
        assert end is not None and len(end) == 0
    channel = root.find("devices/channel/target")
    assert channel is not None and channel.get("name") == "org.qemu.guest_agent.0"
    assert driver.state(name=name) == "stopped"
    assert driver.host_of(name=name) == DEFAULT


def test_define_kernel_boot_serial_log_memory_and_vcpus(
    driver: LibvirtDriver, new_name: Callable[[], str], tmp_path: Path
) -> None:
    name = new_name()
    log = tmp_path / "serial.log"
    spec = clone_spec(
        name,
        memory_mib=512,
        vcpus=3,
        boot=KernelBoot(kernel="/boot/vmlinuz", initrd="/boot/initrd.gz"),
        serial_log=str(log),
    )
    driver.define(spec=spec)
    root = libvirt_xml(name)
    assert root.findtext("os/kernel") == "/boot/vmlinuz"
    assert root.findtext("os/initrd") == "/boot/initrd.gz"
    assert root.findtext("os/cmdline") == "console=ttyS0"
    assert root.find("devices/serial/source").get("path") == str(log)
    assert root.find("memory").get("unit") == "KiB" and root.findtext("memory") == "524288"
    assert root.findtext("vcpu") == "3"


def test_redefine_keeps_host_and_identity_and_changes_disks(
    driver: LibvirtDriver, new_name: Callable[[], str]
) -> None:
    name = new_name()
    driver.define(spec=clone_spec(name))
    before = libvirt_xml(name).findtext("uuid")
    assert driver.define(spec=clone_spec(name, root="/srv/other")) == DEFAULT
    after = libvirt_xml(name)
    assert after.findtext("uuid") == before
    assert after.find("devices/disk/source").get("file") == f"/srv/other/clones/{name}/system.qcow2"
    assert list(driver.states()).count(name) == 1


def test_redefine_while_running_changes_the_next_boot_only(
    driver: LibvirtDriver, new_name: Callable[[], str]
) -> None:
    name = new_name()
    driver.define(spec=clone_spec(name))
    driver.start(name=name)
    driver.define(spec=clone_spec(name, root="/srv/next"))
    assert driver.state(name=name) == "running"
    conn = libvirt.open(DEFAULT)
    try:
        dom = conn.lookupByName(name)
        inactive = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        live = ET.fromstring(dom.XMLDesc(0))
    finally:
        conn.close()
    assert inactive.find("devices/disk/source").get("file").startswith("/srv/next/")
    assert live.find("devices/disk/source").get("file").startswith("/srv/store/")


def test_libvirt_refusal_carries_libvirts_words(driver: LibvirtDriver) -> None:
    with pytest.raises(DriverError, match=r"refused the definition of VM a/b: .*cannot contain"):
        driver.define(spec=clone_spec("a/b"))
    assert driver.state(name="a/b") == "undefined"


def test_spec_libvirt_could_not_use_is_a_driver_error(driver: LibvirtDriver) -> None:
    spec = DomainSpec(name="gf-bad", disks=(DiskSpec(role="system", path="relative.qcow2"),))
    with pytest.raises(DriverError, match=r"cannot define VM gf-bad: .*not an absolute path"):
        driver.define(spec=spec)
    assert driver.state(name="gf-bad") == "undefined"


# --- power -------------------------------------------------------------------------------------


def test_start_shutdown_and_states(driver: LibvirtDriver, new_name: Callable[[], str]) -> None:
    a, b = new_name(), new_name()
    driver.define(spec=clone_spec(a))
    driver.define(spec=clone_spec(b))
    driver.start(name=a)
    states = driver.states()
    assert states[a] == "running" and states[b] == "stopped"
    assert states["test"] == "running"  # the test driver's own VM: states() reports them all
    driver.start(name=a)  # already running: nothing to do
    assert driver.state(name=a) == "running"
    driver.shutdown(name=a, timeout=5)
    assert driver.state(name=a) == "stopped"
    assert driver.states()[a] == "stopped"
    driver.shutdown(name=a, timeout=5)  # already stopped: left so
    assert driver.state(name=a) == "stopped"


def test_undefine(driver: LibvirtDriver, new_name: Callable[[], str]) -> None:
    name = new_name()
    driver.define(spec=clone_spec(name))
    driver.start(name=name)
    with pytest.raises(DriverError, match=f"VM {name} is running"):
        driver.undefine(name=name)
    assert driver.state(name=name) == "running"
    driver.shutdown(name=name, timeout=1)
    driver.undefine(name=name)
    assert driver.state(name=name) == "undefined"
    assert driver.host_of(name=name) is None
    assert name not in driver.states()
    driver.undefine(name=name)  # unknown: ignored


def test_unknown_vm(driver: LibvirtDriver) -> None:
    name = f"gf-missing-{uuid.uuid4().hex[:6]}"
    assert driver.state(name=name) == "undefined"
    assert driver.host_of(name=name) is None
    for action in (driver.start, driver.shutdown):
        with pytest.raises(DriverError, match=f"VM {name} is not defined on any libvirt host"):
            action(name=name)
    driver.undefine(name=name)


# --- hosts, placement, migration ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "host"),
    [
        ("qemu:///system", "qemu:///system"),
        ("qemu+ssh://root@kvm-07.example/system", "kvm-07.example"),
        ("qemu+tls://kvm-08:16514/system?no_verify=1", "kvm-08"),
        ("test:///default", "test:///default"),
    ],
)
def test_host_names(uri: str, host: str) -> None:
    assert host_name(uri) == host


def test_capabilities_follow_the_connections(tmp_path: Path) -> None:
    assert LibvirtDriver(uris=[DEFAULT]).capabilities == Capabilities()
    node = tmp_path / "n.xml"
    node.write_text("<node/>\n")
    two = LibvirtDriver(uris=[DEFAULT, f"test://{node}"])
    assert two.capabilities == Capabilities(migrate=True)
    # QEMU hosts have the guest agent channel; nothing is opened to know it
    qemu = LibvirtDriver(uris=["qemu+ssh://h1/system", "qemu+ssh://h2/system"])
    assert qemu.capabilities == Capabilities(
        sessions=True, messages=True, logoff=True, migrate=True, guest_agent=True, nwfilter=True
    )
    assert qemu.hosts() == ["h1", "h2"]


def test_agent_actions_are_unsupported_on_the_test_driver(
    driver: LibvirtDriver, new_name: Callable[[], str]
) -> None:
    name = new_name()
    driver.define(spec=clone_spec(name))
    driver.start(name=name)
    with pytest.raises(Unsupported):
        driver.sessions(names=[name])
    with pytest.raises(Unsupported):
        driver.send_message(name=name, text="hello")
    with pytest.raises(Unsupported):
        driver.logoff(name=name, user="alice")
    with pytest.raises(Unsupported, match="one host"):
        driver.migrate(name=name, host=DEFAULT)


def test_bad_configuration() -> None:
    with pytest.raises(DriverError, match="at least one URI"):
        LibvirtDriver(uris=[])
    with pytest.raises(DriverError, match="name the same host h1"):
        LibvirtDriver(uris=["qemu+ssh://h1/system", "qemu+tcp://h1/system"])


def test_unreachable_host_fails_with_libvirts_words(tmp_path: Path) -> None:
    missing = tmp_path / "missing.xml"
    d = LibvirtDriver(uris=[f"test://{missing}"])  # connections open on first use
    assert d.hosts() == [f"test://{missing}"]
    words = rf"cannot connect to libvirt host test://{missing}: .*{missing}"
    with pytest.raises(DriverError, match=words):
        d.state(name="x")  # not "undefined": nobody can tell
    with pytest.raises(DriverError, match=words):
        d.define(spec=clone_spec("x"))
    with pytest.raises(DriverError, match=words):
        d.states()


def test_vms_on_a_reachable_host_work_while_another_is_down(
    tmp_path: Path, new_name: Callable[[], str]
) -> None:
    bad = tmp_path / "bad.xml"
    bad.write_text("<node/>\n")
    d = LibvirtDriver(uris=[f"test://{bad}", DEFAULT])
    name = new_name()
    d.define(spec=clone_spec(name), host=DEFAULT)
    keep = libvirt.open(DEFAULT)  # test:///default forgets its VMs when its last user leaves
    bad.unlink()
    d.close()  # connections reopen on next use: the one to the first host now fails
    d.start(name=name)
    assert d.state(name=name) == "running"
    assert d.host_of(name=name) == DEFAULT
    with pytest.raises(DriverError, match="cannot connect"):
        d.state(name="elsewhere")
    d.close()
    keep.close()


def test_placement_on_the_least_loaded_host(two_hosts: tuple[LibvirtDriver, str, str]) -> None:
    d, a, b = two_hosts
    assert d.hosts() == [a, b]
    assert d.define(spec=clone_spec("v1")) == a  # tie: configuration order
    assert d.define(spec=clone_spec("v2")) == b
    assert d.define(spec=clone_spec("v3")) == a
    assert (
        d.define(
            spec=clone_spec(
                "v4",
            ),
            host=a,
        )
        == a
    )  # asked for: honoured
    assert d.define(spec=clone_spec("v5")) == b
    assert {n: d.host_of(name=n) for n in ("v1", "v2", "v3", "v4", "v5")} == {
        "v1": a,
        "v2": b,
        "v3": a,
        "v4": a,
        "v5": b,
    }
    assert d.define(spec=clone_spec("v2", root="/srv/x")) == b  # redefinition keeps its host
    with pytest.raises(DriverError, match=f"VM v2 is defined on host {b}, not {a}"):
        d.define(spec=clone_spec("v2"), host=a)
    with pytest.raises(DriverError, match="host nowhere is not one of the libvirt hosts"):
        d.define(spec=clone_spec("v6"), host="nowhere")
    assert d.host_of(name="v6") is None
    assert d.states() == dict.fromkeys(("v1", "v2", "v3", "v4", "v5"), "stopped")


def test_migrate_a_stopped_vm(two_hosts: tuple[LibvirtDriver, str, str]) -> None:
    d, a, b = two_hosts
    d.define(spec=clone_spec("m1"), host=a)
    d.migrate(name="m1", host=b)
    assert d.host_of(name="m1") == b
    assert d.states() == {"m1": "stopped"}  # defined once, on b
    d.start(name="m1")
    assert d.state(name="m1") == "running"
    d.migrate(name="m1", host=b)  # already there: nothing to do
    assert d.host_of(name="m1") == b


def test_migrate_a_running_vm_reports_libvirts_refusal(
    two_hosts: tuple[LibvirtDriver, str, str],
) -> None:
    d, a, b = two_hosts
    d.define(spec=clone_spec("m2"), host=a)
    d.start(name="m2")
    with pytest.raises(DriverError, match=f"cannot migrate VM m2 from libvirt host {a} to {b}: "):
        d.migrate(name="m2", host=b)  # the test driver cannot migrate live
    assert d.host_of(name="m2") == a
    assert d.state(name="m2") == "running"
    with pytest.raises(DriverError, match="is not one of the libvirt hosts"):
        d.migrate(name="m2", host="elsewhere")
    with pytest.raises(DriverError, match="VM m9 is not defined"):
        d.migrate(name="m9", host=b)


def test_a_hosts_vms_with_their_sizes_and_whether_it_is_up(
    two_hosts: tuple[LibvirtDriver, str, str],
) -> None:
    """What a rolling host update asks of the libvirt driver (docs/host-updates.md): a host's
    VMs with memory and vCPUs as libvirt reports them, whether the host answers, and a VM
    restart (shut down, started again)."""
    d, a, b = two_hosts
    d.define(spec=clone_spec("s1"), host=a)
    d.start(name="s1")
    d.define(spec=clone_spec("s2"), host=a)
    got = {v.name: v for v in d.vms_on(host=a)}
    assert got["s1"].state == "running" and got["s2"].state == "stopped"
    assert got["s1"].memory_mib == clone_spec("s1").memory_mib
    assert got["s1"].vcpus == clone_spec("s1").vcpus
    assert d.vms_on(host=b) == [] and d.host_up(host=a) and d.host_up(host=b)
    d.restart(name="s1")
    assert d.state(name="s1") == "running"
    with pytest.raises(DriverError, match="is not one of the libvirt hosts"):
        d.vms_on(host="nowhere")
