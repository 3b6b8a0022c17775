"""Operations, store health, tokens and the audit log."""

from __future__ import annotations

from fastapi import APIRouter

from goldfleet.api.deps import Ctx, Reader, Writer
from goldfleet.api.schemas import TokenCreate, TokenCreated
from goldfleet.services import audit, auth, operations, store
from goldfleet.services.views import AuditView, OperationView, StoreReport, TokenView

router = APIRouter(tags=["admin"])


@router.get("/operations")
def list_operations(ctx: Ctx, caller: Reader, limit: int = 50) -> list[OperationView]:
    return operations.list_operations(ctx, limit=limit)


@router.get("/operations/{op_id}")
def show_operation(op_id: int, ctx: Ctx, caller: Reader) -> OperationView:
    return operations.show_operation(ctx, op_id)


@router.post("/operations/{op_id}/pause")
def pause_operation(op_id: int, ctx: Ctx, caller: Writer) -> OperationView:
    return operations.pause_operation(ctx, op_id, actor=caller.name)


@router.post("/operations/{op_id}/resume")
def resume_operation(op_id: int, ctx: Ctx, caller: Writer) -> OperationView:
    return operations.resume_operation(ctx, op_id, actor=caller.name)


@router.post("/operations/{op_id}/cancel")
def cancel_operation(op_id: int, ctx: Ctx, caller: Writer) -> OperationView:
    return operations.cancel_operation(ctx, op_id, actor=caller.name)


@router.post("/store/verify")
def verify_store(ctx: Ctx, caller: Writer) -> StoreReport:
    """An admin action: a full rehash of the store keeps the server busy for minutes."""
    return store.verify_store(ctx)


@router.get("/tokens")
def list_tokens(ctx: Ctx, caller: Writer) -> list[TokenView]:
    return auth.list_tokens(ctx)


@router.post("/tokens", status_code=201)
def create_token(body: TokenCreate, ctx: Ctx, caller: Writer) -> TokenCreated:
    token = auth.create_token(ctx, name=body.name, role=body.role, actor=caller.name)
    return TokenCreated(name=body.name, role=body.role, token=token)


@router.delete("/tokens/{name}", status_code=204)
def revoke_token(name: str, ctx: Ctx, caller: Writer) -> None:
    auth.revoke_token(ctx, name, actor=caller.name)


@router.get("/audit")
def list_audit(ctx: Ctx, caller: Writer, limit: int = 100) -> list[AuditView]:
    return audit.list_audit(ctx, limit=limit)
