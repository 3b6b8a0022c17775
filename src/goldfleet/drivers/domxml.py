"""libvirt domain XML, built from small typed values (virt-manager ``virtinst`` style).

Why typed values and not a template string: every field is named once, escaping is
``xml.etree``'s job, and the output is compared with golden files and parsed back by libvirt's
own test driver. The output puts one field per line so that a golden-file diff reads like a
changelog.

Every disk is a virtio disk (``vda``, ``vdb``, …; the system volume first) in qcow2 format with
its backing chain written out in full: each ``<backingStore>`` names its file and its format, and
the chain ends in an empty ``<backingStore/>``. libvirt and QEMU therefore open exactly the files
goldfleet declares and probe no format and no backing reference (invariant 3 of the design).
"""

from __future__ import annotations

import posixpath
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass

from goldfleet.drivers.base import DomainSpec

AGENT_CHANNEL = "org.qemu.guest_agent.0"
ROLES = ("system", "temp", "data")


def disk_target(index: int) -> str:
    """0 → ``vda``, 25 → ``vdz``, 26 → ``vdaa``: libvirt's own naming of virtio disks."""
    if index < 0:
        raise ValueError(f"disk index {index} is negative")
    letters = ""
    i = index
    while True:
        letters = chr(ord("a") + i % 26) + letters
        i = i // 26 - 1
        if i < 0:
            return "vd" + letters


def resolve_chain(path: str, backing: Iterable[str]) -> tuple[str, ...]:
    """Absolute paths of a backing chain, top first.

    A relative entry is read the way QEMU reads a qcow2 backing reference: relative to the folder
    of the image above it, so a store's own ``../../layers/sha256-….qcow2`` can be passed as is.
    """
    chain: list[str] = []
    above = path
    for ref in backing:
        if not ref:
            raise ValueError(f"the backing chain of {path} has an empty entry")
        resolved = posixpath.normpath(
            ref if posixpath.isabs(ref) else posixpath.join(posixpath.dirname(above), ref)
        )
        chain.append(resolved)
        above = resolved
    return tuple(chain)


@dataclass(frozen=True, slots=True)
class DiskXML:
    """One virtio qcow2 disk and its declared backing chain (absolute paths, top first)."""

    target: str
    path: str
    backing: tuple[str, ...] = ()
    serial: str | None = None

    def element(self) -> ET.Element:
        disk = ET.Element("disk", type="file", device="disk")
        ET.SubElement(disk, "driver", name="qemu", type="qcow2")
        ET.SubElement(disk, "source", file=self.path)
        parent = disk
        for layer in self.backing:
            parent = ET.SubElement(parent, "backingStore", type="file")
            ET.SubElement(parent, "format", type="qcow2")
            ET.SubElement(parent, "source", file=layer)
        ET.SubElement(parent, "backingStore")  # the chain ends here: nothing below is probed
        ET.SubElement(disk, "target", dev=self.target, bus="virtio")
        if self.serial is not None:
            ET.SubElement(disk, "serial").text = self.serial
        return disk


@dataclass(frozen=True, slots=True)
class OSXML:
    """How the guest boots: its first disk, or a kernel and initramfs given directly."""

    arch: str = "x86_64"
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None

    def element(self) -> ET.Element:
        os_ = ET.Element("os")
        ET.SubElement(os_, "type", arch=self.arch).text = "hvm"
        if self.kernel is None:
            ET.SubElement(os_, "boot", dev="hd")
            return os_
        ET.SubElement(os_, "kernel").text = self.kernel
        if self.initrd is not None:
            ET.SubElement(os_, "initrd").text = self.initrd
        if self.cmdline is not None:
            ET.SubElement(os_, "cmdline").text = self.cmdline
        return os_


@dataclass(frozen=True, slots=True)
class SerialXML:
    """The first serial port, written to a file on the host."""

    path: str

    def element(self) -> ET.Element:
        serial = ET.Element("serial", type="file")
        ET.SubElement(serial, "source", path=self.path)
        ET.SubElement(serial, "target", port="0")
        return serial


@dataclass(frozen=True, slots=True)
class AgentChannelXML:
    """The virtio-serial channel the QEMU guest agent listens on (socket chosen by libvirt)."""

    name: str = AGENT_CHANNEL

    def element(self) -> ET.Element:
        channel = ET.Element("channel", type="unix")
        ET.SubElement(channel, "target", type="virtio", name=self.name)
        return channel


