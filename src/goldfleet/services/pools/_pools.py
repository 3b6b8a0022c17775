"""Pools: clones of one template kept at a size, with a buffer of idle ones for new users.

A pool's clones are ordinary clones with ``pool_id`` set; a clone given to a user has
``assigned_user`` set, the others are *idle*. :func:`reconcile_pools`, called by every server's
runner, keeps each enabled pool at its size (a ``clone.create`` operation of the pool when
clones are missing, never more than ``max``) and carries out its maintenance window: inside the
window the pool assigns nothing, takes back the clones assigned to users under the window's
logoff policy (:func:`_take_back`: message, grace, logoff, as a rollout's), and recreates its
idle clones behind the template's current version (a ``pool.recreate`` operation of the pool);
when the window closes with work left the operation is paused, and the next window resumes it.
A clone is recreated only once it is idle: one whose users stay logged on under ``wait`` stays
assigned, untouched; when the window ends, assignments start afresh.

Nothing here keeps state in memory: every pass reads the pool, its clones and its operations
from the database and the time from ``ctx.clock``, so a pass repeated, or run by another
server, or after a crash, does the same thing or nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from goldfleet import crashpoints
from goldfleet.context import Context
from goldfleet.db.tables import Clone, Operation, OperationItem, Pool
from goldfleet.domain import pools as rules
from goldfleet.domain.model import CloneAction, CloneStatus, Power, TemplateStatus
from goldfleet.domain.names import check_name
from goldfleet.domain.pools import PoolState, Window
from goldfleet.domain.rollout import ACTIVE, ItemState, OpStatus, SessionStep
from goldfleet.errors import Conflict, GoldfleetError, InvalidInput, NotFound
from goldfleet.services import fleet, rollouts
from goldfleet.services.common import CloneView, OperationView, audit, get_template

log = logging.getLogger("goldfleet.pools")

PROVISION = "clone.create"  # the kind of a pool's provisioning operations
RECREATE = "pool.recreate"  # the kind of its maintenance-window operations
DELETE = "pool.delete"
SYSTEM_ACTOR = "goldfleet"
WINDOW_ACTOR = "pool-window"  # who pauses and resumes window operations
WINDOW_CLOSED = "maintenance window closed"
_PROVISION_LOCK = "pools:provision"  # not a template name (':' is not allowed in those)
# clones that are or will soon be ready to hand out
_COMING = (CloneStatus.READY, CloneStatus.CREATING, CloneStatus.REBUILDING)


class PoolView(BaseModel):
    name: str
    template: str
    min: int
    max: int
    buffer: int
    enabled: bool  # false once drained by an admin
    state: str  # enabled | draining | maintenance
    total: int
    idle: int  # not assigned, ready or being made
    ready: int  # not assigned and ready now
    assigned: int
    behind: int  # not on the template's current version
    failed: int
    window_cron: str | None = None
    window_minutes: int | None = None
    window_open: bool | None = None
    window_closes_at: datetime | None = None  # the open window's end
    next_window: datetime | None = None  # when the next window opens
    # how a window treats the users of assigned clones (as a rollout's --logoff, --grace,
    # --message)
    window_logoff: str | None = None
    window_grace_seconds: float | None = None
    window_message: str | None = None
    operations: list[int] = []  # the pool's operations under way
    note: str | None = None  # why the pool does not grow or assign, if it does not
    created_at: datetime


class AssignmentView(BaseModel):
    pool: str
    user: str
    clone: CloneView


@dataclass(frozen=True, slots=True)
class Counts:
    total: int = 0
    idle: int = 0
    ready: int = 0
    assigned: int = 0
    behind: int = 0
    failed: int = 0


# --- lookups ------------------------------------------------------------------------------


def get_pool(s: Session, name: str, *, lock: bool = False) -> Pool:
    """The pool by name; ``lock`` holds its row (PostgreSQL) until the transaction ends, so
    servers sharing the database decide about one pool one at a time. ``FOR NO KEY UPDATE``
    still lets other sessions insert clones that reference the pool."""
    check_name(name, "pool name")
    q = select(Pool).where(Pool.name == name)
    if lock and s.get_bind().dialect.name == "postgresql":
        q = q.with_for_update(key_share=True)
    p = s.scalar(q)
    if p is None:
        raise NotFound(f"pool {name} does not exist; see: goldfleet pool list")
    return p


@contextmanager
def _locked(ctx: Context, name: str) -> Iterator[Session]:
    """A session in which pool ``name`` is decided about by this caller only."""
    with ctx.template_lock(f"pool:{name}"), ctx.session() as s:
        yield s


def _counts(s: Session, p: Pool) -> Counts:
    current = p.template.current_version_id
    total = idle = ready = assigned = behind = failed = 0
    for status, user, version_id in s.execute(
        select(Clone.status, Clone.assigned_user, Clone.version_id).where(Clone.pool_id == p.id)
    ):
        total += 1
        if user is not None:
            assigned += 1
        elif status in _COMING:
            idle += 1
            ready += status == CloneStatus.READY
        failed += status == CloneStatus.FAILED
        behind += version_id != current
    return Counts(total, idle, ready, assigned, behind, failed)


def _active_ops(s: Session, p: Pool) -> list[Operation]:
    return list(
        s.scalars(
            select(Operation)
            .where(Operation.pool_id == p.id, Operation.status.in_(list(ACTIVE)))
            .order_by(Operation.id)
        )
    )


def _window(p: Pool, now: datetime) -> Window | None:
    if p.window_cron is None or p.window_minutes is None:
        return None
    return rules.window_state(p.window_cron, p.window_minutes, now)


def _state(p: Pool, ops: list[Operation], window: Window | None = None) -> PoolState:
    if not p.enabled:
        return PoolState.DRAINING
    if any(op.kind == RECREATE and op.status != OpStatus.PAUSED for op in ops):
        return PoolState.MAINTENANCE
    if window is not None and window.is_open:
        return PoolState.MAINTENANCE
    return PoolState.ENABLED


def _note(p: Pool, counts: Counts, state: PoolState) -> str | None:
    if state == PoolState.DRAINING:
        return f"drained: assigns nothing; resume with: goldfleet pool enable {p.name}"
    if state == PoolState.MAINTENANCE:
        taken = f"; {counts.assigned} clones still assigned to users" if counts.assigned else ""
        return (
            "in its maintenance window: assigns nothing, takes assigned clones back and"
            f" recreates idle ones behind{taken}"
        )
    if counts.failed:
        return (
            f"provisioning stopped: {counts.failed} failed clones; retry them (goldfleet clone"
            " retry NAME) or delete them"
        )
    if p.template.status != TemplateStatus.READY:
        return f"provisioning waits: template {p.template.name} is in {p.template.status}"
    if counts.idle < p.buffer and counts.total >= p.max_size:
        return f"at its maximum of {p.max_size} clones: the buffer cannot be kept"
    return None


def _view(ctx: Context, s: Session, p: Pool) -> PoolView:
    counts = _counts(s, p)
    ops = _active_ops(s, p)
    window = _window(p, ctx.clock.now())
    state = _state(p, ops, window)
    policy = rules.window_policy(p.window_policy) if window is not None else None
    next_window = None
    if window is not None:
        # while a window is open, the next one is the first that opens after it closes
        after = _window(p, window.closes_at) if window.is_open else window
        next_window = after.opens_at if after is not None else None
    return PoolView(
        name=p.name,
        template=p.template.name,
        min=p.min_size,
        max=p.max_size,
        buffer=p.buffer,
        enabled=p.enabled,
        state=state,
        total=counts.total,
        idle=counts.idle,
        ready=counts.ready,
        assigned=counts.assigned,
        behind=counts.behind,
        failed=counts.failed,
        window_cron=p.window_cron,
        window_minutes=p.window_minutes,
        window_open=window.is_open if window else None,
        window_closes_at=window.closes_at if window and window.is_open else None,
        next_window=next_window,
        window_logoff=str(policy.logoff) if policy else None,
        window_grace_seconds=policy.grace_seconds if policy else None,
        window_message=policy.message if policy else None,
        operations=[op.id for op in ops],
        note=_note(p, counts, state),
        created_at=p.created_at,
    )


def list_pools(ctx: Context) -> list[PoolView]:
    with ctx.session() as s:
        return [_view(ctx, s, p) for p in s.scalars(select(Pool).order_by(Pool.name))]


def show_pool(ctx: Context, name: str) -> PoolView:
    with ctx.session() as s:
        return _view(ctx, s, get_pool(s, name))


# --- create, drain, enable, delete --------------------------------------------------------


def create_pool(
    ctx: Context,
    *,
    name: str,
    template: str,
    min_size: int,
    max_size: int,
    buffer: int,
    window_cron: str | None = None,
    window_minutes: int | None = None,
    window_logoff: str | None = None,
    window_grace: str | float | None = None,
    window_message: str | None = None,
    actor: str,
) -> PoolView:
    """A new pool, enabled; its first clones are provisioned at once."""
    check_name(name, "pool name")
    rules.check_sizes(name, min_size, max_size, buffer)
    window = rules.check_window(window_cron, window_minutes)
    policy = _check_window_options(window, window_logoff, window_grace, window_message)
    with _locked(ctx, name) as s:
        t = get_template(s, template)
        if s.scalar(select(Pool.id).where(Pool.name == name)) is not None:
            raise Conflict(f"pool {name} already exists; choose another name")
        p = Pool(
            name=name,
            template_id=t.id,
            min_size=min_size,
            max_size=max_size,
            buffer=buffer,
            enabled=True,
            window_cron=window[0] if window else None,
            window_minutes=window[1] if window else None,
            window_policy=policy,
        )
        s.add(p)
        audit.record(
            s,
            actor,
            "pool.create",
            name,
            template=t.name,
            min=min_size,
            max=max_size,
            buffer=buffer,
            window_cron=p.window_cron,
            window_minutes=p.window_minutes,
            window_policy=policy,
        )
        try:
            s.commit()
        except IntegrityError:
            raise Conflict(f"pool {name} was created by another request at the same time") from None
    crashpoints.reached("pool-create.committed")
    _provision_quietly(ctx, name)
    return show_pool(ctx, name)


def _check_window_options(
    window: tuple[str, int] | None,
    logoff: str | None,
    grace: str | float | None,
    message: str | None,
) -> dict[str, object] | None:
    if window is None:
        if (logoff, grace, message) != (None, None, None):
            raise InvalidInput(
                "--window-logoff, --window-grace and --window-message go with a window"
                " (--window-cron and --window-minutes)"
            )
        return None
    return rules.check_window_policy(logoff, grace, message)


def set_window(
    ctx: Context,
    name: str,
    *,
    cron: str | None,
    minutes: int | None,
    logoff: str | None = None,
    grace: str | float | None = None,
    message: str | None = None,
    actor: str,
) -> PoolView:
    """Give the pool a new maintenance window and its logoff policy, or none (``cron`` and
    ``minutes`` both None): the pool's next pass follows it."""
    window = rules.check_window(cron, minutes)
    policy = _check_window_options(window, logoff, grace, message)
    with _locked(ctx, name) as s:
        p = get_pool(s, name, lock=True)
        p.window_cron = window[0] if window else None
        p.window_minutes = window[1] if window else None
        p.window_policy = policy
        audit.record(
            s,
            actor,
            "pool.window",
            name,
            window_cron=p.window_cron,
            window_minutes=p.window_minutes,
            window_policy=policy,
        )
        s.commit()
    return show_pool(ctx, name)


