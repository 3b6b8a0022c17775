"""Users (passwords stored only as Argon2 hashes), custom roles, grants, and logins.

A login (``POST /auth/login``) gives a short-lived bearer secret ``gs_…`` (stored as sha256,
like a token) that the CLI and the console send as ``Authorization: Bearer``; it ends at
``DELETE /auth/session``, when it expires, when the user is disabled or changes password.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pydantic import BaseModel
from sqlalchemy import delete, select

from goldfleet.context import Context
from goldfleet.db.tables import Grant as GrantRow
from goldfleet.db.tables import LoginSession, Role, Token, User, utcnow
from goldfleet.domain import access as rules
from goldfleet.domain.names import check_name
from goldfleet.errors import Conflict, InvalidInput, NotFound, TooManyRequests, Unauthorized
from goldfleet.services.access._policy import custom_roles
from goldfleet.services.access._tokens import SESSION_PREFIX, hash_token
from goldfleet.services.common import audit

SESSION_HOURS = 12
MAX_USER_NAME = 58  # "user:" + the name fits the audit log's actor (63)
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
_hasher = PasswordHasher()
# verified against when the user does not exist, so that a wrong name costs as long as a wrong
# password (no timing oracle for which users exist)
_NOBODY = _hasher.hash(secrets.token_urlsafe(16))


class UserView(BaseModel):
    name: str
    disabled: bool
    created_at: datetime
    grants: list[str]  # "ROLE on SCOPE"


class RoleView(BaseModel):
    name: str
    builtin: bool
    permissions: list[str]


class GrantView(BaseModel):
    holder_kind: str  # user | token
    holder: str
    role: str
    scope: str


class LoginView(BaseModel):
    user: str
    token: str  # the session's bearer secret, shown once
    expires_at: datetime


@dataclass(frozen=True)
class Holder:
    kind: str  # user | token
    name: str


def check_password(password: str) -> str:
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise InvalidInput(
            f"a password needs {MIN_PASSWORD} to {MAX_PASSWORD} characters"
        )  # never echoes the password
    return password


def _user(s, name: str) -> User:  # type: ignore[no-untyped-def]
    row = s.scalar(select(User).where(User.name == check_name(name, "user name")))
    if row is None:
        raise NotFound(f"user {name} does not exist")
    return row


def _check_role(s, role: str) -> None:  # type: ignore[no-untyped-def]
    if role not in rules.BUILTIN_ROLES and role not in custom_roles(s):
        raise InvalidInput(
            f"role {role!r} does not exist: use one of {', '.join(rules.BUILTIN_ROLES)} or a role"
            " made with role create"
        )


def _held(s, kind: str) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    held: dict[str, list[str]] = {}
    for g in s.scalars(select(GrantRow).where(GrantRow.holder_kind == kind).order_by(GrantRow.id)):
        held.setdefault(g.holder, []).append(f"{g.role} on {g.scope}")
    return held


# --- users -------------------------------------------------------------------------------


def create_user(
    ctx: Context, *, name: str, password: str, role: str, scope: str | None, actor: str
) -> UserView:
    """A user with a password and one grant (``scope`` default ``/``; ``self`` for the role
    user)."""
    check_name(name, "user name")
    if len(name) > MAX_USER_NAME:
        raise InvalidInput(
            f"user name {name!r} is too long: {MAX_USER_NAME} characters at most (the audit log"
            " records user:NAME)"
        )
    check_password(password)
    scope = scope or ("self" if role in rules.OWN_ONLY_ROLES else "/")
    rules.check_grant(role, scope, holder_kind="user")
    digest = _hasher.hash(password)
    with ctx.session() as s:
        _check_role(s, role)
        if s.scalar(select(User.id).where(User.name == name)) is not None:
            raise Conflict(f"user {name} already exists")
        s.add(User(name=name, password_hash=digest))
        s.add(GrantRow(holder_kind="user", holder=name, role=role, scope=scope))
        audit.record(s, actor, "user.create", name, role=role, scope=scope)
        s.commit()
        row = _user(s, name)
        return UserView(
            name=name, disabled=False, created_at=row.created_at, grants=[f"{role} on {scope}"]
        )


def list_users(ctx: Context) -> list[UserView]:
    with ctx.session() as s:
        held = _held(s, "user")
        return [
            UserView(
                name=u.name,
                disabled=u.disabled_at is not None,
                created_at=u.created_at,
                grants=held.get(u.name, []),
            )
            for u in s.scalars(select(User).order_by(User.name))
        ]


def set_password(ctx: Context, name: str, password: str, *, actor: str) -> None:
    """A new password; the user's sessions end."""
    check_password(password)
    digest = _hasher.hash(password)
    with ctx.session() as s:
        row = _user(s, name)
        row.password_hash = digest
        row.failed_logins, row.last_failed_at = 0, None
        s.execute(delete(LoginSession).where(LoginSession.user_name == name))
        audit.record(s, actor, "user.passwd", name)
        s.commit()


