from __future__ import annotations

from fastapi import APIRouter

from goldfleet.api.deps import Ctx, Reader, Writer
from goldfleet.api.schemas import (
    CloneBulkPublic,
    CloneCreate,
    CloneRebase,
    CloneRebaseMany,
    CloneRecreate,
    CloneRetry,
)
from goldfleet.services import fleet, rollouts
from goldfleet.services.common import CloneView, OperationView

router = APIRouter(prefix="/clones", tags=["clones"])


@router.get("")
def list_clones(ctx: Ctx, caller: Reader, template: str | None = None) -> list[CloneView]:
    return fleet.list_clones(ctx, template=template)


@router.post("", status_code=202)
def create_clones(body: CloneCreate, ctx: Ctx, caller: Writer) -> CloneBulkPublic:
    policy, start_at = rollouts.policy_from(ctx, body.rollout)
    op, names = fleet.create_clones(
        ctx,
        template=body.template,
        count=body.count,
        name=body.name,
        full=body.full,
        actor=caller.name,
        wait=body.wait,
        policy=policy,
        start_at=start_at,
    )
    return CloneBulkPublic(operation=op, clones=names)


@router.post("/recreate", status_code=202)
def recreate(body: CloneRecreate, ctx: Ctx, caller: Writer) -> OperationView:
    policy, start_at = rollouts.policy_from(ctx, body.rollout)
    return fleet.recreate(
        ctx,
        name=body.name,
        template=body.template,
        include_full=body.include_full,
        discard_data=body.discard_data,
        actor=caller.name,
        wait=body.wait,
        policy=policy,
        start_at=start_at,
    )


@router.post("/rebase", status_code=202)
def rebase_many(body: CloneRebaseMany, ctx: Ctx, caller: Writer) -> OperationView:
    """Rebase every clone of a template (onto ``to``, default its current version)."""
    policy, start_at = rollouts.policy_from(ctx, body.rollout)
    return fleet.rebase_many(
        ctx,
        template=body.template,
        to=body.to,
        actor=caller.name,
        wait=body.wait,
        policy=policy,
        start_at=start_at,
    )


@router.post("/retry", status_code=202)
def retry(body: CloneRetry, ctx: Ctx, caller: Writer) -> OperationView:
    return fleet.retry(ctx, name=body.name, all_failed=body.all, actor=caller.name, wait=body.wait)


@router.get("/{name}")
def show_clone(name: str, ctx: Ctx, caller: Reader) -> CloneView:
    return fleet.show_clone(ctx, name)


@router.post("/{name}/start")
def start_clone(name: str, ctx: Ctx, caller: Writer) -> CloneView:
    return fleet.start_clone(ctx, name, actor=caller.name)


@router.post("/{name}/stop")
def stop_clone(name: str, ctx: Ctx, caller: Writer) -> CloneView:
    return fleet.stop_clone(ctx, name, actor=caller.name)


@router.post("/{name}/restore")
def restore_clone(name: str, ctx: Ctx, caller: Writer) -> CloneView:
    return fleet.restore_clone(ctx, name, actor=caller.name)


@router.post("/{name}/rebase")
def rebase_clone(name: str, ctx: Ctx, caller: Writer, body: CloneRebase | None = None) -> CloneView:
    return fleet.rebase_clone(ctx, name, to=(body or CloneRebase()).to, actor=caller.name)


@router.delete("/{name}", status_code=204)
def delete_clone(name: str, ctx: Ctx, caller: Writer) -> None:
    fleet.delete_clone(ctx, name, actor=caller.name)
