"""The ``libvirt`` driver: real VMs on one or more libvirt hosts.

Each configured URI is one host (``qemu:///system`` for this machine, ``qemu+ssh://h/system``
for another). A host's name is the URI's host name, or the URI itself for a local one. Connections
are opened on first use and again after one drops, so a host that is down fails only the actions
that need it, not the server's start.

Logged-in users, messages and log-off go through the QEMU guest agent inside the guest
(``guest-get-users``, ``guest-exec`` of ``wall`` and ``loginctl``); libvirt's test driver has no
agent, so on ``test:///`` URIs those capabilities are off. Every ``libvirtError`` becomes a
:class:`DriverError` that carries libvirt's own message.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit
from xml.etree import ElementTree as ET

try:
    import libvirt
    import libvirt_qemu
except ImportError as exc:  # pragma: no cover - depends on the machine
    raise ImportError(
        "the libvirt driver needs libvirt-python (pip install libvirt-python; Debian packages"
        " libvirt-dev and pkg-config to build it)"
    ) from exc

from goldfleet.drivers import domxml
from goldfleet.drivers.base import (
    GUEST_READ_LIMIT,
    RUNNING,
    STOPPED,
    UNDEFINED,
    Capabilities,
    DomainSpec,
    Driver,
    DriverError,
    ExecResult,
    GuestSession,
    Unsupported,
    VmLoad,
)

AGENT_TIMEOUT = 10  # seconds libvirt waits for one guest agent answer
EXEC_TIMEOUT = 30.0  # seconds a guest-exec'd command may run
POLL = 0.2  # seconds between state polls

_UNDEFINE_FLAGS = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
)
_ACTIVE = libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE
_INACTIVE = libvirt.VIR_CONNECT_LIST_DOMAINS_INACTIVE

_setup_lock = threading.Lock()
_setup_done = False


def _process_setup() -> None:
    """Once per process, before the first connection: an event loop (the embedded QEMU driver
    and remote keep-alives need one) and no libvirt error printing on stderr (errors are raised
    as DriverError instead)."""
    global _setup_done
    with _setup_lock:
        if _setup_done:
            return
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        libvirt.virEventRegisterDefaultImpl()

        def loop() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=loop, name="libvirt-events", daemon=True).start()
        _setup_done = True


def host_name(uri: str) -> str:
    """``qemu+ssh://root@h1/system`` → ``h1``; ``qemu:///system`` → ``qemu:///system``."""
    return urlsplit(uri).hostname or uri


def _has_agent(uri: str) -> bool:
    """Only QEMU runs a guest agent channel; the test driver (and others) answer nothing."""
    return urlsplit(uri).scheme.split("+", 1)[0] == "qemu"


def _filter_in(xml: str) -> str | None:
    """The filter on a domain's first interface, if any."""
    ref = ET.fromstring(xml).find("./devices/interface/filterref")
    return None if ref is None else ref.get("filter")


def _message(exc: libvirt.libvirtError) -> str:
    return exc.get_error_message() or str(exc)


@contextmanager
def _errors(what: str) -> Iterator[None]:
    """libvirtError → DriverError naming the action, with libvirt's own words."""
    try:
        yield
    except libvirt.libvirtError as exc:
        raise DriverError(f"{what}: {_message(exc)}") from exc