@dataclass(frozen=True, slots=True)
class InterfaceXML:
    """One virtio NIC on a libvirt network, with its network filter (docs/guests.md)."""

    network: str
    filter: str | None = None

    def element(self) -> ET.Element:
        iface = ET.Element("interface", type="network")
        ET.SubElement(iface, "source", network=self.network)
        ET.SubElement(iface, "model", type="virtio")
        if self.filter is not None:
            ET.SubElement(iface, "filterref", filter=self.filter)
        return iface


@dataclass(frozen=True, slots=True)
class DomainXML:
    name: str
    disks: tuple[DiskXML, ...]
    domain_type: str = "kvm"  # kvm | qemu (TCG) | test
    memory_mib: int = 2048
    vcpus: int = 2
    os: OSXML = OSXML()
    serial: SerialXML | None = None
    agent: AgentChannelXML | None = AgentChannelXML()
    uuid: str | None = None  # kept on redefinition: libvirt refuses a name with a new uuid
    interface: InterfaceXML | None = None

    def element(self) -> ET.Element:
        domain = ET.Element("domain", type=self.domain_type)
        ET.SubElement(domain, "name").text = self.name
        if self.uuid is not None:
            ET.SubElement(domain, "uuid").text = self.uuid
        ET.SubElement(domain, "memory", unit="MiB").text = str(self.memory_mib)
        ET.SubElement(domain, "vcpu").text = str(self.vcpus)
        domain.append(self.os.element())
        features = ET.SubElement(domain, "features")
        ET.SubElement(features, "acpi")  # the power button that a graceful shutdown presses
        ET.SubElement(features, "apic")
        ET.SubElement(domain, "on_poweroff").text = "destroy"
        ET.SubElement(domain, "on_reboot").text = "restart"
        ET.SubElement(domain, "on_crash").text = "destroy"
        devices = ET.SubElement(domain, "devices")
        for disk in self.disks:
            devices.append(disk.element())
        if self.interface is not None:
            devices.append(self.interface.element())
        if self.serial is not None:
            devices.append(self.serial.element())
        if self.agent is not None:
            devices.append(self.agent.element())
        return domain

    def to_xml(self) -> str:
        root = self.element()
        ET.indent(root, space="  ")
        return ET.tostring(root, encoding="unicode") + "\n"


def _absolute(path: str, what: str) -> str:
    if not posixpath.isabs(path):
        raise ValueError(f"{what} {path!r} is not an absolute path")
    return posixpath.normpath(path)


def from_spec(
    spec: DomainSpec,
    *,
    domain_type: str = "kvm",
    arch: str = "x86_64",
    uuid: str | None = None,
    kept_filter: str | None = None,
) -> DomainXML:
    """The domain XML of a goldfleet VM: the system disk, then temp, then data disks (each
    role's disks in spec order), as a clone's outline lists its volumes. ``kept_filter``: the
    filter a redefined VM's interface has, kept when the spec names none.

    Raises :class:`ValueError` for a disk of unknown role, a relative path, no disks, or no
    memory or vCPU."""
    if not spec.disks:
        raise ValueError(f"VM {spec.name} has no disks")
    if spec.memory_mib < 1 or spec.vcpus < 1:
        raise ValueError(
            f"VM {spec.name} needs at least 1 MiB of memory and 1 vCPU"
            f" (got {spec.memory_mib} MiB, {spec.vcpus} vCPUs)"
        )
    for disk in spec.disks:
        if disk.role not in ROLES:
            raise ValueError(f"disk {disk.path} of VM {spec.name} has unknown role {disk.role!r}")
    ordered = sorted(spec.disks, key=lambda d: ROLES.index(d.role))  # stable within a role
    seen: dict[str, int] = {}
    disks = []
    for index, disk in enumerate(ordered):
        path = _absolute(disk.path, "disk")
        n = seen.get(disk.role, 0)
        seen[disk.role] = n + 1
        disks.append(
            DiskXML(
                target=disk_target(index),
                path=path,
                backing=resolve_chain(path, disk.backing),
                serial=disk.role if disk.role == "system" else f"{disk.role}{n}",
            )
        )
    os_ = OSXML(arch=arch)
    if spec.boot is not None:
        os_ = OSXML(
            arch=arch,
            kernel=_absolute(spec.boot.kernel, "kernel"),
            initrd=_absolute(spec.boot.initrd, "initrd"),
            cmdline=spec.boot.cmdline,
        )
    return DomainXML(
        name=spec.name,
        disks=tuple(disks),
        domain_type=domain_type,
        memory_mib=spec.memory_mib,
        vcpus=spec.vcpus,
        os=os_,
        serial=None if spec.serial_log is None else SerialXML(_absolute(spec.serial_log, "log")),
        uuid=uuid,
        interface=(
            None
            if spec.network is None
            else InterfaceXML(spec.network, spec.filter if spec.filter is not None else kept_filter)
        ),
    )