def resize_pool(
    ctx: Context, name: str, *, min_size: int, max_size: int, buffer: int, actor: str
) -> PoolView:
    """New sizes; the pool's next pass (and this call) provision what they now lack. A maximum
    below the clones the pool has is refused: nothing deletes a pool's clones to shrink it."""
    rules.check_sizes(name, min_size, max_size, buffer)
    with _locked(ctx, name) as s:
        p = get_pool(s, name, lock=True)
        have = s.scalar(select(func.count()).where(Clone.pool_id == p.id)) or 0
        if max_size < have:
            raise Conflict(
                f"pool {name} has {have} clones: a maximum of {max_size} is below that; delete"
                " idle clones of the pool first (goldfleet clone delete NAME)"
            )
        before = {"min": p.min_size, "max": p.max_size, "buffer": p.buffer}
        p.min_size, p.max_size, p.buffer = min_size, max_size, buffer
        audit.record(
            s, actor, "pool.resize", name, min=min_size, max=max_size, buffer=buffer, was=before
        )
        s.commit()
    _provision_quietly(ctx, name)
    return show_pool(ctx, name)


def drain_pool(ctx: Context, name: str, *, actor: str) -> PoolView:
    """Stop assigning clones (and provisioning); assigned clones stay with their users."""
    with _locked(ctx, name) as s:
        p = get_pool(s, name, lock=True)
        p.enabled = False
        audit.record(s, actor, "pool.drain", name)
        s.commit()
    return show_pool(ctx, name)


