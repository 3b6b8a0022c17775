"""The driver seam: what goldfleet asks of a hypervisor, and nothing more.

Keyword-only arguments, frozen dataclasses for specs, capabilities declared as a dataclass. A
driver raises :class:`DriverError` with the hypervisor's own words when an action fails, and
:class:`Unsupported` for an action its capabilities say it cannot do. Every driver passes the
same contract test suite (tests/drivers/test_contract.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
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


@dataclass(frozen=True, slots=True)
class GuestSession:
    user: str
    since: datetime | None = None
    idle_seconds: float | None = None  # how long the user has been idle, if the driver knows


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

    def sessions(self, *, names: Sequence[str]) -> dict[str, list[GuestSession]]:
        """Logged-in users of each named VM (VMs without any may be left out)."""
        raise Unsupported(f"driver {self.name} cannot list sessions")

    def send_message(self, *, name: str, text: str) -> None:
        raise Unsupported(f"driver {self.name} cannot send messages")

    def logoff(self, *, name: str, user: str) -> None:
        raise Unsupported(f"driver {self.name} cannot log users off")
