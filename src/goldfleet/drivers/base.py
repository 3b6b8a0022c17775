"""The driver seam: what goldfleet asks of a hypervisor, and nothing more.

Keyword-only arguments, frozen dataclasses for specs, capabilities declared as a dataclass. A
driver raises :class:`DriverError` with the hypervisor's own words when an action fails, and
:class:`Unsupported` for an action its capabilities say it cannot do. Every driver passes the
same contract test suite (tests/drivers/test_contract.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from goldfleet.errors import GoldfleetError

RUNNING, STOPPED, UNDEFINED = "running", "stopped", "undefined"


class DriverError(GoldfleetError):
    """The hypervisor refused or failed an action; the message carries its words."""

    status_code = 502


class Unsupported(DriverError):
    """The driver (or its hypervisor) cannot do this action at all."""

    status_code = 501


@dataclass(frozen=True, slots=True)
class Capabilities:
    sessions: bool = False  # list logged-in users
    messages: bool = False  # send a message to the users of a VM
    logoff: bool = False  # log a user off
    migrate: bool = False  # move a VM to another host
    guest_agent: bool = False  # read and write guest files, run programs in a guest
    nwfilter: bool = False  # network filters defined and switched live per VM


@dataclass(frozen=True, slots=True)
class VmLoad:
    """A VM defined on a host, with what it takes of the host's capacity when running."""

    name: str
    state: str
    memory_mib: int
    vcpus: int


@dataclass(frozen=True, slots=True)
class DiskSpec:
    role: str  # system | temp | data
    path: str
    # the declared backing chain below ``path``, top first, every file qcow2 (nothing probed)
    backing: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class KernelBoot:
    """Direct kernel boot (tests boot a tiny guest this way)."""

    kernel: str
    initrd: str
    cmdline: str = "console=ttyS0"


@dataclass(frozen=True, slots=True)
class DomainSpec:
    name: str
    disks: tuple[DiskSpec, ...]
    memory_mib: int = 2048
    vcpus: int = 2
    boot: KernelBoot | None = None
    serial_log: str | None = None  # a file that receives the guest's serial console
    # the virtual network its one interface joins (libvirt network name); None: no interface
    network: str | None = None
    # the network filter on that interface (goldfleet-normal-T / -restricted-T); None: keep
    # the one a redefined VM has (goldfleet switches it after evaluating the clone)
    filter: str | None = None


@dataclass(frozen=True, slots=True)
class GuestSession:
    user: str
    since: datetime | None = None
    idle_seconds: float | None = None  # how long the user has been idle, if the driver knows


@dataclass(frozen=True, slots=True)
class ExecResult:
    """A program run in a guest through its agent."""

    exit_code: int
    stdout: str = ""
    stderr: str = ""


GUEST_READ_LIMIT = 64 * 1024  # bytes read of a guest file at most (guests are hostile)


@dataclass(frozen=True, slots=True)
class DriverEvent:
    """A change the hypervisor reports, e.g. a guest that shut itself down."""

    name: str
    state: str
    at: datetime = field(default_factory=datetime.now)


