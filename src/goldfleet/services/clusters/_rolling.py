"""The durable rolling update of a cluster (docs/host-updates.md): prechecks by name, then the
coordinator first and the others (several at once when capacity holds every VM), each host
disabled → evacuated → patched with exactly the packages of the hash → its tasks → enabled →
its VMs brought back; HA/balancing commands around it all.

The request first (docs/architecture.md, "Durable multi-step actions"): ``start_update``
stores the update row with its whole plan in one transaction; the runner's periodic pass
(``update_tick``) drives it in a thread, each step recorded as it completes, each step looking
at the world (the driver, the host's dpkg database) before it acts, so that a server killed at
any point resumes at that step without doing twice what must not be done twice: a package
already at its version is not installed again, a VM already where its recorded move sends it
is not moved again.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import subprocess
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import flag_modified

from goldfleet import crashpoints
from goldfleet.context import Context
from goldfleet.db.tables import Clone, Cluster, ClusterHost, ClusterUpdate
from goldfleet.domain import hostupdates as rules
from goldfleet.domain.rollout import Policy, SessionStep, build_policy, session_step
from goldfleet.drivers.agents import ApplyFailed, HostTaskFailed, HostUnreachable, make_agent
from goldfleet.drivers.base import DriverError, Unsupported, VmLoad
from goldfleet.errors import Conflict, GoldfleetError, InvalidInput, NotFound
from goldfleet.services.clusters._clusters import (
    cluster_view,
    get_cluster,
    lacks_guidance,
    rules_of,
    sync_prechecks,
    valid_sync,
)
from goldfleet.services.common import audit, leases
from goldfleet.store.debcache import DebCache

log = logging.getLogger("goldfleet.clusters")

VM_TASKS = ("restart-device-model", "restart-vm")
MIGRATIONS = 4  # live migrations at once
EVACUATION_ROUNDS = 5
OUTPUT = 4000  # characters of a command's output kept in the audit
_driving = threading.Lock()  # this server drives the updates in one thread


class PrecheckFailed(Conflict):
    """A rolling update refused: the failing prechecks, each by name."""


class Pause(Exception):
    """Not an error: the update waits on it, with its reason."""

    def __init__(self, reason: str, host: str | None = None, offline: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.host = host
        self.offline = offline


class UpdateHostView(BaseModel):
    host: str
    coordinator: bool
    state: str  # waiting, active, done, skipped
    steps: list[str]
    done_steps: list[str]
    tasks: list[str]
    deferred: dict[str, list[str]] = {}
    packages: int
    applied: dict[str, str] = {}
    evacuated: dict[str, str] = {}  # VM → the host it went to
    shut: list[str] = []  # VMs shut down because they fitted nowhere


class UpdateView(BaseModel):
    id: int
    cluster: str
    kind: str  # update | pending
    status: str  # running, paused, done, failed
    hash: str | None
    level: str
    max_hosts: int
    reason: str | None = None
    ha: str  # todo, disabled, enabled, none
    hosts: list[UpdateHostView]
    created_at: datetime
    finished_at: datetime | None = None
    actor: str


class PendingView(BaseModel):
    cluster: str
    hosts: dict[str, dict[str, Any]]  # host → {"host": guidance, "vms": {vm: guidance}}


# --- HA and balancing -----------------------------------------------------------------------


def set_ha(
    ctx: Context,
    name: str,
    disable: list[list[str]] | None,
    enable: list[list[str]] | None,
    *,
    actor: str,
) -> Any:
    """The commands that switch the cluster's HA and load balancing off before a rolling
    update and on again at its end (None for both: none)."""
    if (disable is None) != (enable is None):
        raise InvalidInput("give both the disable and the enable commands, or neither")
    ha = None
    if disable is not None and enable is not None:
        ha = {
            "disable": rules.check_commands(disable, "--disable-cmd"),
            "enable": rules.check_commands(enable, "--enable-cmd"),
        }
        if not ha["disable"] or not ha["enable"]:
            raise InvalidInput("give at least one disable and one enable command")
    with ctx.session() as s:
        c = get_cluster(s, name)
        c.ha = ha
        audit.record(s, actor, "cluster.ha", name, ha=ha)
        s.commit()
        return cluster_view(ctx, s, c)


def _run_commands(ctx: Context, cluster: str, which: str, commands: list[list[str]]) -> None:
    """Run each argv in order, output captured and audited; a failing one stops the update
    (paused, with its output)."""
    for argv in commands:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
            code, text = out.returncode, (out.stdout + out.stderr)[-OUTPUT:]
        except (OSError, subprocess.TimeoutExpired) as exc:
            code, text = -1, str(exc)
        with ctx.session() as s:
            audit.record(
                s, "update", f"cluster.ha.{which}", cluster, argv=argv, exit=code, output=text
            )
            s.commit()
        if code != 0:
            raise Pause(
                f"the HA/balancing {which} command {' '.join(argv)!r} exited {code}: {text.strip()}"
            )


# --- start ----------------------------------------------------------------------------------


def _open_update(s: Session, c: Cluster) -> ClusterUpdate | None:
    return s.scalar(
        select(ClusterUpdate).where(
            ClusterUpdate.cluster_id == c.id, ClusterUpdate.status.in_(rules.OPEN_UPDATE)
        )
    )


def updating(s: Session, c: Cluster) -> bool:
    return _open_update(s, c) is not None


def _reachable(ctx: Context, hosts: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for h in hosts:
        try:
            make_agent(ctx.settings, h).installed()
            out[h] = None if ctx.driver.host_up(host=h) else "down"
        except HostUnreachable as exc:
            out[h] = exc.message
        except DriverError as exc:
            out[h] = exc.message
    return out


def _back(ctx: Context, host: str, progress: dict[str, Any]) -> bool:
    """Whether the host an update paused on answers again; one its agent was rebooting must
    answer with another boot id (else a resume would only wait for it again)."""
    if _reachable(ctx, [host])[host]:
        return False
    boot_id = progress.get("hosts", {}).get(host, {}).get("boot_id")
    return boot_id is None or make_agent(ctx.settings, host).back_from_reboot(boot_id)


def start_update(
    ctx: Context,
    name: str,
    *,
    requested_hash: str,
    level: str,
    max_hosts: int = 1,
    logoff: str = "wait",
    grace: str | None = None,
    message: str | None = None,
    ha_disabled: bool = False,
    actor: str,
) -> UpdateView:
    """Check every precheck (refused naming each that fails), then store the update with its
    plan in one transaction; the runner's pass carries it out."""
    rules.check_level(level)
    policy = build_policy(now=ctx.clock.now(), logoff=logoff, grace=grace, message=message)
    with ctx.session() as s:
        c = get_cluster(s, name)
        hosts = [h.name for h in c.hosts]
    rules.check_max_hosts(max_hosts, len(hosts))
    reach = _reachable(ctx, hosts)
    with ctx.session() as s:
        c = get_cluster(s, name)
        last = c.last_sync or {}
        base = sync_prechecks(s, ctx, c, requested_hash)
        valid, note = valid_sync(c)
        if last and not valid and note and "channel" in note:
            base.append(rules.Precheck("channel-unchanged", False, note))
        open_u = _open_update(s, c)
        checks = rules.update_prechecks(
            base=base,
            reachable=reach,
            pending_mandatory={
                h.name: list((h.pending or {}).get("host", {}).get("mandatory", []))
                + [
                    f"{vm}: {t}"
                    for vm, g in (h.pending or {}).get("vms", {}).items()
                    for t in g.get("mandatory", [])
                ]
                for h in c.hosts
            },
            ha_commands=bool(c.ha),
            ha_already_disabled=ha_disabled,
            open_update=f"#{open_u.id} ({open_u.status})" if open_u else None,
        )
        failed = [p for p in checks if not p.ok]
        if failed:
            raise PrecheckFailed(
                f"cluster {name}: the rolling update is refused; failed prechecks: "
                + "; ".join(f"{p.name}: {p.reason}" for p in failed)
            )
        ruleset = rules_of(c)
        order = rules.update_order(hosts, c.coordinator)
        entries = {p["package"]: p for p in last.get("packages", [])}
        plan_hosts = {}
        for h in order:
            lacks = last.get("lacks", {}).get(h, [])
            g = lacks_guidance(last, h, ruleset)
            tasks, deferred = rules.split_by_level(g, level)
            plan_hosts[h] = {
                "tasks": tasks,
                "steps": rules.host_steps(tasks) if lacks else [],
                "deferred": {k: v for k, v in deferred.items() if v},
                "packages": [
                    {
                        k: entries[x["package"]][k]
                        for k in ("package", "version", "sha256", "filename", "size")
                    }
                    for x in lacks
                ],
            }
        u = ClusterUpdate(
            cluster_id=c.id,
            kind="update",
            status="running",
            hash=requested_hash,
            level=level,
            max_hosts=max_hosts,
            policy=policy.to_json(),
            plan={
                "order": order,
                "coordinator": c.coordinator,
                "cache_coordinator": last.get("coordinator"),
                "hosts": plan_hosts,
            },
            progress=_new_progress(order, bool(c.ha)),
            actor=actor,
        )
        s.add(u)
        audit.record(
            s, actor, "cluster.update", name, hash=requested_hash, level=level, max_hosts=max_hosts
        )
        s.commit()
        uid = u.id
    _wake(ctx)
    return update_status(ctx, name, uid)


