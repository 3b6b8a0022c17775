"""Clones: create, start, stop, restore, rebase, recreate, delete, retry.

Every action that touches files goes in three steps, so that no half-made clone is ever shown as
complete: (1) *request* — the rules are checked and the clone row is marked with the action and
its target version, in one transaction; (2) *execute* — volumes are built beside the old ones
and switched by rename, and the hypervisor is told (no database writes); (3) *record* — the row
is marked ``ready`` on the target version, or ``failed`` with the reason. A step interrupted by a
crash leaves a ``failed`` clone whose recorded action ``clone retry`` completes; executing is
idempotent. Many clones go through the runner (services/rollouts) in batches.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, false, func, null, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from goldfleet import crashpoints
from goldfleet.context import Context
from goldfleet.db.tables import Clone, Operation, OperationItem, Pool, Template, Version
from goldfleet.domain import rules, sites, space
from goldfleet.domain.access import Reach
from goldfleet.domain.model import (
    LIGHT_ACTIONS,
    CloneAction,
    CloneKind,
    CloneStatus,
    Outline,
    Power,
    VolumeRole,
)
from goldfleet.domain.names import check_name, numbered_names, parse_version_ref
from goldfleet.domain.rollout import ItemState, Logoff, Policy, check_policy
from goldfleet.drivers.base import DiskSpec, DomainSpec, DriverError
from goldfleet.errors import Conflict, GoldfleetError, InvalidInput, NoSpace, NotFound
from goldfleet.services import hosts, rollouts
from goldfleet.services.common import (
    CloneView,
    OperationView,
    VolumeView,
    audit,
    chain,
    get_clone,
    get_template,
    get_version,
    outline_of,
)
from goldfleet.store.files import Abandoned

MAX_BULK = 10_000
MAX_MESSAGE = 1000  # characters of a message to users, as a rollout's --message

_STATUS_FOR = {
    CloneAction.CREATE: CloneStatus.CREATING,
    CloneAction.RESTORE: CloneStatus.REBUILDING,
    CloneAction.REBASE: CloneStatus.REBUILDING,
    CloneAction.RECREATE: CloneStatus.REBUILDING,
    CloneAction.DELETE: CloneStatus.DELETING,
}
TRANSITIONAL = (CloneStatus.CREATING, CloneStatus.REBUILDING, CloneStatus.DELETING)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything ``execute`` needs, read from the database before any file is touched."""

    clone_id: int
    name: str
    uid: str
    kind: str
    action: str
    top: str
    virtual_size: int
    outline: Outline
    running: bool
    discard_data: bool
    backing: tuple[str, ...] = ()  # the target's layer files, top first (linked clones)
    host: str | None = None
    chain: tuple[str, ...] = ()  # the target's layer digests, top first (linked clones)
    text: str = ""  # a message's text (the operation's policy message)


@dataclass(frozen=True, slots=True)
class Outcome:
    clone_id: int
    error: str | None
    power: str
    host: str | None = None
    copied: tuple[tuple[str, int, int], ...] = ()  # into edge stores: (host, layers, bytes)
    disk_full: str | None = None  # the work found goldfleet's disk full: the runner pauses
    light: bool = False  # a start, stop, message or logoff: the clone was not marked


# --- views --------------------------------------------------------------------------------


def clone_view(ctx: Context, c: Clone, *, volumes: bool = False) -> CloneView:
    view = CloneView(
        name=c.name,
        template=c.template.name,
        version=c.version.number,
        kind=c.kind,
        status=c.status,
        power=c.power,
        action=c.action,
        target_version=c.target_version.number if c.target_version else None,
        error=c.error,
        operation_id=c.operation_id,
        created_at=c.created_at,
    )
    if volumes:
        outline = outline_of(c.template)
        sizes = {VolumeRole.TEMP: outline.temp, VolumeRole.DATA: outline.data}
        view.volumes = [
            VolumeView(
                role=role,
                index=i,
                path=str(path),
                size=c.version.layer.virtual_size if role == VolumeRole.SYSTEM else sizes[role][i],
                version=f"v{c.version.number}" if role == VolumeRole.SYSTEM else None,
            )
            for role, i, path in ctx.volumes.volume_paths(c.uid, outline)
        ]
    return view


POWER_STATES = tuple(Power)
STATES = (*CloneStatus, *POWER_STATES)  # what the list's state filter takes: status or power


def list_clones(
    ctx: Context,
    *,
    template: str | None = None,
    state: str | None = None,
    host: str | None = None,
    version: int | None = None,
    after: str | None = None,
    limit: int | None = None,
    reach: Reach | None = None,
) -> list[CloneView]:
    """Clones in name order, filtered in one query (template, version and target version
    joined: no query per clone). ``state`` is a status (ready, failed…) or a power state
    (running, stopped); ``version`` a version number, of every template unless ``template`` is
    given. ``after`` (a clone name) and ``limit`` page by name: a keyset, so a page does not
    shift when clones before it come or go. ``reach`` (services/access): only the clones under
    one of its scopes, in the same query."""
    rows = clone_rows(
        ctx,
        template=template,
        state=state,
        host=host,
        version=version,
        after=after,
        limit=limit,
        reach=reach,
    )
    return [CloneView(**row) for row in rows]


