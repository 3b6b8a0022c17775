"""The host-agent seam: what goldfleet asks of a hypervisor host about its software (docs/hosts.md,
"What a host has installed").

Two agents:

``local-root``, a host whose root file system is a folder on this machine (the sim driver's
hosts, and the tests): its installed packages are read from dpkg's own database,
``ROOT/var/lib/dpkg/status``, exactly as ``dpkg --root=ROOT`` keeps it; the kernel it last booted
is the one line of ``ROOT/var/lib/goldfleet/booted-kernel`` (what ``uname -r`` said at boot;
absent: unknown).

``ssh``, a host reached with the OpenSSH client, key-based, its host key checked against
goldfleet's own known_hosts: ``dpkg-query -W -f '${Package}\\t${Version}\\t${db:Status-Status}\\n'``
and ``uname -r`` run on the host; an apply copies the ``.deb``s into a temporary folder on the
host (``cat >`` over ssh), checks their sha256 there, then runs ``dpkg -i``. With ``ssh_roots``
set, the host's root is the folder ``ssh_roots/HOST`` on it (``dpkg --root``, as local-root: the
tests' hosts).

Host-level tasks a rolling update needs when its driver cannot do them (the libvirt driver):
:meth:`HostAgent.boot_id`, :meth:`HostAgent.reboot` and :meth:`HostAgent.restart_toolstack`.
The ssh agent reads ``/proc/sys/kernel/random/boot_id`` and runs the configured
``host_reboot_command`` / ``host_toolstack_command`` on the host (with ``ssh_roots``: the root's
``proc/sys/kernel/random/boot_id`` when it has one, and the commands run in the root folder);
the local-root agent cannot (its host is a folder on this machine): :class:`Unsupported`.
"""

from __future__ import annotations

import contextlib
import hashlib
import shlex
import subprocess
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

from goldfleet.config import Settings
from goldfleet.domain.hostupdates import parse_dpkg_status
from goldfleet.drivers.base import Unsupported
from goldfleet.errors import GoldfleetError

STATUS = Path("var/lib/dpkg/status")
BOOTED_KERNEL = Path("var/lib/goldfleet/booted-kernel")
BOOT_ID = Path("proc/sys/kernel/random/boot_id")
MAX_STATUS = 64 << 20  # bytes of a dpkg status database goldfleet reads


class HostUnreachable(GoldfleetError):
    """The host's agent cannot be reached or read; the message says what is missing."""

    status_code = 502


class HostAgent(ABC):
    host: str
    kind: str

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

    def boot_id(self) -> str:
        """The host's boot id: another one after every boot (raises :class:`HostUnreachable`
        when the host does not answer)."""
        raise Unsupported(f"the {self.kind} host agent cannot read the boot id of host {self.host}")

    def back_from_reboot(self, boot_id: str) -> bool:
        """Whether the host answers with a boot id other than ``boot_id`` (read before its
        reboot): not answering, or answering with the same one, is not back yet."""
        try:
            return self.boot_id() != boot_id
        except HostUnreachable:
            return False

    def reboot(self) -> None:
        """Run the host's reboot command (``host_reboot_command``); the caller reads
        :meth:`boot_id` before and waits for another one."""
        raise Unsupported(f"the {self.kind} host agent cannot reboot host {self.host}")

    def restart_toolstack(self) -> None:
        """Run the host's toolstack restart command (``host_toolstack_command``); raises
        :class:`HostTaskFailed` with the command's own words when it fails."""
        raise Unsupported(
            f"the {self.kind} host agent cannot restart the toolstack of host {self.host}"
        )


class ApplyFailed(GoldfleetError):
    """dpkg refused the packages on the host; its own words are in the message."""

    status_code = 502


class HostTaskFailed(GoldfleetError):
    """A host-level command (reboot, toolstack restart) ran and failed; its own words are in
    the message."""

    status_code = 502


class LocalRootAgent(HostAgent):
    """Its host is a folder on this machine: it cannot reboot it or restart its toolstack (that
    would be this machine's); the sim driver does those for its hosts."""

    kind = "local-root"

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