def _new_progress(order: list[str], ha: bool) -> dict[str, Any]:
    return {
        "ha": "todo" if ha else "none",
        "hosts": {
            h: {"state": "waiting", "done": [], "evacuated": {}, "shut": [], "applied": {}}
            for h in order
        },
        "vm_restarts": [],
    }


def _wake(ctx: Context) -> None:
    update_tick(ctx)


# --- pending guidance -----------------------------------------------------------------------


def pending(ctx: Context, name: str) -> PendingView:
    with ctx.session() as s:
        c = get_cluster(s, name)
        return PendingView(
            cluster=name,
            hosts={
                h.name: {"host": h.pending.get("host", {}), "vms": h.pending.get("vms", {})}
                for h in c.hosts
                if h.pending and (h.pending.get("host") or h.pending.get("vms"))
            },
        )


def run_pending(ctx: Context, name: str, *, actor: str, logoff: str = "wait") -> UpdateView:
    """Carry out the pending guidance (tasks an update left above its level) as an operation:
    the same steps as an update, without packages."""
    policy = build_policy(now=ctx.clock.now(), logoff=logoff)
    with ctx.session() as s:
        c = get_cluster(s, name)
        open_u = _open_update(s, c)
        if open_u is not None:
            raise Conflict(f"update #{open_u.id} of cluster {name} is not finished")
        order = rules.update_order([h.name for h in c.hosts], c.coordinator)
        rows = {h.name: h for h in c.hosts}
        plan_hosts = {}
        for h in order:
            p = rows[h].pending or {}
            tasks = sorted(
                {t for ts in p.get("host", {}).values() for t in ts}
                | {t for g in p.get("vms", {}).values() for ts in g.values() for t in ts},
                key=rules.TASKS.index,
            )
            steps = [x for x in rules.host_steps(tasks) if x != "apply-packages"] if tasks else []
            plan_hosts[h] = {"tasks": tasks, "steps": steps, "deferred": {}, "packages": []}
        if not any(p["steps"] for p in plan_hosts.values()):
            raise Conflict(f"cluster {name} has no pending guidance")
        u = ClusterUpdate(
            cluster_id=c.id,
            kind="pending",
            status="running",
            hash=None,
            level="full",
            max_hosts=1,
            policy=policy.to_json(),
            plan={"order": order, "coordinator": c.coordinator, "hosts": plan_hosts},
            progress=_new_progress(order, bool(c.ha)),
            actor=actor,
        )
        s.add(u)
        audit.record(s, actor, "cluster.pending.run", name)
        s.commit()
        uid = u.id
    _wake(ctx)
    return update_status(ctx, name, uid)