def clone_rows(
    ctx: Context,
    *,
    template: str | None = None,
    state: str | None = None,
    host: str | None = None,
    version: int | None = None,
    after: str | None = None,
    limit: int | None = None,
    reach: Reach | None = None,
    pool: str | None = None,
    user: str | None = None,
) -> list[dict[str, Any]]:
    """:func:`list_clones` as plain dicts, each with CloneView's fields in its order and
    values of its types (``volumes`` None): what a large list is serialized from without a
    model per row (the API's GET /clones). ``pool`` and ``user`` (the user a clone is assigned
    to) narrow it further (the web console's filters)."""
    if state is not None and state not in STATES:
        raise InvalidInput(f"state {state!r} is not a clone state: use {', '.join(STATES)}")
    if after is not None:
        check_name(after, "clone name")
    if limit is not None and limit < 1:
        raise InvalidInput(f"limit {limit} is not valid: list at least 1 clone")
    target = aliased(Version)
    q = (
        select(  # labelled as CloneView's fields: the row is the view
            Clone.name,
            Template.name.label("template"),
            Version.number.label("version"),
            Clone.kind,
            Clone.status,
            Clone.power,
            Clone.action,
            target.number.label("target_version"),
            Clone.error,
            Clone.operation_id,
            null().label("volumes"),
            Clone.created_at,
        )
        .join(Template, Clone.template_id == Template.id)
        .join(Version, Clone.version_id == Version.id)
        .outerjoin(target, Clone.target_version_id == target.id)
        .order_by(Clone.name)
    )
    if state is not None:
        q = q.where((Clone.power if state in POWER_STATES else Clone.status) == state)
    if host is not None:
        q = q.where(Clone.host == host)
    if version is not None:
        q = q.where(Version.number == version)
    if after is not None:
        q = q.where(Clone.name > after)
    if pool is not None:
        q = q.where(Clone.pool_id.in_(select(Pool.id).where(Pool.name == pool)))
    if user is not None:
        q = q.where(Clone.assigned_user == user)
    if reach is not None and not reach.everything:
        q = q.where(_within(reach))
    if limit is not None:
        q = q.limit(limit)
    with ctx.session() as s:
        if template is not None:
            q = q.where(Clone.template_id == get_template(s, template).id)
        result = s.execute(q)
        keys = list(result.keys())
        return [dict(zip(keys, row, strict=True)) for row in result]


def count_clones(ctx: Context, *, reach: Reach | None = None) -> dict[str, dict[str, int]]:
    """How many clones (of those under ``reach``) are in each status and each power state, in
    two grouped queries: ``{"status": {"ready": N, …}, "power": {"running": N, …}}``."""
    out: dict[str, dict[str, int]] = {}
    with ctx.session() as s:
        for key, column in (("status", Clone.status), ("power", Clone.power)):
            q = select(column, func.count()).group_by(column)
            if reach is not None and not reach.everything:
                q = q.where(_within(reach))
            out[key] = {str(value): n for value, n in s.execute(q)}
    return out


BULK_ACTIONS = ("restore", "rebase", "recreate", "start", "stop", "message", "logoff")
# how an operation that does not rebuild treats logged-in users unless told otherwise: a start
# and a message leave them be; a stop and a logoff log them off at once, as a single stop does
_LIGHT_LOGOFF = {
    CloneAction.START: Logoff.LEAVE,
    CloneAction.MESSAGE: Logoff.LEAVE,
    CloneAction.STOP: Logoff.FORCE,
    CloneAction.LOGOFF: Logoff.FORCE,
}


def bulk_action(
    ctx: Context,
    *,
    names: Sequence[str] | None = None,
    template: str | None = None,
    action: str,
    actor: str,
    text: str | None = None,
    policy: Policy | None = None,
    start_at: datetime | None = None,
    wait: bool = False,
) -> OperationView:
    """One operation over the clones named (or every ready clone of ``template``):
    ``restore`` (each to its own version), ``rebase`` or ``recreate`` (each onto its
    template's current version), ``start``, ``stop``, ``message`` (``text`` to their users) or
    ``logoff`` (every user logged in when the clone's turn comes). All are refused, nothing
    started, if one is unknown, unusable or held by another operation.

    Users: a start and a message leave them be (whatever ``policy`` says); a stop honours the
    policy's logoff mode (force when no policy is given: a stop shuts the clone down, as
    ``clone stop`` does); a logoff logs them off at once (force) or, with notify-force, after
    the policy's message and grace period (``wait`` is taken as force)."""
    if action not in BULK_ACTIONS:
        raise InvalidInput(f"action {action!r} is not one of {', '.join(BULK_ACTIONS)}")
    kind = CloneAction(action)
    if (names is None) == (template is None):
        raise InvalidInput("name the clones or a template, not both or neither")
    if kind == CloneAction.MESSAGE:
        text = check_text(text or "")
    elif text is not None:
        raise InvalidInput(f"a {action} sends no text: only a message does")
    if kind in LIGHT_ACTIONS:
        policy = policy or Policy(per_host=ctx.settings.per_host_limit, logoff=_LIGHT_LOGOFF[kind])
        if kind in (CloneAction.START, CloneAction.MESSAGE):
            policy = replace(policy, logoff=Logoff.LEAVE)
        elif kind == CloneAction.LOGOFF and policy.logoff == Logoff.WAIT:
            policy = replace(policy, logoff=Logoff.FORCE)
        if text is not None:
            policy = replace(policy, message=text)
    with ctx.session() as s:
        if template is not None:
            t = get_template(s, template)
            chosen = list(
                s.scalars(
                    select(Clone)
                    .where(Clone.template_id == t.id, Clone.status == CloneStatus.READY)
                    .order_by(Clone.name)
                )
            )
            if not chosen:
                raise Conflict(f"template {template} has no ready clone to {action}")
        else:
            wanted = sorted(set(names or ()))
            if not wanted:
                raise InvalidInput("no clone selected")
            if len(wanted) > MAX_BULK:
                raise InvalidInput(f"{len(wanted)} clones selected: {MAX_BULK} at most")
            chosen = list(
                s.scalars(select(Clone).where(Clone.name.in_(wanted)).order_by(Clone.name))
            )
            missing = sorted(set(wanted) - {c.name for c in chosen})
            if missing:
                raise NotFound(f"no clone {', '.join(missing[:5])}")
        for c in chosen:
            rules.check_clone_usable(c.name, c.status)
        rollouts.refuse_busy(s, chosen)
        currents: dict[int, Version] = {}
        work = []
        for c in chosen:
            if kind in LIGHT_ACTIONS or kind == CloneAction.RESTORE:
                target = c.version
            else:
                if c.template_id not in currents:
                    currents[c.template_id] = get_version(s, c.template, None)
                target = currents[c.template_id]
            work.append((c, kind, target, False))
        label = template or (chosen[0].name if len(chosen) == 1 else f"{len(chosen)} clones")
        op = rollouts.start_operation(
            ctx, s, f"clone.{action}", label, work, actor, policy, start_at
        )
        detail: dict[str, Any] = {"count": len(chosen), "operation": op.id}
        if text is not None:
            detail["text"] = text
        audit.record(s, actor, f"clone.{action}", label, **detail)
        s.commit()
        op_id = op.id
    return rollouts.launch(ctx, op_id, wait)


