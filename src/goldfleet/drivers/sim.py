"""The ``sim`` driver: a simulated hypervisor whose state lives in goldfleet's database.

It is a simulator with a documented model, not a mock (docs/concepts.md, "The ``sim``
driver"). The model, in short:

- **Hosts** are the configured names (``sim_hosts``). A new VM is placed on the least-loaded
  host (fewest defined VMs, ties to the first configured); a redefined VM keeps its host. The
  VMs per host are counted in the database at most every ``LOAD_SECONDS`` and kept up to date
  with this driver's own defines in between (a count per define would cost a scan of the whole
  fleet per VM): VMs another server defines meanwhile are seen at the next count.
- **VMs** (``sim_domains``) are ``stopped`` or ``running``; start and shutdown take effect at
  once (after the plan's latency). A VM cannot start unless every disk file and every declared
  backing file exists. A running VM cannot be undefined. Acting on an undefined VM raises
  :class:`DriverError` naming it, as a hypervisor's lookup would.
- **Users** (``sim_sessions``) log into running VMs only. A shutdown (asked by goldfleet or by
  the guest itself, :func:`guest_shutdown`) ends every session on the VM; a migration keeps
  them. Messages (``sim_messages``) are kept as a log of what each VM's users were told.
- **Faults** come from a :class:`SimPlan` passed in: latency per action, failing the Nth call
  of an action, failing every action on named VMs, hanging calls, and users scripted to log in
  when a VM first starts.

The functions at the bottom (:func:`login`, :func:`logout`, :func:`guest_shutdown`, …) are the
simulated world's own events — what users and guests do — not part of the driver interface;
the admin reaches them through ``/sim`` (services/sim.py).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from goldfleet import guest as guest_tool
from goldfleet.db.tables import (
    SimDomain,
    SimFilter,
    SimGuestFile,
    SimHost,
    SimMessage,
    SimSession,
    utcnow,
)
from goldfleet.domain import quarantine
from goldfleet.domain.names import NAME_RE
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
from goldfleet.errors import Conflict, InvalidInput, NotFound

# every driver call the plan can slow down, fail or hang ("*" in a plan means all of them)
ACTIONS = (
    "define",
    "undefine",
    "start",
    "shutdown",
    "state",
    "states",
    "host_of",
    "migrate",
    "sessions",
    "send_message",
    "logoff",
    "guest_read",
    "guest_write",
    "guest_exec",
    "define_filter",
    "set_filter",
    "filter_of",
    "vms_on",
    "reboot_host",
    "host_up",
    "restart_toolstack",
    "restart_device_model",
)
ANY = "*"
USER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,62}")
PLAN_KEYS = (
    "latency_ms",
    "fail_nth",
    "fail_vms",
    "hang",
    "hang_seconds",
    "sessions",
    "reboot_seconds",
    "reboot_never_up",
    "unsupported",
)
REBOOT_SECONDS = 2.0  # how long a simulated host reboot takes, unless the plan says
DOCS = "see 'The sim driver' in docs/concepts.md"
LOAD_SECONDS = 5.0  # how often placement counts the VMs per host in the database


# --- the plan -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NthRule:
    """Which calls of one action fail, counted from 1 per driver instance."""

    calls: frozenset[int] = frozenset()
    every: int = 0  # every Nth call (N, 2N, 3N, …); 0: none

    def hits(self, n: int) -> bool:
        return n in self.calls or (self.every > 0 and n % self.every == 0)


@dataclass(frozen=True, slots=True)
class ScriptedSession:
    """A user who logs into ``vm`` when it first starts."""

    vm: str
    user: str


@dataclass(frozen=True)
class SimPlan:
    """The faults and users of one simulated world; the empty plan has none."""

    latency_ms: Mapping[str, float] = field(default_factory=dict)  # action or "*" → ms
    fail_nth: Mapping[str, NthRule] = field(default_factory=dict)  # action → calls that fail
    fail_vms: frozenset[str] = frozenset()  # every action on these VMs fails
    hang: Mapping[str, frozenset[str]] = field(default_factory=dict)  # action|"*" → VMs|{"*"}
    hang_seconds: float = 3600.0  # how long a hung call blocks (or until close())
    sessions: tuple[ScriptedSession, ...] = ()
    reboot_seconds: float = REBOOT_SECONDS  # a host reboot takes exactly this long
    reboot_never_up: frozenset[str] = frozenset()  # hosts that never come back from a reboot
    # actions the driver refuses as one that cannot do them (Unsupported), as the libvirt
    # driver refuses reboot_host and restart_toolstack
    unsupported: frozenset[str] = frozenset()

    @classmethod
    def from_json(cls, text: str) -> SimPlan:
        """Parse a plan (``GOLDFLEET_SIM_PLAN``); an empty text is the empty plan."""
        if not text or not text.strip():
            return cls()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"the sim plan is not valid JSON ({exc}); {DOCS}") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> SimPlan:
        if not isinstance(data, dict):
            raise InvalidInput(f"the sim plan must be a JSON object; {DOCS}")
        unknown = sorted(set(data) - set(PLAN_KEYS))
        if unknown:
            raise InvalidInput(
                f"the sim plan has unknown keys {', '.join(unknown)}; use {', '.join(PLAN_KEYS)}"
            )
        return cls(
            latency_ms=_parse_latency(data.get("latency_ms", {})),
            fail_nth=_parse_fail_nth(data.get("fail_nth", {})),
            fail_vms=frozenset(_vm_list(data.get("fail_vms", []), "fail_vms")),
            hang=_parse_hang(data.get("hang", {})),
            hang_seconds=_number(data.get("hang_seconds", 3600.0), "hang_seconds"),
            sessions=_parse_sessions(data.get("sessions", [])),
            reboot_seconds=_number(data.get("reboot_seconds", REBOOT_SECONDS), "reboot_seconds"),
            reboot_never_up=frozenset(_vm_list(data.get("reboot_never_up", []), "reboot_never_up")),
            unsupported=_parse_unsupported(data.get("unsupported", [])),
        )

    def latency(self, action: str) -> float:
        """Seconds the action takes."""
        return self.latency_ms.get(action, self.latency_ms.get(ANY, 0.0)) / 1000.0

    def hangs(self, action: str, vms: Sequence[str]) -> bool:
        for key in (action, ANY):
            hung = self.hang.get(key)
            if hung is not None and (ANY in hung or any(vm in hung for vm in vms)):
                return True
        return False


def _parse_unsupported(value: Any) -> frozenset[str]:
    if not isinstance(value, list):
        raise InvalidInput(f"sim plan unsupported must be a list of driver actions; {DOCS}")
    return frozenset(_action(a, "unsupported", wildcard=False) for a in value)


def _action(key: Any, where: str, *, wildcard: bool) -> str:
    if key == ANY and wildcard:
        return key
    if key not in ACTIONS:
        allowed = ", ".join(ACTIONS) + (', or "*" for all' if wildcard else "")
        raise InvalidInput(f"sim plan {where}: {key!r} is not a driver action; use {allowed}")
    return key


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise InvalidInput(f"sim plan {where}: {value!r} is not a number >= 0")
    return float(value)


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput(f"sim plan {where}: {value!r} is not a call number >= 1")
    return value


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"sim plan {where} must be an object; {DOCS}")
    return value


def _vm_name(value: Any, where: str) -> str:
    if not isinstance(value, str) or NAME_RE.fullmatch(value) is None:
        raise InvalidInput(f"sim plan {where}: {value!r} is not a valid VM name")
    return value


def _vm_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list):
        raise InvalidInput(f"sim plan {where} must be a list of VM names; {DOCS}")
    return [_vm_name(v, where) for v in value]


def _parse_latency(value: Any) -> dict[str, float]:
    return {
        _action(k, "latency_ms", wildcard=True): _number(v, f"latency_ms.{k}")
        for k, v in _object(value, "latency_ms").items()
    }


def _parse_fail_nth(value: Any) -> dict[str, NthRule]:
    rules = {}
    for key, spec in _object(value, "fail_nth").items():
        action = _action(key, "fail_nth", wildcard=False)
        where = f"fail_nth.{action}"
        if isinstance(spec, dict):
            if set(spec) != {"every"}:
                raise InvalidInput(
                    f'sim plan {where}: use N (the Nth call), [N, M, …] or {{"every": N}}'
                )
            rules[action] = NthRule(every=_count(spec["every"], f"{where}.every"))
        elif isinstance(spec, list):
            rules[action] = NthRule(calls=frozenset(_count(n, where) for n in spec))
        else:
            rules[action] = NthRule(calls=frozenset({_count(spec, where)}))
    return rules


def _parse_hang(value: Any) -> dict[str, frozenset[str]]:
    hang = {}
    for key, vms in _object(value, "hang").items():
        action = _action(key, "hang", wildcard=True)
        where = f"hang.{action}"
        hang[action] = frozenset({ANY}) if vms == ANY else frozenset(_vm_list(vms, where))
    return hang


def _parse_sessions(value: Any) -> tuple[ScriptedSession, ...]:
    if not isinstance(value, list):
        raise InvalidInput(f'sim plan sessions must be a list of {{"vm": …, "user": …}}; {DOCS}')
    scripted = []
    for i, item in enumerate(value):
        where = f"sessions[{i}]"
        if not isinstance(item, dict) or set(item) != {"vm", "user"}:
            raise InvalidInput(f'sim plan {where} must be {{"vm": NAME, "user": USER}}')
        scripted.append(
            ScriptedSession(vm=_vm_name(item["vm"], where), user=check_user(item["user"]))
        )
    return tuple(scripted)


def check_user(value: Any) -> str:
    """A simulated user name: safe in URLs and logs (``alice``, ``j.doe@corp``)."""
    if not isinstance(value, str) or USER_RE.fullmatch(value) is None:
        raise InvalidInput(
            f"user {value!r} is not valid: use 1 to 63 characters from A-Z, a-z, 0-9, '.', '_',"
            " '@' and '-', starting with a letter or digit"
        )
    return value


# --- the driver ---------------------------------------------------------------------------


class SimDriver(Driver):
    """Hosts, VMs and users in the database; faults from the plan."""

    name = "sim"

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        hosts: Sequence[str] = ("sim-host-1",),
        plan: SimPlan | None = None,
    ) -> None:
        hosts = list(hosts)
        if not hosts:
            raise InvalidInput("the sim driver needs at least one host in sim_hosts")
        for h in hosts:
            if not isinstance(h, str) or NAME_RE.fullmatch(h) is None:
                raise InvalidInput(f"sim host {h!r} is not a valid host name")
        if len(set(hosts)) != len(hosts):
            raise InvalidInput(f"sim_hosts names a host twice: {', '.join(hosts)}")
        self.factory = sessions
        self.plan = plan or SimPlan()
        self.capabilities = Capabilities(
            sessions=True,
            messages=True,
            logoff=True,
            migrate=len(hosts) > 1,
            guest_agent=True,
            nwfilter=True,
        )
        self._hosts = hosts
        self._calls: dict[str, int] = {}
        self._lock = threading.Lock()  # the call counters
        self._placing = threading.Lock()  # least-loaded placement: count and insert together
        self._load: dict[str, int] | None = None  # VMs per host, as counted (+ own defines)
        self._load_at = 0.0  # time.monotonic() of that count
        self._closed = threading.Event()

    # -- the plan at work ------------------------------------------------------------------

    def calls(self, action: str) -> int:
        """How many times ``action`` was called on this driver (what ``fail_nth`` counts)."""
        with self._lock:
            return self._calls.get(action, 0)

    def close(self) -> None:
        """Wake every hung or slowed call (it raises); later calls raise at once."""
        self._closed.set()

    def _enter(self, action: str, vms: Sequence[str] = ()) -> None:
        """Count the call and apply the plan: latency, then hang, fail_vms, fail_nth."""
        with self._lock:
            n = self._calls[action] = self._calls.get(action, 0) + 1
        what = f"{action} of VM {vms[0]}" if len(vms) == 1 else action
        if self._closed.is_set():
            raise DriverError(f"sim: {what} refused: the sim driver was closed")
        if action in self.plan.unsupported:
            raise Unsupported(f"driver sim cannot {action} (sim plan 'unsupported')")
        delay = self.plan.latency(action)
        if delay > 0 and self._closed.wait(delay):
            raise DriverError(f"sim: {what} abandoned: the sim driver was closed")
        if self.plan.hangs(action, vms):
            if self._closed.wait(self.plan.hang_seconds):
                raise DriverError(f"sim: {what} hung (sim plan 'hang') until the driver closed")
            raise DriverError(
                f"sim: {what} hung (sim plan 'hang') and gave up after {self.plan.hang_seconds:g} s"
            )
        failing = [vm for vm in vms if vm in self.plan.fail_vms]
        if failing:
            raise DriverError(
                f"sim: {action} of VM {failing[0]} failed (injected by the sim plan 'fail_vms')"
            )
        rule = self.plan.fail_nth.get(action)
        if rule is not None and rule.hits(n):
            raise DriverError(
                f"sim: {what} failed on call {n} (injected by the sim plan 'fail_nth')"
            )

    # -- the interface ---------------------------------------------------------------------

    def hosts(self) -> list[str]:
        return list(self._hosts)

    def define(self, *, spec: DomainSpec, host: str | None = None) -> str:
        """Place a new VM on ``host`` or the least-loaded host; a redefined VM keeps its host
        (``host`` is then only a hint, the returned host is where the VM is)."""
        self._enter("define", [spec.name])
        if not isinstance(spec.name, str) or NAME_RE.fullmatch(spec.name) is None:
            raise DriverError(f"sim: cannot define a VM named {spec.name!r}: not a valid name")
        if host is not None and host not in self._hosts:
            raise DriverError(
                f"sim: cannot define VM {spec.name} on {host}: not a sim host"
                f" (hosts: {', '.join(self._hosts)})"
            )
        config = {
            "disks": [asdict(d) for d in spec.disks],
            "memory_mib": spec.memory_mib,
            "vcpus": spec.vcpus,
        }
        # Core statements, not the ORM's unit of work: one VM per clone is the hot path
        with self._placing:
            with self.factory.begin() as s:
                found = s.execute(
                    select(SimDomain.host, SimDomain.disks).where(SimDomain.name == spec.name)
                ).first()
                if found is not None:
                    kept = {
                        k: found.disks[k] for k in ("started_once", "filter") if k in found.disks
                    }
                    s.execute(
                        update(SimDomain)
                        .where(SimDomain.name == spec.name)
                        .values(disks={**config, **kept})
                    )
                    return found.host
                load = self._host_load(s)
                chosen = host or min(self._hosts, key=lambda h: load.get(h, 0))  # ties: first
                s.execute(
                    insert(SimDomain).values(
                        name=spec.name, host=chosen, state=STOPPED, disks=config
                    )
                )
            load[chosen] = load.get(chosen, 0) + 1  # committed
            return chosen

    def _host_load(self, s: Session) -> dict[str, int]:
        """VMs per host: counted at most every ``LOAD_SECONDS``, else as counted last plus
        this driver's own defines since (the caller holds ``_placing``)."""
        now = time.monotonic()
        if self._load is None or now - self._load_at >= LOAD_SECONDS:
            self._load = dict(
                s.execute(
                    select(SimDomain.host, func.count())
                    .where(SimDomain.host.in_(self._hosts))
                    .group_by(SimDomain.host)
                ).all()
            )
            self._load_at = now
        return self._load

    def _recount(self) -> None:
        """A VM left or moved: count again at the next placement."""
        with self._placing:
            self._load = None

    def undefine(self, *, name: str) -> None:
        self._enter("undefine", [name])
        with self.factory.begin() as s:
            dom = s.get(SimDomain, name)
            if dom is None:
                return
            if dom.state == RUNNING:
                raise DriverError(
                    f"sim: VM {name} is running on {dom.host}; shut it down before undefining it"
                )
            s.delete(dom)
        self._recount()

    def start(self, *, name: str) -> None:
        """Start a stopped VM (a running one is left so); scripted users log in at its first
        start."""
        self._enter("start", [name])
        with self.factory.begin() as s:
            dom = _domain(s, name)
            if dom.state == RUNNING:
                return
            if not _up(s, dom.host):
                raise DriverError(f"sim: VM {name} cannot start: its host {dom.host} is down")
            for disk in dom.disks.get("disks", []):
                for path in (disk["path"], *disk.get("backing", ())):
                    if not Path(path).exists():
                        raise DriverError(
                            f"sim: VM {name} cannot start: its {disk['role']} disk needs"
                            f" {path}, which does not exist"
                        )
            dom.state = RUNNING
            if not dom.disks.get("started_once"):
                dom.disks = {**dom.disks, "started_once": True}
                for scripted in self.plan.sessions:
                    if scripted.vm == name:
                        s.add(SimSession(vm=name, user=scripted.user, since=utcnow()))

    def shutdown(self, *, name: str, timeout: float = 60.0) -> None:
        """Stop the VM at once (the guest always obeys); its users' sessions end."""
        self._enter("shutdown", [name])
        with self.factory.begin() as s:
            dom = _domain(s, name)
            _power_off(s, dom)

    def state(self, *, name: str) -> str:
        self._enter("state", [name])
        with self.factory() as s:
            state = s.scalar(select(SimDomain.state).where(SimDomain.name == name))
            return UNDEFINED if state is None else state

    def states(self) -> dict[str, str]:
        self._enter("states")
        with self.factory() as s:
            return dict(s.execute(select(SimDomain.name, SimDomain.state)).all())

    def host_of(self, *, name: str) -> str | None:
        self._enter("host_of", [name])
        with self.factory() as s:
            return s.scalar(select(SimDomain.host).where(SimDomain.name == name))

    def migrate(self, *, name: str, host: str) -> None:
        """Move a VM (running or not) to another host; its users stay logged in."""
        if not self.capabilities.migrate:
            raise Unsupported(
                f"driver sim has one host ({self._hosts[0]}) and cannot migrate VMs;"
                " configure more sim_hosts"
            )
        self._enter("migrate", [name])
        if host not in self._hosts:
            raise DriverError(
                f"sim: cannot migrate VM {name} to {host}: not a sim host"
                f" (hosts: {', '.join(self._hosts)})"
            )
        with self.factory.begin() as s:
            dom = _domain(s, name)
            if dom.state == RUNNING and not _up(s, host):
                raise DriverError(f"sim: cannot migrate VM {name} to {host}: {host} is down")
            dom.host = host
        self._recount()

    # -- hosts (docs/drivers.md, "Hosts in the sim") ---------------------------------------------

    def _host(self, host: str, action: str) -> None:
        self._enter(action)
        if host not in self._hosts:
            raise DriverError(
                f"sim: {action}: {host} is not a sim host (hosts: {', '.join(self._hosts)})"
            )

    def vms_on(self, *, host: str) -> list[VmLoad]:
        self._host(host, "vms_on")
        with self.factory() as s:
            rows = s.execute(
                select(SimDomain.name, SimDomain.state, SimDomain.disks)
                .where(SimDomain.host == host)
                .order_by(SimDomain.name)
            ).all()
        return [
            VmLoad(n, st, int(d.get("memory_mib") or 0), int(d.get("vcpus") or 0))
            for n, st, d in rows
        ]

    def reboot_host(self, *, host: str) -> None:
        """The host goes down at once: its running VMs stop (their users' sessions end); it is
        up again ``reboot_seconds`` later (never, for a host in ``reboot_never_up``)."""
        self._host(host, "reboot_host")
        with self.factory.begin() as s:
            for dom in s.scalars(
                select(SimDomain).where(SimDomain.host == host, SimDomain.state == RUNNING)
            ):
                _power_off(s, dom)
            row = s.get(SimHost, host) or SimHost(name=host, reboots=0, toolstack_restarts=0)
            wait = timedelta(seconds=self.plan.reboot_seconds)
            if host in self.plan.reboot_never_up:
                wait = timedelta(days=3650)
            row.up_at = utcnow() + wait
            row.reboots += 1
            s.add(row)

    def host_up(self, *, host: str) -> bool:
        self._host(host, "host_up")
        with self.factory() as s:
            return _up(s, host)

    def restart_toolstack(self, *, host: str) -> None:
        """libvirtd restarted: VMs keep running; counted in ``sim_hosts``."""
        self._host(host, "restart_toolstack")
        with self.factory.begin() as s:
            if not _up(s, host):
                raise DriverError(f"sim: cannot restart the toolstack of {host}: it is down")
            row = s.get(SimHost, host) or SimHost(name=host, reboots=0, toolstack_restarts=0)
            row.toolstack_restarts += 1
            s.add(row)

    def restart_device_model(self, *, name: str) -> None:
        """A running VM gets a fresh QEMU (counted in its ``dm_restarts``); users stay."""
        self._enter("restart_device_model", [name])
        with self.factory.begin() as s:
            dom = _domain(s, name)
            if dom.state != RUNNING:
                raise DriverError(f"sim: VM {name} is not running: no device model to restart")
            dom.disks = {**dom.disks, "dm_restarts": int(dom.disks.get("dm_restarts", 0)) + 1}

    def sessions(self, *, names: Sequence[str]) -> dict[str, list[GuestSession]]:
        """Every named VM's users, in one query; an undefined name raises."""
        names = list(dict.fromkeys(names))
        self._enter("sessions", names)
        if not names:
            return {}
        with self.factory() as s:
            rows = s.execute(
                select(SimDomain.name, SimSession.user, SimSession.since)
                .outerjoin(SimSession, SimSession.vm == SimDomain.name)
                .where(SimDomain.name.in_(names))
                .order_by(SimDomain.name, SimSession.since, SimSession.user)
            ).all()
        found: dict[str, list[GuestSession]] = {}
        for vm, user, since in rows:
            users = found.setdefault(vm, [])
            if user is not None:
                users.append(GuestSession(user=user, since=_aware(since)))
        missing = [n for n in names if n not in found]
        if missing:
            raise DriverError(f"sim: cannot list the sessions of {_undefined(missing)}")
        return found

    def send_message(self, *, name: str, text: str) -> None:
        """Deliver ``text`` to the users of a running VM (kept in ``sim_messages``)."""
        self._enter("send_message", [name])
        with self.factory.begin() as s:
            dom = _domain(s, name)
            if dom.state != RUNNING:
                raise DriverError(
                    f"sim: cannot send a message to VM {name}: it is {dom.state}; only a"
                    " running VM's users can read one"
                )
            s.add(SimMessage(vm=name, text=text, at=utcnow()))

    def send_messages(self, *, messages: Mapping[str, str]) -> dict[str, DriverError | None]:
        """One transaction for all the VMs (the plan applies per VM)."""
        done: dict[str, DriverError | None] = {}
        asked: list[str] = []
        for vm in messages:
            try:
                self._enter("send_message", [vm])
                asked.append(vm)
            except DriverError as exc:
                done[vm] = exc
        with self.factory.begin() as s:
            now = utcnow()
            for chunk in range(0, len(asked), 500):
                part = asked[chunk : chunk + 500]
                states = dict(
                    s.execute(
                        select(SimDomain.name, SimDomain.state).where(SimDomain.name.in_(part))
                    ).all()
                )
                for vm in part:
                    if states.get(vm) != RUNNING:
                        done[vm] = DriverError(
                            f"sim: cannot send a message to VM {vm}: it is"
                            f" {states.get(vm) or 'not defined'}"
                        )
                    else:
                        s.add(SimMessage(vm=vm, text=messages[vm], at=now))
                        done[vm] = None
        return done

    def logoff(self, *, name: str, user: str) -> None:
        self._enter("logoff", [name])
        with self.factory.begin() as s:
            _domain(s, name)
            gone = s.execute(
                delete(SimSession).where(SimSession.vm == name, SimSession.user == user)
            ).rowcount
            if not gone:
                raise DriverError(f"sim: cannot log {user} off VM {name}: {user} is not logged in")

    # -- the guest agent and the network filters -------------------------------------------

    def _running(self, s: Session, name: str, what: str) -> SimDomain:
        dom = _domain(s, name)
        if dom.state != RUNNING:
            raise DriverError(
                f"sim: cannot {what} VM {name}: it is {dom.state}; its guest agent answers only"
                " while it runs"
            )
        return dom

    def guest_read(self, *, name: str, path: str, limit: int = GUEST_READ_LIMIT) -> bytes | None:
        self._enter("guest_read", [name])
        with self.factory() as s:
            dom = self._running(s, name, f"read {path} in")
            data = _read(s, dom, path)
        return None if data is None else bytes(data[:limit])

    def guest_read_many(
        self, *, names: Sequence[str], path: str, limit: int = GUEST_READ_LIMIT
    ) -> dict[str, bytes | DriverError | None]:
        """A few queries for all the guests (the plan applies per VM as in :meth:`guest_read`)."""
        found: dict[str, bytes | DriverError | None] = {}
        asked: list[str] = []
        for vm in dict.fromkeys(names):
            try:
                self._enter("guest_read", [vm])
                asked.append(vm)
            except DriverError as exc:
                found[vm] = exc
        with self.factory() as s:
            for chunk in range(0, len(asked), 500):
                part = asked[chunk : chunk + 500]
                doms = {
                    n: (state, config)
                    for n, state, config in s.execute(
                        select(SimDomain.name, SimDomain.state, SimDomain.disks).where(
                            SimDomain.name.in_(part)
                        )
                    )
                }
                chains = {vm: _chain_of(vm, doms[vm][1]) for vm in part if vm in doms}
                keys = {k for chain in chains.values() for k in chain}
                files = dict(
                    s.execute(
                        select(SimGuestFile.disk, SimGuestFile.data).where(
                            SimGuestFile.disk.in_(keys), SimGuestFile.path == path
                        )
                    ).all()
                )
                for vm in part:
                    state = doms[vm][0] if vm in doms else "not defined"
                    if state != RUNNING:
                        found[vm] = DriverError(
                            f"sim: cannot read {path} in VM {vm}: it is {state}"
                        )
                        continue
                    data = next((files[k] for k in chains[vm] if k in files), None)
                    found[vm] = None if data is None else bytes(data[:limit])
        return found

    def guest_write(self, *, name: str, path: str, data: bytes, mode: int = 0o644) -> None:
        self._enter("guest_write", [name])
        if not path.startswith("/") or "\0" in path or len(path) > 255:
            raise DriverError(f"sim: cannot write {path!r} in VM {name}: not an absolute path")
        with self.factory.begin() as s:
            dom = self._running(s, name, f"write {path} in")
            _write(s, dom, path, data)

    def guest_write_many(
        self, *, files: Mapping[str, bytes], path: str
    ) -> dict[str, DriverError | None]:
        """One transaction for all the guests (the plan applies per VM)."""
        done: dict[str, DriverError | None] = {}
        asked: list[str] = []
        for vm in files:
            try:
                self._enter("guest_write", [vm])
                asked.append(vm)
            except DriverError as exc:
                done[vm] = exc
        with self.factory.begin() as s:
            for chunk in range(0, len(asked), 500):
                part = asked[chunk : chunk + 500]
                doms = {
                    d.name: d for d in s.scalars(select(SimDomain).where(SimDomain.name.in_(part)))
                }
                tops = {vm: _chain(doms[vm])[0] for vm in part if vm in doms}
                have = set(
                    s.scalars(
                        select(SimGuestFile.disk).where(
                            SimGuestFile.disk.in_(set(tops.values())), SimGuestFile.path == path
                        )
                    )
                )
                for vm in part:
                    dom = doms.get(vm)
                    if dom is None or dom.state != RUNNING:
                        state = dom.state if dom is not None else "not defined"
                        done[vm] = DriverError(
                            f"sim: cannot write {path} in VM {vm}: it is {state}"
                        )
                        continue
                    if tops[vm] in have:
                        s.execute(
                            update(SimGuestFile)
                            .where(SimGuestFile.disk == tops[vm], SimGuestFile.path == path)
                            .values(data=files[vm])
                        )
                    else:
                        s.add(SimGuestFile(disk=tops[vm], path=path, data=files[vm]))
                        have.add(tops[vm])
                    done[vm] = None
        return done

    def guest_exec(self, *, name: str, argv: Sequence[str], timeout: float = 30.0) -> ExecResult:
        """The model runs one program, the guest tool, as the shell tool would (its rules
        are the domain's: ``quarantine.check_nq_set``); anything else is not found (127)."""
        self._enter("guest_exec", [name])
        with self.factory.begin() as s:
            dom = self._running(s, name, "run a program in")
            return _run_tool(s, dom, list(argv))

    def define_filter(self, *, filter_name: str, xml: str) -> None:
        self._enter("define_filter")
        with self.factory.begin() as s:
            row = s.get(SimFilter, filter_name)
            if row is None:
                s.add(SimFilter(name=filter_name, xml=xml))
            else:
                row.xml = xml

    def set_filter(self, *, name: str, filter_name: str) -> None:
        self._enter("set_filter", [name])
        with self.factory.begin() as s:
            dom = _domain(s, name)
            if s.get(SimFilter, filter_name) is None:
                raise DriverError(
                    f"sim: cannot put filter {filter_name} on VM {name}: no such nwfilter"
                )
            dom.disks = {**dom.disks, "filter": filter_name}

    def set_filters(self, *, filters: Mapping[str, str]) -> dict[str, DriverError | None]:
        """One transaction for all the VMs (the plan applies per VM)."""
        done: dict[str, DriverError | None] = {}
        asked: list[str] = []
        for vm in filters:
            try:
                self._enter("set_filter", [vm])
                asked.append(vm)
            except DriverError as exc:
                done[vm] = exc
        with self.factory.begin() as s:
            known = set(s.scalars(select(SimFilter.name)))
            for chunk in range(0, len(asked), 500):
                doms = {
                    d.name: d
                    for d in s.scalars(
                        select(SimDomain).where(SimDomain.name.in_(asked[chunk : chunk + 500]))
                    )
                }
                for vm in asked[chunk : chunk + 500]:
                    dom, wanted = doms.get(vm), filters[vm]
                    if dom is None:
                        done[vm] = DriverError(f"sim: VM {vm} is not defined on any sim host")
                    elif wanted not in known:
                        done[vm] = DriverError(
                            f"sim: cannot put filter {wanted} on VM {vm}: no such nwfilter"
                        )
                    else:
                        dom.disks = {**dom.disks, "filter": wanted}
                        done[vm] = None
        return done

    def filter_of(self, *, name: str) -> str | None:
        self._enter("filter_of", [name])
        with self.factory() as s:
            return _domain(s, name).disks.get("filter")


