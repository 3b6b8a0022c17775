"""The host-agent seam: what goldfleet asks of a hypervisor host about its software (docs/hosts.md,
"What a host has installed").

Built: ``local-root``, a host whose root file system is a folder on this machine (the sim
driver's hosts, and the tests): its installed packages are read from dpkg's own database,
``ROOT/var/lib/dpkg/status``, exactly as ``dpkg --root=ROOT`` keeps it; the kernel it last booted
is the one line of ``ROOT/var/lib/goldfleet/booted-kernel`` (what ``uname -r`` said at boot;
absent: unknown). Not built yet: ``ssh``, which would run ``dpkg-query -W -f
'${Package}\\t${Version}\\t${db:Status-Status}\\n'`` and ``uname -r`` on the host over a key-based
SSH connection.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from goldfleet.domain.hostupdates import parse_dpkg_status
from goldfleet.errors import GoldfleetError

STATUS = Path("var/lib/dpkg/status")
BOOTED_KERNEL = Path("var/lib/goldfleet/booted-kernel")
MAX_STATUS = 64 << 20  # bytes of a dpkg status database goldfleet reads


class HostUnreachable(GoldfleetError):
    """The host's agent cannot be reached or read; the message says what is missing."""

    status_code = 502


class HostAgent(ABC):
    host: str

    @abstractmethod
    def installed(self) -> dict[str, str]:
        """Installed package → version, as dpkg records it on the host."""

    @abstractmethod
    def booted_kernel(self) -> str | None:
        """The kernel release the host last booted, or None when unknown."""


class LocalRootAgent(HostAgent):
    def __init__(self, host: str, root: Path) -> None:
        self.host = host
        self.root = root

    def installed(self) -> dict[str, str]:
        path = self.root / STATUS
        try:
            if path.stat().st_size > MAX_STATUS:
                raise HostUnreachable(f"host {self.host}: {path} is larger than {MAX_STATUS} bytes")
            text = path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            raise HostUnreachable(
                f"host {self.host}: no dpkg database at {path} (its root folder is"
                f" {self.root}; see docs/hosts.md)"
            ) from None
        except OSError as exc:
            raise HostUnreachable(f"host {self.host}: cannot read {path}: {exc.strerror}") from None
        return parse_dpkg_status(text)

    def booted_kernel(self) -> str | None:
        try:
            text = (self.root / BOOTED_KERNEL).read_text(encoding="utf-8").strip()
        except (FileNotFoundError, UnicodeDecodeError):
            return None
        return text.splitlines()[0][:100] if text else None


def make_agent(kind: str, host: str, roots: Path) -> HostAgent:
    if kind == "local-root":
        return LocalRootAgent(host, roots / host)
    raise HostUnreachable(
        f"host agent {kind!r} is not available: only 'local-root' is built (docs/hosts.md)"
    )