def check_text(text: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput("the message is empty; write the text the users should read")
    if len(text) > MAX_MESSAGE:
        raise InvalidInput(f"the message is longer than {MAX_MESSAGE} characters")
    return text


def _within(reach: Reach) -> ColumnElement[bool]:
    """The clones under one of ``reach``'s scopes, as a condition on ``clones``."""
    parts: list[ColumnElement[bool]] = []
    if reach.templates:
        parts.append(
            Clone.template_id.in_(select(Template.id).where(Template.name.in_(reach.templates)))
        )
    if reach.pools:
        parts.append(Clone.pool_id.in_(select(Pool.id).where(Pool.name.in_(reach.pools))))
    if reach.clones:
        parts.append(Clone.name.in_(reach.clones))
    if reach.own:
        parts.append(Clone.assigned_user == reach.own)
    return or_(false(), *parts)


def show_clone(ctx: Context, name: str) -> CloneView:
    with ctx.session() as s:
        return clone_view(ctx, get_clone(s, name), volumes=True)


# --- the three steps ----------------------------------------------------------------------


def _mark(c: Clone, action: CloneAction, target: Version, op_id: int | None, **flags: bool) -> None:
    c.action = action
    c.status = _STATUS_FOR[action]
    c.target_version_id = target.id
    c.operation_id = op_id
    c.error = None
    c.discard_data = flags.get("discard_data", False)
    c.owner = None  # an operation's clone is its item's; a single action sets its server


def load_plans(ctx: Context, s: Session, clone_ids: list[int]) -> list[Plan]:
    plans = []
    chains: dict[str, tuple[str, ...]] = {}
    digests: dict[str, tuple[str, ...]] = {}
    # a start, stop, message or logoff leaves the clone unmarked: its running item says it
    light = {
        clone_id: (action, op_id)
        for clone_id, action, op_id in s.execute(
            select(OperationItem.clone_id, OperationItem.action, OperationItem.operation_id).where(
                OperationItem.clone_id.in_(clone_ids),
                OperationItem.state == ItemState.RUNNING,
                OperationItem.action.in_([str(a) for a in LIGHT_ACTIONS]),
            )
        )
    }
    texts: dict[int, str] = {}
    for c in s.scalars(select(Clone).where(Clone.id.in_(clone_ids)).order_by(Clone.id)):
        if c.id in light:
            action, op_id = light[c.id]
            if action == CloneAction.MESSAGE and op_id not in texts:
                texts[op_id] = Policy.from_json(s.get(Operation, op_id).policy).message
            plans.append(
                Plan(
                    clone_id=c.id,
                    name=c.name,
                    uid=c.uid,
                    kind=c.kind,
                    action=action,
                    top=c.version.top_layer,
                    virtual_size=0,
                    outline=outline_of(c.template),
                    running=c.power == Power.RUNNING,
                    discard_data=False,
                    host=c.host,
                    text=texts.get(op_id, ""),
                )
            )
            continue
        target = c.target_version or c.version
        if target.top_layer not in chains:
            digests[target.top_layer] = tuple(x.digest for x in chain(s, target.top_layer))
            chains[target.top_layer] = tuple(
                str(ctx.layers.path(digest)) for digest in digests[target.top_layer]
            )
        plans.append(
            Plan(
                clone_id=c.id,
                name=c.name,
                uid=c.uid,
                kind=c.kind,
                action=c.action or CloneAction.RESTORE,
                top=target.top_layer,
                virtual_size=target.layer.virtual_size,
                outline=outline_of(target.template),
                running=c.power == Power.RUNNING,
                discard_data=c.discard_data,
                backing=chains[target.top_layer] if c.kind == CloneKind.LINKED else (),
                host=c.host,
                chain=digests[target.top_layer] if c.kind == CloneKind.LINKED else (),
            )
        )
    return plans


def _domain_spec(ctx: Context, plan: Plan, host: str | None = None) -> DomainSpec:
    """The VM of a clone. With edge stores on, a linked clone's system volume is declared on
    the layers of its host's edge store (docs/edge.md), so the VM reads its host's disk."""
    backing = plan.backing
    if ctx.edges is not None and host is not None and plan.chain:
        backing = ctx.edges.backing(host, plan.chain)
    disks = tuple(
        DiskSpec(
            role=str(role),
            path=str(path),
            backing=backing if role == VolumeRole.SYSTEM else (),
        )
        for role, _, path in ctx.volumes.volume_paths(plan.uid, plan.outline)
    )
    return DomainSpec(name=plan.name, disks=disks, network=ctx.settings.network or None)


def call_driver(ctx: Context, fn: Callable[..., T], **kwargs: Any) -> T:
    """One driver call, bounded by ``driver_timeout``: a hung hypervisor fails the clone it was
    working on (the call's thread is abandoned), never the whole operation."""
    result: list[Any] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn(**kwargs))
        except BaseException as exc:  # handed to the caller's thread
            error.append(exc)

    thread = threading.Thread(target=run, daemon=True, name="goldfleet-driver-call")
    thread.start()
    thread.join(ctx.settings.driver_timeout)
    if thread.is_alive():
        raise DriverError(
            f"the {ctx.driver.name} driver did not answer {fn.__name__} within"
            f" {ctx.settings.driver_timeout:g} s"
        )
    if error:
        raise error[0]
    return result[0]