# --- status, resume, skip -------------------------------------------------------------------


def _latest(s: Session, c: Cluster, uid: int | None) -> ClusterUpdate:
    q = select(ClusterUpdate).where(ClusterUpdate.cluster_id == c.id)
    if uid is not None:
        q = q.where(ClusterUpdate.id == uid)
    u = s.scalar(q.order_by(ClusterUpdate.id.desc()).limit(1))
    if u is None:
        raise NotFound(f"cluster {c.name} has no rolling update; see goldfleet cluster update")
    return u


def _update_view(c: Cluster, u: ClusterUpdate) -> UpdateView:
    hosts = []
    for h in u.plan["order"]:
        p = u.plan["hosts"][h]
        g = u.progress["hosts"][h]
        hosts.append(
            UpdateHostView(
                host=h,
                coordinator=h == u.plan["coordinator"],
                state=g["state"],
                steps=p["steps"],
                done_steps=g["done"],
                tasks=p["tasks"],
                deferred=p["deferred"],
                packages=len(p["packages"]),
                applied=g["applied"],
                evacuated={vm: to for vm, to in g["evacuated"].items()},
                shut=g["shut"],
            )
        )
    return UpdateView(
        id=u.id,
        cluster=c.name,
        kind=u.kind,
        status=u.status,
        hash=u.hash,
        level=u.level,
        max_hosts=u.max_hosts,
        reason=u.reason,
        ha=u.progress["ha"],
        hosts=hosts,
        created_at=u.created_at,
        finished_at=u.finished_at,
        actor=u.actor,
    )


def update_status(ctx: Context, name: str, uid: int | None = None) -> UpdateView:
    with ctx.session() as s:
        c = get_cluster(s, name)
        return _update_view(c, _latest(s, c, uid))


def resume_update(ctx: Context, name: str, *, skip: str | None = None, actor: str) -> UpdateView:
    """Resume a paused update (the step it paused on is tried again); with ``skip``, the host
    it paused on is left out: brought back (enabled, its VMs returned) if it answers, else
    left offline, its VMs where they are."""
    with ctx.session() as s:
        c = get_cluster(s, name)
        u = _open_update(s, c)
        if u is None:
            raise Conflict(f"cluster {name} has no update to resume")
        if skip is not None:
            g = u.progress["hosts"].get(skip)
            if g is None:
                raise InvalidInput(f"host {skip!r} is not in update #{u.id} of cluster {name}")
            if g["state"] in ("done", "skipped"):
                raise Conflict(f"host {skip} is {g['state']} in update #{u.id}")
            progress = copy.deepcopy(u.progress)
            progress["hosts"][skip]["skip"] = True
            u.progress = progress
        u.status = "running"
        u.reason = None
        audit.record(s, actor, "cluster.update.resume", name, update=u.id, skip=skip)
        s.commit()
        uid = u.id
    _wake(ctx)
    return update_status(ctx, name, uid)


# --- the pass -------------------------------------------------------------------------------