def enable_pool(ctx: Context, name: str, *, actor: str) -> PoolView:
    """Assign again, and provision what the buffer lacks."""
    with _locked(ctx, name) as s:
        p = get_pool(s, name, lock=True)
        p.enabled = True
        audit.record(s, actor, "pool.enable", name)
        s.commit()
    _provision_quietly(ctx, name)
    return show_pool(ctx, name)


def delete_pool(
    ctx: Context, name: str, *, keep_clones: bool = False, actor: str
) -> OperationView | None:
    """Remove the pool and delete its clones (an operation), or with ``keep_clones`` leave them
    as plain clones of the template. Refused while any clone is assigned to a user or an
    operation of the pool is under way."""
    with _locked(ctx, name) as s:
        p = get_pool(s, name, lock=True)
        members = list(s.scalars(select(Clone).where(Clone.pool_id == p.id).order_by(Clone.id)))
        taken = [f"{c.name} ({c.assigned_user})" for c in members if c.assigned_user]
        if taken:
            shown = ", ".join(taken[:10]) + (
                f" and {len(taken) - 10} more" if len(taken) > 10 else ""
            )
            raise Conflict(
                f"pool {name} still has {len(taken)} clones assigned to users: {shown}; release"
                f" them first with: goldfleet pool release {name} USER"
            )
        busy = _active_ops(s, p)
        if busy:
            raise Conflict(
                f"pool {name} has operation {busy[0].id} ({busy[0].kind}) under way; wait for it"
                f" or cancel it with: goldfleet op cancel {busy[0].id}"
            )
        rollouts.refuse_busy(s, members)
        # the pool's history stays, named by its target; its rows no longer point at it
        s.execute(update(Operation).where(Operation.pool_id == p.id).values(pool_id=None))
        s.execute(update(Clone).where(Clone.pool_id == p.id).values(pool_id=None))
        op = None
        if members and not keep_clones:
            work = [(c, CloneAction.DELETE, c.version, False) for c in members]
            op = rollouts.start_operation(ctx, s, DELETE, name, work, actor)
        s.delete(p)
        audit.record(
            s,
            actor,
            "pool.delete",
            name,
            clones=len(members),
            keep_clones=keep_clones,
            operation=op.id if op else None,
        )
        s.commit()
        op_id = op.id if op else None
    return rollouts.launch(ctx, op_id, False) if op_id is not None else None