def execute(ctx: Context, plan: Plan, logoff: Sequence[str] = ()) -> Outcome:
    """Do one clone's files and hypervisor work. Idempotent; writes nothing to the database."""
    if plan.action in LIGHT_ACTIONS:
        return _execute_light(ctx, plan, logoff)
    power = Power.RUNNING if plan.running else Power.STOPPED
    host = plan.host
    drv = ctx.driver
    # edge stores: the chain is made complete on the clone's host before anything about the
    # clone changes, so a host that cannot take it leaves the clone as it was
    edge = ctx.edges is not None and bool(plan.chain) and plan.action != CloneAction.DELETE
    copied: list[tuple[str, int, int]] = []

    def prepare(on: str) -> None:
        if infos := hosts.prepare_host(ctx, plan.name, on, plan.chain):
            copied.append((on, len(infos), sum(i.size for i in infos)))

    try:
        if edge:
            from goldfleet.services.hosts import place_new

            if host is None:  # not placed at claim (edge stores were off then): its VM may
                # exist from an interrupted attempt, else it goes where Placer says
                host = call_driver(ctx, drv.host_of, name=plan.name) or place_new(
                    ctx, plan.kind, plan.chain
                )
            prepare(host)
        if logoff:
            # whoever is logged on now: users may have left (or come) since the policy looked
            now_on = call_driver(ctx, drv.sessions, names=[plan.name]).get(plan.name, [])
            for session in now_on:
                call_driver(ctx, drv.logoff, name=plan.name, user=session.user)
        if plan.running:
            call_driver(ctx, drv.shutdown, name=plan.name, timeout=ctx.settings.shutdown_timeout)
            power = Power.STOPPED
        if plan.action == CloneAction.DELETE:
            call_driver(ctx, drv.undefine, name=plan.name)
            ctx.volumes.remove_clone(plan.uid)
            return Outcome(plan.clone_id, None, Power.STOPPED, None)
        if plan.discard_data:
            ctx.volumes.remove_data(plan.uid, plan.outline)
        ctx.volumes.build_clone(plan.uid, plan.kind, plan.top, plan.virtual_size, plan.outline)
        placed = call_driver(ctx, drv.define, spec=_domain_spec(ctx, plan, host), host=host)
        if edge and placed != host:  # the VM already lived elsewhere and stays there
            prepare(placed)
            call_driver(ctx, drv.define, spec=_domain_spec(ctx, plan, placed), host=placed)
        host = placed
        if plan.running:
            call_driver(ctx, drv.start, name=plan.name)
            power = Power.RUNNING
        return Outcome(plan.clone_id, None, power, host, tuple(copied))
    except GoldfleetError as exc:
        error, full = f"{plan.action} failed: {exc.message}", ctx.disk_full_reason(exc)
    except Exception as exc:  # one clone's failure must never stop the others
        error = f"{plan.action} failed: {type(exc).__name__}: {exc}"
        full = ctx.disk_full_reason(exc)
    return Outcome(plan.clone_id, error, power, host, tuple(copied), full)


def _execute_light(ctx: Context, plan: Plan, logoff: Sequence[str]) -> Outcome:
    """A start, stop, message or logoff of one clone (an operation's item). ``logoff``: the
    users the operation's policy logs off first (a stop's, a logoff's). Starting a running
    clone, stopping a stopped one, messaging or logging off a stopped one do nothing."""
    power = Power.RUNNING if plan.running else Power.STOPPED
    drv = ctx.driver
    try:
        if logoff and plan.running:
            # whoever is logged on now: users may have left (or come) since the policy looked
            now_on = call_driver(ctx, drv.sessions, names=[plan.name]).get(plan.name, [])
            for session in now_on:
                call_driver(ctx, drv.logoff, name=plan.name, user=session.user)
        if plan.action == CloneAction.START and not plan.running:
            call_driver(ctx, drv.start, name=plan.name)
            power = Power.RUNNING
        elif plan.action == CloneAction.STOP and plan.running:
            call_driver(ctx, drv.shutdown, name=plan.name, timeout=ctx.settings.shutdown_timeout)
            ctx.volumes.reset_temp(plan.uid, plan.outline)  # as every shutdown
            power = Power.STOPPED
        elif plan.action == CloneAction.MESSAGE and plan.running:
            call_driver(ctx, drv.send_message, name=plan.name, text=plan.text)
        return Outcome(plan.clone_id, None, power, plan.host, light=True)
    except GoldfleetError as exc:
        error = f"{plan.action} failed: {exc.message}"
    except Exception as exc:  # one clone's failure must never stop the others
        error = f"{plan.action} failed: {type(exc).__name__}: {exc}"
    return Outcome(plan.clone_id, error, power, plan.host, light=True)


def record(s: Session, outcomes: list[Outcome]) -> tuple[int, int]:
    """Write the outcomes of executed plans; returns (done, failed)."""
    done = failed = 0
    # one query for the clones and their target versions, not one per clone
    clones = {
        c.id: c
        for c in s.scalars(select(Clone).where(Clone.id.in_([o.clone_id for o in outcomes])))
    }
    targets = {c.target_version_id for c in clones.values() if c.target_version_id}
    # held here: the session's identity map keeps rows only while they are referenced, so a
    # list thrown away at once made every ``s.get`` below one more SELECT
    versions = (
        {v.id: v for v in s.scalars(select(Version).where(Version.id.in_(targets)))}
        if targets
        else {}
    )
    for out in outcomes:
        c = clones.get(out.clone_id)
        if c is None:
            continue
        if out.light:  # the clone was not marked: only its power changed (or not)
            c.power = out.power
            done, failed = (done, failed + 1) if out.error else (done + 1, failed)
            continue
        _audit_copies(s, c, out.copied)
        c.power = out.power
        if out.host is not None:
            c.host = out.host
        c.owner = None
        if out.error is not None:
            c.status, c.error = CloneStatus.FAILED, out.error
            failed += 1
            continue
        done += 1
        if c.action == CloneAction.DELETE:
            s.delete(c)
            continue
        if c.target_version_id is not None:
            c.version_id = c.target_version_id
            c.template_id = versions[c.target_version_id].template_id
        c.status, c.action, c.target_version_id = CloneStatus.READY, None, None
        c.error, c.discard_data = None, False
    return done, failed