def update_tick(ctx: Context) -> None:
    """Called by the runner loop: drive the open updates in a thread (one per server; the
    lease ``cluster-update`` makes it one in the fleet), and resume an update paused on a host
    that went offline once that host answers again."""
    if _driving.locked():
        return
    with ctx.session() as s:
        rows = s.execute(
            select(ClusterUpdate.id, ClusterUpdate.status, ClusterUpdate.progress).where(
                ClusterUpdate.status.in_(rules.OPEN_UPDATE)
            )
        ).all()
    running = [uid for uid, st, _ in rows if st == "running"]
    for uid, st, progress in rows:
        host = progress.get("paused_on_offline")
        if st == "paused" and host and _back(ctx, host, progress):
            with ctx.session() as s:
                u = s.get(ClusterUpdate, uid)
                if u is not None and u.status == "paused":
                    u.status, u.reason = "running", None
                    s.commit()
                    running.append(uid)
    if running:
        threading.Thread(target=_drive_all, args=(ctx,), name="goldfleet-host-update").start()


def _drive_all(ctx: Context) -> None:
    if not _driving.acquire(blocking=False):
        return
    try:
        with leases.hold(ctx, "cluster-update", wait=0.0, what="the cluster updates"):
            while True:
                with ctx.session() as s:
                    ids = s.scalars(
                        select(ClusterUpdate.id).where(ClusterUpdate.status == "running")
                    ).all()
                if not ids:
                    return
                for uid in ids:
                    _run(ctx, uid)
    except Conflict:
        pass  # another server drives them
    except Exception:
        log.exception("the cluster update pass failed")
    finally:
        _driving.release()


class _U:
    """One update as a pass works on it: its row's plan and progress, saved step by step."""

    def __init__(self, ctx: Context, uid: int) -> None:
        self.ctx = ctx
        self.uid = uid
        with ctx.session() as s:
            u = s.get(ClusterUpdate, uid)
            c = s.get(Cluster, u.cluster_id)
            self.cluster = c.name
            self.cluster_id = c.id
            self.status = u.status
            self.plan = u.plan
            self.progress = copy.deepcopy(u.progress)
            self.policy = u.policy
            self.hash = u.hash
            self.kind = u.kind
            self.ha = c.ha or {}
            self.capacity = {h.name: (h.memory_mib, h.vcpus) for h in c.hosts}
        # several hosts step at once, each in its thread on its own copy of its progress
        # (``work``); a save writes the calling thread's host into the shared progress and the
        # whole of it to the row, under one lock, so that a later save never carries an older
        # state of another host
        self.lock = threading.RLock()
        self.local = threading.local()
        self.work: dict[str, dict[str, Any]] = {}
        self.stop = threading.Event()

    def g(self, host: str) -> dict[str, Any]:
        """The progress of ``host`` as its step works on it."""
        return self.work[host] if host in self.work else self.progress["hosts"][host]

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            host = getattr(self.local, "host", None)
            if host is not None and host in self.work:
                self.progress["hosts"][host] = copy.deepcopy(self.work[host])
            return copy.deepcopy(self.progress)

    def save(self, s: Session | None = None, **row: Any) -> None:
        with self.lock:
            snap = self.snapshot()
            if s is not None:
                self._write(s, snap, row)
                return
            with self.ctx.session() as own:
                self._write(own, snap, row)

    def _write(self, s: Session, snap: dict[str, Any], row: dict[str, Any]) -> None:
        u = s.get(ClusterUpdate, self.uid)
        u.progress = snap
        flag_modified(u, "progress")
        for k, v in row.items():
            setattr(u, k, v)
        s.commit()

    def host_state(self, host: str, state: str) -> None:
        with self.ctx.session() as s:
            s.execute(update(ClusterHost).where(ClusterHost.name == host).values(state=state))
            s.commit()


def _run(ctx: Context, uid: int) -> None:
    """Drive one update until it is done or paused: this thread runs the update's own steps
    and admits hosts; each active host runs its steps in its own thread."""
    u = _U(ctx, uid)
    if u.status != "running":
        return
    workers: dict[str, Future[None]] = {}
    with ThreadPoolExecutor(len(u.plan["order"]), thread_name_prefix="goldfleet-host") as pool:
        try:
            while True:
                for h, f in list(workers.items()):
                    if f.done():
                        del workers[h]
                        f.result()  # a Pause of the host is raised here
                moved = _advance(u, workers, pool)
                if u.status != "running":
                    return
                if not moved:
                    time.sleep(0.02)
        except Pause as p:
            u.stop.set()  # the other hosts finish the step they are in, then stop
            for f in workers.values():
                with contextlib.suppress(Pause):
                    f.result()
            if p.host and p.offline:
                u.host_state(p.host, "offline")
                u.progress["paused_on_offline"] = p.host
            u.save(status="paused", reason=p.reason)
            log.warning("cluster %s: update #%s paused: %s", u.cluster, uid, p.reason)
        except GoldfleetError as exc:  # the database, a driver refusing: paused, not looping
            u.stop.set()
            _settle(workers)
            u.save(status="paused", reason=f"{exc.message}; goldfleet cluster update-resume")
            log.warning("cluster %s: update #%s paused: %s", u.cluster, uid, exc.message)