# --- ssh ---------------------------------------------------------------------------------------

QUERY_FORMAT = "${Package}\\t${Version}\\t${db:Status-Status}\\n"
MAX_ERR = 800  # characters of ssh's or dpkg's own words kept in an error
APPLY_TIMEOUT = 600.0
_SHA_DIFFERS = 90  # exit codes of the apply script, told apart from ssh's own 255
_NO_DPKG_DB = 91


def parse_target(target: str, user: str, port: int) -> tuple[str, str, int]:
    """``[user@]address[:port]`` (an IPv6 address in brackets) → (user, address, port)."""
    if "@" in target:
        user, target = target.rsplit("@", 1)
    address = target
    if target.startswith("["):
        address, _, rest = target[1:].partition("]")
        if rest.startswith(":"):
            port = int(rest[1:])
    elif target.count(":") == 1:
        address, p = target.split(":")
        port = int(p)
    if not address or address.startswith("-") or not user or user.startswith("-"):
        raise HostUnreachable(f"ssh target {target!r} is not [user@]address[:port]")
    if not 0 < port < 65536:
        raise HostUnreachable(f"ssh target {target!r}: port {port} is out of range")
    return user, address, port


class SshAgent(HostAgent):
    """A host reached by ``ssh`` (the OpenSSH client), key-based, never asking for anything."""

    kind = "ssh"

    def __init__(
        self,
        host: str,
        *,
        address: str,
        user: str,
        port: int,
        key: Path,
        known_hosts: Path,
        root: str | None = None,
        connect_timeout: float = 10.0,
        timeout: float = 120.0,
        reboot_command: str = "systemctl reboot",
        toolstack_command: str = "systemctl restart libvirtd",
    ) -> None:
        self.host = host
        self.address = address
        self.user = user
        self.port = port
        self.key = key
        self.known_hosts = known_hosts
        self.root = root
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.reboot_command = reboot_command
        self.toolstack_command = toolstack_command

    def argv(self, command: str) -> list[str]:
        """The ssh command line: no user configuration, no agent, no password, no prompt; the
        host key must already be in goldfleet's known_hosts under the host's goldfleet name."""
        return [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(self.key),
            "-p",
            str(self.port),
            "-l",
            self.user,
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-o",
            "PasswordAuthentication=no",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            f"HostKeyAlias={self.host}",
            "-o",
            "CheckHostIP=no",
            "-o",
            f"ConnectTimeout={max(1, round(self.connect_timeout))}",
            "-o",
            "ServerAliveInterval=15",
            "-o",
            "ServerAliveCountMax=3",
            "-o",
            "LogLevel=ERROR",
            "--",
            self.address,
            command,
        ]

    def _run(
        self, command: str, *, cap: int, timeout: float, stdin: Path | None = None
    ) -> tuple[int, bytes, str]:
        """(exit status, at most ``cap`` bytes of output, the end of stderr); output beyond the
        cap, a timeout or ssh itself failing to connect raise :class:`HostUnreachable`."""
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            src = stdin.open("rb") if stdin is not None else subprocess.DEVNULL
            try:
                rc = subprocess.run(
                    self.argv(command), stdin=src, stdout=out, stderr=err, timeout=timeout
                ).returncode
            except subprocess.TimeoutExpired:
                raise HostUnreachable(
                    f"host {self.host}: ssh {self.user}@{self.address}:{self.port} gave no"
                    f" answer within {timeout:g} s"
                ) from None
            except OSError as exc:
                raise HostUnreachable(f"host {self.host}: ssh could not run: {exc}") from None
            finally:
                if stdin is not None:
                    src.close()  # type: ignore[union-attr]
            err.seek(0, 2)
            err.seek(max(0, err.tell() - 4 * MAX_ERR))
            words = " ".join(err.read().decode("utf-8", errors="replace").split())[-MAX_ERR:]
            if rc == 255:
                raise HostUnreachable(
                    f"host {self.host}: ssh {self.user}@{self.address}:{self.port} failed:"
                    f" {words or 'no message'}"
                )
            out.seek(0, 2)
            if out.tell() > cap:
                raise HostUnreachable(
                    f"host {self.host}: the answer to {command.split()[0]!r} is larger than"
                    f" {cap} bytes"
                )
            out.seek(0)
            return rc, out.read(), words

    def _dpkg_opts(self) -> str:
        if self.root is None:
            return ""
        return f"--admindir={shlex.quote(self.root + '/var/lib/dpkg')} "

    def installed(self) -> dict[str, str]:
        command = f"dpkg-query {self._dpkg_opts()}-W -f {shlex.quote(QUERY_FORMAT)}"
        rc, out, words = self._run(command, cap=MAX_STATUS, timeout=self.timeout)
        if rc != 0:
            raise HostUnreachable(
                f"host {self.host}: dpkg-query failed (exit {rc}): {words or 'no message'}"
            )
        installed = {}
        for line in out.decode("utf-8", errors="replace").splitlines():
            parts = line.split("\t")
            if len(parts) == 3 and parts[0] and parts[2] == "installed":
                installed[parts[0]] = parts[1]
        return installed

    def booted_kernel(self) -> str | None:
        """``uname -r`` on the host; with a root folder, that root's
        ``var/lib/goldfleet/booted-kernel`` when it has one (as local-root)."""
        command = "uname -r"
        if self.root is not None:
            f = shlex.quote(f"{self.root}/{BOOTED_KERNEL}")
            command = f"if [ -f {f} ]; then head -n 1 {f}; else uname -r; fi"
        rc, out, words = self._run(command, cap=4096, timeout=self.timeout)
        if rc != 0:
            raise HostUnreachable(
                f"host {self.host}: {command.split()[0]} failed (exit {rc}): {words}"
            )
        text = out.decode("utf-8", errors="replace").strip()
        return text.splitlines()[0][:100] if text else None

    def boot_id(self) -> str:
        """``/proc/sys/kernel/random/boot_id`` on the host; with a root folder, that root's
        ``proc/sys/kernel/random/boot_id`` when it has one (the tests' hosts)."""
        command = f"cat /{BOOT_ID}"
        if self.root is not None:
            f = shlex.quote(f"{self.root}/{BOOT_ID}")
            command = f"if [ -f {f} ]; then head -n 1 {f}; else cat /{BOOT_ID}; fi"
        rc, out, words = self._run(command, cap=4096, timeout=self.timeout)
        text = out.decode("utf-8", errors="replace").strip()
        if rc != 0 or not text:
            raise HostUnreachable(
                f"host {self.host}: reading its boot id failed (exit {rc}): {words or 'empty'}"
            )
        return text.splitlines()[0][:100]

    def _command(self, command: str) -> str:
        """A configured command as the host runs it: in the root folder when there is one."""
        if self.root is None:
            return command
        return f"cd {shlex.quote(self.root)} && {command}"

    def _task(self, what: str, command: str) -> None:
        rc, out, words = self._run(self._command(command), cap=1 << 20, timeout=self.timeout)
        if rc != 0:
            said = words or out.decode("utf-8", errors="replace").strip()[-MAX_ERR:]
            raise HostTaskFailed(
                f"host {self.host}: the {what} command {command!r} failed (exit {rc}):"
                f" {said or 'no message'}"
            )

    def reboot(self) -> None:
        """Run ``host_reboot_command``. The session being cut (ssh's exit 255) or giving no
        answer is what a reboot does to it: not an error here: the caller waits for another
        boot id and pauses when none comes within ``host_reboot_timeout``. The command
        exiting non-zero on its own is :class:`HostTaskFailed`."""
        with contextlib.suppress(HostUnreachable):
            self._task("reboot", self.reboot_command)

    def restart_toolstack(self) -> None:
        """Run ``host_toolstack_command`` (it returns once the toolstack is restarted, as
        ``systemctl restart`` does)."""
        self._task("toolstack restart", self.toolstack_command)

    def apply(self, debs: Sequence[Path]) -> None:
        """Copy each ``.deb`` into a fresh ``mktemp -d`` folder on the host (``cat >``, named
        by position: no file name of ours reaches the remote shell), check each one's sha256
        there, then ``dpkg -i`` them in one run; the folder is removed whatever happens."""
        status = None if self.root is None else f"{self.root}/{STATUS}"
        check = f"test -f {shlex.quote(status)} || exit {_NO_DPKG_DB}; " if status else ""
        rc, out, words = self._run(
            f"{check}mktemp -d /tmp/goldfleet-apply.XXXXXXXX",
            cap=4096,
            timeout=self.timeout,
        )
        if rc == _NO_DPKG_DB:
            raise HostUnreachable(
                f"host {self.host}: no dpkg database at {status}: the host is unreachable"
            )
        if rc != 0:
            raise ApplyFailed(f"host {self.host}: mktemp failed (exit {rc}): {words}")
        tmp = out.decode("utf-8", errors="replace").strip()
        if not tmp.startswith("/tmp/goldfleet-apply.") or "\n" in tmp:
            raise ApplyFailed(f"host {self.host}: mktemp answered {tmp[:100]!r}")
        qtmp = shlex.quote(tmp)
        try:
            if not debs:
                return
            # hashed here before the copy: the host checks it received exactly these bytes
            sums = [f"{_sha256(deb)}  {i}.deb" for i, deb in enumerate(debs)]
            for i, deb in enumerate(debs):
                name = f"{i}.deb"
                rc, _, words = self._run(
                    f"cat > {qtmp}/{name}", cap=4096, timeout=APPLY_TIMEOUT, stdin=deb
                )
                if rc != 0:
                    raise ApplyFailed(
                        f"host {self.host}: copying {deb.name} failed (exit {rc}): {words}"
                    )
            dpkg = "dpkg -i"
            if self.root is not None:
                r = self.root
                dpkg = (
                    f"dpkg {shlex.quote('--root=' + r)} --force-not-root --force-script-chrootless"
                    f" {shlex.quote('--log=' + r + '/var/log/dpkg.log')} -i"
                )
                dpkg = f"mkdir -p {shlex.quote(r + '/var/log')} && {dpkg}"
            script = (
                f"cd {qtmp} && {{ printf '%s\\n' {' '.join(map(shlex.quote, sums))}"
                f" | sha256sum --check --strict --quiet - || exit {_SHA_DIFFERS}; }}"
                f" && {dpkg} {' '.join(f'{i}.deb' for i in range(len(debs)))}"
            )
            rc, out, words = self._run(script, cap=1 << 20, timeout=APPLY_TIMEOUT)
            if rc == _SHA_DIFFERS:
                raise ApplyFailed(
                    f"host {self.host}: a copied .deb's sha256 differs on the host, nothing was"
                    f" installed: {words}"
                )
            if rc != 0:
                said = words or out.decode("utf-8", errors="replace").strip()[-MAX_ERR:]
                raise ApplyFailed(f"host {self.host}: dpkg -i failed (exit {rc}): {said}")
        finally:
            with contextlib.suppress(HostUnreachable):  # in /tmp: the next boot clears it
                self._run(f"rm -rf {qtmp}", cap=4096, timeout=30)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def make_agent(settings: Settings, host: str) -> HostAgent:
    """The agent of ``settings.host_agent`` for this host (docs/hosts.md)."""
    kind = settings.host_agent
    if kind == "local-root":
        return LocalRootAgent(host, settings.hosts_root / host)
    if kind == "ssh":
        user, address, port = parse_target(
            settings.ssh_hosts.get(host, host), settings.ssh_user, settings.ssh_port
        )
        return SshAgent(
            host,
            address=address,
            user=user,
            port=port,
            key=settings.ssh_key_path,
            known_hosts=settings.ssh_known_hosts_path,
            root=f"{settings.ssh_roots.rstrip('/')}/{host}" if settings.ssh_roots else None,
            connect_timeout=settings.ssh_connect_timeout,
            timeout=settings.ssh_timeout,
            reboot_command=settings.host_reboot_command,
            toolstack_command=settings.host_toolstack_command,
        )
    raise HostUnreachable(
        f"host agent {kind!r} is not available: 'local-root' or 'ssh' (docs/hosts.md)"
    )