def _audit_copies(s: Session, c: Clone, copied: Sequence[tuple[str, int, int]]) -> None:
    """Layers a clone action copied into edge stores, by the operation it was part of (or by
    goldfleet for a single action): the same entry as ``host prefetch``."""
    if not copied:
        return
    version = c.target_version or c.version
    for host, layers, size in copied:
        audit.record(
            s,
            f"op:{c.operation_id}" if c.operation_id is not None else "goldfleet",
            "host.prefetch",
            host,
            version=f"{version.template.name}:v{version.number}",
            clone=c.name,
            layers_copied=layers,
            bytes_copied=size,
        )


def _run_one(ctx: Context, clone_id: int) -> CloneView:
    """Execute and record one requested clone action in this thread."""
    with ctx.session() as s:
        (plan,) = load_plans(ctx, s, [clone_id])
    outcome = execute(ctx, plan)
    if outcome.error is None:
        try:
            ctx.volumes.sync_folders()  # its folder durable before the row says it is done
        except OSError as exc:
            outcome = replace(
                outcome,
                error=f"{plan.action} failed: {exc}",
                disk_full=ctx.disk_full_reason(exc),
            )
    with ctx.session() as s:
        record(s, [outcome])
        s.commit()
    if outcome.disk_full is not None:
        raise NoSpace(
            f"clone {plan.name}: {outcome.disk_full}; {plan.action} did not finish; free space"
            f" there and run: goldfleet clone retry {plan.name}"
        )
    if outcome.error is not None:
        raise Conflict(
            f"clone {plan.name}: {outcome.error}; fix the cause and run: goldfleet clone retry"
            f" {plan.name}"
        )
    if plan.action == CloneAction.DELETE:
        return None  # type: ignore[return-value]
    with ctx.session() as s:
        return clone_view(ctx, s.get(Clone, clone_id), volumes=True)


# --- actions ------------------------------------------------------------------------------


def create_clones(
    ctx: Context,
    *,
    template: str,
    count: int | None = None,
    name: str | None = None,
    full: bool = False,
    actor: str,
    wait: bool = False,
    policy: Policy | None = None,
    start_at: datetime | None = None,
    pool_id: int | None = None,
) -> tuple[OperationView, list[str]]:
    """Create ``count`` numbered clones (or one named clone) of the current version; with
    ``pool_id``, the clones and the operation belong to that pool (services/pools.py)."""
    if (count is None) == (name is None):
        raise InvalidInput("give either a clone name or a count, not both")
    if count is not None and not 1 <= count <= MAX_BULK:
        raise InvalidInput(f"count must be between 1 and {MAX_BULK}, not {count}")
    # one naming at a time per template: two bulk creates never pick the same names
    with ctx.template_lock(template), ctx.session() as s:
        t = get_template(s, template)
        rules.check_can_clone(t.name, t.status)
        v = get_version(s, t, None)
        if name is not None:
            check_name(name, "clone name")
            if name.startswith("maintenance."):
                raise InvalidInput("clone names starting with 'maintenance.' are reserved")
            if s.scalar(select(Clone.id).where(Clone.name == name)) is not None:
                raise Conflict(f"clone {name} already exists; choose another name")
            names = [name]
        else:
            taken = set(s.scalars(select(Clone.name).where(Clone.name.like(f"{t.name}-%"))))
            names = numbered_names(t.name, taken, count)  # type: ignore[arg-type]
        kind = CloneKind.FULL if full else t.kind
        if kind == CloneKind.FULL:
            _check_room_for_full(ctx, s, v, len(names), outline_of(t))
        clones = [
            Clone(
                name=n,
                uid=secrets.token_hex(16),
                template_id=t.id,
                version_id=v.id,
                kind=kind,
                power=Power.STOPPED,
                pool_id=pool_id,
            )
            for n in names
        ]
        s.add_all(clones)
        s.flush()
        op = rollouts.start_operation(
            ctx,
            s,
            "clone.create",
            t.name,
            [(c, CloneAction.CREATE, v, False) for c in clones],
            actor,
            policy,
            start_at,
        )
        op.pool_id = pool_id
        for c in clones:
            _mark(c, CloneAction.CREATE, v, op.id)
        audit.record(
            s,
            actor,
            "clone.create",
            t.name,
            count=len(names),
            kind=kind,
            version=v.number,
            operation=op.id,
        )
        try:
            s.commit()
        except IntegrityError:
            raise Conflict(
                "another request took one of these clone names at the same time; try again"
            ) from None
        op_id = op.id
    crashpoints.reached("clone-create.committed")
    return rollouts.launch(ctx, op_id, wait), names


def _check_room_for_full(
    ctx: Context, s: Session, v: Version, count: int, outline: Outline
) -> None:
    """Full clones are copies of their whole chain: refused up front (with the space needed
    and free) when the store's disk cannot hold them, rather than filling it half way."""
    made = ctx.volumes.full_copy_size(v.top_layer)
    copy = made if made is not None else sum(layer.size for layer in chain(s, v.top_layer))
    estimate = space.full_clones_estimate(
        count, copy, copy_made=made is not None, volumes=len(outline.temp) + len(outline.data)
    )
    what = f"{count} full clones of {v.template.name}" if count > 1 else "a full clone"
    ctx.volumes.check_room(what, estimate)


