"""API tokens: only their sha256 is stored; the token itself is shown once, when made.

Roles: ``admin`` may do everything; ``reader`` may only read (least privilege for dashboards
and scripts that watch the fleet); ``site`` may only read the sync endpoints (``/sync/...``),
with which a site pulls its versions from HQ.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import select

from goldfleet.context import Context
from goldfleet.db.tables import Token, utcnow
from goldfleet.domain.names import check_name
from goldfleet.errors import Conflict, InvalidInput, NotFound, Unauthorized
from goldfleet.services.common import TokenView, audit

ROLES = ("admin", "reader", "site")


@dataclass(frozen=True, slots=True)
class Caller:
    name: str
    role: str

    @property
    def can_write(self) -> bool:
        return self.role == "admin"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(ctx: Context, *, name: str, role: str = "admin", actor: str) -> str:
    check_name(name, "token name")
    if role not in ROLES:
        raise InvalidInput(f"role {role!r} is not valid: use {' or '.join(ROLES)}")
    token = "gf_" + secrets.token_urlsafe(32)
    with ctx.session() as s:
        if s.scalar(select(Token.id).where(Token.name == name)) is not None:
            raise Conflict(f"token {name} already exists; revoke it or choose another name")
        s.add(Token(name=name, token_hash=hash_token(token), role=role))
        audit.record(s, actor, "token.create", name, role=role)
        s.commit()
    return token


def authenticate(ctx: Context, token: str | None) -> Caller:
    if not token:
        raise Unauthorized("no token given: send 'Authorization: Bearer <token>'")
    digest = hash_token(token)
    with ctx.session() as s:
        row = s.scalar(select(Token).where(Token.token_hash == digest))
        if (
            row is None
            or row.revoked_at is not None
            or not hmac.compare_digest(row.token_hash, digest)
        ):
            raise Unauthorized("the token is not valid or was revoked")
        return Caller(name=row.name, role=row.role)


def list_tokens(ctx: Context) -> list[TokenView]:
    with ctx.session() as s:
        return [
            TokenView(
                name=t.name, role=t.role, created_at=t.created_at, revoked=t.revoked_at is not None
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
