"""Hosts and their edge stores (docs/edge.md). Reader tokens list, admin tokens prefetch and
prune."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from goldfleet.api.deps import Allow, Ctx
from goldfleet.api.schemas import JSON_LINES
from goldfleet.api.streaming import GuardedStream
from goldfleet.domain.names import MAX_VERSION
from goldfleet.services import access, clusters, hosts
from goldfleet.services.clusters import HostUpdateView
from goldfleet.services.hosts import HostsView, PrefetchView, PruneView

router = APIRouter(prefix="/hosts", tags=["hosts"])

# hosts belong to clusters (cluster:NAME grants) once clusters exist; until then, on /
HostRead = Annotated[access.Caller, Allow("cluster.read")]
HostWrite = Annotated[access.Caller, Allow("cluster.write")]


class PrefetchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    template: str
    version: int | None = Field(default=None, ge=1, le=MAX_VERSION)  # None: the current one
    progress: StrictBool = False  # answer with JSON lines (start, progress…, done or error)


class PruneRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keep_current: StrictBool = True  # keep every template's current version too
    dry_run: StrictBool = False  # say what would go, remove nothing


@router.get("")
def list_hosts(ctx: Ctx, caller: HostRead) -> HostsView:
    return hosts.list_hosts(ctx)


@router.get("/{host}")
def show_host(
    host: str,
    ctx: Ctx,
    caller: Annotated[access.Caller, Allow("cluster.read", "host", param="host")],
) -> HostUpdateView:
    """The host's cluster and update state there (docs/hosts.md): latest synced updates
    applied, last software update and hash, pending guidance by category."""
    return clusters.show_host(ctx, host)


@router.post(
    "/{host}/prefetch",
    response_model=None,
    responses={200: {"model": PrefetchView, "content": JSON_LINES}},
)
def prefetch(
    host: str, body: PrefetchRequest, ctx: Ctx, caller: HostWrite
) -> PrefetchView | StreamingResponse:
    """Copy the version's layers the host lacks into its edge store; refusals (edge stores
    off, unknown host or version, folder not mounted) come before any byte moves."""
    plan = hosts.plan_prefetch(ctx, host, body.template, body.version)
    if body.progress:
        return GuardedStream(
            hosts.stream_prefetch(ctx, plan, actor=caller.name),
            stall_seconds=ctx.settings.stall_seconds,
            media_type="application/x-ndjson",
        )
    return hosts.run_prefetch(ctx, plan, actor=caller.name)


@router.post("/prune")
def prune_all(ctx: Ctx, caller: HostWrite, body: PruneRequest | None = None) -> PruneView:
    """Every host's edge store; hosts not reachable are reported with a note and skipped."""
    return _prune(ctx, None, body or PruneRequest(), caller.name)


@router.post("/{host}/prune")
def prune(host: str, ctx: Ctx, caller: HostWrite, body: PruneRequest | None = None) -> PruneView:
    """Remove the layers no clone on the host needs (and, unless told, no current version);
    refusals (edge stores off, unknown host, folder not mounted) come before any removal."""
    return _prune(ctx, host, body or PruneRequest(), caller.name)


def _prune(ctx: Ctx, host: str | None, body: PruneRequest, actor: str) -> PruneView:
    return hosts.prune(ctx, host, keep_current=body.keep_current, dry_run=body.dry_run, actor=actor)