@contextmanager
def stopped(ctx: Context, name: str) -> Iterator[None]:
    """Stop a running clone for the duration of the block, then start it again."""
    with ctx.session() as s:
        c = get_clone(s, name)
        was_running = c.power == Power.RUNNING
    if was_running:
        stop_clone(ctx, name, actor="goldfleet")
    try:
        yield
    finally:
        if was_running:
            start_clone(ctx, name, actor="goldfleet")


def start_clone(ctx: Context, name: str, *, actor: str) -> CloneView:
    with ctx.session() as s:
        c = get_clone(s, name)
        rules.check_clone_usable(c.name, c.status)
        ctx.driver.start(name=c.name)
        c.power = Power.RUNNING
        audit.record(s, actor, "clone.start", c.name)
        s.commit()
        return clone_view(ctx, c)


def stop_clone(ctx: Context, name: str, *, actor: str) -> CloneView:
    """Shut the clone down; its temp volumes are emptied."""
    with ctx.session() as s:
        c = get_clone(s, name)
        rules.check_clone_usable(c.name, c.status)
        ctx.driver.shutdown(name=c.name)
        ctx.volumes.reset_temp(c.uid, outline_of(c.template))
        c.power = Power.STOPPED
        audit.record(s, actor, "clone.stop", c.name)
        s.commit()
        return clone_view(ctx, c)


def restore_clone(ctx: Context, name: str, *, actor: str) -> CloneView:
    """System volume back to its version's content, temp emptied, data untouched."""
    with ctx.session() as s:
        c = get_clone(s, name)
        rules.check_clone_usable(c.name, c.status)
        _mark(c, CloneAction.RESTORE, c.version, None)
        c.owner = ctx.server_id
        audit.record(s, actor, "clone.restore", c.name, version=c.version.number)
        s.commit()
        clone_id = c.id
    return _run_one(ctx, clone_id)


def rebase_clone(ctx: Context, name: str, *, to: str | None = None, actor: str) -> CloneView:
    """Move a clone to another version (of its template, or of one with the same outline)."""
    with ctx.session() as s:
        c = get_clone(s, name)
        rules.check_clone_usable(c.name, c.status)
        if to is None:
            target_template, number = c.template, None
        else:
            tname, number = parse_version_ref(to)
            target_template = get_template(s, tname)
        target = get_version(s, target_template, number)
        sites.check_version_enabled(
            target_template.name, target.number, target.status, "a rebase target"
        )
        if target_template.id != c.template_id:
            rules.check_outlines_match(
                c.name, outline_of(c.template), target_template.name, outline_of(target_template)
            )
        _mark(c, CloneAction.REBASE, target, None)
        c.owner = ctx.server_id
        audit.record(
            s, actor, "clone.rebase", c.name, to=f"{target_template.name}:v{target.number}"
        )
        s.commit()
        clone_id = c.id
    return _run_one(ctx, clone_id)


def recreate_candidates(
    s: Session, t: Template, version_id: int | None, include_full: bool
) -> list[Clone]:
    """The clones of ``t`` a recreate onto version ``version_id`` rebuilds (None: a version
    that does not exist yet, so every clone is behind it)."""
    candidates = list(
        s.scalars(
            select(Clone)
            .where(Clone.template_id == t.id, Clone.status.not_in(TRANSITIONAL))
            .order_by(Clone.kind.desc(), Clone.name)
        )
    )
    wanted = set(
        rules.select_for_recreate(
            ((c.name, c.kind, c.version_id) for c in candidates),
            version_id if version_id is not None else -1,
            include_full=include_full,
        )
    )
    return [c for c in candidates if c.name in wanted]


def check_recreate(s: Session, t: Template, policy: Policy | None, include_full: bool) -> None:
    """Before a maintenance exit seals anything: would its recreate be accepted?"""
    chosen = recreate_candidates(s, t, None, include_full)
    if policy is not None:
        check_policy(policy, len(chosen))
    rollouts.refuse_busy(s, chosen)


def start_recreate(
    ctx: Context,
    s: Session,
    t: Template,
    *,
    include_full: bool,
    actor: str,
    policy: Policy | None = None,
    start_at: datetime | None = None,
    committed_to: bool = False,
) -> Operation:
    """Add to ``s``, uncommitted, the operation that recreates the clones of ``t`` behind its
    current version: the caller commits it in the transaction that made that version current,
    so that neither is ever stored without the other.

    ``committed_to``: the caller is past its point of no return (a maintenance exit's overlay
    is sealed) and must not be refused now. Clones another operation took since the caller's
    checks (:func:`check_recreate`) are then left out, on their version, and a canary larger
    than the clones left is cut to them; the audit entry names the clones left out."""
    current = get_version(s, t, None)
    chosen = recreate_candidates(s, t, current.id, include_full)
    return _add_recreate(
        ctx,
        s,
        t,
        chosen,
        t.name,
        include_full=include_full,
        discard_data=False,
        actor=actor,
        policy=policy,
        start_at=start_at,
        committed_to=committed_to,
    )


def _add_recreate(
    ctx: Context,
    s: Session,
    t: Template,
    chosen: list[Clone],
    target: str,
    *,
    include_full: bool,
    discard_data: bool,
    actor: str,
    policy: Policy | None,
    start_at: datetime | None,
    committed_to: bool = False,
) -> Operation:
    current = get_version(s, t, None)
    left_out: list[str] = []
    if committed_to:
        busy = set(_queued_or_running(s, chosen))
        left_out = sorted(c.name for c in chosen if c.id in busy)
        chosen = [c for c in chosen if c.id not in busy]
        if policy is not None and policy.canary > len(chosen):
            policy = replace(policy, canary=len(chosen))
    else:
        rollouts.refuse_busy(s, chosen)
    work = [(c, CloneAction.RECREATE, current, discard_data) for c in chosen]
    op = rollouts.start_operation(ctx, s, "clone.recreate", t.name, work, actor, policy, start_at)
    audit.record(
        s,
        actor,
        "clone.recreate",
        target,
        count=len(chosen),
        version=current.number,
        include_full=include_full,
        discard_data=discard_data,
        operation=op.id,
        **({"left_out_busy": left_out} if left_out else {}),
    )
    return op


