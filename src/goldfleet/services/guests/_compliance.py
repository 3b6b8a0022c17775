"""Guests: what goldfleet learns from inside running clones through their agent (the guest
tool's version, the quarantine descriptor), the quarantine policies of templates, and the
network access that follows, enforced by switching each clone's network filter.

An *evaluation* (``check``) reads, for every running clone, its guest tool's version and — for a
template with a policy — its descriptor, in one batched driver call per file; computes each
verdict with the domain's rules; and, for the clones whose verdict changed, switches the
filter and tells the users (restricted message, or update-available message) once. A clone
whose agent does not answer gets the policy's ``unanswered`` access (restricted: fail closed).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from goldfleet import guest
from goldfleet.context import Context
from goldfleet.db.tables import Clone, GuestState, QuarantinePolicy, Template, Version, utcnow
from goldfleet.domain import quarantine as q
from goldfleet.domain.model import CloneStatus, Power
from goldfleet.drivers import nwfilter
from goldfleet.drivers.base import DriverError
from goldfleet.errors import Conflict, GoldfleetError, InvalidInput, NotFound
from goldfleet.services.common import audit, get_template, leases
from goldfleet.services.fleet import call_driver

log = logging.getLogger("goldfleet.guests")

MAX_POLICY_BYTES = 1 << 20
TOOL_HEAD = 4096  # bytes of the installed tool read: its TOOL_VERSION line is near the top


# --- views ------------------------------------------------------------------------------------


class PolicyView(BaseModel):
    template: str
    number: int
    text: str
    policy: dict[str, Any]
    actor: str
    created_at: datetime
    filters: dict[str, str]  # access → nwfilter name


class GuestView(BaseModel):
    clone: str
    template: str
    version: int
    power: str
    tool_version: str | None
    tool_outdated: bool | None  # None: not read yet (not running since goldfleet looked)
    descriptor: str | None
    quarantine_version: str | None
    access: str  # normal | restricted | unknown
    reason: str
    filter: str | None
    since: datetime | None
    checked_at: datetime | None


class CheckView(BaseModel):
    clones: int  # running clones read
    evaluated: int  # of those, under a policy
    changed: int
    switched: int  # filters switched
    messages: int
    normal: int
    restricted: int
    unanswered: int
    seconds: float
    errors: list[str]


class AgentsView(BaseModel):
    packaged: str
    outdated: int
    missing: int
    unknown: int  # not read yet
    clones: list[dict[str, Any]]  # the outdated and missing ones
    templates: list[dict[str, Any]]  # template versions whose recorded tool is older or unknown


def _policy_view(t: Template, row: QuarantinePolicy) -> PolicyView:
    policy = q.parse_policy(row.text, check_plugin=False)
    return PolicyView(
        template=t.name,
        number=row.number,
        text=row.text,
        policy=q.policy_json(policy),
        actor=row.actor,
        created_at=row.created_at,
        filters={a: nwfilter.filter_name(t.name, a) for a in ("normal", "restricted")},
    )


def _latest(s: Session, template_id: int) -> QuarantinePolicy | None:
    return s.scalar(
        select(QuarantinePolicy)
        .where(QuarantinePolicy.template_id == template_id)
        .order_by(QuarantinePolicy.number.desc())
        .limit(1)
    )


# --- policies -----------------------------------------------------------------------------------


def apply_policy(ctx: Context, template: str, text: str, *, actor: str) -> PolicyView:
    """Validate ``text`` here (plug-in present and executable on this server), keep it as the
    template's next policy number, define its two filters, audit it, then evaluate the
    template's running clones under it."""
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidInput("the policy is not UTF-8 text") from None
    if size > MAX_POLICY_BYTES:
        raise InvalidInput(f"a policy is at most {MAX_POLICY_BYTES} bytes")
    policy = q.parse_policy(text)
    with ctx.session() as s:
        t = get_template(s, template)
        name = t.name
    _define_filters(ctx, name, policy)
    with ctx.session() as s:
        t = get_template(s, template)
        latest = _latest(s, t.id)
        if latest is not None and latest.text == text:
            return _policy_view(t, latest)  # the same text again: nothing new
        row = QuarantinePolicy(
            template_id=t.id, number=(latest.number + 1) if latest else 1, text=text, actor=actor
        )
        s.add(row)
        audit.record(
            s,
            actor,
            "compliance.apply",
            t.name,
            number=row.number,
            kind=str(policy.kind),
            versions=[v.name for v in policy.versions],
            threshold=policy.threshold,
        )
        s.commit()
        view = _policy_view(t, row)
    check(ctx, template=template)
    return view


