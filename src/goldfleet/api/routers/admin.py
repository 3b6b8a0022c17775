"""Operations, store health, tokens and the audit log."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, StrictBool

from goldfleet.api.deps import Allow, Caller, Ctx
from goldfleet.api.schemas import JSON_LINES, ListLimit, OperationId, TokenCreate, TokenCreated
from goldfleet.api.streaming import GuardedStream
from goldfleet.services import access, catalog, rollouts
from goldfleet.services.common import AuditView, OperationView, StoreReport, TokenView, audit

router = APIRouter(tags=["admin"])


class VerifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: Literal["last"] | None = None  # "last": only what changed since the last clean verify
    progress: StrictBool = False  # answer with JSON lines (start, progress…, done or error)


@router.get("/operations")
def list_operations(ctx: Ctx, caller: Caller, limit: ListLimit = 50) -> list[OperationView]:
    """The newest ``limit`` operations, of which those the caller may read (an operation is
    covered by the scopes of the clones it works on)."""
    return access.visible_operations(ctx, caller, rollouts.list_operations(ctx, limit=limit))


@router.get("/operations/{op_id}")
def show_operation(
    op_id: OperationId,
    ctx: Ctx,
    caller: Annotated[access.Caller, Allow("operation.read", "operation", "op_id")],
) -> OperationView:
    return rollouts.show_operation(ctx, op_id)


@router.post("/operations/{op_id}/pause")
def pause_operation(
    op_id: OperationId,
    ctx: Ctx,
    caller: Annotated[access.Caller, Allow("operation.control", "operation", "op_id")],
) -> OperationView:
    return rollouts.pause_operation(ctx, op_id, actor=caller.name)


@router.post("/operations/{op_id}/resume")
def resume_operation(
    op_id: OperationId,
    ctx: Ctx,
    caller: Annotated[access.Caller, Allow("operation.control", "operation", "op_id")],
) -> OperationView:
    return rollouts.resume_operation(ctx, op_id, actor=caller.name)


@router.post("/operations/{op_id}/cancel")
def cancel_operation(
    op_id: OperationId,
    ctx: Ctx,
    caller: Annotated[access.Caller, Allow("operation.control", "operation", "op_id")],
) -> OperationView:
    return rollouts.cancel_operation(ctx, op_id, actor=caller.name)


@router.post(
    "/store/verify",
    response_model=None,
    responses={200: {"model": StoreReport, "content": JSON_LINES}},
)
def verify_store(
    ctx: Ctx,
    caller: Annotated[access.Caller, Allow("store.verify")],
    body: VerifyRequest | None = None,
) -> StoreReport | StreamingResponse:
    """Rehash every layer and qemu-img check every file on all cores. An admin action: it
    keeps every core busy for minutes on a large store."""
    body = body or VerifyRequest()
    since_last = body.since == "last"
    if body.progress:
        catalog.refuse_if_running(ctx)  # a refusal as a status code, before the stream
        return GuardedStream(
            catalog.stream_verify(ctx, since_last=since_last),
            stall_seconds=ctx.settings.stall_seconds,
            media_type="application/x-ndjson",
        )
    return catalog.verify_store(ctx, since_last=since_last)


@router.get("/tokens")
def list_tokens(ctx: Ctx, caller: Annotated[access.Caller, Allow("user.read")]) -> list[TokenView]:
    return access.list_tokens(ctx)


@router.post("/tokens", status_code=201)
def create_token(
    body: TokenCreate, ctx: Ctx, caller: Annotated[access.Caller, Allow("user.write")]
) -> TokenCreated:
    token = access.create_token(
        ctx,
        name=body.name,
        role=body.role,
        scope=body.scope,
        clone=body.clone,
        actor=caller.name,
    )
    made = {t.name: t for t in access.list_tokens(ctx)}[body.name]
    return TokenCreated(name=body.name, role=made.role, token=token, grants=made.grants)


@router.delete("/tokens/{name}", status_code=204)
def revoke_token(
    name: str, ctx: Ctx, caller: Annotated[access.Caller, Allow("user.write")]
) -> None:
    access.revoke_token(ctx, name, actor=caller.name)


@router.get("/audit")
def list_audit(
    ctx: Ctx, caller: Annotated[access.Caller, Allow("audit.read")], limit: ListLimit = 100
) -> list[AuditView]:
    return audit.list_audit(ctx, limit=limit)