def _undefined(names: Sequence[str]) -> str:
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    return f"VM{'s' if len(names) > 1 else ''} {shown}: not defined on any sim host"


def _domain(s: Session, name: str) -> SimDomain:
    dom = s.get(SimDomain, name)
    if dom is None:
        raise DriverError(f"sim: VM {name} is not defined on any sim host; define it first")
    return dom


def _up(s: Session, host: str) -> bool:
    """Up: no reboot under way (or its time has come)."""
    up_at = s.scalar(select(SimHost.up_at).where(SimHost.name == host))
    return up_at is None or up_at <= utcnow()


def _power_off(s: Session, dom: SimDomain) -> None:
    dom.state = STOPPED
    s.execute(delete(SimSession).where(SimSession.vm == dom.name))


def _aware(at: datetime | None) -> datetime | None:
    return None if at is None or at.tzinfo is not None else at.replace(tzinfo=UTC)


# --- the simulated world: what users and guests do -------------------------------------------
# Each takes the caller's unit of work and does not commit, so that a service can record the
# event and its audit entry in one transaction.


@dataclass(frozen=True, slots=True)
class SimUser:
    vm: str
    user: str
    since: datetime


@dataclass(frozen=True, slots=True)
class SimDelivery:
    vm: str
    text: str
    at: datetime


