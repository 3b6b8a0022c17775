"""The operation runner: durable bulk actions over many clones, run under a rollout policy.

An operation is a row plus one *item* per clone, all in goldfleet's database. Every server runs
one :class:`Runner`. In each pass it *claims* items of the active operations under the policy
(logged-in users, parallelism per fleet and per host, canary, failure budget, start time) by
marking the clone with its action and the item ``running`` with the server's id, in one
transaction; it then *executes* the claimed clones (idempotent file and driver work, no database
writes) and *records* their outcomes in one transaction.

Durability without a separate workflow engine: a server writes a heartbeat; items held by a
server whose heartbeat is older than ``lease_seconds`` are claimed again by any live server and
executed again, which is safe because executing is idempotent and the clone row says what was
under way. So after ``kill -9`` the next ``goldfleet serve`` (or, with PostgreSQL, any other
server sharing the database) finishes every operation: no clone lost, duplicated or half-made.
With SQLite only one server uses a home, so a starting server takes over at once.

A full disk (or an outcome that cannot be recorded) never leaves items ``running`` under the
lease of this live server, where no one would take them over: the server that holds them puts
them back in the queue and pauses the operation with the reason (``disk full at …: 12 MiB
free``). When the database itself cannot be written, that is kept in memory (and shown by the
API) and written as soon as it can be; nothing else is claimed meanwhile. ``op resume`` then
finishes the work. A failure that repeats every pass (a heartbeat, a periodic task) is said in
the log once, and its end once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.orm import Session

from goldfleet.context import Context
from goldfleet.db.tables import Clone, Operation, OperationItem, Server, Version
from goldfleet.domain.model import CloneAction, Power
from goldfleet.domain.rollout import (
    ACTIVE,
    FINISHED,
    ItemState,
    OpStatus,
    Policy,
    SessionStep,
    canary_gate,
    capacity,
    failures_exceeded,
    session_step,
)
from goldfleet.errors import GoldfleetError
from goldfleet.services.rollouts._operations import drop_queued_creates

log = logging.getLogger("goldfleet.operations")

SCAN_LIMIT = 1000  # at most this many queued items are looked at per pass of one operation

_items = OperationItem.__table__
# one executed item closed (an executemany over a batch): its state, the reason, when
_CLOSE_ITEM = (
    _items.update()
    .where(_items.c.id == bindparam("item"))
    .values(state=bindparam("to"), reason=bindparam("why"), finished_at=bindparam("at"))
)


class Outcome(Protocol):
    """What executing one clone's item came to (``error`` None: done). ``disk_full``: the
    work found its disk full (``disk full at …: N free``): the item goes back to the queue and
    the operation pauses, instead of the clone counting as failed."""

    clone_id: int
    error: str | None
    disk_full: str | None


class Plan(Protocol):
    clone_id: int


class CloneWork(Protocol):
    """The work behind an operation's items, handed to the runner by the bootstrap
    (services/fleet implements it). The runner decides *when* a clone is worked on; this says
    *what* that means: mark it, do its files and hypervisor calls, record the outcome."""

    def busy(self, clone: Clone) -> bool:
        """The clone is in the middle of another action (the item waits)."""
        ...

    def place(self, s: Session, clone: Clone, target_version_id: int) -> None:
        """Give a new clone its host now, if goldfleet places clones itself (edge stores)."""
        ...

    def mark(self, clone: Clone, item: OperationItem, version: Version, op_id: int) -> None:
        """Record on the clone row, in the claim's transaction, what is about to be done."""
        ...

    def load(self, s: Session, clone_ids: list[int]) -> Sequence[Plan]:
        """Everything ``execute`` needs, read before any file is touched."""
        ...

    def execute(self, plan: Any, logoff: Sequence[str]) -> Outcome:
        """Idempotent file and driver work of one clone; writes nothing to the database."""
        ...

    def record(self, s: Session, outcomes: Sequence[Any]) -> tuple[int, int]:
        """Write the outcomes to the clone rows; returns (done, failed)."""
        ...

    def users(self, names: list[str]) -> dict[str, list[str]]:
        """Logged-in users per running clone (empty where the driver cannot tell)."""
        ...

    def message(self, name: str, text: str) -> None:
        """Send the users of a clone a message; raises GoldfleetError when it cannot."""
        ...


