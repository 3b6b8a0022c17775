"""Offline update bundles and the keys that sign them (the bundle.* and key.* permissions)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict

from goldfleet.api.deps import Allow, Ctx
from goldfleet.api.schemas import BYTES, UPLOAD, QueryFlag
from goldfleet.api.streaming import GuardedStream
from goldfleet.api.uploads import received_body
from goldfleet.domain.names import MAX_VERSION
from goldfleet.services import access, distribution

router = APIRouter(tags=["bundles"])

BundleExport = Annotated[access.Caller, Allow("bundle.export", "template")]
BundleImport = Annotated[access.Caller, Allow("bundle.import")]
KeyRead = Annotated[access.Caller, Allow("key.read")]
KeyWrite = Annotated[access.Caller, Allow("key.write")]


class KeyTrust(BaseModel):
    name: str
    public_key: str


class Rebind(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str  # a trusted key's name, or its public key


@router.get(
    "/templates/{name}/bundle",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-tar": BYTES}}},
)
async def export_bundle(
    name: str,
    ctx: Ctx,
    caller: BundleExport,
    since: Annotated[int | None, Query(ge=1, le=MAX_VERSION)] = None,
    policy_only: QueryFlag = False,
) -> StreamingResponse:
    """The signed bundle as a streamed tar; refusals come before the first byte."""
    plan = await run_in_threadpool(distribution.plan_export, ctx, name, since, policy_only)
    suffix = f"-since-v{since}" if since is not None else ""
    return GuardedStream(
        distribution.stream_bundle(plan),
        stall_seconds=ctx.settings.stall_seconds,
        media_type="application/x-tar",
        headers={"Content-Disposition": f'attachment; filename="{name}{suffix}.bundle"'},
    )


@router.post("/bundles/import", status_code=201, openapi_extra=UPLOAD)
async def import_bundle(
    request: Request, ctx: Ctx, caller: BundleImport
) -> distribution.BundleView:
    """Receive a bundle (the request body) into the incoming folder, then check and import it."""
    limit = ctx.settings.max_virtual_size * 4 + (64 << 20)
    async with received_body(request, ctx, prefix="bundle", limit=limit, what="bundle") as file:
        return await run_in_threadpool(distribution.import_bundle, ctx, file, actor=caller.name)


@router.post("/bundles/check", openapi_extra=UPLOAD)
async def check_bundle(
    request: Request, ctx: Ctx, caller: BundleImport
) -> distribution.BundleCheck:
    """``bundle import --check``: what importing the bundle (the request body) would do, with
    ``file_ok`` false and the refusal when it would be refused. Nothing is imported."""
    limit = ctx.settings.max_virtual_size * 4 + (64 << 20)
    async with received_body(request, ctx, prefix="bundle", limit=limit, what="bundle") as file:
        return await run_in_threadpool(distribution.check_bundle, ctx, file)


@router.post("/templates/{name}/rebind")
def rebind(
    name: str, body: Rebind, ctx: Ctx, caller: Annotated[access.Caller, Allow("key.write")]
) -> distribution.BindingView:
    """Bind the template to another trusted key: its next bundles must be signed by it."""
    return distribution.rebind(ctx, name, body.key, actor=caller.name)


@router.get("/keys")
def show_keys(ctx: Ctx, caller: KeyRead) -> distribution.KeysView:
    return distribution.show_keys(ctx)


@router.post("/keys/trust", status_code=201)
def trust_key(body: KeyTrust, ctx: Ctx, caller: KeyWrite) -> distribution.KeyView:
    return distribution.trust_key(ctx, body.name, body.public_key, actor=caller.name)


@router.delete("/keys/{name}", status_code=204)
def untrust_key(name: str, ctx: Ctx, caller: KeyWrite) -> None:
    distribution.untrust_key(ctx, name, actor=caller.name)