@dataclass(frozen=True, slots=True)
class SimVm:
    name: str
    host: str
    state: str
    users: tuple[str, ...]
    disks: tuple[str, ...]  # paths, in the order they were defined


def _world_domain(s: Session, vm: str) -> SimDomain:
    dom = s.get(SimDomain, vm)
    if dom is None:
        raise NotFound(f"VM {vm} is not defined in the simulated world; create or start it first")
    return dom


def login(s: Session, *, vm: str, user: str) -> SimUser:
    """``user`` logs into the running VM ``vm``."""
    check_user(user)
    dom = _world_domain(s, vm)
    if dom.state != RUNNING:
        raise Conflict(f"VM {vm} is {dom.state}; a user can only log into a running VM")
    taken = s.scalar(select(SimSession.id).where(SimSession.vm == vm, SimSession.user == user))
    if taken is not None:
        raise Conflict(f"{user} is already logged into VM {vm}")
    row = SimSession(vm=vm, user=user, since=utcnow())
    s.add(row)
    s.flush()
    return SimUser(vm=vm, user=user, since=row.since)


def logout(s: Session, *, vm: str, user: str) -> None:
    """``user`` logs out of ``vm`` by themselves."""
    gone = s.execute(
        delete(SimSession).where(SimSession.vm == vm, SimSession.user == user)
    ).rowcount
    if not gone:
        raise NotFound(f"{user} is not logged into VM {vm}")