def _settle(workers: dict[str, Future[None]]) -> None:
    for f in workers.values():
        with contextlib.suppress(Exception):
            f.result()


def _host_loop(u: _U, host: str) -> None:
    """One host's steps, one after the other, until it is done or the update stops."""
    u.local.host = host
    me = threading.current_thread()
    pool_name, me.name = me.name, f"goldfleet-host-{host}"
    with u.lock:
        u.work[host] = copy.deepcopy(u.progress["hosts"][host])
    try:
        while not u.stop.is_set():
            stepped = _host_step(u, host)
            if u.g(host)["state"] in ("done", "skipped"):
                return
            if not stepped:
                time.sleep(0.02)
    finally:
        with u.lock:
            u.progress["hosts"][host] = u.work.pop(host)
        u.local.host = None
        me.name = pool_name


def _advance(u: _U, workers: dict[str, Future[None]], pool: ThreadPoolExecutor) -> bool:
    ctx = u.ctx
    pr = u.progress
    pr.pop("paused_on_offline", None)
    if pr["ha"] == "todo":
        _run_commands(ctx, u.cluster, "disable", u.ha.get("disable", []))
        crashpoints.reached("host-update.ha-disabled")
        pr["ha"] = "disabled"
        u.save()
        return True
    hosts = pr["hosts"]
    order = u.plan["order"]
    active = [h for h in order if hosts[h]["state"] == "active"]
    waiting = [h for h in order if hosts[h]["state"] == "waiting"]
    moved = False
    # admit: the coordinator first; then up to max_hosts at once while the hosts left in
    # service hold every running VM (no other host applies packages before the coordinator:
    # see _host_step)
    cap = {h: c for h, c in u.capacity.items() if hosts.get(h, {}).get("state") != "skipped"}
    while waiting:
        h = waiting[0]
        if active and (
            len(active) >= _max_hosts(u)
            or not rules.holds_all(cap, _load(ctx, list(cap)), [*active, h])
        ):
            break
        with u.lock:
            hosts[h]["state"] = "active"
        active.append(h)
        waiting.pop(0)
        u.save()
        moved = True
    for h in active:
        if h not in workers:
            workers[h] = pool.submit(_host_loop, u, h)
            moved = True
    if not workers and all(hosts[h]["state"] in ("done", "skipped") for h in order):
        for vm in list(pr["vm_restarts"]):
            try:
                ctx.driver.restart(name=vm)
            except DriverError as exc:
                raise Pause(f"the restart of VM {vm} failed: {exc.message}") from None
            pr["vm_restarts"].remove(vm)
            u.save()
        if pr["ha"] == "disabled":
            _run_commands(ctx, u.cluster, "enable", u.ha.get("enable", []))
            crashpoints.reached("host-update.ha-enabled")
            pr["ha"] = "enabled"
        u.save(status="done", finished_at=ctx.clock.now(), reason=None)
        u.status = "done"
        with ctx.session() as s:
            audit.record(s, "update", "cluster.update.done", u.cluster, update=u.uid)
            s.commit()
        log.info("cluster %s: update #%s done", u.cluster, u.uid)
        return True
    return moved


def _max_hosts(u: _U) -> int:
    with u.ctx.session() as s:
        return s.get(ClusterUpdate, u.uid).max_hosts


def _load(ctx: Context, hosts: list[str]) -> dict[str, list[rules.Vm]]:
    return {h: [_vm(v) for v in ctx.driver.vms_on(host=h) if v.state == "running"] for h in hosts}


def _vm(v: VmLoad) -> rules.Vm:
    return rules.Vm(v.name, v.memory_mib, v.vcpus)


def _host_step(u: _U, host: str) -> bool:
    """Do the next step of ``host``; True when a step completed."""
    g = u.g(host)
    p = u.plan["hosts"][host]
    if g.get("skip"):
        _skip(u, host)
        return True
    left = [s for s in p["steps"] if s not in g["done"]]
    if not left:
        _host_done(u, host)
        return True
    step = left[0]
    if step == "apply-packages" and not _coordinator_patched(u, host):
        return False
    try:
        finished = STEPS[step](u, host)
    except HostUnreachable as exc:
        raise Pause(
            f"host {host} is unreachable at step {step}: {exc.message}; the update resumes when"
            f" it answers again, or: goldfleet cluster update-resume {u.cluster} --skip {host}",
            host,
            offline=True,
        ) from None
    except (DriverError, ApplyFailed, HostTaskFailed) as exc:
        raise Pause(
            f"host {host}, step {step}: {exc.message}; nothing further was done on {host}."
            f" Retry: goldfleet cluster update-resume {u.cluster}"
            f" (or --skip {host})",
            host,
        ) from None
    if not finished:
        return False
    crashpoints.reached("host-update.step")
    g["done"].append(step)
    u.save()
    return True


