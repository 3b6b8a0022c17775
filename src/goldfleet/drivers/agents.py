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

import subprocess
from abc import ABC, abstractmethod
from collections.abc import Sequence
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

    @abstractmethod
    def apply(self, debs: Sequence[Path]) -> None:
        """Install exactly these ``.deb`` files on the host (dpkg -i); raises
        :class:`HostUnreachable` when the host cannot be reached, :class:`ApplyFailed` when dpkg
        refuses."""


class ApplyFailed(GoldfleetError):
    """dpkg refused the packages on the host; its own words are in the message."""

    status_code = 502


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

    def apply(self, debs: Sequence[Path]) -> None:
        """``dpkg --root=ROOT -i DEBS``: dpkg's own database in the host root records them."""
        if not (self.root / STATUS).is_file():
            raise HostUnreachable(
                f"host {self.host}: no dpkg database at {self.root / STATUS}: the host is"
                " unreachable"
            )
        if not debs:
            return
        (self.root / "var" / "log").mkdir(parents=True, exist_ok=True)
        argv = [
            "dpkg",
            f"--root={self.root}",
            "--force-not-root",
            "--force-script-chrootless",
            f"--log={self.root / 'var' / 'log' / 'dpkg.log'}",
            "-i",
            *map(str, debs),
        ]
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ApplyFailed(f"host {self.host}: dpkg could not run: {exc}") from None
        if out.returncode != 0:
            raise ApplyFailed(
                f"host {self.host}: dpkg -i failed (exit {out.returncode}):"
                f" {(out.stderr or out.stdout).strip()[-800:]}"
            )


def make_agent(kind: str, host: str, roots: Path) -> HostAgent:
    if kind == "local-root":
        return LocalRootAgent(host, roots / host)
    raise HostUnreachable(
        f"host agent {kind!r} is not available: only 'local-root' is built (docs/hosts.md)"
    )