def users(s: Session, *, vm: str | None = None) -> list[SimUser]:
    """Logged-in users, of one VM or of all."""
    q = select(SimSession).order_by(SimSession.vm, SimSession.since, SimSession.user)
    if vm is not None:
        q = q.where(SimSession.vm == vm)
    return [SimUser(vm=r.vm, user=r.user, since=r.since) for r in s.scalars(q)]


def messages(s: Session, *, vm: str | None = None) -> list[SimDelivery]:
    """Messages delivered to users, oldest first, of one VM or of all."""
    q = select(SimMessage).order_by(SimMessage.id)
    if vm is not None:
        q = q.where(SimMessage.vm == vm)
    return [SimDelivery(vm=m.vm, text=m.text, at=m.at) for m in s.scalars(q)]


def guest_shutdown(s: Session, *, vm: str) -> SimVm:
    """The guest shuts itself down: the VM stops and its users' sessions end. goldfleet was
    not asked; it learns of it through ``states()``."""
    dom = _world_domain(s, vm)
    if dom.state != RUNNING:
        raise Conflict(f"VM {vm} is already {dom.state}")
    _power_off(s, dom)
    s.flush()
    return _vm_of(dom, ())


def vms(s: Session) -> list[SimVm]:
    """Every simulated VM with its host, power state and users."""
    logged: dict[str, list[str]] = {}
    for vm, user in s.execute(
        select(SimSession.vm, SimSession.user).order_by(SimSession.since, SimSession.user)
    ):
        logged.setdefault(vm, []).append(user)
    return [
        _vm_of(d, logged.get(d.name, ()))
        for d in s.scalars(select(SimDomain).order_by(SimDomain.name))
    ]


