"""Hosts and their edge stores (docs/edge.md). Reader tokens list, admin tokens prefetch."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict

from goldfleet.api.deps import Ctx, Reader, Writer
from goldfleet.services import hosts
from goldfleet.services.hosts import HostsView, PrefetchView

router = APIRouter(prefix="/hosts", tags=["hosts"])


class PrefetchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    template: str
    version: int | None = None  # None: the current version
    progress: bool = False  # answer with JSON lines (start, progress…, done or error)


@router.get("")
def list_hosts(ctx: Ctx, caller: Reader) -> HostsView:
    return hosts.list_hosts(ctx)


@router.post("/{host}/prefetch", response_model=None)
def prefetch(
    host: str, body: PrefetchRequest, ctx: Ctx, caller: Writer
) -> PrefetchView | StreamingResponse:
    """Copy the version's layers the host lacks into its edge store; refusals (edge stores
    off, unknown host or version, folder not mounted) come before any byte moves."""
    plan = hosts.plan_prefetch(ctx, host, body.template, body.version)
    if body.progress:
        return StreamingResponse(
            hosts.stream_prefetch(ctx, plan, actor=caller.name),
            media_type="application/x-ndjson",
        )
    return hosts.run_prefetch(ctx, plan, actor=caller.name)
