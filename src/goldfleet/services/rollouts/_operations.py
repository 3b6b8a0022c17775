"""Operations: durable bulk actions over many clones, run under a rollout policy by the
runner (``_runner``). This module starts them, reads them and steers them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from goldfleet.context import Context
from goldfleet.db.tables import Clone, Operation, OperationItem, Version
from goldfleet.domain.model import CloneAction
from goldfleet.domain.rollout import ACTIVE, FINISHED, ItemState, OpStatus, Policy, check_policy
from goldfleet.errors import Conflict, NoSpace
from goldfleet.services.common import OperationView, audit, get_operation, operation_view

# --- starting -----------------------------------------------------------------------------


def start_operation(
    ctx: Context,
    s: Session,
    kind: str,
    target: str,
    work: list[tuple[Clone, CloneAction, Version, bool]],
    actor: str,
    policy: Policy | None = None,
    start_at: datetime | None = None,
) -> Operation:
    """An operation over ``work`` (clone, action, target version, discard data): one queued
    item per clone. Clones stay as they are until the runner starts their item."""
    policy = check_policy(policy or Policy(per_host=ctx.settings.per_host_limit), len(work))
    op = Operation(
        kind=kind,
        target=target,
        total=len(work),
        actor=actor,
        policy=policy.to_json(),
        start_at=start_at,
        status=OpStatus.SCHEDULED if start_at is not None else OpStatus.RUNNING,
    )
    s.add(op)
    s.flush()
    s.add_all(
        OperationItem(
            operation_id=op.id,
            clone_id=c.id,
            clone_name=c.name,
            action=action,
            target_version_id=version.id,
            discard_data=discard,
        )
        for c, action, version, discard in work
    )
    return op


def launch(ctx: Context, op_id: int, wait: bool) -> OperationView:
    """Wake the runner for a committed operation; with ``wait``, until it ends or pauses."""
    ctx.runner.start(op_id)  # type: ignore[union-attr]
    if wait:
        ctx.runner.wait(op_id)  # type: ignore[union-attr]
    return show_operation(ctx, op_id)


def refuse_busy(s: Session, chosen: list[Clone]) -> None:
    """A clone queued or running in another active operation is not given a second one."""
    if not chosen:
        return
    busy = list(
        s.scalars(
            select(OperationItem.clone_name).where(
                OperationItem.clone_id.in_([c.id for c in chosen]),
                OperationItem.state.in_([ItemState.QUEUED, ItemState.RUNNING]),
            )
        )
    )
    if busy:
        shown = ", ".join(sorted(busy)[:10])
        raise Conflict(
            f"{len(busy)} of these clones are already in a running operation ({shown}); wait"
            " for it, or cancel it with: goldfleet op cancel ID"
        )


# --- reading and steering -----------------------------------------------------------------


def _as_held(ctx: Context, view: OperationView) -> OperationView:
    """An operation this server paused while the database could not record it (a full disk)
    is shown paused with its reason, not "running": nothing moves until it is resumed."""
    held = ctx.runner.held(view.id) if ctx.runner is not None else None
    if held is not None and view.status in (OpStatus.RUNNING, OpStatus.SCHEDULED):
        reason, back = held
        view.status, view.paused_reason = OpStatus.PAUSED, reason
        view.error = reason.split(";")[0]
        back = min(back, view.running)
        view.running, view.queued = view.running - back, view.queued + back
        if not view.running:
            view.current = []
    return view


def list_operations(ctx: Context, *, limit: int = 50) -> list[OperationView]:
    with ctx.session() as s:
        ops = s.scalars(select(Operation).order_by(Operation.id.desc()).limit(limit))
        return [_as_held(ctx, operation_view(op, s, detail=0)) for op in ops]


def show_operation(ctx: Context, op_id: int) -> OperationView:
    with ctx.session() as s:
        return _as_held(ctx, operation_view(get_operation(s, op_id), s))


@dataclass(frozen=True, slots=True)
class ItemView:
    """One clone's part in an operation, as the console shows it."""

    clone: str
    action: str
    state: str
    reason: str | None


def list_items(ctx: Context, op_id: int, *, limit: int = 2000) -> list[ItemView]:
    """The items of an operation in clone order (at most ``limit``): state and reason each."""
    with ctx.session() as s:
        get_operation(s, op_id)
        rows = s.execute(
            select(
                OperationItem.clone_name,
                OperationItem.action,
                OperationItem.state,
                OperationItem.reason,
            )
            .where(OperationItem.operation_id == op_id)
            .order_by(OperationItem.clone_name)
            .limit(limit)
        )
        return [ItemView(*row) for row in rows]