def _vm_of(dom: SimDomain, logged: Iterable[str]) -> SimVm:
    disks = tuple(d["path"] for d in dom.disks.get("disks", []))
    return SimVm(name=dom.name, host=dom.host, state=dom.state, users=tuple(logged), disks=disks)


DISK_XATTR = "user.goldfleet.sim-disk"


def _disk_key(path: str) -> str:
    """The identity of a disk file, which its guest files belong to: an id the sim keeps in
    the file's extended attribute ``user.goldfleet.sim-disk`` (set on first sight). A rename —
    the store sealing an overlay into a layer — keeps it; a new file (a rebuilt system volume, a
    full clone's copy) has none and gets a new one. Where the file is missing or its file system
    keeps no user attributes, the path stands in."""
    try:
        return "disk:" + os.getxattr(path, DISK_XATTR).decode()
    except OSError as exc:
        if exc.errno == errno.ENODATA:
            ident = uuid.uuid4().hex
            try:
                os.setxattr(path, DISK_XATTR, ident.encode(), os.XATTR_CREATE)
                return "disk:" + ident
            except OSError as again:
                if again.errno == errno.EEXIST:
                    return "disk:" + os.getxattr(path, DISK_XATTR).decode()
        return "path:" + hashlib.sha256(path.encode()).hexdigest()[:40]