# --- assigning users ----------------------------------------------------------------------


def _pick_idle(s: Session, p: Pool) -> tuple[Clone, OperationItem | None] | None:
    """The idle clone to give to the next user: a ready one no operation is about to touch,
    on the current version if possible. Failing that, one waiting in this pool's window
    operation while it is paused (outside the window): the user gets it as it is, and its
    recreation is left to a later window (its item is skipped)."""
    candidates = list(
        s.scalars(
            select(Clone)
            .where(
                Clone.pool_id == p.id,
                Clone.assigned_user.is_(None),
                Clone.status == CloneStatus.READY,
            )
            .order_by(Clone.name)
        )
    )
    if not candidates:
        return None
    pending: dict[int, tuple[OperationItem, Operation]] = {
        it.clone_id: (it, op)  # type: ignore[misc]
        for it, op in s.execute(
            select(OperationItem, Operation)
            .join(Operation, Operation.id == OperationItem.operation_id)
            .where(
                OperationItem.clone_id.in_([c.id for c in candidates]),
                OperationItem.state.in_([ItemState.QUEUED, ItemState.RUNNING]),
            )
        )
    }
    current = p.template.current_version_id
    free = [c for c in candidates if c.id not in pending]
    free.sort(key=lambda c: (c.version_id != current, c.power != Power.RUNNING, c.name))
    if free:
        return free[0], None
    for c in candidates:
        it, op = pending[c.id]
        if (
            it.state == ItemState.QUEUED
            and op.kind == RECREATE
            and op.pool_id == p.id
            and op.status == OpStatus.PAUSED
        ):
            return c, it
    return None