def pause_operation(
    ctx: Context, op_id: int, *, actor: str, reason: str | None = None
) -> OperationView:
    """No new clone is started; those in flight finish. ``reason`` (default: who paused it)
    is stored in the same transaction as the pause."""
    with ctx.session() as s:
        op = get_operation(s, op_id)
        if op.status not in (OpStatus.RUNNING, OpStatus.SCHEDULED):
            raise Conflict(f"operation {op_id} is {op.status}; only a running one can be paused")
        op.status, op.paused_reason = OpStatus.PAUSED, reason or f"paused by {actor}"
        audit.record(s, actor, "operation.pause", str(op_id))
        s.commit()
        return operation_view(op, s)


def resume_operation(ctx: Context, op_id: int, *, actor: str) -> OperationView:
    runner = ctx.runner
    if runner is not None and runner.held(op_id) is not None and not runner.record_held():
        held = runner.held(op_id)
        why = held[0] if held is not None else "its pause is not recorded yet"
        raise NoSpace(f"operation {op_id} cannot be resumed yet: {why}; free space and try again")
    with ctx.session() as s:
        op = get_operation(s, op_id)
        if op.status != OpStatus.PAUSED:
            raise Conflict(f"operation {op_id} is {op.status}, not paused")
        later = op.start_at is not None and op.start_at > ctx.clock.now()
        op.status = OpStatus.SCHEDULED if later else OpStatus.RUNNING
        op.paused_reason = None
        op.error = None  # what stopped it (a full disk) is over; the end fills it anew
        audit.record(s, actor, "operation.resume", str(op_id))
        s.commit()
        view = operation_view(op, s)
    ctx.runner.start(op_id)  # type: ignore[union-attr]
    return view


def cancel_operation(ctx: Context, op_id: int, *, actor: str) -> OperationView:
    """Clones not yet started stay on their old version; those in flight finish."""
    with ctx.session() as s:
        op = get_operation(s, op_id)
        if op.status in FINISHED:
            raise Conflict(f"operation {op_id} is already {op.status}")
        op.status = OpStatus.CANCELLING
        audit.record(s, actor, "operation.cancel", str(op_id))
        s.commit()
        drop_queued_creates(ctx, s, op_id)
        s.commit()
        view = operation_view(op, s)
    ctx.runner.start(op_id)  # type: ignore[union-attr]
    return view


def drop_queued_creates(ctx: Context, s: Session, op_id: int) -> None:
    """A create whose item is still queued leaves no clone behind when its operation is
    cancelled: neither the row nor a folder (one a full disk interrupted has files)."""
    for it in s.scalars(
        select(OperationItem).where(
            OperationItem.operation_id == op_id,
            OperationItem.state == ItemState.QUEUED,
            OperationItem.action == CloneAction.CREATE,
        )
    ):
        clone = s.get(Clone, it.clone_id) if it.clone_id else None
        it.state, it.reason, it.clone_id = ItemState.CANCELLED, "cancelled", None
        if clone is not None:
            ctx.volumes.remove_clone(clone.uid)
            s.delete(clone)


def recover_operations(ctx: Context) -> list[str]:
    """Nothing to mark: unfinished operations simply continue in the runner."""
    with ctx.session() as s:
        active = list(s.scalars(select(Operation.id).where(Operation.status.in_(list(ACTIVE)))))
    return [f"operation {op_id} continues" for op_id in active]


def policy_from(ctx: Context, rollout: object | None) -> tuple[Policy | None, datetime | None]:
    """The rollout fields of a request (any object with them, or None) → policy, start time."""
    from goldfleet.domain.rollout import build_policy, parse_time

    if rollout is None:
        return None, None
    now = ctx.clock.now()
    fields = {
        k: getattr(rollout, k)
        for k in (
            "logoff",
            "deadline",
            "grace",
            "message",
            "max_parallel",
            "canary",
            "canary_auto",
            "stop_on_error",
            "max_failures",
        )
    }
    per_host = getattr(rollout, "per_host", None)
    per_host = ctx.settings.per_host_limit if per_host is None else per_host
    policy = build_policy(now=now, per_host=per_host, **fields)
    at = getattr(rollout, "at", None)
    return policy, (parse_time(at, now, "--at") if at else None)