def _coordinator_patched(u: _U, host: str) -> bool:
    """The coordinator is patched first: no other host applies its packages before the
    coordinator has applied its own and restarted its toolstack (or is done, or skipped)."""
    coordinator = u.plan["coordinator"]
    if host == coordinator:
        return True
    with u.lock:
        g = u.progress["hosts"][coordinator] if coordinator != host else u.g(host)
    if g["state"] in ("done", "skipped"):
        return True
    before = {"apply-packages", "restart-toolstack"} & set(u.plan["hosts"][coordinator]["steps"])
    return before <= set(g["done"])


def _disable(u: _U, host: str) -> bool:
    u.host_state(host, "disabled")
    return True


def _enable(u: _U, host: str) -> bool:
    if not u.ctx.driver.host_up(host=host):
        return False
    u.host_state(host, "enabled")
    return True


def _targets(u: _U, host: str) -> list[str]:
    """Hosts a VM may go to: enabled in the cluster, up, not being updated."""
    hosts = u.progress["hosts"]
    with u.ctx.session() as s:
        enabled = set(
            s.scalars(
                select(ClusterHost.name).where(
                    ClusterHost.cluster_id == u.cluster_id, ClusterHost.state == "enabled"
                )
            )
        )
    return [
        h for h in u.plan["order"] if h != host and h in enabled and hosts[h]["state"] != "active"
    ]


def _evacuate(u: _U, host: str) -> bool:
    """Every running VM off the host: where each goes is recorded before any moves (the
    request first). Rounds until none is left: a VM another host's evacuation sent here while
    this one was being admitted is moved on too; a recorded destination that is now being
    updated itself is chosen again."""
    ctx = u.ctx
    g = u.g(host)
    for _ in range(EVACUATION_ROUNDS):
        here = {v.name: v for v in ctx.driver.vms_on(host=host) if v.state == "running"}
        targets = _targets(u, host)
        new = [
            _vm(v)
            for n, v in here.items()
            if n not in g["evacuated"]
            or (g["evacuated"][n] is not None and g["evacuated"][n] not in targets)
        ]
        if new:
            load = _load(ctx, targets)
            free = rules.free_capacity({h: u.capacity[h] for h in targets}, load)
            with u.lock:
                done = [t for t in targets if u.progress["hosts"][t]["state"] == "done"]
            others = [t for t in targets if t not in done]
            for vm, dest in rules.place_preferring(new, free, [done, others]).items():
                g["evacuated"][vm] = dest  # None: fits nowhere, shut down under the policy
            u.save()
        moves = [(vm, d) for vm, d in g["evacuated"].items() if d and vm in here]
        if not moves:
            break
        _migrate_all(ctx, host, moves)
    else:
        return False  # VMs keep arriving: the step is tried again
    # the clones' hosts, in one transaction (those moved before a crash included)
    _clone_hosts(ctx, {vm: dest for vm, dest in g["evacuated"].items() if dest is not None})
    for vm in [vm for vm, dest in g["evacuated"].items() if dest is None]:
        if vm in here and not _shut_under_policy(u, host, vm):
            return False
        if vm not in g["shut"]:
            g["shut"].append(vm)
    u.save()
    return True


def _migrate_all(ctx: Context, host: str, moves: list[tuple[str, str]]) -> None:
    """Live-migrate each VM to its host, ``MIGRATIONS`` at once (as a hypervisor pool does);
    every move is tried, then the first failure is raised (the VMs it names stay where they
    were)."""

    def one(move: tuple[str, str]) -> DriverError | None:
        try:
            ctx.driver.migrate(name=move[0], host=move[1])
        except DriverError as exc:
            return exc
        crashpoints.reached("host-update.migrated")
        return None

    if len(moves) <= 1:
        errors = [one(m) for m in moves]
    else:
        name = f"goldfleet-migrate-{host}"
        with ThreadPoolExecutor(min(MIGRATIONS, len(moves)), thread_name_prefix=name) as pool:
            errors = list(pool.map(one, moves))
    failed = [e for e in errors if e is not None]
    if failed:
        raise failed[0]


def _shut_under_policy(u: _U, host: str, vm: str) -> bool:
    """A VM that fits on no other host: its users told and logged off as the update's logoff
    policy says, then it is shut down (started again when its host is back). False: not yet."""
    ctx = u.ctx
    policy = Policy.from_json(u.policy)
    g = u.g(host)
    notified = g.setdefault("notified", {})
    try:
        users = [x.user for x in ctx.driver.sessions(names=[vm]).get(vm, [])]
    except DriverError:
        users = []
    at = notified.get(vm)
    step, why = session_step(
        policy, users, datetime.fromisoformat(at) if at else None, ctx.clock.now()
    )
    if step == SessionStep.NOTIFY:
        ctx.driver.send_message(name=vm, text=policy.message)
        notified[vm] = ctx.clock.now().isoformat()
        u.save()
        return False
    if step == SessionStep.WAIT:
        return False
    if step == SessionStep.SKIP:
        raise Pause(f"host {host}: VM {vm} fits on no other host and {why}", host)
    if step == SessionStep.LOGOFF:
        for user in users:
            ctx.driver.logoff(name=vm, user=user)
    ctx.driver.shutdown(name=vm)
    return True


