"""Dependencies shared by every router: the context and the authenticated caller."""

from __future__ import annotations

from typing import Annotated

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
    """Run by the app's middleware for every path but /health, before the body is read."""
    return await run_in_threadpool(
        access.authenticate, request.app.state.ctx, bearer_token(request)
    )


async def get_caller(request: Request) -> access.Caller:
    caller = getattr(request.state, "caller", None)
    return caller if caller is not None else await authenticate(request)


async def get_writer(caller: Annotated[access.Caller, Depends(get_caller)]) -> access.Caller:
    if not caller.can_write:
        raise Forbidden(f"token {caller.name} has the role {caller.role}, which may only read")
    return caller


async def get_site(caller: Annotated[access.Caller, Depends(get_caller)]) -> access.Caller:
    if caller.role != "site":
        raise Forbidden(f"token {caller.name} is not a site token; the sync endpoints need one")
    return caller


Ctx = Annotated[Context, Depends(get_ctx)]
Reader = Annotated[access.Caller, Depends(get_caller)]
Writer = Annotated[access.Caller, Depends(get_writer)]
SiteCaller = Annotated[access.Caller, Depends(get_site)]