def _queued_or_running(s: Session, chosen: list[Clone]) -> list[int]:
    """The ids of those of ``chosen`` that an operation holds (queued or running)."""
    if not chosen:
        return []
    return list(
        s.scalars(
            select(OperationItem.clone_id).where(
                OperationItem.clone_id.in_([c.id for c in chosen]),
                OperationItem.state.in_([ItemState.QUEUED, ItemState.RUNNING]),
            )
        )
    )


def recreate(
    ctx: Context,
    *,
    name: str | None = None,
    template: str | None = None,
    include_full: bool = False,
    discard_data: bool = False,
    actor: str,
    wait: bool = False,
    policy: Policy | None = None,
    start_at: datetime | None = None,
) -> OperationView:
    """Rebuild clones on their template's current version (linked; full with include_full)."""
    if (name is None) == (template is None):
        raise InvalidInput("give either a clone name or --template, not both")
    with ctx.session() as s:
        if name is not None:
            c = get_clone(s, name)
            rules.check_clone_idle(c.name, c.status)
            if c.kind == CloneKind.FULL and not include_full:
                raise Conflict(f"clone {name} is a full clone; add --include-full to recreate it")
            t, chosen = c.template, [c]
        else:
            t = get_template(s, template)  # type: ignore[arg-type]
            chosen = recreate_candidates(s, t, get_version(s, t, None).id, include_full)
        op = _add_recreate(
            ctx,
            s,
            t,
            chosen,
            name or t.name,
            include_full=include_full,
            discard_data=discard_data,
            actor=actor,
            policy=policy,
            start_at=start_at,
        )
        s.commit()
        op_id = op.id
    return rollouts.launch(ctx, op_id, wait)


def delete_clone(ctx: Context, name: str, *, actor: str) -> None:
    with ctx.session() as s:
        c = get_clone(s, name)
        rules.check_clone_idle(c.name, c.status)
        if c.assigned_user:
            raise Conflict(
                f"clone {name} is assigned to user {c.assigned_user} in a pool; release it first"
                " (goldfleet pool release POOL USER)"
            )
        _mark(c, CloneAction.DELETE, c.version, None)
        c.owner = ctx.server_id
        audit.record(s, actor, "clone.delete", c.name)
        s.commit()
        clone_id = c.id
    _run_one(ctx, clone_id)


def retry(
    ctx: Context,
    *,
    name: str | None = None,
    all_failed: bool = False,
    actor: str,
    wait: bool = False,
    names: Sequence[str] | None = None,
) -> OperationView:
    """Finish the recorded action of failed clones: one (``name``), every one (``all_failed``)
    or those of ``names`` that failed (the console's "retry failed" of an operation), in one
    operation."""
    if names is not None:
        if name is not None or all_failed:
            raise InvalidInput("give clone names, a clone name or --all, not more than one")
    elif (name is None) == (not all_failed):
        raise InvalidInput("give either a clone name or --all")
    with ctx.session() as s:
        if names is not None:
            chosen = list(
                s.scalars(
                    select(Clone)
                    .where(Clone.name.in_(sorted(set(names))), Clone.status == CloneStatus.FAILED)
                    .order_by(Clone.name)
                )
            )
            if not chosen:
                raise Conflict("none of these clones is failed; nothing to retry")
        elif name is not None:
            c = get_clone(s, name)
            if c.status != CloneStatus.FAILED:
                raise Conflict(f"clone {name} is {c.status}, not failed; nothing to retry")
            chosen = [c]
        else:
            chosen = list(s.scalars(select(Clone).where(Clone.status == CloneStatus.FAILED)))
        rollouts.refuse_busy(s, chosen)
        if ctx.edges is not None:
            _unplace_undefined(ctx, chosen)
        work = [
            (
                c,
                CloneAction(c.action or CloneAction.RESTORE),
                c.target_version or c.version,
                c.discard_data,
            )
            for c in chosen
        ]
        label = name or ("failed clones" if names is None else f"{len(chosen)} failed clones")
        op = rollouts.start_operation(ctx, s, "clone.retry", label, work, actor)
        audit.record(s, actor, "clone.retry", name or "*", count=len(chosen), operation=op.id)
        s.commit()
        op_id = op.id
    return rollouts.launch(ctx, op_id, wait)


def _unplace_undefined(ctx: Context, chosen: Sequence[Clone]) -> None:
    """Edge stores: a new clone whose create failed before its VM was defined (its host could
    not take its chain) is placed again by the retry, on a host that can take it now."""
    for c in chosen:
        if c.action != CloneAction.CREATE or c.host is None:
            continue
        try:
            defined = call_driver(ctx, ctx.driver.host_of, name=c.name)
        except GoldfleetError:
            continue  # the driver cannot tell: it stays where it was placed
        if defined is None:
            c.host = None


def rebase_many(
    ctx: Context,
    *,
    template: str,
    to: str | None = None,
    actor: str,
    wait: bool = False,
    policy: Policy | None = None,
    start_at: datetime | None = None,
) -> OperationView:
    """Rebase every clone of ``template`` onto ``to`` (default: its current version)."""
    with ctx.session() as s:
        t = get_template(s, template)
        if to is None:
            target_template, number = t, None
        else:
            tname, number = parse_version_ref(to)
            target_template = get_template(s, tname)
        target = get_version(s, target_template, number)
        sites.check_version_enabled(
            target_template.name, target.number, target.status, "a rebase target"
        )
        if target_template.id != t.id:
            rules.check_outlines_match(
                f"of template {t.name}",
                outline_of(t),
                target_template.name,
                outline_of(target_template),
            )
        chosen = list(
            s.scalars(
                select(Clone)
                .where(Clone.template_id == t.id, Clone.version_id != target.id)
                .order_by(Clone.name)
            )
        )
        rollouts.refuse_busy(s, chosen)
        work = [(c, CloneAction.REBASE, target, False) for c in chosen]
        op = rollouts.start_operation(ctx, s, "clone.rebase", t.name, work, actor, policy, start_at)
        audit.record(
            s,
            actor,
            "clone.rebase",
            t.name,
            count=len(chosen),
            to=f"{target_template.name}:v{target.number}",
            operation=op.id,
        )
        s.commit()
        op_id = op.id
    return rollouts.launch(ctx, op_id, wait)


