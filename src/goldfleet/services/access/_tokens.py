"""API tokens: only their sha256 is stored; the token itself is shown once, when made.

A token holds grants like a user (``grant add --token``). It is made with one: ``admin`` (admin
on /), ``reader`` (auditor on /, as reader tokens have always read everything), any other role
on a scope (``--role helpdesk --scope pool:P``), or ``--clone C`` (the role ``user`` on
``clone:C``: restore, start and stop of that clone and nothing else). The role ``site`` holds no
grant: it may only read the sync endpoints (``/sync/...``), with which a site pulls its versions
from HQ.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select

from goldfleet.context import Context
from goldfleet.db.tables import Grant as GrantRow
from goldfleet.db.tables import LoginSession, Token, User, utcnow
from goldfleet.domain import access as rules
from goldfleet.domain.names import check_name
from goldfleet.errors import Conflict, InvalidInput, NotFound, Unauthorized
from goldfleet.services.access._policy import Caller, custom_roles, grants_of
from goldfleet.services.common import TokenView, audit

ROLES = ("admin", "reader", "site")  # the roles a token was made with before grants
SESSION_PREFIX = "gs_"  # a login session's bearer secret (services/access/_users.py)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_grant(
    ctx: Context, role: str | None, scope: str | None, clone: str | None
) -> tuple[str, tuple[str, str] | None]:
    """The role recorded on the token and the grant it gets: (role, scope) or None (site).
    No role: admin, or with a clone, user."""
    if clone is not None:
        check_name(clone, "clone name")
        if role not in (None, "user"):
            raise InvalidInput("--clone gives the role user on that clone: leave --role out")
        if scope is not None:
            raise InvalidInput("give --clone or --scope, not both")
        return "user", ("user", f"clone:{clone}")
    if role == "site":
        if scope is not None:
            raise InvalidInput("a site token holds no scope: it reads /sync/ only")
        return "site", None
    role = "admin" if role is None else role
    if role in rules.TOKEN_ROLE_GRANTS and scope is None:
        return role, rules.TOKEN_ROLE_GRANTS[role]
    granted = "auditor" if role == "reader" else role
    if granted not in rules.BUILTIN_ROLES:
        with ctx.session() as s:
            if granted not in custom_roles(s):
                raise InvalidInput(
                    f"role {role!r} is not valid: use admin, reader, site, one of"
                    f" {', '.join(rules.BUILTIN_ROLES)} or a role made with role create"
                )
    scope = rules.check_scope(scope or "/")
    rules.check_grant(granted, scope, holder_kind="token")
    return role, (granted, scope)


def create_token(
    ctx: Context,
    *,
    name: str,
    role: str | None = "admin",
    actor: str,
    scope: str | None = None,
    clone: str | None = None,
) -> str:
    check_name(name, "token name")
    recorded, grant = token_grant(ctx, role, scope, clone)
    token = "gf_" + secrets.token_urlsafe(32)
    with ctx.session() as s:
        if s.scalar(select(Token.id).where(Token.name == name)) is not None:
            raise Conflict(f"token {name} already exists; revoke it or choose another name")
        s.add(Token(name=name, token_hash=hash_token(token), role=recorded))
        if grant is not None:
            s.add(GrantRow(holder_kind="token", holder=name, role=grant[0], scope=grant[1]))
        detail = {"role": recorded} | ({"scope": grant[1]} if grant else {})
        audit.record(s, actor, "token.create", name, **detail)
        s.commit()
    return token


def authenticate(ctx: Context, token: str | None) -> Caller:
    """A token, or a user's login session (``gs_…``), to the caller with its grants."""
    if not token:
        raise Unauthorized("no token given: send 'Authorization: Bearer <token>'")
    digest = hash_token(token)
    with ctx.session() as s:
        if token.startswith(SESSION_PREFIX):
            login = s.scalar(select(LoginSession).where(LoginSession.token_hash == digest))
            if login is None or not hmac.compare_digest(login.token_hash, digest):
                raise Unauthorized("the session is not valid or was ended: log in again")
            if login.expires_at <= ctx.clock.now():
                raise Unauthorized("the session expired: log in again")
            user = s.scalar(select(User).where(User.name == login.user_name))
            if user is None or user.disabled_at is not None:
                raise Unauthorized(f"user {login.user_name} is disabled")
            return Caller(
                name=f"user:{user.name}",
                role="",  # a user's roles are its grants
                grants=grants_of(s, "user", user.name),
                user=user.name,
            )
        row = s.scalar(select(Token).where(Token.token_hash == digest))
        if (
            row is None
            or row.revoked_at is not None
            or not hmac.compare_digest(row.token_hash, digest)
        ):
            raise Unauthorized("the token is not valid or was revoked")
        return Caller(name=row.name, role=row.role, grants=grants_of(s, "token", row.name))


def list_tokens(ctx: Context) -> list[TokenView]:
    with ctx.session() as s:
        held: dict[str, list[str]] = {}
        for g in s.scalars(
            select(GrantRow).where(GrantRow.holder_kind == "token").order_by(GrantRow.id)
        ):
            held.setdefault(g.holder, []).append(f"{g.role} on {g.scope}")
        return [
            TokenView(
                name=t.name,
                role=t.role,
                created_at=t.created_at,
                revoked=t.revoked_at is not None,
                grants=held.get(t.name, []),
            )
            for t in s.scalars(select(Token).order_by(Token.name))
        ]


def revoke_token(ctx: Context, name: str, *, actor: str) -> None:
    with ctx.session() as s:
        row = s.scalar(select(Token).where(Token.name == check_name(name, "token name")))
        if row is None:
            raise NotFound(f"token {name} does not exist")
        row.revoked_at = utcnow()
        audit.record(s, actor, "token.revoke", name)
        s.commit()