def _clone_hosts(ctx: Context, moved: dict[str, str]) -> None:
    """Record where the VMs that are clones are now."""
    if not moved:
        return
    with ctx.session() as s:
        by_host: dict[str, list[str]] = {}
        for vm, host in moved.items():
            by_host.setdefault(host, []).append(vm)
        for host, names in by_host.items():
            s.execute(update(Clone).where(Clone.name.in_(names)).values(host=host))
        s.commit()


def _apply(u: _U, host: str) -> bool:
    """Install exactly the packages of the hash this host lacks; one already at its version
    (installed before a crash) is not installed again."""
    ctx = u.ctx
    agent = make_agent(ctx.settings, host)
    installed = agent.installed()
    todo = [
        p
        for p in u.plan["hosts"][host]["packages"]
        if rules.compare_versions(installed.get(p["package"], "0~"), p["version"]) < 0
    ]
    cache = DebCache(ctx.settings.store)
    debs = []
    for p in todo:
        path = cache.path(u.cluster, u.plan["cache_coordinator"], p["sha256"], p["filename"])
        if not cache.held(path, p["sha256"], p["size"]):
            raise ApplyFailed(
                f"{p['package']} {p['version']} is not in the coordinator's cache (or its sha256"
                f" differs): sync again (goldfleet cluster sync {u.cluster})"
            )
        debs.append(path)
    agent.apply(debs)
    crashpoints.reached("host-update.applied")
    now = agent.installed()
    g = u.g(host)
    packages = u.plan["hosts"][host]["packages"]
    g["applied"] = {p["package"]: now.get(p["package"], "") for p in packages}
    missing = [p["package"] for p in packages if now.get(p["package"]) != p["version"]]
    if missing:
        raise ApplyFailed(f"after dpkg, {', '.join(missing)} are not at the update's versions")
    return True


def _restart_toolstack(u: _U, host: str) -> bool:
    """The driver restarts it (sim); a driver that cannot (libvirt): the host agent runs
    ``host_toolstack_command`` on the host, then the step waits for the driver to reach the host
    again (``host_up``), pausing after ``host_toolstack_timeout``."""
    ctx = u.ctx
    g = u.g(host)
    if not g.get("toolstack_at"):
        try:
            ctx.driver.restart_toolstack(host=host)
            return True
        except Unsupported:
            make_agent(ctx.settings, host).restart_toolstack()
        g["toolstack_at"] = ctx.clock.now().isoformat()
        u.save()
    if ctx.driver.host_up(host=host):
        g.pop("toolstack_at")
        return True
    since = datetime.fromisoformat(g["toolstack_at"])
    if ctx.clock.now() - since > timedelta(seconds=ctx.settings.host_toolstack_timeout):
        g.pop("toolstack_at")  # a resume restarts it again
        raise Pause(
            f"host {host}: its toolstack did not answer the {ctx.driver.name} driver within"
            f" {ctx.settings.host_toolstack_timeout:g} s of its restart"
            f" ({ctx.settings.host_toolstack_command!r}, at {since:%Y-%m-%d %H:%M:%S} UTC);"
            f" retry: goldfleet cluster update-resume {u.cluster} (or --skip {host})",
            host,
        )
    return False


def _livepatch(u: _U, host: str) -> bool:
    return True  # the live patch package was installed by apply-packages (its own postinst)


def _reboot(u: _U, host: str) -> bool:
    ctx = u.ctx
    g = u.g(host)
    if not g.get("reboot_at"):
        if not _evacuate(u, host):  # nothing running may be left on it (arrived since)
            return False
        try:
            ctx.driver.reboot_host(host=host)
        except Unsupported:
            _agent_reboot(u, host)
        crashpoints.reached("host-update.rebooted")
        g["reboot_at"] = ctx.clock.now().isoformat()
        u.save()
        return False
    if _rebooted(ctx, host, g.get("boot_id")):
        g.pop("reboot_at")
        g.pop("boot_id", None)
        return True
    since = datetime.fromisoformat(g["reboot_at"])
    if ctx.clock.now() - since > timedelta(seconds=ctx.settings.host_reboot_timeout):
        g["reboot_at"] = ctx.clock.now().isoformat()  # a resume waits a whole timeout again
        raise Pause(
            f"host {host} did not come back within {ctx.settings.host_reboot_timeout:g} s of"
            f" its reboot (asked at {since:%Y-%m-%d %H:%M:%S} UTC{_still(ctx, host, g)}): it is"
            f" offline, disabled,"
            f" its VMs are on other hosts; the update resumes when it is up, or: goldfleet"
            f" cluster update-resume {u.cluster} --skip {host}",
            host,
            offline=True,
        )
    return False


def _agent_reboot(u: _U, host: str) -> None:
    """The driver cannot reboot the host: its agent runs ``host_reboot_command`` there, its
    boot id read first and kept in the progress, so that :func:`_rebooted` waits for another
    one. Kept before the command runs: a resume after a crash that finds another boot id
    already does not reboot the host again."""
    g = u.g(host)
    agent = make_agent(u.ctx.settings, host)
    now = agent.boot_id()
    if g.get("boot_id") is not None and g["boot_id"] != now:
        return  # rebooted before a crash: the reboot_at below is all that was missing
    g["boot_id"] = now
    u.save()
    agent.reboot()


