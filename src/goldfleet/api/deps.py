"""Dependencies shared by every router: the context, the authenticated caller, and the one
authorisation check.

A route names the permission it needs and, when it touches one object named in its path, the
object: ``caller: Annotated[access.Caller, Allow("clone.restore", "clone")]`` refuses (403,
naming the permission and the scope) unless a grant of the caller covers that clone. Objects
named in the body are checked with ``access.authorize(ctx, caller, permission, kind, name)``, lists
filtered with ``access.visible``/``access.reach``: all of them ask ``services/access``'s policy.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool

from goldfleet.context import Context
from goldfleet.errors import Forbidden
from goldfleet.services import access


def get_ctx(request: Request) -> Context:
    return request.app.state.ctx


def bearer_token(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


async def authenticate(request: Request) -> access.Caller:
    """Run by the app's middleware for every path but /health and /auth/login, before the body
    is read."""
    return await run_in_threadpool(
        access.authenticate, request.app.state.ctx, bearer_token(request)
    )


async def get_caller(request: Request) -> access.Caller:
    caller = getattr(request.state, "caller", None)
    return caller if caller is not None else await authenticate(request)


def Allow(permission: str, kind: str | None = None, param: str = "name") -> Any:
    """The caller, if it holds ``permission`` on the object of ``kind`` named by the path
    parameter ``param`` (no kind: on ``/``, the whole fleet)."""

    async def allowed(
        request: Request, caller: Annotated[access.Caller, Depends(get_caller)]
    ) -> access.Caller:
        name = request.path_params.get(param) if kind is not None else None
        await run_in_threadpool(
            access.authorize, request.app.state.ctx, caller, permission, kind, name
        )
        return caller

    return Depends(allowed)


async def get_site(caller: Annotated[access.Caller, Depends(get_caller)]) -> access.Caller:
    if caller.role != "site":
        raise Forbidden(f"token {caller.name} is not a site token; the sync endpoints need one")
    return caller


Ctx = Annotated[Context, Depends(get_ctx)]
Caller = Annotated[access.Caller, Depends(get_caller)]  # authenticated; the route checks
# Reader and Writer: for routes not yet given their own permission — reading needs the
# auditor's reach on / (every .read permission), writing needs admin on /
Reader = Annotated[access.Caller, Allow("audit.read")]
Writer = Annotated[access.Caller, Allow("user.write")]
SiteCaller = Annotated[access.Caller, Depends(get_site)]