def _chain(dom: SimDomain) -> list[str]:
    """The disks a guest's files are read from, top first: its system volume, then the layers
    it is declared on (a qcow2 chain reads through to its backing files). A VM without a
    system disk keeps its files under its name."""
    return _chain_of(dom.name, dom.disks)


def _chain_of(name: str, config: Mapping[str, Any]) -> list[str]:
    for disk in config.get("disks", []):
        if disk.get("role") == "system":
            return [_disk_key(p) for p in (disk["path"], *disk.get("backing", ()))]
    return ["vm:" + name]


def _read(s: Session, dom: SimDomain, path: str) -> bytes | None:
    chain = _chain(dom)
    found = dict(
        s.execute(
            select(SimGuestFile.disk, SimGuestFile.data).where(
                SimGuestFile.disk.in_(chain), SimGuestFile.path == path
            )
        ).all()
    )
    return next((found[k] for k in chain if k in found), None)


def _write(s: Session, dom: SimDomain, path: str, data: bytes) -> None:
    """Writes land on the top disk (the clone's own system volume), never on a layer."""
    top = _chain(dom)[0]
    row = s.get(SimGuestFile, (top, path))
    if row is None:
        s.add(SimGuestFile(disk=top, path=path, data=data))
    else:
        row.data = data


def _run_tool(s: Session, dom: SimDomain, argv: list[str]) -> ExecResult:
    """The guest tool's model: what ``goldfleet-guest`` (src/goldfleet/guest) does, on the
    files of the simulated guest. tests/integration/test_guest_tool.py holds the shell tool
    to the same domain rule."""
    program = _read(s, dom, guest_tool.GUEST_TOOL_PATH) if argv else None
    if not argv or argv[0] != guest_tool.GUEST_TOOL_PATH or program is None:
        shown = argv[0] if argv else "(nothing)"
        return ExecResult(127, "", f"{shown}: not found")
    args = argv[1:]
    if args == ["version"]:
        found = guest_tool.version_in(program.decode("utf-8", "replace"))
        return ExecResult(0, f"{found}\n", "") if found else ExecResult(2, "", "no version")
    held_raw = _read(s, dom, guest_tool.GUEST_DESCRIPTOR_PATH)
    held = held_raw.decode("utf-8", "replace").split("\n")[0] if held_raw is not None else None
    if args == ["nq-get"]:
        if held is None:
            return ExecResult(1, "", "goldfleet-guest: no descriptor is set")
        try:
            quarantine.check_descriptor(held, quarantine.Kind.CUSTOM)
        except InvalidInput:
            return ExecResult(1, "", "goldfleet-guest: the descriptor file holds garbage")
        return ExecResult(0, held + "\n", "")
    if args[:1] == ["nq-set"] and len(args) in (2, 3) and (len(args) == 2 or args[1] == "-n"):
        new = args[-1]
        policy_raw = _read(s, dom, guest_tool.GUEST_POLICY_PATH)
        if policy_raw is None:
            return ExecResult(1, "", "goldfleet-guest: no quarantine policy in this guest")
        policy = quarantine.parse_guest_policy(policy_raw.decode("utf-8", "replace"))
        try:
            quarantine.check_nq_set(policy, held, new)
        except InvalidInput as exc:
            return ExecResult(1, "", f"goldfleet-guest: {exc.message}")
        if len(args) == 2:
            _write(s, dom, guest_tool.GUEST_DESCRIPTOR_PATH, new.encode() + b"\n")
        return ExecResult(0, "", "")
    return ExecResult(2, "", "usage: goldfleet-guest version | nq-get | nq-set [-n] DESCRIPTOR")


def guest_files(s: Session, *, vm: str) -> dict[str, bytes]:
    """The simulated world: every file a guest sees (its own over its image's)."""
    chain = _chain(_world_domain(s, vm))
    seen: dict[str, bytes] = {}
    for key in reversed(chain):
        seen.update(
            s.execute(
                select(SimGuestFile.path, SimGuestFile.data).where(SimGuestFile.disk == key)
            ).all()
        )
    return seen


def guest_write(s: Session, *, vm: str, path: str, data: bytes) -> None:
    """The simulated world: something inside the guest writes a file (a user, a patch, a
    broken program writing garbage into the descriptor file)."""
    dom = _world_domain(s, vm)
    if dom.state != RUNNING:
        raise Conflict(f"VM {vm} is {dom.state}; only a running guest writes files")
    _write(s, dom, path, data)


def guest_run(s: Session, *, vm: str, argv: Sequence[str]) -> ExecResult:
    """The simulated world: a user inside the guest runs a program (``goldfleet-guest
    nq-set …`` after patching)."""
    dom = _world_domain(s, vm)
    if dom.state != RUNNING:
        raise Conflict(f"VM {vm} is {dom.state}; start it first")
    return _run_tool(s, dom, list(argv))