def show_policy(ctx: Context, template: str, number: int | None = None) -> PolicyView:
    with ctx.session() as s:
        t = get_template(s, template)
        if number is None:
            row = _latest(s, t.id)
        else:
            row = s.scalar(
                select(QuarantinePolicy).where(
                    QuarantinePolicy.template_id == t.id, QuarantinePolicy.number == number
                )
            )
        if row is None:
            raise NotFound(
                f"template {t.name} has no quarantine policy"
                + (f" number {number}" if number is not None else "")
                + f"; apply one with: goldfleet compliance apply {t.name} FILE"
            )
        return _policy_view(t, row)


def _define_filters(ctx: Context, template: str, policy: q.Policy) -> None:
    if not ctx.driver.capabilities.nwfilter:
        return
    for f in (nwfilter.normal_filter(template), nwfilter.restricted_filter(template, policy)):
        call_driver(ctx, ctx.driver.define_filter, filter_name=f.name, xml=f.to_xml())


# --- evaluation ---------------------------------------------------------------------------------


@dataclass
class _Target:
    clone_id: int
    name: str
    template: str
    template_id: int
    version_qv: str | None  # the quarantine version its template version carries


@dataclass(frozen=True)
class _Known:
    """What the last evaluation stored of a clone."""

    tool_version: str | None
    access: str
    version: str | None
    filter: str | None
    policy_number: int | None
    since: datetime


def _decode(raw: bytes | DriverError | None) -> tuple[bool, str | None]:
    """(answered, first line) of a guest file read."""
    if isinstance(raw, DriverError):
        return False, None
    if raw is None:
        return True, None
    return True, raw.decode("utf-8", "replace").split("\n", 1)[0]