def assign(ctx: Context, pool: str, user: str, *, actor: str) -> AssignmentView:
    """Give ``user`` an idle clone of the pool and start it; a user who has one gets the same
    clone back. With no idle clone ready, provisioning is started (if the pool may grow) and
    the request is refused: ask again when it is done."""
    rules.check_user(user)
    newly = False
    with _locked(ctx, pool) as s:
        p = get_pool(s, pool, lock=True)
        mine = s.scalar(select(Clone).where(Clone.pool_id == p.id, Clone.assigned_user == user))
        if mine is None:
            _check_assigning(s, p, ctx.clock.now())
            picked = _pick_idle(s, p)
            if picked is None:
                counts, max_size = _counts(s, p), p.max_size
                s.rollback()
                _refuse_none_idle(ctx, pool, counts, max_size)
            mine, item = picked  # type: ignore[misc]
            # conditional writes: a runner of another server that started the clone's item
            # in the meantime wins, and this request is refused rather than both going ahead
            taken = s.execute(
                update(Clone)
                .where(
                    Clone.id == mine.id,
                    Clone.assigned_user.is_(None),
                    Clone.status == CloneStatus.READY,
                )
                .values(assigned_user=user)
            ).rowcount
            if item is not None:
                taken &= s.execute(
                    update(OperationItem)
                    .where(OperationItem.id == item.id, OperationItem.state == ItemState.QUEUED)
                    .values(
                        state=ItemState.SKIPPED,
                        finished_at=ctx.clock.now(),
                        reason=(
                            f"assigned to {user} while the pool's window operation was paused;"
                            " a later window recreates it once it is released"
                        ),
                    )
                ).rowcount
            if taken != 1:
                raise Conflict(
                    f"pool {pool}: clone {mine.name} was taken by other work at the same time;"
                    " try again"
                )
            audit.record(s, actor, "pool.assign", pool, user=user, clone=mine.name)
            s.commit()
            newly = True
        clone_name, running = mine.name, mine.power == Power.RUNNING
    if newly:
        crashpoints.reached("pool-assign.committed")
    try:
        if not running:
            fleet.start_clone(ctx, clone_name, actor=actor)
        view = fleet.show_clone(ctx, clone_name)
    except GoldfleetError:
        if newly:  # the user did not get it: it goes back to the idle ones
            with _locked(ctx, pool) as s:
                s.execute(
                    update(Clone)
                    .where(Clone.name == clone_name, Clone.assigned_user == user)
                    .values(assigned_user=None)
                )
                s.commit()
        raise
    if newly:
        _provision_quietly(ctx, pool)  # the buffer lost one: replace it now
    return AssignmentView(pool=pool, user=user, clone=view)