def _rebooted(ctx: Context, host: str, boot_id: str | None) -> bool:
    """Up again after the reboot: a host rebooted by its agent answers with another boot id
    (the same one: not rebooted yet); then the driver must reach it (``host_up``)."""
    if boot_id is not None and not make_agent(ctx.settings, host).back_from_reboot(boot_id):
        return False
    return ctx.driver.host_up(host=host)


def _still(ctx: Context, host: str, g: dict[str, Any]) -> str:
    """Why a host rebooted by its agent is not back, for the pause's reason."""
    if g.get("boot_id") is None:
        return ""
    try:
        now = make_agent(ctx.settings, host).boot_id()
    except HostUnreachable:
        return "; it does not answer over ssh"
    if now == g["boot_id"]:
        return f"; it answers with the same boot id {now}: not rebooted"
    return f"; its boot id changed but the {ctx.driver.name} driver cannot reach it"


def _vm_tasks(u: _U, host: str, task: str) -> bool:
    ctx = u.ctx
    for v in ctx.driver.vms_on(host=host):
        if v.state != "running":
            continue
        if task == "restart-vm":
            ctx.driver.restart(name=v.name)
        else:
            ctx.driver.restart_device_model(name=v.name)
    return True


def _migrate_back(u: _U, host: str) -> bool:
    ctx = u.ctx
    g = u.g(host)
    restart = "restart-vm" in u.plan["hosts"][host]["tasks"]
    away = {d for d in g["evacuated"].values() if d is not None}
    where = {v.name: (h, v.state) for h in away for v in ctx.driver.vms_on(host=h)}
    back = {}
    for vm, dest in g["evacuated"].items():
        if dest is None:
            continue
        at = where.get(vm, (None, None))[0]
        if at == dest:
            back[vm] = host
        elif restart and at is not None:
            with u.lock:  # moved elsewhere meanwhile: restarted at the end
                if vm not in u.progress["vm_restarts"]:
                    u.progress["vm_restarts"].append(vm)
    _migrate_all(ctx, host, list(back.items()))
    _clone_hosts(ctx, back)
    if restart:
        for vm in back:
            if where[vm][1] == "running":
                ctx.driver.restart(name=vm)
    for vm in g["shut"]:
        if ctx.driver.host_of(name=vm) is not None:
            ctx.driver.start(name=vm)
    return True


def _host_done(u: _U, host: str) -> None:
    """The host's update recorded: its software as of now, the guidance left pending."""
    ctx = u.ctx
    g = u.g(host)
    p = u.plan["hosts"][host]
    g["state"] = "done"
    vms = [v.name for v in ctx.driver.vms_on(host=host)]
    deferred = p["deferred"]
    host_tasks = {k: [t for t in v if t not in VM_TASKS] for k, v in deferred.items()}
    vm_tasks = {k: [t for t in v if t in VM_TASKS] for k, v in deferred.items()}
    vm_tasks = {k: v for k, v in vm_tasks.items() if v}
    pend = {
        "hash": u.hash,
        "host": {k: v for k, v in host_tasks.items() if v},
        "vms": {vm: vm_tasks for vm in vms} if vm_tasks else {},
    }
    with ctx.session() as s:
        row = s.scalar(select(ClusterHost).where(ClusterHost.name == host))
        if u.kind == "update":
            row.pending = pend if (pend["host"] or pend["vms"]) else None
            if p["packages"]:
                agent = make_agent(ctx.settings, host)
                row.installed = agent.installed()
                row.installed_at = ctx.clock.now()
                row.last_software_update = ctx.clock.now()
            row.last_update_hash = u.hash
        else:
            row.pending = None
        audit.record(s, "update", "cluster.update.host", u.cluster, host=host, update=u.uid)
        u.save(s)  # the host's records and its progress, one transaction


def _skip(u: _U, host: str) -> None:
    """Leave the host out: if it answers, enabled again with its VMs back; else offline."""
    ctx = u.ctx
    g = u.g(host)
    up = not _reachable(ctx, [host])[host]
    if up:
        _migrate_back(u, host)
        u.host_state(host, "enabled")
    else:
        u.host_state(host, "offline")
    g["state"] = "skipped"
    u.save()
    with ctx.session() as s:
        audit.record(s, "update", "cluster.update.skip", u.cluster, host=host, up=up)
        s.commit()


STEPS = {
    "disable": _disable,
    "evacuate": _evacuate,
    "apply-packages": _apply,
    "restart-toolstack": _restart_toolstack,
    "apply-livepatch": _livepatch,
    "reboot-host": _reboot,
    "restart-device-model": lambda u, h: _vm_tasks(u, h, "restart-device-model"),
    "restart-vm": lambda u, h: _vm_tasks(u, h, "restart-vm"),
    "enable": _enable,
    "migrate-back": _migrate_back,
}