def set_disabled(ctx: Context, name: str, disabled: bool, *, actor: str) -> UserView:
    """Disable (no login, sessions ended) or enable a user."""
    with ctx.session() as s:
        row = _user(s, name)
        row.disabled_at = utcnow() if disabled else None
        if disabled:
            s.execute(delete(LoginSession).where(LoginSession.user_name == name))
        audit.record(s, actor, "user.disable" if disabled else "user.enable", name)
        s.commit()
        return UserView(
            name=row.name,
            disabled=disabled,
            created_at=row.created_at,
            grants=_held(s, "user").get(row.name, []),
        )


def login(ctx: Context, name: str, password: str) -> LoginView:
    """A session for a user whose password matches; a failure is audited (never the password)
    and says no more than that the name or password is wrong, or that the user is disabled."""
    wrong = Unauthorized("the user name or the password is wrong")
    valid_name = isinstance(name, str) and check_name_ok(name)
    now = ctx.clock.now()
    with ctx.session() as s:
        row = s.scalar(select(User).where(User.name == name)) if valid_name else None
        if row is not None:
            wait = rules.login_wait(row.failed_logins, row.last_failed_at, now)
            if wait:
                audit.record(s, f"user:{name}", "auth.login-throttled", name, wait=wait)
                s.commit()
                raise TooManyRequests(
                    f"{row.failed_logins} failed logins of {name}: try again in {wait} s"
                )
        try:
            _hasher.verify(row.password_hash if row else _NOBODY, password)
            ok = row is not None
        except (VerificationError, InvalidHashError):
            ok = False
        if not ok or row is None:
            if row is not None:
                row.failed_logins += 1
                row.last_failed_at = now
            if valid_name:
                audit.record(s, f"user:{name}", "auth.login-failed", name)
            s.commit()
            raise wrong
        row.failed_logins, row.last_failed_at = 0, None
        if row.disabled_at is not None:
            audit.record(s, f"user:{name}", "auth.login-refused", name, reason="disabled")
            s.commit()
            raise Unauthorized(f"user {name} is disabled")
        if _hasher.check_needs_rehash(row.password_hash):
            row.password_hash = _hasher.hash(password)
        secret = SESSION_PREFIX + secrets.token_urlsafe(32)
        expires = ctx.clock.now() + timedelta(hours=SESSION_HOURS)
        s.execute(delete(LoginSession).where(LoginSession.expires_at <= ctx.clock.now()))
        s.add(LoginSession(token_hash=hash_token(secret), user_name=name, expires_at=expires))
        audit.record(s, f"user:{name}", "auth.login", name)
        s.commit()
        return LoginView(user=name, token=secret, expires_at=expires)


def check_name_ok(name: str) -> bool:
    try:
        check_name(name)
    except InvalidInput:
        return False
    return len(name) <= MAX_USER_NAME


def logout(ctx: Context, secret: str, *, actor: str) -> None:
    with ctx.session() as s:
        s.execute(delete(LoginSession).where(LoginSession.token_hash == hash_token(secret)))
        audit.record(s, actor, "auth.logout", actor.removeprefix("user:"))
        s.commit()


# --- roles -------------------------------------------------------------------------------


def create_role(ctx: Context, *, name: str, allow: list[str], actor: str) -> RoleView:
    check_name(name, "role name")
    if len(name) > 16:
        raise InvalidInput(f"role name {name!r} is too long: 16 characters at most")
    if name in rules.BUILTIN_ROLES or name in ("reader", "site"):
        raise Conflict(f"role {name} is built in")
    permissions = sorted(rules.check_permissions(allow))
    with ctx.session() as s:
        if s.scalar(select(Role.id).where(Role.name == name)) is not None:
            raise Conflict(f"role {name} already exists")
        s.add(Role(name=name, permissions={"allow": permissions}))
        audit.record(s, actor, "role.create", name, allow=permissions)
        s.commit()
    return RoleView(name=name, builtin=False, permissions=permissions)