def _check_assigning(s: Session, p: Pool, now: datetime) -> None:
    if not p.enabled:
        raise Conflict(
            f"pool {p.name} is drained and assigns no clones; enable it with: goldfleet pool"
            f" enable {p.name}"
        )
    window = _window(p, now)
    if window is not None and window.is_open:
        raise Conflict(
            f"pool {p.name} is in its maintenance window until"
            f" {window.closes_at:%Y-%m-%d %H:%M} UTC and assigns no clones until then; try"
            " again after it"
        )
    for op in _active_ops(s, p):
        if op.kind == RECREATE and op.status != OpStatus.PAUSED:
            raise Conflict(
                f"pool {p.name} is in its maintenance window: its idle clones are being"
                f" recreated (operation {op.id}) and it assigns none until that is done; try"
                " again later"
            )


def _refuse_none_idle(ctx: Context, pool: str, counts: Counts, max_size: int) -> None:
    """Why no clone can be given now, after starting provisioning if the pool may grow."""
    if counts.idle == 0 and counts.total >= max_size:
        raise Conflict(
            f"pool {pool} has no idle clone: all {counts.total} of its at most {max_size}"
            f" clones are taken; release one (goldfleet pool release {pool} USER) or make a"
            " larger pool"
        )
    _provision_quietly(ctx, pool, waiting=1)  # on demand: one for this user
    with ctx.session() as s:
        p = get_pool(s, pool)
        provisioning = [op.id for op in _active_ops(s, p) if op.kind == PROVISION]
        note = _note(p, _counts(s, p), PoolState.ENABLED)
    if provisioning:
        raise Conflict(
            f"pool {pool} has no idle clone ready yet; provisioning is under way (operation"
            f" {provisioning[0]}): try again in a moment"
        )
    if counts.idle:
        raise Conflict(
            f"pool {pool} has no idle clone ready yet: {counts.idle} are being made or updated;"
            " try again in a moment"
        )
    raise Conflict(
        f"pool {pool} has no idle clone and cannot provision one now"
        f" ({note or 'see: goldfleet pool show ' + pool}); try again later"
    )


def release(ctx: Context, pool: str, user: str, *, actor: str) -> CloneView:
    """The user gives the clone back: it is stopped (its temp volumes emptied) and becomes
    idle again, for the next user and, if behind, for the next window."""
    rules.check_user(user)
    with ctx.session() as s:
        p = get_pool(s, pool)
        c = s.scalar(select(Clone).where(Clone.pool_id == p.id, Clone.assigned_user == user))
        if c is None:
            raise NotFound(f"user {user} has no clone in pool {pool}; see: goldfleet pool show")
        name, stop = c.name, c.power == Power.RUNNING and c.status == CloneStatus.READY
    if stop:
        fleet.stop_clone(ctx, name, actor=actor)
    with _locked(ctx, pool) as s:
        c = s.scalar(select(Clone).where(Clone.name == name))
        if c is not None and c.assigned_user == user:
            c.assigned_user = None
            audit.record(s, actor, "pool.release", pool, user=user, clone=name)
            s.commit()
    return fleet.show_clone(ctx, name)


# --- keeping pools at size and in their windows -------------------------------------------


def _provision(ctx: Context, name: str, waiting: int = 0) -> OperationView | None:
    """One ``clone.create`` operation of the pool for what it lacks (with ``waiting`` users
    asking for a clone now), unless one is under way, the pool is drained or has failed clones.
    Serialised per server by a lock and across servers by the pool's row lock, so two passes
    never both add clones."""
    with ctx.template_lock(_PROVISION_LOCK), ctx.session() as s:
        p = get_pool(s, name, lock=True)
        if not p.enabled or p.template.status != TemplateStatus.READY:
            return None
        if any(op.kind == PROVISION for op in _active_ops(s, p)):
            return None
        counts = _counts(s, p)
        if counts.failed:
            return None
        n = rules.provision_count(
            counts.total, counts.idle, counts.assigned, p.min_size, p.max_size, p.buffer, waiting
        )
        if n <= 0:
            return None
        op, _ = fleet.create_clones(
            ctx, template=p.template.name, count=n, actor=SYSTEM_ACTOR, pool_id=p.id
        )
        return op


