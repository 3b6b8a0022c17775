"""``goldfleet agent update``: bring the guest tool of a template's clones to the packaged
version, as RAS updates its agents in bulk — one durable request per template.

For the template's linked clones: enter maintenance, start the maintenance VM, install the tool
through its agent, check the version it answers, then exit maintenance with the tool recorded
on the new version and a recreate under the request's rollout policy (logoff, grace, message,
canary…): ``linked``, or ``all`` with ``--recreate-full``. Without ``--recreate-full`` the
running full clones then get the tool pushed into them through their agents (idempotent, one
result per clone).

The request is stored before its first step ("the request first", docs/architecture.md) and
each step is recorded as it completes; the runner's periodic pass advances every open request
one step at a time. A server killed at any point leaves a row from which the next pass carries
on: each step looks at the template's state before acting, so none is done twice.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import select

from goldfleet import crashpoints, guest
from goldfleet.context import Context
from goldfleet.db.tables import AgentUpdate, Clone, Template
from goldfleet.domain.model import CloneKind, CloneStatus, Power, RecreateScope, TemplateStatus
from goldfleet.domain.rollout import Policy
from goldfleet.drivers.base import DriverError
from goldfleet.errors import Conflict, GoldfleetError, InvalidInput, NotFound
from goldfleet.services import catalog
from goldfleet.services.common import audit, get_template, leases
from goldfleet.services.fleet import call_driver

log = logging.getLogger("goldfleet.guests")

OPEN = ("queued", "entering", "installing", "exiting", "pushing")


class AgentUpdateView(BaseModel):
    id: int
    template: str
    status: str
    recreate_full: bool
    operation_id: int | None
    version: int | None
    pushed: dict[str, Any]
    error: str | None
    actor: str
    created_at: datetime
    updated_at: datetime


def _view(u: AgentUpdate, template: str) -> AgentUpdateView:
    return AgentUpdateView(
        id=u.id,
        template=template,
        status=u.status,
        recreate_full=u.recreate_full,
        operation_id=u.operation_id,
        version=u.version,
        pushed=u.pushed or {},
        error=u.error,
        actor=u.actor,
        created_at=u.created_at,
        updated_at=u.updated_at,
    )


def start_update(
    ctx: Context,
    *,
    templates: list[str] | None,
    exclude: list[str],
    recreate_full: bool,
    policy: Policy | None,
    start_at: datetime | None,
    actor: str,
) -> list[AgentUpdateView]:
    """One request per chosen template (all templates whose current version holds an older or
    unknown tool, by default), stored in one transaction; nothing else is done here."""
    packaged = guest.tool_version()
    with ctx.session() as s:
        if templates:
            chosen = [get_template(s, name) for name in templates]
        else:
            chosen = [
                t
                for t in s.scalars(select(Template).order_by(Template.name))
                if t.current_version is None
                or guest.is_outdated(t.current_version.guest_tool_version, packaged)
            ]
        for name in exclude:
            get_template(s, name)  # an unknown name is an error, not silently nothing
        chosen = [t for t in chosen if t.name not in set(exclude)]
        if not chosen:
            raise InvalidInput(
                "no template to update: every template's current version holds goldfleet-guest"
                f" {packaged} (name templates with --template to update them anyway)"
            )
        busy = {
            tid
            for (tid,) in s.execute(
                select(AgentUpdate.template_id).where(AgentUpdate.status.in_(OPEN))
            )
        }
        for t in chosen:
            if t.id in busy:
                raise Conflict(f"template {t.name} already has an agent update under way")
            if t.status != TemplateStatus.READY:
                raise Conflict(
                    f"template {t.name} is in {t.status}; exit or abort that maintenance before"
                    " updating its agents"
                )
        rollout = {
            "policy": policy.to_json() if policy is not None else None,
            "start_at": start_at.isoformat() if start_at is not None else None,
        }
        rows = []
        for t in chosen:
            row = AgentUpdate(
                template_id=t.id,
                recreate_full=recreate_full,
                rollout=rollout,
                actor=actor,
                pushed={},
            )
            s.add(row)
            rows.append((row, t.name))
            audit.record(
                s, actor, "agent.update", t.name, recreate_full=recreate_full, tool=packaged
            )
        s.commit()
        views = [_view(r, name) for r, name in rows]
    crashpoints.reached("agent-update.requested")
    return views


def list_updates(ctx: Context, *, open_only: bool = False) -> list[AgentUpdateView]:
    with ctx.session() as s:
        q = (
            select(AgentUpdate, Template.name)
            .join(Template, Template.id == AgentUpdate.template_id)
            .order_by(AgentUpdate.id)
        )
        if open_only:
            q = q.where(AgentUpdate.status.in_(OPEN))
        return [_view(u, name) for u, name in s.execute(q)]


def show_update(ctx: Context, update_id: int) -> AgentUpdateView:
    with ctx.session() as s:
        found = s.execute(
            select(AgentUpdate, Template.name)
            .join(Template, Template.id == AgentUpdate.template_id)
            .where(AgentUpdate.id == update_id)
        ).first()
        if found is None:
            raise NotFound(f"agent update {update_id} does not exist; see: goldfleet agent updates")
        return _view(*found)


# --- the steps, advanced by the runner's periodic pass ---------------------------------------


def agent_tick(ctx: Context) -> object:
    """Advance every open request by its next step (one server at a time)."""
    with ctx.session() as s:
        pending = list(s.scalars(select(AgentUpdate.id).where(AgentUpdate.status.in_(OPEN))))
    if not pending:
        return None
    try:
        with leases.hold(ctx, "agent-update", wait=0.0, what="the agent update"):
            for update_id in pending:
                try:
                    _advance(ctx, update_id)
                except GoldfleetError as exc:  # a Conflict of a step included: kept, retried
                    _set(ctx, update_id, error=exc.message)
                    log.warning("agent update %s: %s", update_id, exc.message)
    except Conflict:
        pass  # the lease is another server's: it advances them
    return None


def _set(ctx: Context, update_id: int, **values: Any) -> None:
    with ctx.session() as s:
        u = s.get(AgentUpdate, update_id)
        if u is not None:
            for k, v in values.items():
                setattr(u, k, v)
            s.commit()


def _fail(ctx: Context, update_id: int, why: str) -> None:
    _set(ctx, update_id, status="failed", error=why)
    log.warning("agent update %s failed: %s", update_id, why)


def _install(ctx: Context, vm: str) -> str:
    """Install the packaged tool in a running guest and return the version it answers."""
    data = guest.tool_path().read_bytes()
    call_driver(
        ctx, ctx.driver.guest_write, name=vm, path=guest.GUEST_TOOL_PATH, data=data, mode=0o755
    )
    out = call_driver(ctx, ctx.driver.guest_exec, name=vm, argv=[guest.GUEST_TOOL_PATH, "version"])
    answered = out.stdout.strip()
    if out.exit_code != 0 or answered != guest.tool_version():
        raise DriverError(
            f"goldfleet-guest in VM {vm} answered {answered or out.stderr.strip()!r}"
            f" (exit {out.exit_code}), not {guest.tool_version()}"
        )
    return answered


def _advance(ctx: Context, update_id: int) -> None:
    with ctx.session() as s:
        u = s.get(AgentUpdate, update_id)
        if u is None or u.status not in OPEN:
            return
        t = s.get(Template, u.template_id)
        name, status, vm = t.name, t.status, t.maintenance_vm
        step, actor, recreate_full = u.status, u.actor, u.recreate_full
        rollout = dict(u.rollout or {})
    if step == "queued":
        if status != TemplateStatus.READY:
            _fail(ctx, update_id, f"template {name} is in {status}: someone else changed it")
            return
        _set(ctx, update_id, status="entering")  # from here a maintenance is ours
        step = "entering"
    if step == "entering":
        if status == TemplateStatus.READY:
            catalog.enter_maintenance(ctx, name, actor=actor)
            crashpoints.reached("agent-update.entered")
        _set(ctx, update_id, status="installing", error=None)
        step = "installing"
    if step == "installing":
        with ctx.session() as s:
            t = get_template(s, name)
            status, vm = t.status, t.maintenance_vm
        if status != TemplateStatus.MAINTENANCE:
            _fail(ctx, update_id, f"template {name} left maintenance before the tool was installed")
            return
        if vm is None or call_driver(ctx, ctx.driver.state, name=vm) != "running":
            catalog.start_maintenance_vm(ctx, name, actor=actor)
            with ctx.session() as s:
                vm = get_template(s, name).maintenance_vm
        try:
            _install(ctx, vm)
        except DriverError as exc:
            # a guest still booting: its agent answers later; the next pass tries again
            _set(ctx, update_id, error=f"installing in the maintenance VM: {exc.message}")
            return
        crashpoints.reached("agent-update.installed")
        _set(ctx, update_id, status="exiting", error=None)
        step = "exiting"
    if step == "exiting":
        with ctx.session() as s:
            t = get_template(s, name)
            status = t.status
            current = t.current_version
            made = (
                current.number
                if current is not None
                and current.guest_tool_version == guest.tool_version()
                and current.created_at >= _created(s, update_id)
                else None
            )
        if status == TemplateStatus.MAINTENANCE:
            policy = Policy.from_json(rollout["policy"]) if rollout.get("policy") else None
            start_at = (
                datetime.fromisoformat(rollout["start_at"]) if rollout.get("start_at") else None
            )
            done = catalog.exit_maintenance(
                ctx,
                name,
                recreate=RecreateScope.ALL if recreate_full else RecreateScope.LINKED,
                shutdown=True,
                actor=actor,
                policy=policy,
                start_at=start_at,
                guest_tool_version="auto",
            )
            op_id = done.operation.id if done.operation is not None else None
            _set(ctx, update_id, status="pushing", version=done.version, operation_id=op_id)
        elif made is not None:  # the exit finished (recovery did it) before this was noted
            _set(ctx, update_id, status="pushing", version=made)
        else:
            _fail(ctx, update_id, f"template {name} left maintenance without the new tool")
            return
        step = "pushing"
    if step == "pushing":
        _push(ctx, update_id, name, skip=recreate_full)


def _created(s: Any, update_id: int) -> datetime:
    return s.get(AgentUpdate, update_id).created_at


def _push(ctx: Context, update_id: int, template: str, *, skip: bool) -> None:
    """Install the tool into every running full clone of the template not yet done."""
    with ctx.session() as s:
        t = get_template(s, template)
        pushed = dict(s.get(AgentUpdate, update_id).pushed or {})
        targets = (
            []
            if skip
            else list(
                s.scalars(
                    select(Clone.name)
                    .where(
                        Clone.template_id == t.id,
                        Clone.kind == CloneKind.FULL,
                        Clone.power == Power.RUNNING,
                        Clone.status == CloneStatus.READY,
                    )
                    .order_by(Clone.name)
                )
            )
        )
    for vm in targets:
        if pushed.get(vm, "").startswith("installed"):
            continue
        try:
            pushed[vm] = f"installed {_install(ctx, vm)}"
        except GoldfleetError as exc:
            pushed[vm] = f"failed: {exc.message}"
        _set(ctx, update_id, pushed=dict(pushed))
    failed = [vm for vm, r in pushed.items() if r.startswith("failed")]
    _set(
        ctx,
        update_id,
        status="done",
        error=(
            f"{len(failed)} full clones not updated: {', '.join(failed[:10])}" if failed else None
        ),
    )
    with ctx.session() as s:
        audit.record(
            s, "agent-update", "agent.update.done", template, pushed=len(pushed), failed=len(failed)
        )
        s.commit()
