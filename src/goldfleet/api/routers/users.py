"""Users, roles, grants and logins (docs/access.md).

``POST /auth/login`` (no token) answers a session secret to send as ``Authorization: Bearer``;
``DELETE /auth/session`` ends it; ``GET /auth/me`` says who the caller is and what it holds.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from goldfleet.api.deps import Allow, Caller, Ctx, bearer_token
from goldfleet.errors import InvalidInput
from goldfleet.services import access
from goldfleet.services.access import GrantView, LoginView, RoleView, UserView

router = APIRouter(tags=["access"])

UserRead = Annotated[access.Caller, Allow("user.read")]
UserWrite = Annotated[access.Caller, Allow("user.write")]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginRequest(Body):
    name: str = Field(max_length=63)
    password: str = Field(max_length=1024)


class UserCreate(Body):
    name: str
    password: str = Field(max_length=1024)
    role: str
    scope: str | None = None  # default /, or self for the role user


class PasswordChange(Body):
    password: str = Field(max_length=1024)


class RoleCreate(Body):
    name: str
    allow: list[str] = Field(max_length=len(access.PERMISSIONS))


class GrantChange(Body):
    user: str | None = None
    token: str | None = None
    role: str
    scope: str


class Me(BaseModel):
    name: str  # as the audit log records the caller
    kind: str  # user | token
    role: str | None  # a token's role as made; none for a user (its roles are its grants)
    grants: list[str]


def _holder(user: str | None, token: str | None) -> access.Holder:
    if (user is None) == (token is None):
        raise InvalidInput("name either a user or a token")
    return access.Holder("user", user) if user is not None else access.Holder("token", token or "")


@router.post("/auth/login")
def login(body: LoginRequest, ctx: Ctx) -> LoginView:
    """A user's password for a session secret (expires after 12 hours). Open: no token."""
    return access.login(ctx, body.name, body.password)


@router.delete("/auth/session", status_code=204)
def logout(request: Request, ctx: Ctx, caller: Caller) -> None:
    """End the login session this request was sent with."""
    if caller.user is None:
        raise InvalidInput("this request was sent with a token, not a login session")
    access.logout(ctx, bearer_token(request), actor=caller.name)


@router.get("/auth/me")
def me(caller: Caller) -> Me:
    return Me(
        name=caller.name,
        kind="user" if caller.user else "token",
        role=caller.role or None,
        grants=[str(g) for g in caller.grants],
    )


@router.get("/users")
def list_users(ctx: Ctx, caller: UserRead) -> list[UserView]:
    return access.list_users(ctx)


@router.post("/users", status_code=201)
def create_user(body: UserCreate, ctx: Ctx, caller: UserWrite) -> UserView:
    return access.create_user(
        ctx,
        name=body.name,
        password=body.password,
        role=body.role,
        scope=body.scope,
        actor=caller.name,
    )


@router.post("/users/{name}/password", status_code=204)
def set_password(name: str, body: PasswordChange, ctx: Ctx, caller: Caller) -> None:
    """A user changes its own password; user.write changes anyone's."""
    if caller.user != name:
        access.authorize(ctx, caller, "user.write")
    access.set_password(ctx, name, body.password, actor=caller.name)


@router.post("/users/{name}/disable")
def disable_user(name: str, ctx: Ctx, caller: UserWrite) -> UserView:
    return access.set_disabled(ctx, name, True, actor=caller.name)


@router.post("/users/{name}/enable")
def enable_user(name: str, ctx: Ctx, caller: UserWrite) -> UserView:
    return access.set_disabled(ctx, name, False, actor=caller.name)


@router.get("/roles")
def list_roles(ctx: Ctx, caller: UserRead) -> list[RoleView]:
    return access.list_roles(ctx)


@router.post("/roles", status_code=201)
def create_role(body: RoleCreate, ctx: Ctx, caller: UserWrite) -> RoleView:
    return access.create_role(ctx, name=body.name, allow=body.allow, actor=caller.name)


@router.delete("/roles/{name}", status_code=204)
def delete_role(name: str, ctx: Ctx, caller: UserWrite) -> None:
    access.delete_role(ctx, name, actor=caller.name)


@router.get("/grants")
def list_grants(
    ctx: Ctx, caller: UserRead, user: str | None = None, token: str | None = None
) -> list[GrantView]:
    holder = None if user is None and token is None else _holder(user, token)
    return access.list_grants(ctx, holder)


@router.post("/grants", status_code=201)
def add_grant(body: GrantChange, ctx: Ctx, caller: UserWrite) -> GrantView:
    return access.add_grant(
        ctx, _holder(body.user, body.token), body.role, body.scope, actor=caller.name
    )


@router.post("/grants/remove", status_code=204)
def remove_grant(body: GrantChange, ctx: Ctx, caller: UserWrite) -> None:
    access.remove_grant(
        ctx, _holder(body.user, body.token), body.role, body.scope, actor=caller.name
    )