def _provision_quietly(ctx: Context, name: str, waiting: int = 0) -> OperationView | None:
    """Provisioning after a user's request: its failure is the pool's note, not the request's."""
    try:
        return _provision(ctx, name, waiting)
    except GoldfleetError as exc:
        log.warning("pool %s: provisioning not started: %s", name, exc.message)
        return None


def _paused_by_window(op: Operation) -> bool:
    reason = op.paused_reason or ""
    return reason.startswith(WINDOW_CLOSED) or reason == f"paused by {WINDOW_ACTOR}"


def _maintain(ctx: Context, name: str, now: datetime) -> str | None:
    """The window's part of one pass: resume, pause or start the pool's window operation."""
    with _locked(ctx, name) as s:
        p = get_pool(s, name, lock=True)
        window = _window(p, now)
        if window is None:
            return None  # no window: recreating the pool's clones is left to admins
        ops = [op for op in _active_ops(s, p) if op.kind == RECREATE]
        if ops:
            op = ops[-1]
            if window.is_open and op.status == OpStatus.PAUSED and _paused_by_window(op):
                s.rollback()
                try:
                    rollouts.resume_operation(ctx, op.id, actor=WINDOW_ACTOR)
                except Conflict:
                    return None  # resumed or cancelled in the meantime
                return f"pool {name}: window open, operation {op.id} resumed"
            if not window.is_open and op.status in (OpStatus.RUNNING, OpStatus.SCHEDULED):
                s.rollback()
                reason = (
                    f"{WINDOW_CLOSED}; continues at {window.opens_at:%Y-%m-%d %H:%M} UTC"
                    f" (pool {name})"
                )
                try:  # the pause and its reason in one transaction
                    rollouts.pause_operation(ctx, op.id, actor=WINDOW_ACTOR, reason=reason)
                except Conflict:
                    return None  # it finished in the meantime
                return f"pool {name}: window closed, operation {op.id} paused"
            return None
        if not window.is_open or not p.enabled:
            return None
        current = p.template.current_version
        if current is None:
            return None
        behind = list(
            s.scalars(
                select(Clone)
                .where(
                    Clone.pool_id == p.id,
                    Clone.assigned_user.is_(None),
                    Clone.status == CloneStatus.READY,
                    Clone.version_id != current.id,
                )
                .order_by(Clone.name)
            )
        )
        if not behind:
            return None
        pending = set(
            s.scalars(
                select(OperationItem.clone_id).where(
                    OperationItem.clone_id.in_([c.id for c in behind]),
                    OperationItem.state.in_([ItemState.QUEUED, ItemState.RUNNING]),
                )
            )
        )
        work = [(c, CloneAction.RECREATE, current, False) for c in behind if c.id not in pending]
        if not work:
            return None
        op = rollouts.start_operation(ctx, s, RECREATE, name, work, SYSTEM_ACTOR)
        op.pool_id = p.id
        audit.record(
            s,
            SYSTEM_ACTOR,
            "pool.recreate",
            name,
            count=len(work),
            version=current.number,
            window_closes=window.closes_at.isoformat(),
            operation=op.id,
        )
        s.commit()
        op_id = op.id
    crashpoints.reached("pool-window.committed")
    rollouts.launch(ctx, op_id, False)
    return f"pool {name}: window open, {len(work)} idle clones being recreated (operation {op_id})"