class Driver(ABC):
    name: str
    capabilities: Capabilities

    @abstractmethod
    def hosts(self) -> list[str]:
        """The hosts this driver places VMs on."""

    @abstractmethod
    def define(self, *, spec: DomainSpec, host: str | None = None) -> str:
        """Define (or redefine, keeping its host) a VM with its disks; returns its host."""

    @abstractmethod
    def undefine(self, *, name: str) -> None:
        """Remove a stopped VM's definition; unknown names are ignored."""

    @abstractmethod
    def start(self, *, name: str) -> None: ...

    @abstractmethod
    def shutdown(self, *, name: str, timeout: float = 60.0) -> None:
        """Graceful shutdown, forced off after ``timeout`` seconds; a stopped VM is left so."""

    @abstractmethod
    def state(self, *, name: str) -> str:
        """``running``, ``stopped`` or ``undefined``."""

    @abstractmethod
    def states(self) -> dict[str, str]:
        """The power state of every VM this driver has defined (for reconciliation)."""

    @abstractmethod
    def host_of(self, *, name: str) -> str | None:
        """The host a VM is defined on, or None if it is not defined."""

    def migrate(self, *, name: str, host: str) -> None:
        raise Unsupported(f"driver {self.name} cannot migrate VMs")

    # -- hosts, for rolling host updates (docs/host-updates.md) -------------------------------

    def vms_on(self, *, host: str) -> list[VmLoad]:
        """The VMs defined on ``host`` with their state and size."""
        raise Unsupported(f"driver {self.name} cannot list a host's VMs with their sizes")

    def reboot_host(self, *, host: str) -> None:
        """Start rebooting ``host``: its running VMs stop; :meth:`host_up` says when it is back."""
        raise Unsupported(f"driver {self.name} cannot reboot hosts")

    def host_up(self, *, host: str) -> bool:
        """Whether ``host`` is up (its hypervisor answers)."""
        raise Unsupported(f"driver {self.name} cannot tell whether a host is up")

    def restart_toolstack(self, *, host: str) -> None:
        """Restart the host's toolstack (libvirtd); its VMs keep running."""
        raise Unsupported(f"driver {self.name} cannot restart a host's toolstack")

    def restart_device_model(self, *, name: str) -> None:
        """Give a running VM a fresh device model (QEMU) without stopping its guest."""
        raise Unsupported(f"driver {self.name} cannot restart a VM's device model")

    def restart(self, *, name: str, timeout: float = 60.0) -> None:
        """Restart a VM: shut it down and start it again (its users' sessions end)."""
        self.shutdown(name=name, timeout=timeout)
        self.start(name=name)

    def sessions(self, *, names: Sequence[str]) -> dict[str, list[GuestSession]]:
        """Logged-in users of each named VM (VMs without any may be left out)."""
        raise Unsupported(f"driver {self.name} cannot list sessions")

    def send_message(self, *, name: str, text: str) -> None:
        raise Unsupported(f"driver {self.name} cannot send messages")

    def send_messages(self, *, messages: Mapping[str, str]) -> dict[str, DriverError | None]:
        """:meth:`send_message` to many VMs (VM name → text); each VM's error, or None."""
        if not self.capabilities.messages:
            raise Unsupported(f"driver {self.name} cannot send messages")
        done: dict[str, DriverError | None] = {}
        for vm, text in messages.items():
            try:
                self.send_message(name=vm, text=text)
                done[vm] = None
            except DriverError as exc:
                done[vm] = exc
        return done

    def logoff(self, *, name: str, user: str) -> None:
        raise Unsupported(f"driver {self.name} cannot log users off")

    # -- inside the guest, through its agent (QEMU guest agent; the sim models it) ----------

    def guest_read(self, *, name: str, path: str, limit: int = GUEST_READ_LIMIT) -> bytes | None:
        """At most ``limit`` bytes of a file in the running guest; ``None`` when the file does
        not exist. Raises :class:`DriverError` when the agent does not answer."""
        raise Unsupported(f"driver {self.name} cannot read files in guests")

    def guest_read_many(
        self, *, names: Sequence[str], path: str, limit: int = GUEST_READ_LIMIT
    ) -> dict[str, bytes | DriverError | None]:
        """:meth:`guest_read` of one path in many guests; a guest whose agent failed maps to
        its error (one silent guest must not hide the others)."""
        found: dict[str, bytes | DriverError | None] = {}
        for vm in names:
            try:
                found[vm] = self.guest_read(name=vm, path=path, limit=limit)
            except DriverError as exc:
                found[vm] = exc
        return found

    def guest_write(self, *, name: str, path: str, data: bytes, mode: int = 0o644) -> None:
        """Write a whole file in the running guest (its folders made), replacing it."""
        raise Unsupported(f"driver {self.name} cannot write files in guests")

    def guest_write_many(
        self, *, files: Mapping[str, bytes], path: str
    ) -> dict[str, DriverError | None]:
        """:meth:`guest_write` of one path in many guests (VM name → its data); each guest's
        error, or None when written."""
        if not self.capabilities.guest_agent:
            raise Unsupported(f"driver {self.name} cannot write files in guests")
        done: dict[str, DriverError | None] = {}
        for vm, data in files.items():
            try:
                self.guest_write(name=vm, path=path, data=data)
                done[vm] = None
            except DriverError as exc:
                done[vm] = exc
        return done

    def guest_exec(self, *, name: str, argv: Sequence[str], timeout: float = 30.0) -> ExecResult:
        """Run a program in the running guest and wait for it (at most ``timeout`` s)."""
        raise Unsupported(f"driver {self.name} cannot run programs in guests")

    # -- network filters (libvirt nwfilter; the sim models them) ---------------------------

    def define_filter(self, *, filter_name: str, xml: str) -> None:
        """Define (or redefine) a network filter on every host."""
        raise Unsupported(f"driver {self.name} has no network filters")

    def set_filter(self, *, name: str, filter_name: str) -> None:
        """Make ``filter_name`` the filter of the VM's network interface, live if it runs."""
        raise Unsupported(f"driver {self.name} has no network filters")

    def set_filters(self, *, filters: Mapping[str, str]) -> dict[str, DriverError | None]:
        """:meth:`set_filter` of many VMs (VM name → filter); each VM's error, or None."""
        if not self.capabilities.nwfilter:
            raise Unsupported(f"driver {self.name} has no network filters")
        done: dict[str, DriverError | None] = {}
        for vm, filter_name in filters.items():
            try:
                self.set_filter(name=vm, filter_name=filter_name)
                done[vm] = None
            except DriverError as exc:
                done[vm] = exc
        return done

    def filter_of(self, *, name: str) -> str | None:
        """The filter on the VM's network interface, if any."""
        raise Unsupported(f"driver {self.name} has no network filters")
