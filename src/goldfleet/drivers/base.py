"""The driver seam: what goldfleet asks of a hypervisor, and nothing more.

Keyword-only arguments, frozen dataclasses for specs, capabilities declared as a dataclass. A
driver raises :class:`DriverError` with the hypervisor's own words when an action fails.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from goldfleet.errors import GoldfleetError


class DriverError(GoldfleetError):
    status_code = 502


@dataclass(frozen=True, slots=True)
class Capabilities:
    sessions: bool = False
    migrate: bool = False


@dataclass(frozen=True, slots=True)
class DiskSpec:
    role: str  # system | temp | data
    path: str
    backing_format: str | None = None  # declared, never probed


@dataclass(frozen=True, slots=True)
class DomainSpec:
    name: str
    disks: tuple[DiskSpec, ...]
    memory_mib: int = 2048
    vcpus: int = 2


class Driver(ABC):
    name: str
    capabilities: Capabilities

    @abstractmethod
    def define(self, *, spec: DomainSpec) -> None:
        """Define (or redefine) a VM with its disks; idempotent."""

    @abstractmethod
    def undefine(self, *, name: str) -> None:
        """Remove a stopped VM's definition; unknown names are ignored."""

    @abstractmethod
    def start(self, *, name: str) -> None: ...

    @abstractmethod
    def shutdown(self, *, name: str, timeout: float = 60.0) -> None:
        """Graceful shutdown, forced off after ``timeout`` seconds."""

    @abstractmethod
    def state(self, *, name: str) -> str:
        """``running``, ``stopped`` or ``undefined``."""