def _take_back(ctx: Context, name: str, now: datetime) -> list[str]:
    """The window's first part of a pass: take back the clones assigned to users, under the
    window's logoff policy. Clones nobody is logged on (or whose users were logged off) are
    stopped, their temp volumes emptied, and become idle; the message is sent once per window
    to the users then logged on, the grace counting from it."""
    with ctx.session() as s:
        p = get_pool(s, name)
        window = _window(p, now)
        if window is None or not window.is_open or not p.enabled:
            return []
        policy = rules.window_policy(p.window_policy)
        notified = p.window_notified_at
        assigned = [
            (c.name, c.assigned_user, c.power == Power.RUNNING)
            for c in s.scalars(
                select(Clone)
                .where(
                    Clone.pool_id == p.id,
                    Clone.assigned_user.is_not(None),
                    Clone.status == CloneStatus.READY,
                )
                .order_by(Clone.name)
            )
        ]
    if not assigned:
        return []
    users = fleet.logged_in(ctx, [n for n, _, running in assigned if running])
    notes: list[str] = []
    to_notify: list[str] = []
    for clone, owner, _ in assigned:
        on = users.get(clone, [])
        step, _reason = rules.unassign_step(policy, on, notified, window.opens_at, now)
        if step == SessionStep.NOTIFY:
            to_notify.append(clone)
            continue
        if step not in (SessionStep.GO, SessionStep.LOGOFF):
            continue  # users still on under wait, or within the grace
        try:
            for user in on if step == SessionStep.LOGOFF else ():
                fleet.logoff(ctx, clone, user, actor=WINDOW_ACTOR)
            note = _unassign(ctx, name, clone, str(owner), on, step)
        except GoldfleetError as exc:
            log.warning("pool %s: clone %s not taken back: %s", name, clone, exc.message)
            notes.append(f"pool {name}: clone {clone} not taken back: {exc.message}")
            continue
        if note:
            notes.append(note)
    told = []
    for clone in to_notify:
        try:
            fleet.send_message(ctx, text=policy.message, clone=clone, actor=WINDOW_ACTOR)
            told.append(clone)
        except GoldfleetError as exc:  # tried again next pass
            log.warning("pool %s: users of %s not told: %s", name, clone, exc.message)
    if told:
        crashpoints.reached("pool-window.told")
        with _locked(ctx, name) as s:  # the grace starts once the message is out
            get_pool(s, name, lock=True).window_notified_at = now
            s.commit()
        notes.append(f"pool {name}: users of {', '.join(told)} told of the window")
    return notes


def _unassign(
    ctx: Context, pool: str, clone: str, user: str, logged_off: list[str], step: SessionStep
) -> str | None:
    """Stop a clone taken back by the window and make it idle, unless it changed hands."""
    with ctx.session() as s:
        c = s.scalar(select(Clone).where(Clone.name == clone))
        if c is None or c.assigned_user != user:
            return None
        running = c.power == Power.RUNNING
    if running:
        fleet.stop_clone(ctx, clone, actor=WINDOW_ACTOR)
        crashpoints.reached("pool-window.stopped")
    with _locked(ctx, pool) as s:
        taken = s.execute(
            update(Clone)
            .where(Clone.name == clone, Clone.assigned_user == user)
            .values(assigned_user=None)
        ).rowcount
        if not taken:
            return None
        audit.record(
            s,
            WINDOW_ACTOR,
            "pool.unassign",
            pool,
            user=user,
            clone=clone,
            logged_off=logged_off if step == SessionStep.LOGOFF else [],
        )
        s.commit()
    return f"pool {pool}: clone {clone} taken back from {user} for the window"


def reconcile_pools(ctx: Context) -> list[str]:
    """One pass over every pool: its window first, then its size. Returns what was done."""
    now = ctx.clock.now()
    with ctx.session() as s:
        names = list(s.scalars(select(Pool.name).order_by(Pool.id)))
    notes = []
    for name in names:
        try:
            notes += _take_back(ctx, name, now)
            note = _maintain(ctx, name, now)
            if note:
                notes.append(note)
            op = _provision(ctx, name)
            if op is not None:
                notes.append(
                    f"pool {name}: {op.total} clones being provisioned (operation {op.id})"
                )
        except NotFound:
            continue  # deleted during the pass
        except GoldfleetError as exc:
            log.warning("pool %s: %s", name, exc.message)
            notes.append(f"pool {name}: {exc.message}")
        except Exception:  # one pool's trouble must not stop the others
            log.exception("pool %s: reconcile failed", name)
    return notes