def recover_clones(ctx: Context, abandoned: Abandoned) -> list[str]:
    """After a crash: clones whose single action a dead server left under way become ``failed``
    (retry finishes them) and lose their ``*.new`` work files; a live server's single action is
    its own (``abandoned`` says whose). Clones of an operation's items are left to the runners,
    which execute them again: a new attempt builds every volume through a fresh ``*.new``.
    Folders of clones that no longer exist are removed."""
    notes = []
    # listed before the rows are read: a clone's row is committed before its folder is made,
    # so a folder listed here that belongs to a clone has its row among those read below
    folders = ctx.volumes.clone_uids()
    with ctx.session() as s:
        in_ops = set(
            s.scalars(
                select(OperationItem.clone_id).where(
                    OperationItem.state.in_([ItemState.QUEUED, ItemState.RUNNING])
                )
            )
        )
        for c in s.scalars(select(Clone).where(Clone.status.in_(TRANSITIONAL))):
            if c.id in in_ops or not abandoned(c.owner):
                continue
            ctx.volumes.remove_work_files(c.uid)
            c.status, c.owner = CloneStatus.FAILED, None
            c.error = (
                f"{c.action} interrupted: the server stopped during this step;"
                f" run: goldfleet clone retry {c.name}"
            )
            notes.append(f"clone {c.name}: {c.action} interrupted, marked failed")
        uids = set(s.scalars(select(Clone.uid)))
        s.commit()
    for uid in folders - uids:
        ctx.volumes.remove_clone(uid)
        notes.append(f"removed the folder of a clone that no longer exists ({uid})")
    return notes


# --- the runner's clone work (services/rollouts runs it; the bootstrap hands it over) -------


class CloneWork:
    """What an operation item means for a clone: ``rollouts.CloneWork`` for this fleet."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._placer: hosts.Placer | None = None  # one per claim pass (its session)

    def busy(self, clone: Clone) -> bool:
        return clone.status in TRANSITIONAL

    def place(self, s: Session, clone: Clone, target_version_id: int) -> None:
        """Edge stores: goldfleet places a new clone itself (the driver cannot know which hosts
        hold its chain); no host fits: executing the clone fails it with the reason."""
        if self.ctx.edges is None:
            return
        if self._placer is None or self._placer.s is not s:
            self._placer = hosts.Placer(self.ctx, s)  # counts up as a batch is placed
        placer = self._placer
        with suppress(GoldfleetError):
            clone.host = placer.host_for(clone.kind, placer.chain_of(target_version_id))

    def mark(self, clone: Clone, item: OperationItem, version: Version, op_id: int) -> None:
        if item.action in LIGHT_ACTIONS:
            return  # a start, stop, message or logoff: the item alone says what is under way
        _mark(clone, CloneAction(item.action), version, op_id, discard_data=item.discard_data)

    def load(self, s: Session, clone_ids: list[int]) -> list[Plan]:
        return load_plans(self.ctx, s, clone_ids)

    def execute(self, plan: Plan, logoff: Sequence[str]) -> Outcome:
        return execute(self.ctx, plan, logoff)

    def record(self, s: Session, outcomes: Sequence[Outcome]) -> tuple[int, int]:
        # the batch's new clone folders are made durable with one fsync of their parent,
        # before the rows say the clones are ready
        self.ctx.volumes.sync_folders()
        return record(s, list(outcomes))

    def users(self, names: list[str]) -> dict[str, list[str]]:
        return _sessions(self.ctx, names)

    def message(self, name: str, text: str) -> None:
        call_driver(self.ctx, self.ctx.driver.send_message, name=name, text=text)


def _sessions(ctx: Context, names: list[str]) -> dict[str, list[str]]:
    """Logged-in users per VM; one VM the driver no longer knows does not blind the rest."""
    try:
        found = call_driver(ctx, ctx.driver.sessions, names=names)
    except GoldfleetError:
        found = {}
        for name in names:
            try:
                found.update(call_driver(ctx, ctx.driver.sessions, names=[name]))
            except GoldfleetError:
                continue  # its rebuild will meet the driver's error and fail visibly
    return {name: [g.user for g in found.get(name, [])] for name in names}


def logged_in(ctx: Context, names: list[str]) -> dict[str, list[str]]:
    """The users logged into each named VM, as a rollout sees them: nobody where the driver
    cannot list sessions, and a VM the driver no longer knows does not blind the rest."""
    if not names or not ctx.driver.capabilities.sessions:
        return {name: [] for name in names}
    return _sessions(ctx, names)


def reconcile_power(ctx: Context) -> list[str]:
    """Read power states back from the driver. A clone that stopped without goldfleet asking
    (the guest shut itself down) gets its temp volumes emptied, like every shutdown."""
    states = call_driver(ctx, ctx.driver.states)
    stopped = []
    with ctx.session() as s:
        for c in s.scalars(
            select(Clone).where(Clone.power == Power.RUNNING, Clone.status == CloneStatus.READY)
        ):
            if states.get(c.name, "undefined") != "running":
                ctx.volumes.reset_temp(c.uid, outline_of(c.template))
                c.power = Power.STOPPED
                audit.record(s, "goldfleet", "clone.shutdown-reported", c.name)
                stopped.append(c.name)
        s.commit()
    return stopped
