"""Clusters of hypervisor hosts and their updates (docs/hosts.md). cluster.read reads (on the
cluster, or on /), cluster.write changes; admin
tokens change clusters, channels, the proxy, the schedule, and sync."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from goldfleet.api.deps import Allow, Caller, Ctx
from goldfleet.api.schemas import JSON_LINES, UPLOAD, ErrorPublic
from goldfleet.api.streaming import GuardedStream
from goldfleet.api.uploads import received_body
from goldfleet.domain.access import cluster_path
from goldfleet.errors import InvalidInput
from goldfleet.services import access, clusters
from goldfleet.services.clusters import (
    ClusterView,
    PendingView,
    SyncView,
    UpdatePlanView,
    UpdatesView,
    UpdateView,
)

router = APIRouter(prefix="/clusters", tags=["clusters"])

ClusterRead = Annotated[access.Caller, Allow("cluster.read", "cluster")]
ClusterWrite = Annotated[access.Caller, Allow("cluster.write", "cluster")]


class CreateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=63)
    hosts: list[str] = Field(max_length=256)
    coordinator: str = Field(max_length=63)
    memory_mib: int | None = Field(default=None, ge=1, le=1 << 40)  # each host's capacity
    vcpus: int | None = Field(default=None, ge=1, le=1 << 20)


class CoordinatorRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = Field(max_length=63)


class ChannelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["early-access", "normal", "offline"] | None = None
    disable: StrictBool = False
    url: str | None = Field(default=None, max_length=2000)
    suite: str | None = Field(default=None, max_length=64)
    components: list[str] | None = Field(default=None, max_length=32)
    arch: str = Field(default="amd64", max_length=32)
    key: str | None = Field(default=None, max_length=2 << 20)  # the key file's bytes, base64


class ProxyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, max_length=2000)  # None: no proxy
    username: str | None = Field(default=None, max_length=256)
    password: str | None = Field(default=None, max_length=4096)


class GuidanceRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    packages: str = Field(max_length=100)  # a glob: linux-image-*
    category: Literal["mandatory", "recommended", "full", "livepatch"]
    task: Literal[
        "evacuate",
        "reboot-host",
        "restart-toolstack",
        "apply-livepatch",
        "restart-device-model",
        "restart-vm",
    ]
    why: str | None = Field(default=None, max_length=200)


class GuidanceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rules: list[GuidanceRule] | None = Field(max_length=100)  # None: only the shipped rules


class SyncRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    progress: StrictBool = False  # answer with JSON lines (start, progress…, done or error)


class ScheduleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["daily", "weekly", "off"]
    day: int | None = Field(default=None, ge=0, le=6)  # weekly: 0 is Sunday
    at: str | None = Field(default=None, max_length=5)  # HH:MM, UTC


@router.get("")
def list_clusters(ctx: Ctx, caller: Caller) -> list[ClusterView]:
    return access.visible(
        caller, "cluster.read", clusters.list_clusters(ctx), lambda c: cluster_path(c.name)
    )


@router.post("", status_code=201)
def create(
    body: CreateRequest, ctx: Ctx, caller: Annotated[access.Caller, Allow("cluster.write")]
) -> ClusterView:
    return clusters.create_cluster(
        ctx,
        body.name,
        body.hosts,
        body.coordinator,
        memory_mib=body.memory_mib,
        vcpus=body.vcpus,
        actor=caller.name,
    )


@router.get("/{name}")
def show(name: str, ctx: Ctx, caller: ClusterRead) -> ClusterView:
    return clusters.show_cluster(ctx, name)


@router.post("/{name}/coordinator")
def coordinator(name: str, body: CoordinatorRequest, ctx: Ctx, caller: ClusterWrite) -> ClusterView:
    """Changing the coordinator invalidates the last sync until the new one syncs."""
    return clusters.set_coordinator(ctx, name, body.host, actor=caller.name)


@router.post("/{name}/channel")
def channel(name: str, body: ChannelRequest, ctx: Ctx, caller: ClusterWrite) -> ClusterView:
    """Enable a channel (one at a time: enabling another while one is enabled is refused with
    the rule) or, with ``disable``, disable the enabled one."""
    if body.disable:
        if body.kind is not None:
            raise InvalidInput("give a channel to enable or disable: true, not both")
        return clusters.disable_channel(ctx, name, actor=caller.name)
    if body.kind is None:
        raise InvalidInput("give the channel to enable: early-access, normal or offline")
    key = None
    if body.key is not None:
        try:
            key = base64.b64decode(body.key, validate=True)
        except (binascii.Error, ValueError):  # ValueError: not ASCII
            raise InvalidInput("key: not base64 (send the key file's bytes, base64)") from None
    return clusters.set_channel(
        ctx,
        name,
        body.kind,
        url=body.url,
        suite=body.suite,
        components=body.components,
        arch=body.arch,
        key=key,
        actor=caller.name,
    )


@router.post("/{name}/proxy")
def proxy(name: str, body: ProxyRequest, ctx: Ctx, caller: ClusterWrite) -> ClusterView:
    """The HTTP proxy syncs go through; ``url`` null removes it. The password is never
    returned."""
    return clusters.set_proxy(
        ctx, name, body.url, username=body.username, password=body.password, actor=caller.name
    )


REPOSITORY_FAILED = {
    502: {
        "model": ErrorPublic,
        "description": "The repository, its signature, a package's sha256, a host or the proxy"
        " failed the sync; nothing of it was kept",
    }
}


@router.post(
    "/{name}/sync",
    response_model=None,
    responses={200: {"model": SyncView, "content": JSON_LINES}, **REPOSITORY_FAILED},
)
def sync(
    name: str, ctx: Ctx, caller: ClusterWrite, body: SyncRequest | None = None
) -> SyncView | StreamingResponse:
    """Verify the channel's signed index, download what the hosts lack to the coordinator's
    cache, record the update hash; with ``progress``, as JSON lines."""
    if body is not None and body.progress:
        return GuardedStream(
            clusters.stream_sync(ctx, name, actor=caller.name),
            stall_seconds=ctx.settings.stall_seconds,
            media_type="application/x-ndjson",
        )
    return clusters.sync(ctx, name, actor=caller.name)


@router.post("/{name}/guidance-rules")
def guidance_rules(name: str, body: GuidanceRequest, ctx: Ctx, caller: ClusterWrite) -> ClusterView:
    """The cluster's own guidance rules, tried before the shipped ones (first match wins);
    ``rules`` null or empty: the shipped ones only."""
    items = None
    if body.rules:
        items = [r.model_dump(exclude_none=True) for r in body.rules]
    return clusters.set_guidance_rules(ctx, name, items, actor=caller.name)


@router.post("/{name}/sync-schedule")
def sync_schedule(name: str, body: ScheduleRequest, ctx: Ctx, caller: ClusterWrite) -> ClusterView:
    return clusters.set_sync_schedule(
        ctx, name, body.kind, day=body.day, at=body.at, actor=caller.name
    )


@router.get("/{name}/updates")
def updates(name: str, ctx: Ctx, caller: ClusterRead) -> UpdatesView:
    """``{"hosts", "updates", "hash"}`` as of the last sync (and ``sync``: when, by which
    coordinator, whether it still counts)."""
    return clusters.updates(ctx, name)


@router.get("/{name}/update-plan")
def update_plan(
    name: str,
    ctx: Ctx,
    caller: ClusterRead,
    hash: str = Query(pattern=r"^sha256:[0-9a-f]{64}$"),
    level: Literal["mandatory", "recommended", "full"] = "recommended",
) -> UpdatePlanView:
    """What a rolling update with this hash at this level would do (coordinator first, each
    host's steps, what stays pending) and its prechecks by name. A plan only: nothing runs."""
    return clusters.update_plan(ctx, name, hash, level)


# --- the rolling update (docs/host-updates.md) ------------------------------------------------


class HaRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # argv lists, run without a shell; both null: no commands
    disable: list[list[str]] | None = Field(default=None, max_length=20)
    enable: list[list[str]] | None = Field(default=None, max_length=20)


class UpdateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hash: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    level: Literal["mandatory", "recommended", "full"]
    max_hosts: int = Field(default=1, ge=1, le=256)
    logoff: Literal["wait", "notify-force", "force"] = "wait"
    grace: str | None = Field(default=None, max_length=32)
    message: str | None = Field(default=None, max_length=1000)
    ha_disabled: StrictBool = False  # HA/balancing are off already (no commands configured)


class ResumeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    skip: str | None = Field(default=None, max_length=63)  # leave out the host it paused on


class PendingRunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    logoff: Literal["wait", "notify-force", "force"] = "wait"


@router.post("/{name}/ha")
def ha(name: str, body: HaRequest, ctx: Ctx, caller: ClusterWrite) -> ClusterView:
    """The commands that switch HA and load balancing off before a rolling update and on at
    its end (also after a crash)."""
    return clusters.set_ha(ctx, name, body.disable, body.enable, actor=caller.name)


@router.post("/{name}/update", status_code=201)
def start_update(name: str, body: UpdateRequest, ctx: Ctx, caller: ClusterWrite) -> UpdateView:
    """Start the durable rolling update (409 naming each failed precheck)."""
    return clusters.start_update(
        ctx,
        name,
        requested_hash=body.hash,
        level=body.level,
        max_hosts=body.max_hosts,
        logoff=body.logoff,
        grace=body.grace,
        message=body.message,
        ha_disabled=body.ha_disabled,
        actor=caller.name,
    )


@router.get("/{name}/update")
def update_status(name: str, ctx: Ctx, caller: ClusterRead) -> UpdateView:
    """The cluster's latest rolling update, each host's steps done."""
    return clusters.update_status(ctx, name)


@router.post("/{name}/update/resume")
def resume_update(name: str, body: ResumeRequest, ctx: Ctx, caller: ClusterWrite) -> UpdateView:
    return clusters.resume_update(ctx, name, skip=body.skip, actor=caller.name)


@router.get("/{name}/pending")
def pending(name: str, ctx: Ctx, caller: ClusterRead) -> PendingView:
    """Guidance rolling updates left undone (above their level), per host and VM."""
    return clusters.pending(ctx, name)


@router.post("/{name}/pending/run", status_code=201)
def run_pending(
    name: str, ctx: Ctx, caller: ClusterWrite, body: PendingRunRequest | None = None
) -> UpdateView:
    """Carry out the pending guidance as an operation (the update's steps, no packages)."""
    return clusters.run_pending(
        ctx, name, actor=caller.name, logoff=body.logoff if body else "wait"
    )


@router.post("/{name}/bundle", openapi_extra=UPLOAD, responses=REPOSITORY_FAILED)
async def upload_bundle(name: str, request: Request, ctx: Ctx, caller: ClusterWrite) -> SyncView:
    """The offline channel's sync: the body is a tar of a signed apt repository, verified as
    a sync verifies one; answers as a sync does, with the update hash."""
    async with received_body(request, ctx, prefix="bundle", limit=2 << 30, what="bundle") as bundle:
        return await run_in_threadpool(clusters.upload_bundle, ctx, name, bundle, actor=caller.name)