def _run_plugin(plugin: q.Plugin, descriptor: str) -> tuple[int | None, str | None]:
    """Run the plug-in on a descriptor in its own process group, which is killed whole when
    the time limit passes (a hung plug-in leaves nothing behind)."""
    try:
        proc = subprocess.Popen(
            [plugin.path, descriptor],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError as exc:
        return None, f"cannot run {plugin.path}: {exc.strerror}"
    try:
        code = proc.wait(timeout=plugin.timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None, f"no answer within {plugin.timeout_s:g} s"
    if code < 0:
        return None, f"killed by signal {-code}"
    return code, None


_one_check = threading.Lock()  # in this server; the lease orders the servers of a database


def check(ctx: Context, *, template: str | None = None) -> CheckView:
    """Evaluate every running clone (of ``template``, or all): read its agent, judge its
    access, switch the filters and tell the users whose access changed. One evaluation at a
    time, across every server of the database (a user is told once)."""
    with _one_check, leases.hold(ctx, "compliance", wait=120.0, what="the compliance check"):
        return _check(ctx, template)


def _check(ctx: Context, template: str | None) -> CheckView:
    started = time.monotonic()
    with ctx.session() as s:
        where = [Clone.power == Power.RUNNING, Clone.status == CloneStatus.READY]
        if template is not None:
            where.append(Clone.template_id == get_template(s, template).id)
        rows = s.execute(
            select(Clone.id, Clone.name, Template.name, Template.id, Version.quarantine_version)
            .join(Template, Template.id == Clone.template_id)
            .join(Version, Version.id == Clone.version_id)
            .where(*where)
            .order_by(Clone.name)
        ).all()
        targets = [_Target(*r) for r in rows]
        policies: dict[int, tuple[int, q.Policy]] = {}
        for tid in {t.template_id for t in targets}:
            row = _latest(s, tid)
            if row is not None:
                policies[tid] = (row.number, q.parse_policy(row.text, check_plugin=False))
        known: dict[int, _Known] = {}
        ids = [t.clone_id for t in targets]
        for i in range(0, len(ids), 5000):
            known.update(
                (r[0], _Known(*r[1:]))
                for r in s.execute(
                    select(
                        GuestState.clone_id,
                        GuestState.tool_version,
                        GuestState.access,
                        GuestState.version,
                        GuestState.filter,
                        GuestState.policy_number,
                        GuestState.since,
                    ).where(GuestState.clone_id.in_(ids[i : i + 5000]))
                )
            )
    view = CheckView(
        clones=len(targets),
        evaluated=0,
        changed=0,
        switched=0,
        messages=0,
        normal=0,
        restricted=0,
        unanswered=0,
        seconds=0.0,
        errors=[],
    )
    if not targets:
        view.seconds = round(time.monotonic() - started, 3)
        return view
    drv = ctx.driver
    if not drv.capabilities.guest_agent:
        raise Conflict(
            f"driver {drv.name} cannot read guests (no guest agent); nothing was evaluated"
        )
    names = [t.name for t in targets]
    tools = drv.guest_read_many(names=names, path=guest.GUEST_TOOL_PATH, limit=TOOL_HEAD)
    judged_names = [t.name for t in targets if t.template_id in policies]
    descriptors = (
        drv.guest_read_many(names=judged_names, path=guest.GUEST_DESCRIPTOR_PATH, limit=512)
        if judged_names
        else {}
    )
    view.errors += _write_policies(ctx, targets, policies)
    now = utcnow()
    updates: list[dict[str, Any]] = []
    tell: list[tuple[str, str]] = []
    switch: list[tuple[str, str, int]] = []
    for t in targets:
        raw_tool = tools.get(t.name)
        tool_answered = not isinstance(raw_tool, DriverError)
        tool = (
            guest.version_in(raw_tool.decode("utf-8", "replace"))
            if isinstance(raw_tool, bytes)
            else None
        )
        old = known.get(t.clone_id)
        row: dict[str, Any] = {
            "clone_id": t.clone_id,
            "tool_version": tool if tool_answered else (old.tool_version if old else None),
            "checked_at": now,
        }
        policy_entry = policies.get(t.template_id)
        if policy_entry is None:
            row.update(
                descriptor=None,
                version=None,
                access=str(q.Access.UNKNOWN),
                reason="no quarantine policy",
                policy_number=None,
                filter=old.filter if old else None,
                since=old.since if old and old.access == q.Access.UNKNOWN else now,
            )
            updates.append(row)
            continue
        number, policy = policy_entry
        view.evaluated += 1
        answered, descriptor = _decode(descriptors.get(t.name))
        if answered and descriptor is None and t.version_qv:
            # a fresh clone of a version that carries its quarantine version: the guest's
            # descriptor is its version's, written through the agent (no guest-side step)
            try:
                seeded = policy.version(t.version_qv).descriptor
                call_driver(
                    ctx,
                    drv.guest_write,
                    name=t.name,
                    path=guest.GUEST_DESCRIPTOR_PATH,
                    data=seeded.encode() + b"\n",
                )
                descriptor = seeded
            except (GoldfleetError, InvalidInput) as exc:
                view.errors.append(f"{t.name}: cannot write its version's descriptor: {exc}")
        plugin_exit = plugin_problem = None
        if (
            answered
            and policy.kind is q.Kind.CUSTOM
            and policy.plugin is not None
            and descriptor is not None
        ):
            plugin_exit, plugin_problem = _run_plugin(policy.plugin, descriptor)
        verdict = q.evaluate(
            policy,
            descriptor,
            answered=answered,
            plugin_exit=plugin_exit,
            plugin_problem=plugin_problem,
        )
        if not answered:
            view.unanswered += 1
        if verdict.access is q.Access.NORMAL:
            view.normal += 1
        else:
            view.restricted += 1
        wanted = nwfilter.filter_name(t.template, str(verdict.access))
        changed = (
            old is None
            or old.access != verdict.access
            or old.version != verdict.version
            or old.policy_number != number
        )
        row.update(
            descriptor=descriptor,
            version=verdict.version,
            access=str(verdict.access),
            reason=verdict.reason,
            policy_number=number,
            filter=old.filter if old else None,
            since=now if old is None or old.access != verdict.access else old.since,
        )
        if changed:
            view.changed += 1
            message = q.message_for(policy, verdict)
            moved = old is None or (old.access, old.version) != (verdict.access, verdict.version)
            if message and moved:
                tell.append((t.name, message))
        if drv.capabilities.nwfilter and (old is None or old.filter != wanted):
            switch.append((t.name, wanted, len(updates)))
        updates.append(row)
    if switch:
        done = call_driver(ctx, drv.set_filters, filters={name: w for name, w, _ in switch})
        for name, wanted, index in switch:
            error = done.get(name)
            if error is None:
                updates[index]["filter"] = wanted
                view.switched += 1
            else:
                view.errors.append(f"{name}: filter {wanted} not set: {error.message}")
    if tell and drv.capabilities.messages:
        done = call_driver(ctx, drv.send_messages, messages=dict(tell))
        for name, error in done.items():
            if error is None:
                view.messages += 1
            else:
                view.errors.append(f"{name}: message not delivered: {error.message}")
    _store(ctx, updates, known)
    view.seconds = round(time.monotonic() - started, 3)
    if view.changed or view.errors:
        log.info(
            "compliance: %d clones read, %d changed, %d filters switched, %d errors",
            view.clones,
            view.changed,
            view.switched,
            len(view.errors),
        )
    return view


def _write_policies(
    ctx: Context, targets: Sequence[_Target], policies: dict[int, tuple[int, q.Policy]]
) -> list[str]:
    """Put the policy file (what ``goldfleet-guest nq-set`` checks against) into every running
    guest under a policy whose copy is missing or not the current one."""
    wanted = {tid: q.guest_policy_text(p).encode() for tid, (_, p) in policies.items()}
    names = [t.name for t in targets if t.template_id in wanted]
    if not names:
        return []
    held = ctx.driver.guest_read_many(names=names, path=guest.GUEST_POLICY_PATH, limit=1 << 20)
    stale = {
        t.name: wanted[t.template_id]
        for t in targets
        if t.template_id in wanted
        and held.get(t.name) != wanted[t.template_id]
        and not isinstance(held.get(t.name), DriverError)  # a silent agent: judged below
    }
    errors: list[str] = []
    by_text: dict[bytes, dict[str, bytes]] = {}
    for vm, text in stale.items():
        by_text.setdefault(text, {})[vm] = text
    for files in by_text.values():
        done = call_driver(
            ctx, ctx.driver.guest_write_many, files=files, path=guest.GUEST_POLICY_PATH
        )
        errors += [f"{vm}: policy file not written: {e.message}" for vm, e in done.items() if e]
    return errors


def _store(ctx: Context, updates: Sequence[dict[str, Any]], known: dict[int, _Known]) -> None:
    if not updates:
        return
    with ctx.session() as s:
        fresh = [u for u in updates if u["clone_id"] not in known]
        stale = [u for u in updates if u["clone_id"] in known]
        if fresh:
            s.bulk_insert_mappings(GuestState, fresh)  # type: ignore[arg-type]
        if stale:
            s.bulk_update_mappings(GuestState, stale)  # type: ignore[arg-type]
        s.commit()


def tick(ctx: Context) -> object:
    """The periodic evaluation (registered by the bootstrap every ``compliance_seconds``)."""
    if not ctx.driver.capabilities.guest_agent:
        return None
    with ctx.session() as s:
        # rows of clones that are gone
        s.execute(delete(GuestState).where(GuestState.clone_id.not_in(select(Clone.id))))
        s.commit()
    return check(ctx)


# --- reading it back ----------------------------------------------------------------------------


def status(ctx: Context, *, template: str | None = None) -> list[GuestView]:
    """Every clone (of ``template``): what goldfleet last learnt from inside it."""
    packaged = guest.tool_version()
    with ctx.session() as s:
        q_ = (
            select(Clone, Template.name, Version.number, Version.quarantine_version, GuestState)
            .join(Template, Template.id == Clone.template_id)
            .join(Version, Version.id == Clone.version_id)
            .outerjoin(GuestState, GuestState.clone_id == Clone.id)
            .order_by(Clone.name)
        )
        if template is not None:
            q_ = q_.where(Clone.template_id == get_template(s, template).id)
        found = []
        for c, tname, number, qv, g in s.execute(q_):
            running = c.power == Power.RUNNING
            found.append(
                GuestView(
                    clone=c.name,
                    template=tname,
                    version=number,
                    power=c.power,
                    tool_version=g.tool_version if g else None,
                    tool_outdated=(
                        guest.is_outdated(g.tool_version, packaged) if g is not None else None
                    ),
                    descriptor=g.descriptor if g else None,
                    quarantine_version=(g.version if g and g.version else qv),
                    access=(g.access if g and running else str(q.Access.UNKNOWN)),
                    reason=(
                        g.reason
                        if g and running
                        else ("not running" if not running else "not evaluated yet")
                    ),
                    filter=g.filter if g else None,
                    since=g.since if g else None,
                    checked_at=g.checked_at if g else None,
                )
            )
        return found


def agents(ctx: Context) -> AgentsView:
    """Clones and template versions whose guest tool is older than the packaged one, or
    missing (RAS: "N agents need an update")."""
    packaged = guest.tool_version()
    outdated = missing = unknown = 0
    listed: list[dict[str, Any]] = []
    with ctx.session() as s:
        for name, tname, tool, g in s.execute(
            select(Clone.name, Template.name, GuestState.tool_version, GuestState.clone_id)
            .join(Template, Template.id == Clone.template_id)
            .outerjoin(GuestState, GuestState.clone_id == Clone.id)
            .order_by(Clone.name)
        ):
            if g is None:
                unknown += 1
                continue
            if tool is None:
                missing += 1
            elif guest.is_outdated(tool, packaged):
                outdated += 1
            else:
                continue
            listed.append({"clone": name, "template": tname, "tool_version": tool})
        templates = [
            {"template": tname, "version": number, "tool_version": tool}
            for tname, number, tool in s.execute(
                select(Template.name, Version.number, Version.guest_tool_version)
                .join(Version, Version.id == Template.current_version_id)
                .order_by(Template.name)
            )
            if guest.is_outdated(tool, packaged)
        ]
    return AgentsView(
        packaged=packaged,
        outdated=outdated,
        missing=missing,
        unknown=unknown,
        clones=listed,
        templates=templates,
    )


def agent_counts(ctx: Context) -> dict[str, int]:
    """:func:`agents`' counts alone (``outdated``, ``missing``, ``unknown``), in one grouped
    query: what a dashboard shows of a 10,000-clone fleet without listing it."""
    packaged = guest.tool_version()
    out = {"outdated": 0, "missing": 0, "unknown": 0}
    with ctx.session() as s:
        for g, tool, n in s.execute(
            select(GuestState.clone_id.is_not(None), GuestState.tool_version, func.count())
            .select_from(Clone)
            .outerjoin(GuestState, GuestState.clone_id == Clone.id)
            .group_by(GuestState.clone_id.is_not(None), GuestState.tool_version)
        ):
            if not g:
                out["unknown"] += n
            elif tool is None:
                out["missing"] += n
            elif guest.is_outdated(tool, packaged):
                out["outdated"] += n
    return out


def count_outdated(ctx: Context) -> int:
    """What ``serve`` logs at start: clones whose tool is known to be outdated or missing."""
    view = agents(ctx)
    return view.outdated + view.missing
