"""Session control by hand: who is logged into which clone, a message to them, a user logged
off, outside any rollout (Parallels RAS's session management).

Each goes through the driver's ``sessions``, ``send_message`` and ``logoff``, the same calls a
rollout's logoff policy makes; a refusal carries the driver's own words. Every message and
logoff is in the audit log, the failed ones too.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from goldfleet.context import Context
from goldfleet.db.tables import Clone, Pool, Template
from goldfleet.domain.model import Power
from goldfleet.domain.names import check_name
from goldfleet.errors import Conflict, GoldfleetError, InvalidInput, NotFound
from goldfleet.services.common import audit, get_clone, get_template
from goldfleet.services.fleet._clones import call_driver, check_text


class SessionView(BaseModel):
    clone: str
    user: str
    since: datetime | None  # when the user logged in, if the driver knows
    idle_seconds: float | None  # how long the session has been idle, if the driver knows
    template: str
    pool: str | None
    host: str | None


class MessageOutcome(BaseModel):
    clone: str
    users: list[str]  # logged in when the message was sent (empty: the driver cannot list)
    sent: bool
    error: str | None = None  # the driver's words


class MessageReport(BaseModel):
    text: str
    sent: int
    failed: int
    clones: list[MessageOutcome]


class LogoffView(BaseModel):
    clone: str
    user: str
    logged_off: bool


def _running(s: Session, *, template: str | None, pool: str | None, host: str | None) -> list:
    q = (
        select(Clone.name, Template.name, Pool.name, Clone.host)
        .join(Template, Template.id == Clone.template_id)
        .outerjoin(Pool, Pool.id == Clone.pool_id)
        .where(Clone.power == Power.RUNNING)
        .order_by(Clone.name)
    )
    if template is not None:
        q = q.where(Clone.template_id == get_template(s, template).id)
    if pool is not None:
        check_name(pool, "pool name")
        pool_id = s.scalar(select(Pool.id).where(Pool.name == pool))
        if pool_id is None:
            raise NotFound(f"pool {pool} does not exist; see: goldfleet pool list")
        q = q.where(Clone.pool_id == pool_id)
    if host is not None:
        check_name(host, "host name")
        q = q.where(Clone.host == host)
    return list(s.execute(q))


class SessionError(BaseModel):
    clone: str
    error: str  # the driver's words


class SessionList(BaseModel):
    sessions: list[SessionView]
    errors: list[SessionError] = []  # running clones whose users the driver could not list


def list_sessions(
    ctx: Context,
    *,
    template: str | None = None,
    pool: str | None = None,
    host: str | None = None,
) -> SessionList:
    """The users logged into running clones (of a template, a pool, on a host), asked of the
    driver in one call. If that call fails, each clone is asked alone, so one VM the driver
    cannot answer for is reported with the driver's words and does not hide the others."""
    with ctx.session() as s:
        rows = _running(s, template=template, pool=pool, host=host)
    if not rows:
        return SessionList(sessions=[])
    names = [r[0] for r in rows]
    errors: list[SessionError] = []
    try:
        found = call_driver(ctx, ctx.driver.sessions, names=names)
    except GoldfleetError as first:
        if len(names) == 1:
            raise first
        found = {}
        for name in names:
            try:
                found.update(call_driver(ctx, ctx.driver.sessions, names=[name]))
            except GoldfleetError as exc:
                errors.append(SessionError(clone=name, error=exc.message))
    sessions = [
        SessionView(
            clone=name,
            user=g.user,
            since=g.since,
            idle_seconds=g.idle_seconds,
            template=t,
            pool=p,
            host=h,
        )
        for name, t, p, h in rows
        for g in found.get(name, [])
    ]
    return SessionList(sessions=sessions, errors=errors)


def send_message(
    ctx: Context,
    *,
    text: str,
    clone: str | None = None,
    all_of: str | None = None,
    actor: str,
) -> MessageReport:
    """Send ``text`` to the users of one running clone, or of every running clone of template
    ``all_of`` that has users logged in (all its running clones if the driver cannot list
    sessions). One clone's refusal is its outcome; with a single clone it is the error."""
    check_text(text)
    if (clone is None) == (all_of is None):
        raise InvalidInput("name one clone, or a template with --all-of, not both or neither")
    with ctx.session() as s:
        if clone is not None:
            c = get_clone(s, clone)
            if c.power != Power.RUNNING:
                raise Conflict(
                    f"clone {clone} is {c.power}: nobody is logged in to read a message; start"
                    f" it first (goldfleet clone start {clone})"
                )
            names = [c.name]
        else:
            names = [r[0] for r in _running(s, template=all_of, pool=None, host=None)]
    users: dict[str, list[str]] = {}
    if all_of is not None and names and ctx.driver.capabilities.sessions:
        listed = list_sessions(ctx, template=all_of)
        for x in listed.sessions:
            users.setdefault(x.clone, []).append(x.user)
        unknown = {e.clone for e in listed.errors}  # tried anyway: the driver will say
        names = [n for n in names if n in users or n in unknown]
    outcomes = []
    failure: GoldfleetError | None = None  # a single clone's refusal, raised once audited
    for name in names:
        try:
            call_driver(ctx, ctx.driver.send_message, name=name, text=text)
            outcomes.append(MessageOutcome(clone=name, users=users.get(name, []), sent=True))
        except GoldfleetError as exc:
            failure = exc if clone is not None else None
            outcomes.append(
                MessageOutcome(clone=name, users=users.get(name, []), sent=False, error=exc.message)
            )
    with ctx.session() as s:
        for o in outcomes:
            audit.record(
                s, actor, "session.message", o.clone, text=text, sent=o.sent, error=o.error
            )
        if all_of is not None:
            sent = sum(o.sent for o in outcomes)
            audit.record(
                s, actor, "session.message-all", all_of, text=text, sent=sent, clones=len(names)
            )
        s.commit()
    if failure is not None:
        failure.message = f"the message to the users of {clone} was not sent: {failure.message}"
        raise failure
    return MessageReport(
        text=text,
        sent=sum(o.sent for o in outcomes),
        failed=sum(not o.sent for o in outcomes),
        clones=outcomes,
    )


def _check_session_user(user: str) -> str:
    """A user as a guest names them (``DOMAIN\\alice`` too): printable, no spaces."""
    if not isinstance(user, str) or not 0 < len(user) <= 256:
        raise InvalidInput("the user name must have 1 to 256 characters")
    if any(c.isspace() or not c.isprintable() for c in user):
        raise InvalidInput(f"user name {user!r} is not valid: no spaces or control characters")
    return user


def logoff(ctx: Context, clone: str, user: str, *, actor: str) -> LogoffView:
    """Log ``user`` off ``clone`` now (the clone keeps running); audited, refused with the
    driver's words."""
    _check_session_user(user)
    with ctx.session() as s:
        c = get_clone(s, clone)
        if c.power != Power.RUNNING:
            raise Conflict(f"clone {clone} is {c.power}: nobody is logged in to it")
    failure: GoldfleetError | None = None
    try:
        call_driver(ctx, ctx.driver.logoff, name=clone, user=user)
    except GoldfleetError as exc:
        failure = exc
    with ctx.session() as s:
        error = failure.message if failure is not None else None
        audit.record(s, actor, "session.logoff", clone, user=user, error=error)
        s.commit()
    if failure is not None:
        failure.message = f"{user} was not logged off {clone}: {failure.message}"
        raise failure
    return LogoffView(clone=clone, user=user, logged_off=True)