class _Host:
    """One libvirt connection, opened lazily and again after it drops."""

    def __init__(self, uri: str, domain_type: str | None = None) -> None:
        self.uri = uri
        self.name = host_name(uri)
        self.domain_type = domain_type
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()
        self._guest: tuple[str, str] | None = None

    def conn(self) -> libvirt.virConnect:
        with self._lock:
            if self._conn is not None:
                try:
                    if self._conn.isAlive():
                        return self._conn
                except libvirt.libvirtError:
                    pass
                self.close_locked()
            _process_setup()
            where = self.name if self.name == self.uri else f"{self.name} ({self.uri})"
            with _errors(f"cannot connect to libvirt host {where}"):
                self._conn = libvirt.open(self.uri)
            return self._conn

    def close_locked(self) -> None:
        if self._conn is not None:
            with suppress(libvirt.libvirtError):
                self._conn.close()
            self._conn = None

    def close(self) -> None:
        with self._lock:
            self.close_locked()

    def guest(self) -> tuple[str, str]:
        """(domain type, arch) for new VMs: KVM where the host has it, else QEMU's TCG (or
        whatever the host offers for its own architecture)."""
        if self._guest is None:
            with _errors(f"cannot read the capabilities of libvirt host {self.name}"):
                caps = ET.fromstring(self.conn().getCapabilities())
            host_arch = caps.findtext("host/cpu/arch") or "x86_64"
            offered: dict[str, list[str]] = {}
            for guest in caps.findall("guest"):
                if guest.findtext("os_type") != "hvm":
                    continue
                arch = guest.find("arch")
                if arch is None:
                    continue
                types = [d.get("type", "") for d in arch.findall("domain")]
                offered.setdefault(arch.get("name", ""), []).extend(types)
            types = offered.get(host_arch) or next(iter(offered.values()), [])
            if self.domain_type is not None and self.domain_type not in types:
                raise DriverError(
                    f"libvirt host {self.name} cannot run {self.domain_type} guests (it offers"
                    f" {', '.join(types) or 'none'})"
                )
            for preferred in (self.domain_type, "kvm", "qemu"):
                if preferred in types:
                    self._guest = (preferred, host_arch)
                    break
            else:
                if not types:
                    raise DriverError(f"libvirt host {self.name} offers no hvm guests")
                self._guest = (types[0], host_arch)
        return self._guest

    def lookup(self, name: str) -> libvirt.virDomain | None:
        try:
            return self.conn().lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise DriverError(
                f"cannot look up VM {name} on libvirt host {self.name}: {_message(exc)}"
            ) from exc

    def states(self) -> dict[str, str]:
        with _errors(f"cannot list the VMs of libvirt host {self.name}"):
            conn = self.conn()
            running = {d.name(): RUNNING for d in conn.listAllDomains(_ACTIVE)}
            stopped = {d.name(): STOPPED for d in conn.listAllDomains(_INACTIVE)}
        return {**stopped, **running}


def _is_active(dom: libvirt.virDomain) -> bool:
    state, _reason = dom.state()
    return state not in (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_CRASHED)