@dataclass(frozen=True, slots=True)
class Periodic:
    """A task the runner's loop calls every ``seconds`` (power and pool reconciliation, a
    site's schedule). ``reconcile``: switched off with ``Runner.reconcile_enabled``."""

    name: str
    seconds: float
    run: Callable[[Context], object]
    reconcile: bool = True


@dataclass(frozen=True, slots=True)
class Claim:
    item_id: int
    clone_id: int
    logoff: tuple[str, ...] = ()


@dataclass
class _Pass:
    claims: list[Claim] = field(default_factory=list)
    notify: list[tuple[int, str]] = field(default_factory=list)  # (item id, clone name)


@dataclass
class _Held:
    """An operation this server stopped (a full disk, an outcome it could not record) while
    the database could not take that yet: what it still has to write. ``items``: its running
    items, to put back in the queue (item id → the reason shown on it)."""

    reason: str
    disk: bool
    items: dict[int, str] = field(default_factory=dict)
    told: bool = False  # that it cannot be recorded yet was said in the log


class _Trouble:
    """A failure that repeats every pass (a heartbeat, a periodic task on a full disk) is said
    in the log once, and its end once: 239 copies of one line hide everything else."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.failures = 0
        self.said: str | None = None

    def failed(self, detail: str, *, trace: bool = False) -> None:
        self.failures += 1
        if detail != self.said:
            self.said = detail
            log.warning("%s: %s; retrying quietly", self.what, detail, exc_info=trace)

    def ok(self, again: str) -> None:
        if self.failures:
            log.warning("%s: %s after %d failed attempts", self.what, again, self.failures)
        self.failures, self.said = 0, None


class Runner:
    """Claims, executes and records the work of every active operation, in this server."""

    def __init__(self, ctx: Context, work: CloneWork, *, periodic: Sequence[Periodic] = ()) -> None:
        self.ctx = ctx
        self.work = work
        self.periodic = list(periodic)
        self._last_run: dict[str, float] = {}
        self.server_id = ctx.server_id
        self.pool = ThreadPoolExecutor(
            max_workers=max(1, ctx.settings.workers), thread_name_prefix="goldfleet-volume"
        )
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.registered = False
        self.lock = threading.Lock()
        self.reconcile_enabled = True
        self._rotation: dict[int, int] = {}  # per operation: where the waiting scan goes on
        self._held: dict[int, _Held] = {}  # operation id → what is still to be written
        self._held_lock = threading.Lock()
        # one writer of what is held at a time (the runner, or a resume in an API thread): a
        # pause written late must not undo a resume that came after it
        self._record_lock = threading.Lock()
        self._troubles: dict[str, _Trouble] = {}

    # --- life cycle ---------------------------------------------------------------------

    def register(self) -> None:
        """Write this server's row and start its heartbeat (idempotent). A server registers
        before its startup recovery: what recovery takes over is then a live server's, and a
        long recovery does not make it look dead."""
        with self.lock:
            if self.registered:
                return
            self._register()
            self.registered = True
            threading.Thread(target=self._beat, name="goldfleet-heartbeat", daemon=True).start()

    def start_background(self) -> None:
        """Register this server and start the loop (idempotent)."""
        self.register()
        with self.lock:
            if self.thread is not None:
                return
            self.thread = threading.Thread(target=self._loop, name="goldfleet-runner", daemon=True)
            self.thread.start()

    def start(self, op_id: int | None = None) -> None:
        """New work was submitted: make sure the loop runs and look at it now."""
        self.start_background()
        self.wake.set()

    def wait(self, op_id: int, timeout: float | None = None) -> None:
        """Until the operation is finished or paused (also while the pause is only held)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while deadline is None or time.monotonic() < deadline:
            if self.held(op_id) is not None:
                return
            with self.ctx.session() as s:
                status = s.scalar(select(Operation.status).where(Operation.id == op_id))
            if status is None or status in FINISHED or status == OpStatus.PAUSED:
                return
            time.sleep(0.02)

    def shutdown(self) -> None:
        self.stopping.set()
        self.wake.set()
        if self.thread is not None:
            self.thread.join(30)
        self.pool.shutdown(wait=True, cancel_futures=True)
        try:
            with self.ctx.session() as s:
                s.execute(delete(Server).where(Server.id == self.server_id))
                s.commit()
        except Exception as exc:  # a full disk: the row ages out like a dead server's
            log.warning("could not remove this server's row: %s", self._why(exc))

    def _register(self) -> None:
        ctx = self.ctx
        with ctx.session() as s:
            if ctx.engine.dialect.name == "sqlite":
                # one server per SQLite home (its lock, goldfleet/homelock.py): whoever held
                # work before is gone
                s.execute(delete(Server))
            elif ctx.home_id is not None:
                # this server holds its home's lock, so the earlier servers of this home on
                # this host are dead: their work is taken over now, not once their lease has
                # run out. (On another host, a server with this home's id would be a copy of
                # the home, alive for all we know: its lease decides.)
                s.execute(
                    delete(Server).where(
                        Server.home_id == ctx.home_id, Server.hostname == socket.gethostname()
                    )
                )
            s.add(
                Server(
                    id=self.server_id,
                    hostname=socket.gethostname(),
                    pid=os.getpid(),
                    home_id=ctx.home_id,
                    heartbeat_at=ctx.clock.now(),
                )
            )
            s.commit()

    def _beat(self) -> None:
        """The heartbeat has its own thread: a long batch never makes a live server look dead.
        A beat that cannot be written (a full disk) is retried; that is said once, and reads
        are served meanwhile (they need no write)."""
        trouble = _Trouble("heartbeat")
        while not self.stopping.wait(self.ctx.settings.lease_seconds / 4):
            try:
                with self.ctx.session() as s:
                    s.execute(
                        update(Server)
                        .where(Server.id == self.server_id)
                        .values(heartbeat_at=self.ctx.clock.now())
                    )
                    s.commit()
            except Exception as exc:  # a missed beat is retried; the lease allows several
                trouble.failed(
                    f"cannot write this server's heartbeat ({self._why(exc)}); reads are still"
                    " served"
                )
                continue
            trouble.ok("written again")

    def _loop(self) -> None:
        while not self.stopping.is_set():
            worked = False
            self._run_periodic()
            try:
                worked = self.tick()
                self._trouble("runner").ok("passes work again")
            except Exception as exc:  # the loop must survive anything one pass throws
                self._trouble("runner").failed(
                    f"a pass failed: {self._why(exc)}", trace=self.ctx.disk_full_reason(exc) is None
                )
            if not worked:
                # while something is held, the database is not retried more than once a second
                self.wake.wait(1.0 if self._held else 0.25)
                self.wake.clear()

    def _trouble(self, what: str) -> _Trouble:
        return self._troubles.setdefault(what, _Trouble(what))

    def _why(self, exc: BaseException) -> str:
        """A failure in a few words: a full disk as ``disk full at …: N free``."""
        text = str(exc).splitlines()[0] if str(exc) else ""
        return self.ctx.disk_full_reason(exc) or f"{type(exc).__name__}: {text}"[:500]

    # --- one pass -----------------------------------------------------------------------

    def tick(self) -> bool:
        """One pass over every active operation; True if anything was executed."""
        if self._held and not self.record_held():
            # the database still cannot record what this server holds: claim nothing new
            return False
        with self.ctx.session() as s:
            op_ids = list(
                s.scalars(
                    select(Operation.id)
                    .where(Operation.status.in_(list(ACTIVE)))
                    .order_by(Operation.id)
                )
            )
        worked = False
        for op_id in op_ids:
            if self.stopping.is_set():
                break
            try:
                worked |= self.step(op_id)
            except Exception as exc:  # one broken operation must not stall the others
                if self.ctx.disk_full_reason(exc) is not None:
                    self._hold(op_id, {}, exc)  # nothing was claimed; the operation pauses
                else:
                    log.exception("operation %s: pass failed", op_id)
        return worked

    def step(self, op_id: int) -> bool:
        claimed = self._claim(op_id)
        try:
            self._notify(claimed.notify, op_id)
            if claimed.claims:
                self._execute(op_id, claimed.claims)
        except Exception as exc:
            # the claimed items are this live server's: nobody else would ever take them over
            self._hold(op_id, {c.item_id: "" for c in claimed.claims}, exc)
            return bool(claimed.claims)
        self._finish_if_done(op_id)
        return bool(claimed.claims)

    # --- what could not be done or recorded ----------------------------------------------

    def held(self, op_id: int) -> tuple[str, int] | None:
        """An operation paused in memory only (its pause could not be written yet): its
        paused reason and how many clones in work went back to the queue. The API shows it, so
        that nobody waits on an operation the database still calls "running"."""
        with self._held_lock:
            held = self._held.get(op_id)
            if held is None:
                return None
            reason = self._paused_reason(op_id, held)
            return f"{reason} (not yet recorded: the database cannot be written)", len(held.items)

    def _hold(self, op_id: int, items: dict[int, str], exc: BaseException) -> None:
        """Stop an operation whose work this server could not do or record: its items go back
        to the queue and it pauses with the reason, now, or as soon as the database can take
        it (meanwhile the reason is kept here, and nothing new is claimed)."""
        disk = self.ctx.disk_full_reason(exc)
        if disk is None:
            log.error("operation %s: its work could not be recorded", op_id, exc_info=exc)
        reason = disk or f"its work could not be recorded: {self._why(exc)}"
        with self._record_lock, self._held_lock:
            held = self._held.setdefault(op_id, _Held(reason=reason, disk=disk is not None))
            for item_id, why in items.items():
                held.items.setdefault(item_id, why)
        log.warning("operation %s: %s; pausing it", op_id, reason)
        self.record_held()

    def record_held(self) -> bool:
        """Write what is held: the items back in the queue, the operations paused. True when
        nothing is held any more."""
        with self._record_lock:
            with self._held_lock:
                pending = list(self._held.items())
            for op_id, held in pending:
                try:
                    with self.ctx.session() as s:
                        self._release(s, op_id, held)
                        s.commit()
                except Exception as exc:
                    if not held.told:
                        held.told = True
                        log.warning(
                            "operation %s: cannot record its pause yet (%s); this server claims"
                            " nothing more and tries again every second",
                            op_id,
                            self._why(exc),
                        )
                    return False
                with self._held_lock:
                    if self._held.get(op_id) is held:
                        del self._held[op_id]
                if held.told:
                    log.warning("operation %s: its pause is recorded now", op_id)
            return True

    def _paused_reason(self, op_id: int, held: _Held) -> str:
        back = f"; {len(held.items)} clones in work went back to the queue" if held.items else ""
        fix = "free space there" if held.disk else "fix the cause"
        return f"{held.reason}{back}; {fix}, then: goldfleet op resume {op_id}"

    def _release(self, s: Session, op_id: int, held: _Held) -> None:
        """In ``s``: this server's running items of ``held`` back to the queue (their clone rows
        still say what was under way: executing again is idempotent), the operation paused."""
        for item_id, why in held.items.items():
            s.execute(
                update(OperationItem)
                .where(
                    OperationItem.id == item_id,
                    OperationItem.owner == self.server_id,
                    OperationItem.state == ItemState.RUNNING,
                )
                .values(
                    state=ItemState.QUEUED,
                    owner=None,
                    started_at=None,
                    reason=f"{held.reason}{f' ({why})' if why else ''}; back in the queue",
                )
            )
        op = s.get(Operation, op_id)
        if op is not None and op.status in (OpStatus.RUNNING, OpStatus.SCHEDULED):
            op.status = OpStatus.PAUSED
            op.paused_reason = self._paused_reason(op_id, held)
            op.error = held.reason

    def _live_servers(self, s: Session, now: datetime) -> set[str]:
        horizon = now - timedelta(seconds=self.ctx.settings.lease_seconds)
        live = set(s.scalars(select(Server.id).where(Server.heartbeat_at >= horizon)))
        live.add(self.server_id)
        return live

    def _claim(self, op_id: int) -> _Pass:
        ctx = self.ctx
        now = ctx.clock.now()
        result = _Pass()
        # ask the hypervisor who is logged on before the claim transaction: no driver call
        # (which may be slow) happens while the operation is locked
        users = self._users_of_queued(op_id)
        with ctx.session() as s:
            q = select(Operation).where(Operation.id == op_id)
            if ctx.engine.dialect.name == "postgresql":
                q = q.with_for_update()  # one server claims an operation's items at a time
            else:
                # take SQLite's write lock first, so that a pause or cancel committed by now is
                # seen below and one arriving later waits for this claim to end
                s.execute(
                    update(Operation).where(Operation.id == op_id).values(status=Operation.status)
                )
            op = s.scalar(q)
            if op is None or op.status not in ACTIVE or op.status == OpStatus.PAUSED:
                return result
            if op.status == OpStatus.SCHEDULED:
                if op.start_at is not None and op.start_at > now:
                    return result
                op.status = OpStatus.RUNNING
            policy = Policy.from_json(op.policy)
            live = self._live_servers(s, now)
            states = Counter(
                dict(
                    s.execute(
                        select(OperationItem.state, func.count())
                        .where(OperationItem.operation_id == op_id)
                        .group_by(OperationItem.state)
                    ).all()
                )
            )
            # work a dead server had claimed is executed again here
            orphans = list(
                s.scalars(
                    select(OperationItem).where(
                        OperationItem.operation_id == op_id,
                        OperationItem.state == ItemState.RUNNING,
                        OperationItem.owner.not_in(live),
                    )
                )
            )
            for it in orphans:
                it.owner = self.server_id
                if it.clone_id is not None:
                    result.claims.append(Claim(it.id, it.clone_id))
            if op.status == OpStatus.CANCELLING:
                drop_queued_creates(ctx, s, op_id)  # put back in the queue after the cancel
                self._close_queued(s, op_id, ItemState.CANCELLED, "cancelled", now)
                s.commit()
                return result
            if failures_exceeded(policy, states[ItemState.FAILED], op.total):
                self._close_queued(
                    s,
                    op_id,
                    ItemState.SKIPPED,
                    "not started: the failure policy stopped the operation",
                    now,
                )
                s.commit()
                return result
            started = op.total - states[ItemState.QUEUED]
            canary_left, judge = canary_gate(
                policy, op.canary_passed, started, states[ItemState.RUNNING]
            )
            if judge:
                op.canary_passed = True
                if states[ItemState.FAILED] and policy.canary_auto:
                    op.status = OpStatus.PAUSED
                    op.paused_reason = (
                        f"{states[ItemState.FAILED]} of the {policy.canary} canary clones failed;"
                        f" check them, then: goldfleet op resume {op.id} (or cancel it)"
                    )
                    s.commit()
                    return result
                if not policy.canary_auto:
                    op.status = OpStatus.PAUSED
                    op.paused_reason = (
                        f"canary of {policy.canary} clones done; check them, then:"
                        f" goldfleet op resume {op.id}"
                    )
                    s.commit()
                    return result
                canary_left = 1 << 30
            mine = s.scalar(
                select(func.count()).where(
                    OperationItem.operation_id == op_id,
                    OperationItem.state == ItemState.RUNNING,
                    OperationItem.owner == self.server_id,
                )
            )
            # this server's batch is its own; --max-parallel counts every server's work
            slots = min(
                ctx.settings.batch_size - mine,
                capacity(policy, states[ItemState.RUNNING], 1 << 30),
                canary_left,
            )
            if slots > 0:
                self._pick(s, op, policy, slots, now, result, users)
            s.commit()
        return result

    def _users_of_queued(self, op_id: int) -> dict[str, list[str]]:
        """Logged-in users of the running clones this operation still has to do."""
        ctx = self.ctx
        if not ctx.driver.capabilities.sessions:
            return {}
        with ctx.session() as s:
            names = list(
                s.scalars(
                    select(Clone.name)
                    .join(OperationItem, OperationItem.clone_id == Clone.id)
                    .where(
                        OperationItem.operation_id == op_id,
                        OperationItem.state == ItemState.QUEUED,
                        Clone.power == Power.RUNNING,
                    )
                    .limit(SCAN_LIMIT * 4)
                )
            )
        return self.work.users(names) if names else {}

    def _pick(
        self,
        s: Session,
        op: Operation,
        policy: Policy,
        slots: int,
        now: datetime,
        out: _Pass,
        users: dict[str, list[str]],
    ) -> None:
        per_host = Counter(
            host
            for (host,) in s.execute(
                select(Clone.host)
                .join(OperationItem, OperationItem.clone_id == Clone.id)
                .where(
                    OperationItem.operation_id == op.id,
                    OperationItem.state == ItemState.RUNNING,
                )
            )
        )
        queued = (
            select(OperationItem, Clone)
            .outerjoin(Clone, OperationItem.clone_id == Clone.id)
            .where(OperationItem.operation_id == op.id, OperationItem.state == ItemState.QUEUED)
            .order_by(OperationItem.id)
        )
        # fresh items first; then a rotating window of those already waiting (on users, a
        # busy host…), so that every waiting clone is looked at again sooner or later
        rows = list(s.execute(queued.where(OperationItem.reason.is_(None)).limit(4 * slots + 50)))
        if len(rows) < slots:
            offset = self._rotation.get(op.id, 0)
            waiting = list(
                s.execute(
                    queued.where(OperationItem.reason.is_not(None)).offset(offset).limit(SCAN_LIMIT)
                )
            )
            self._rotation[op.id] = offset + len(waiting) if len(waiting) == SCAN_LIMIT else 0
            rows += waiting
        versions: dict[int, Version] = {}
        for it, clone in rows:
            if len(out.claims) >= slots:
                break
            if clone is None:
                self._close(it, ItemState.SKIPPED, "the clone was deleted", now)
                continue
            # a clone this operation marked and put back in the queue (a full disk) is not busy:
            # its row says what was under way, and executing again finishes it
            if (
                self.work.busy(clone)
                and it.action != CloneAction.CREATE
                and clone.operation_id != op.id
            ):
                it.reason = f"busy: the clone is {clone.status}"
                continue
            if clone.host is None:
                # placed here, so that the per-host limit applies at once
                self.work.place(s, clone, it.target_version_id)
            if per_host[clone.host] >= policy.per_host and clone.host is not None:
                continue
            step, reason = session_step(policy, users.get(clone.name, []), it.notified_at, now)
            if step == SessionStep.WAIT:
                it.reason = reason
                continue
            if step == SessionStep.SKIP:
                self._close(it, ItemState.SKIPPED, reason, now)
                continue
            if step == SessionStep.NOTIFY:
                it.reason = reason
                out.notify.append((it.id, clone.name))
                continue
            if it.target_version_id not in versions:
                versions[it.target_version_id] = s.get(Version, it.target_version_id)
            self.work.mark(clone, it, versions[it.target_version_id], op.id)
            it.state, it.owner, it.started_at, it.reason = (
                ItemState.RUNNING,
                self.server_id,
                now,
                reason,
            )
            per_host[clone.host] += 1
            logoff = tuple(users.get(clone.name, ())) if step == SessionStep.LOGOFF else ()
            out.claims.append(Claim(it.id, clone.id, logoff))

    @staticmethod
    def _close(it: OperationItem, state: ItemState, reason: str | None, now: datetime) -> None:
        it.state, it.reason, it.finished_at = state, reason, now

    def _close_queued(
        self, s: Session, op_id: int, state: ItemState, reason: str, now: datetime
    ) -> None:
        s.execute(
            update(OperationItem)
            .where(OperationItem.operation_id == op_id, OperationItem.state == ItemState.QUEUED)
            .values(state=state, reason=reason, finished_at=now)
        )

    def _notify(self, notify: list[tuple[int, str]], op_id: int) -> None:
        """Message the users first, then record when: the grace period starts only once the
        message is out (a crash in between sends it again, never skips it)."""
        if not notify:
            return
        ctx = self.ctx
        with ctx.session() as s:
            text = Policy.from_json(s.get(Operation, op_id).policy).message
        sent = []
        for item_id, name in notify:
            try:
                self.work.message(name, text)
                sent.append(item_id)
            except GoldfleetError as exc:
                log.warning("could not notify the users of %s: %s", name, exc.message)
        with ctx.session() as s:
            now = ctx.clock.now()
            for item_id in sent:
                s.get(OperationItem, item_id).notified_at = now
            s.commit()

    def _execute(self, op_id: int, claims: list[Claim]) -> None:
        ctx = self.ctx
        by_clone = {c.clone_id: c for c in claims}
        with ctx.session() as s:
            plans = self.work.load(s, list(by_clone))
        outcomes = list(
            self.pool.map(lambda p: self.work.execute(p, by_clone[p.clone_id].logoff), plans)
        )
        now = ctx.clock.now()
        with ctx.session() as s, s.no_autoflush:
            # Core statements, not the ORM's unit of work: a batch's items are read and closed
            # in one SELECT and one executemany UPDATE
            items = {
                row.id: row
                for row in s.execute(
                    select(OperationItem.id, OperationItem.owner, OperationItem.state).where(
                        OperationItem.id.in_([c.item_id for c in claims])
                    )
                )
            }
            # an item another server took over (this one looked dead) is theirs to record
            kept = {
                c.clone_id
                for c in claims
                if items[c.item_id].owner == self.server_id
                and items[c.item_id].state == ItemState.RUNNING
            }
            outcomes = [o for o in outcomes if o.clone_id in kept]
            claims = [c for c in claims if c.clone_id in kept]
            # work that found its disk full is not a failure of the clone: back to the queue
            full = {o.clone_id: o for o in outcomes if o.disk_full is not None}
            done, failed = self.work.record(s, [o for o in outcomes if o.clone_id not in full])
            errors = {o.clone_id: o.error for o in outcomes}
            closed = []
            for claim in claims:
                if claim.clone_id in full:
                    continue
                if claim.clone_id in errors:
                    error = errors[claim.clone_id]
                    state = ItemState.FAILED if error else ItemState.DONE
                else:  # the clone vanished under us
                    error, state = "the clone was deleted", ItemState.SKIPPED
                closed.append({"item": claim.item_id, "to": state, "why": error})
            if closed:
                s.execute(_CLOSE_ITEM, [{**row, "at": now} for row in closed])
            # one atomic update: servers sharing an operation must not lose each other's counts
            s.execute(
                update(Operation)
                .where(Operation.id == op_id)
                .values(done=Operation.done + done, failed=Operation.failed + failed)
            )
            if full:
                first = next(iter(full.values()))
                held = _Held(reason=first.disk_full or "", disk=True)
                held.items = {
                    c.item_id: full[c.clone_id].error or "" for c in claims if c.clone_id in full
                }
                self._release(s, op_id, held)
            s.commit()
        if full:
            log.warning(
                "operation %s: %s; %d clones back in the queue, operation paused",
                op_id,
                held.reason,
                len(held.items),
            )

    def _finish_if_done(self, op_id: int) -> None:
        ctx = self.ctx
        with ctx.session() as s:
            # is one item still open? (one index probe, not a count of the whole queue: this
            # is asked after every batch)
            open_item = s.scalar(
                select(OperationItem.id)
                .where(
                    OperationItem.operation_id == op_id,
                    OperationItem.state.in_([ItemState.QUEUED, ItemState.RUNNING]),
                )
                .limit(1)
            )
            if open_item is not None:
                return
            op = s.get(Operation, op_id)
            if op is None or op.status not in ACTIVE or op.status == OpStatus.SCHEDULED:
                return
            counts = Counter(
                dict(
                    s.execute(
                        select(OperationItem.state, func.count())
                        .where(OperationItem.operation_id == op_id)
                        .group_by(OperationItem.state)
                    ).all()
                )
            )
            notes = []
            if counts[ItemState.FAILED]:
                notes.append(f"{counts[ItemState.FAILED]} failed (see: goldfleet clone list)")
            if counts[ItemState.SKIPPED]:
                notes.append(f"{counts[ItemState.SKIPPED]} left on their version (skipped)")
            if counts[ItemState.CANCELLED]:
                notes.append(f"{counts[ItemState.CANCELLED]} cancelled before they started")
            if op.status == OpStatus.CANCELLING:
                op.status = OpStatus.CANCELLED
            elif counts[ItemState.FAILED]:
                op.status = OpStatus.FAILED
            else:
                op.status = OpStatus.DONE
            op.error = "; ".join(notes) or None
            op.finished_at = ctx.clock.now()
            s.commit()

    # --- periodic tasks -------------------------------------------------------------------

    def _run_periodic(self) -> None:
        """Each task on its own: one that fails (a full disk) neither stops the others nor the
        operations, and is said in the log once until it works again."""
        for task in self.periodic:
            if task.reconcile and not self.reconcile_enabled:
                continue
            if time.monotonic() - self._last_run.get(task.name, 0.0) < task.seconds:
                continue
            self._last_run[task.name] = time.monotonic()
            trouble = self._trouble(f"periodic task {task.name}")
            try:
                task.run(self.ctx)
            except Exception as exc:
                trouble.failed(self._why(exc), trace=self.ctx.disk_full_reason(exc) is None)
                continue
            trouble.ok("works")