def list_roles(ctx: Context) -> list[RoleView]:
    out = [
        RoleView(name=n, builtin=True, permissions=sorted(p))
        for n, p in rules.BUILTIN_ROLES.items()
    ]
    with ctx.session() as s:
        out += [
            RoleView(name=n, builtin=False, permissions=sorted(p))
            for n, p in sorted(custom_roles(s).items())
        ]
    return out


def delete_role(ctx: Context, name: str, *, actor: str) -> None:
    with ctx.session() as s:
        if name in rules.BUILTIN_ROLES:
            raise Conflict(f"role {name} is built in")
        row = s.scalar(select(Role).where(Role.name == check_name(name, "role name")))
        if row is None:
            raise NotFound(f"role {name} does not exist")
        holders = list(s.scalars(select(GrantRow).where(GrantRow.role == name)))
        if holders:
            held = ", ".join(f"{g.holder_kind} {g.holder} on {g.scope}" for g in holders[:5])
            raise Conflict(f"role {name} is granted ({held}): remove those grants first")
        s.delete(row)
        audit.record(s, actor, "role.delete", name)
        s.commit()


# --- grants ------------------------------------------------------------------------------


def _holder_exists(s, holder: Holder) -> None:  # type: ignore[no-untyped-def]
    if holder.kind not in ("user", "token"):
        raise InvalidInput("a grant is held by a user or a token")
    check_name(holder.name, f"{holder.kind} name")
    table = User if holder.kind == "user" else Token
    if s.scalar(select(table.id).where(table.name == holder.name)) is None:
        raise NotFound(f"{holder.kind} {holder.name} does not exist")
    if (
        holder.kind == "token"
        and s.scalar(select(Token.role).where(Token.name == holder.name)) == "site"
    ):
        raise InvalidInput(f"token {holder.name} is a site token: it holds no grants")


def add_grant(ctx: Context, holder: Holder, role: str, scope: str, *, actor: str) -> GrantView:
    rules.check_grant(role, scope, holder_kind=holder.kind)
    with ctx.session() as s:
        _holder_exists(s, holder)
        _check_role(s, role)
        exists = s.scalar(
            select(GrantRow.id).where(
                GrantRow.holder_kind == holder.kind,
                GrantRow.holder == holder.name,
                GrantRow.role == role,
                GrantRow.scope == scope,
            )
        )
        if exists is None:
            s.add(GrantRow(holder_kind=holder.kind, holder=holder.name, role=role, scope=scope))
            audit.record(
                s, actor, "grant.add", f"{holder.kind}:{holder.name}", role=role, scope=scope
            )
            s.commit()
    return GrantView(holder_kind=holder.kind, holder=holder.name, role=role, scope=scope)


def remove_grant(ctx: Context, holder: Holder, role: str, scope: str, *, actor: str) -> None:
    with ctx.session() as s:
        _holder_exists(s, holder)
        row = s.scalar(
            select(GrantRow).where(
                GrantRow.holder_kind == holder.kind,
                GrantRow.holder == holder.name,
                GrantRow.role == role,
                GrantRow.scope == scope,
            )
        )
        if row is None:
            raise NotFound(f"{holder.kind} {holder.name} holds no grant of {role} on {scope}")
        s.delete(row)
        audit.record(
            s, actor, "grant.remove", f"{holder.kind}:{holder.name}", role=role, scope=scope
        )
        s.commit()


def list_grants(ctx: Context, holder: Holder | None = None) -> list[GrantView]:
    q = select(GrantRow).order_by(GrantRow.holder_kind, GrantRow.holder, GrantRow.id)
    if holder is not None:
        q = q.where(GrantRow.holder_kind == holder.kind, GrantRow.holder == holder.name)
    with ctx.session() as s:
        if holder is not None:
            _holder_exists(s, holder)
        return [
            GrantView(holder_kind=g.holder_kind, holder=g.holder, role=g.role, scope=g.scope)
            for g in s.scalars(q)
        ]