class LibvirtDriver(Driver):
    name = "libvirt"

    def __init__(self, *, uris: Sequence[str], domain_type: str | None = None) -> None:
        """``domain_type`` forces the accelerator (``kvm``, or ``qemu`` for TCG); by default
        each host runs KVM where it offers it and TCG otherwise."""
        if not uris:
            raise DriverError("the libvirt driver needs at least one URI in libvirt_uris")
        self._hosts: dict[str, _Host] = {}
        for uri in uris:
            host = _Host(uri, domain_type)
            if host.name in self._hosts:
                raise DriverError(
                    f"libvirt URIs {self._hosts[host.name].uri} and {uri} name the same host"
                    f" {host.name}; give each host once"
                )
            self._hosts[host.name] = host
        agent = all(_has_agent(uri) for uri in uris)
        self.capabilities = Capabilities(
            sessions=agent,
            messages=agent,
            logoff=agent,
            migrate=len(self._hosts) > 1,
            guest_agent=agent,
            nwfilter=agent,
        )
        self._where: dict[str, str] = {}  # VM name → host name, a cache checked on use
        self._where_lock = threading.Lock()

    def close(self) -> None:
        """Close every connection (they reopen on the next use)."""
        for host in self._hosts.values():
            host.close()

    # --- finding VMs ----------------------------------------------------------------------

    def hosts(self) -> list[str]:
        return list(self._hosts)

    def _host(self, name: str) -> _Host:
        try:
            return self._hosts[name]
        except KeyError:
            raise DriverError(
                f"host {name} is not one of the libvirt hosts ({', '.join(self._hosts)});"
                " add its URI to libvirt_uris"
            ) from None

    def _find(self, name: str) -> tuple[_Host, libvirt.virDomain] | None:
        """The host and domain of a VM, trying its last known host first. A host that cannot
        be asked fails the search only when no other host has the VM: then nobody can tell
        whether it exists."""
        cached = self._where.get(name)
        order = list(self._hosts.values())
        if cached in self._hosts:
            order.sort(key=lambda h: h.name != cached)
        unreachable: list[DriverError] = []
        for host in order:
            try:
                dom = host.lookup(name)
            except DriverError as exc:
                unreachable.append(exc)
                continue
            if dom is not None:
                with self._where_lock:
                    self._where[name] = host.name
                return host, dom
        if unreachable:
            raise unreachable[0]
        with self._where_lock:
            self._where.pop(name, None)
        return None

    def _get(self, name: str) -> tuple[_Host, libvirt.virDomain]:
        found = self._find(name)
        if found is None:
            raise DriverError(
                f"VM {name} is not defined on any libvirt host ({', '.join(self._hosts)})"
            )
        return found

    # --- definition -----------------------------------------------------------------------

    def _placement(self) -> _Host:
        """The reachable host with the fewest VMs defined (configuration order breaks ties)."""
        loads: list[tuple[int, int, _Host]] = []
        errors: list[str] = []
        for i, host in enumerate(self._hosts.values()):
            try:
                loads.append((len(host.states()), i, host))
            except DriverError as exc:
                errors.append(exc.message)
        if not loads:
            raise DriverError("no libvirt host can take a VM: " + "; ".join(errors))
        return min(loads, key=lambda t: t[:2])[2]

    def define(self, *, spec: DomainSpec, host: str | None = None) -> str:
        found = self._find(spec.name)
        if found is not None:
            target, dom = found
            if host is not None and host != target.name:
                raise DriverError(
                    f"VM {spec.name} is defined on host {target.name}, not {host};"
                    " migrate it there first"
                )
            with _errors(f"cannot read VM {spec.name} on libvirt host {target.name}"):
                uuid = dom.UUIDString()
                kept = _filter_in(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        else:
            target = self._host(host) if host is not None else self._placement()
            uuid, kept = None, None
        domain_type, arch = target.guest()
        try:
            xml = domxml.from_spec(
                spec, domain_type=domain_type, arch=arch, uuid=uuid, kept_filter=kept
            ).to_xml()
        except ValueError as exc:
            raise DriverError(f"cannot define VM {spec.name}: {exc}") from exc
        with _errors(f"libvirt host {target.name} refused the definition of VM {spec.name}"):
            target.conn().defineXML(xml)
        with self._where_lock:
            self._where[spec.name] = target.name
        return target.name

    def undefine(self, *, name: str) -> None:
        found = self._find(name)
        if found is None:
            return
        host, dom = found
        with _errors(f"cannot undefine VM {name} on libvirt host {host.name}"):
            if _is_active(dom):
                raise DriverError(f"VM {name} is running; shut it down before undefining it")
            dom.undefineFlags(_UNDEFINE_FLAGS)
        with self._where_lock:
            self._where.pop(name, None)

    # --- power ----------------------------------------------------------------------------

    def start(self, *, name: str) -> None:
        host, dom = self._get(name)
        with _errors(f"cannot start VM {name} on libvirt host {host.name}"):
            if _is_active(dom):
                return
            dom.create()

    def shutdown(self, *, name: str, timeout: float = 60.0) -> None:
        host, dom = self._get(name)
        with _errors(f"cannot shut down VM {name} on libvirt host {host.name}"):
            if not _is_active(dom):
                return
            try:
                dom.shutdown()
            except libvirt.libvirtError:
                if not _is_active(dom):  # it stopped on its own meanwhile
                    return
                # the guest cannot be asked (no ACPI, no agent): fall through to force
                timeout = 0
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if not _is_active(dom):
                    return
                time.sleep(min(POLL, max(0.0, deadline - time.monotonic())))
            if not _is_active(dom):
                return
            try:
                dom.destroy()
            except libvirt.libvirtError:
                if _is_active(dom):
                    raise

    def state(self, *, name: str) -> str:
        found = self._find(name)
        if found is None:
            return UNDEFINED
        host, dom = found
        with _errors(f"cannot read the state of VM {name} on libvirt host {host.name}"):
            return RUNNING if _is_active(dom) else STOPPED

    def states(self) -> dict[str, str]:
        result: dict[str, str] = {}
        where: dict[str, str] = {}
        for host in self._hosts.values():
            found = host.states()
            result.update(found)
            where.update(dict.fromkeys(found, host.name))
        with self._where_lock:
            self._where = where
        return result

    def host_of(self, *, name: str) -> str | None:
        found = self._find(name)
        return None if found is None else found[0].name

    # --- migration ------------------------------------------------------------------------

    def migrate(self, *, name: str, host: str) -> None:
        if not self.capabilities.migrate:
            raise Unsupported(
                f"the libvirt driver has one host ({', '.join(self._hosts)}); add another URI to"
                " libvirt_uris to migrate VMs"
            )
        dst = self._host(host)
        src, dom = self._get(name)
        if src is dst:
            return
        with _errors(f"cannot migrate VM {name} from libvirt host {src.name} to {dst.name}"):
            if _is_active(dom):
                # peer to peer: the source's libvirt connects to the peer's URI itself
                flags = (
                    libvirt.VIR_MIGRATE_LIVE
                    | libvirt.VIR_MIGRATE_PEER2PEER
                    | libvirt.VIR_MIGRATE_PERSIST_DEST
                    | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
                )
                dom.migrateToURI3(dst.uri, {}, flags)
            else:
                self._move_stopped(name, dom, src, dst)
        with self._where_lock:
            self._where[name] = dst.name

    # --- hosts, for rolling host updates -----------------------------------------------------

    def vms_on(self, *, host: str) -> list[VmLoad]:
        h = self._host(host)
        with _errors(f"cannot list the VMs of libvirt host {h.name}"):
            out = []
            for dom in h.conn().listAllDomains(0):
                _state, max_kib, _mem, vcpus, _cpu = dom.info()
                out.append(
                    VmLoad(
                        dom.name(), RUNNING if _is_active(dom) else STOPPED, max_kib // 1024, vcpus
                    )
                )
        return sorted(out, key=lambda v: v.name)

    def host_up(self, *, host: str) -> bool:
        h = self._host(host)
        try:
            h.conn().getLibVersion()
            return True
        except (DriverError, libvirt.libvirtError):
            return False

    def _move_stopped(self, name: str, dom: libvirt.virDomain, src: _Host, dst: _Host) -> None:
        """A stopped VM moves as its definition: defined on the target, then undefined on the
        source (the volumes are on storage both hosts see, at the same paths)."""
        xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE)
        if dst.lookup(name) is not None:
            raise DriverError(f"VM {name} is already defined on host {dst.name}")
        new = dst.conn().defineXML(xml)
        try:
            dom.undefineFlags(_UNDEFINE_FLAGS)
        except libvirt.libvirtError:
            new.undefineFlags(_UNDEFINE_FLAGS)  # back as it was: defined on the source only
            raise

    # --- guest agent ----------------------------------------------------------------------

    def _agent_host(self, name: str, what: str) -> tuple[_Host, libvirt.virDomain]:
        host, dom = self._get(name)
        if not _has_agent(host.uri):
            raise Unsupported(f"libvirt host {host.name} has no guest agent channel to {what}")
        return host, dom

    def _agent(self, host: _Host, dom: libvirt.virDomain, command: dict[str, Any]) -> Any:
        name = dom.name()
        try:
            answer = libvirt_qemu.qemuAgentCommand(dom, json.dumps(command), AGENT_TIMEOUT, 0)
        except libvirt.libvirtError as exc:
            raise DriverError(
                f"the guest agent of VM {name} on host {host.name} did not answer"
                f" {command['execute']}: {_message(exc)} (is qemu-guest-agent running in it?)"
            ) from exc
        try:
            return json.loads(answer)["return"]
        except (ValueError, KeyError, TypeError) as exc:
            raise DriverError(
                f"the guest agent of VM {name} answered {command['execute']} with {answer!r}"
            ) from exc

    def _run(
        self,
        name: str,
        path: str,
        args: list[str],
        *,
        stdin: bytes | None,
        what: str,
        timeout: float = EXEC_TIMEOUT,
    ) -> dict[str, Any]:
        """Run a program in the guest through the agent; its ``guest-exec-status`` answer."""
        host, dom = self._agent_host(name, what)
        with _errors(f"cannot {what} on VM {name}"):
            if not _is_active(dom):
                raise DriverError(f"VM {name} is not running; cannot {what}")
        arguments: dict[str, Any] = {"path": path, "arg": args, "capture-output": True}
        if stdin is not None:
            arguments["input-data"] = base64.b64encode(stdin).decode()
        pid = self._agent(host, dom, {"execute": "guest-exec", "arguments": arguments})["pid"]
        deadline = time.monotonic() + timeout
        while True:
            status = self._agent(
                host, dom, {"execute": "guest-exec-status", "arguments": {"pid": pid}}
            )
            if status.get("exited"):
                return status
            if time.monotonic() > deadline:
                raise DriverError(
                    f"{path} in VM {name} did not finish within {timeout:.0f} s; cannot {what}"
                )
            time.sleep(POLL)

    def _exec(
        self, name: str, path: str, args: list[str], *, stdin: bytes | None, what: str
    ) -> None:
        """Run a program in the guest through the agent and wait for it to exit with 0."""
        status = self._run(name, path, args, stdin=stdin, what=what)
        if status.get("exitcode") != 0:
            how = (
                f"was killed by signal {status['signal']}"
                if "signal" in status
                else f"failed with exit code {status.get('exitcode')}"
            )
            err = base64.b64decode(status.get("err-data", "")).decode(errors="replace").strip()
            raise DriverError(
                f"{path} in VM {name} {how}; cannot {what}" + (f": {err}" if err else "")
            )

    def sessions(self, *, names: Sequence[str]) -> dict[str, list[GuestSession]]:
        if not self.capabilities.sessions:
            raise Unsupported("libvirt's test driver has no guest agent to list sessions")
        result: dict[str, list[GuestSession]] = {}
        for name in names:
            host, dom = self._agent_host(name, "list sessions")
            with _errors(f"cannot read the state of VM {name} on libvirt host {host.name}"):
                if not _is_active(dom):
                    continue
            users = self._agent(host, dom, {"execute": "guest-get-users"})
            found = [
                GuestSession(
                    user=str(u["user"]),
                    since=(
                        datetime.fromtimestamp(float(u["login-time"]), tz=UTC)
                        if "login-time" in u
                        else None
                    ),
                )
                for u in users
            ]
            if found:
                result[name] = found
        return result

    def send_message(self, *, name: str, text: str) -> None:
        if not self.capabilities.messages:
            raise Unsupported("libvirt's test driver has no guest agent to send messages")
        # through standard input: util-linux wall reads a *file* when its argument names one
        self._exec(name, "/usr/bin/wall", [], stdin=text.encode(), what="send a message")

    def logoff(self, *, name: str, user: str) -> None:
        if not self.capabilities.logoff:
            raise Unsupported("libvirt's test driver has no guest agent to log users off")
        if not user or any(c.isspace() or not c.isprintable() for c in user):
            raise DriverError(f"cannot log off user {user!r} on VM {name}: not a user name")
        self._exec(
            name,
            "/usr/bin/loginctl",
            ["terminate-user", "--", user],
            stdin=None,
            what=f"log off user {user}",
        )

    # --- files and programs in the guest ------------------------------------------------------

    def _file_handle(self, name: str, path: str, mode: str, what: str) -> tuple[Any, Any, int]:
        host, dom = self._agent_host(name, what)
        with _errors(f"cannot {what} on VM {name}"):
            if not _is_active(dom):
                raise DriverError(f"VM {name} is not running; cannot {what}")
        handle = self._agent(
            host, dom, {"execute": "guest-file-open", "arguments": {"path": path, "mode": mode}}
        )
        return host, dom, int(handle)

    def _close(self, host: _Host, dom: libvirt.virDomain, handle: int) -> None:
        with suppress(DriverError):
            self._agent(host, dom, {"execute": "guest-file-close", "arguments": {"handle": handle}})

    def guest_read(self, *, name: str, path: str, limit: int = GUEST_READ_LIMIT) -> bytes | None:
        if not self.capabilities.guest_agent:
            raise Unsupported("libvirt's test driver has no guest agent to read files")
        what = f"read {path}"
        # a missing file is an answer, not a silent agent: ask first with a program that
        # cannot fail otherwise (test -e), so that a failing open means a silent agent
        exists = self._run(
            name, "/bin/sh", ["-c", 'test -e "$1"', "sh", path], stdin=None, what=what
        )
        if exists.get("exitcode") != 0:
            return None
        host, dom, handle = self._file_handle(name, path, "r", what)
        data = b""
        try:
            while len(data) < limit:
                part = self._agent(
                    host,
                    dom,
                    {
                        "execute": "guest-file-read",
                        "arguments": {"handle": handle, "count": min(limit - len(data), 48 * 1024)},
                    },
                )
                data += base64.b64decode(part.get("buf-b64", ""))
                if part.get("eof") or not part.get("count"):
                    break
        finally:
            self._close(host, dom, handle)
        return data[:limit]

    def guest_write(self, *, name: str, path: str, data: bytes, mode: int = 0o644) -> None:
        if not self.capabilities.guest_agent:
            raise Unsupported("libvirt's test driver has no guest agent to write files")
        what = f"write {path}"
        folder = path.rsplit("/", 1)[0] or "/"
        self._exec(name, "/bin/mkdir", ["-p", folder], stdin=None, what=what)
        temporary = f"{path}.goldfleet-new"
        host, dom, handle = self._file_handle(name, temporary, "w", what)
        try:
            for start in range(0, max(len(data), 1), 48 * 1024):
                chunk = data[start : start + 48 * 1024]
                self._agent(
                    host,
                    dom,
                    {
                        "execute": "guest-file-write",
                        "arguments": {
                            "handle": handle,
                            "buf-b64": base64.b64encode(chunk).decode(),
                        },
                    },
                )
            self._agent(host, dom, {"execute": "guest-file-flush", "arguments": {"handle": handle}})
        finally:
            self._close(host, dom, handle)
        self._exec(name, "/bin/chmod", [f"{mode:o}", temporary], stdin=None, what=what)
        self._exec(name, "/bin/mv", ["-f", temporary, path], stdin=None, what=what)

    def guest_exec(self, *, name: str, argv: Sequence[str], timeout: float = 30.0) -> ExecResult:
        if not self.capabilities.guest_agent:
            raise Unsupported("libvirt's test driver has no guest agent to run programs")
        if not argv:
            raise DriverError(f"cannot run nothing in VM {name}")
        status = self._run(
            name, argv[0], list(argv[1:]), stdin=None, what=f"run {argv[0]}", timeout=timeout
        )
        out = base64.b64decode(status.get("out-data", "")).decode(errors="replace")
        err = base64.b64decode(status.get("err-data", "")).decode(errors="replace")
        code = status.get("exitcode")
        if code is None:  # killed by a signal: as a shell reports it
            code = 128 + int(status.get("signal", 0))
        return ExecResult(int(code), out, err)

    # --- network filters (nwfilter) -------------------------------------------------------

    def define_filter(self, *, filter_name: str, xml: str) -> None:
        if not self.capabilities.nwfilter:
            raise Unsupported("libvirt's test driver has no nwfilter driver")
        if ET.fromstring(xml).get("name") != filter_name:
            raise DriverError(f"the XML of filter {filter_name} names another filter")
        for host in self._hosts.values():
            with _errors(f"libvirt host {host.name} refused network filter {filter_name}"):
                host.conn().nwfilterDefineXML(xml)

    def set_filter(self, *, name: str, filter_name: str) -> None:
        if not self.capabilities.nwfilter:
            raise Unsupported("libvirt's test driver has no nwfilter driver")
        host, dom = self._get(name)
        with _errors(f"cannot switch the network filter of VM {name} on host {host.name}"):
            live = _is_active(dom)
            flags = libvirt.VIR_DOMAIN_XML_INACTIVE if not live else 0
            iface = ET.fromstring(dom.XMLDesc(flags)).find("./devices/interface")
            if iface is None:
                raise DriverError(
                    f"VM {name} has no network interface to filter (set network in the config)"
                )
            ref = iface.find("filterref")
            if ref is None:
                ref = ET.SubElement(iface, "filterref")
            for child in list(ref):
                ref.remove(child)
            ref.attrib.clear()
            ref.set("filter", filter_name)
            affect = libvirt.VIR_DOMAIN_AFFECT_CONFIG
            if live:
                affect |= libvirt.VIR_DOMAIN_AFFECT_LIVE
            dom.updateDeviceFlags(ET.tostring(iface, encoding="unicode"), affect)

    def filter_of(self, *, name: str) -> str | None:
        if not self.capabilities.nwfilter:
            raise Unsupported("libvirt's test driver has no nwfilter driver")
        host, dom = self._get(name)
        with _errors(f"cannot read VM {name} on host {host.name}"):
            return _filter_in(dom.XMLDesc(0))
