"""Sites. At HQ: sites, their rights and assignments (admin) and the sync endpoints a site token
reads. At a site: joining HQ, the sync and its schedule, and publishing a version (admin)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, StrictBool

from goldfleet.api.deps import Allow, Caller, Ctx, SiteCaller
from goldfleet.api.files import LayerResponse
from goldfleet.api.schemas import BYTES, JSON_LINES, UPLOAD, VersionNumber
from goldfleet.api.streaming import GuardedStream
from goldfleet.api.uploads import received_body
from goldfleet.domain.access import site_path
from goldfleet.domain.names import MAX_VERSION, check_name
from goldfleet.domain.rollout import parse_time
from goldfleet.domain.sizes import MAX_RATE
from goldfleet.services import access, distribution
from goldfleet.services.common import VersionView, streams

router = APIRouter(tags=["sites"])

# the site objects at HQ (a grant on site:NAME covers that site); a site's own link to HQ (/)
SiteRead = Annotated[access.Caller, Allow("site.read")]
SiteWrite = Annotated[access.Caller, Allow("site.write")]
ThisSite = Annotated[access.Caller, Allow("site.write", "site")]
TemplateWrite = Annotated[access.Caller, Allow("template.write", "template")]


class SiteCreate(BaseModel):
    name: str
    local_patches: StrictBool = False


class SiteRights(BaseModel):
    local_patches: StrictBool


class SiteAssign(BaseModel):
    template: str
    versions: str = "all"  # current | all | N
    publish_at: str | None = None  # HH:MM or an ISO date-time, UTC
    activate: str | None = None  # on-verify | when-all-verified (the template's mode)


class SiteJoin(BaseModel):
    url: str
    token: str = Field(repr=False)


class SyncRequest(BaseModel):
    # bytes a second; null: no limit; left out: the site's own limit (POST /site/schedule)
    limit: float | None = Field(default=None, gt=0, le=MAX_RATE, allow_inf_nan=False)
    progress: StrictBool = False  # answer with JSON lines (start, progress…, done or error)


class ScheduleRequest(BaseModel):
    # each left out stays as it is
    schedule: str | None = None  # daily [HH:MM] | weekly DAY [HH:MM] | cron; null: on demand
    # bytes a second of every sync; null: none
    limit: int | None = Field(default=None, ge=1, le=MAX_RATE)


def _given(body: BaseModel, *settings: str) -> dict[str, object]:
    """Of ``settings``, the ones the caller sent (null included); the others keep theirs."""
    return {k: getattr(body, k) for k in settings if k in body.model_fields_set}


class PublishRequest(BaseModel):
    version: int | None = Field(default=None, ge=1, le=MAX_VERSION)


class PublishAsk(BaseModel):
    digests: list[str] = Field(max_length=10_000)


# --- at HQ --------------------------------------------------------------------------------


@router.get("/sites")
def list_sites(ctx: Ctx, caller: Caller) -> list[distribution.SiteView]:
    return access.visible(
        caller, "site.read", distribution.list_sites(ctx), lambda v: site_path(v.name)
    )


@router.post("/sites", status_code=201)
def create_site(body: SiteCreate, ctx: Ctx, caller: SiteWrite) -> distribution.SiteCreated:
    return distribution.create_site(
        ctx, body.name, local_patches=body.local_patches, actor=caller.name
    )


@router.post("/sites/{name}/rights")
def set_rights(name: str, body: SiteRights, ctx: Ctx, caller: ThisSite) -> distribution.SiteView:
    return distribution.set_rights(ctx, name, local_patches=body.local_patches, actor=caller.name)


@router.post("/sites/{name}/revoke")
def revoke_site(name: str, ctx: Ctx, caller: ThisSite) -> distribution.SiteView:
    return distribution.revoke_site(ctx, name, actor=caller.name)


@router.post("/sites/{name}/templates")
def assign_template(
    name: str, body: SiteAssign, ctx: Ctx, caller: ThisSite
) -> distribution.SiteView:
    at: datetime | None = None
    if body.publish_at:
        at = parse_time(body.publish_at, ctx.clock.now(), "--publish-at")
    return distribution.assign_template(
        ctx,
        name,
        body.template,
        versions=body.versions,
        publish_at=at,
        activate=body.activate,
        actor=caller.name,
    )


@router.delete("/sites/{name}/templates/{template}")
def unassign_template(
    name: str, template: str, ctx: Ctx, caller: ThisSite
) -> distribution.SiteView:
    return distribution.unassign_template(ctx, name, template, actor=caller.name)


# --- at a site ----------------------------------------------------------------------------


@router.get("/site")
def site_status(ctx: Ctx, caller: SiteRead) -> distribution.UpstreamView:
    return distribution.status(ctx)


@router.post("/site/join")
def join(body: SiteJoin, ctx: Ctx, caller: SiteWrite) -> dict[str, str]:
    return distribution.join(ctx, body.url, body.token, actor=caller.name)


@router.post(
    "/site/sync",
    response_model=None,
    responses={200: {"model": distribution.SyncResult, "content": JSON_LINES}},
)
async def sync(
    body: SyncRequest, ctx: Ctx, caller: SiteWrite
) -> distribution.SyncResult | StreamingResponse:
    """Pull from HQ what this site lacks; with ``progress`` the answer is JSON lines whose
    ``progress`` counts the layer bytes received of those the sync must fetch."""
    given = _given(body, "limit")
    if body.progress:
        return GuardedStream(
            streams.stream(
                {"action": "site sync"},
                lambda report: distribution.sync(ctx, **given, actor=caller.name, progress=report),
                what="site sync",
            ),
            stall_seconds=ctx.settings.stall_seconds,
            media_type="application/x-ndjson",
        )
    return await run_in_threadpool(distribution.sync, ctx, **given, actor=caller.name)


@router.post("/site/schedule")
def schedule(body: ScheduleRequest, ctx: Ctx, caller: SiteWrite) -> distribution.UpstreamView:
    return distribution.set_schedule(ctx, **_given(body, "schedule", "limit"), actor=caller.name)


@router.post("/templates/{name}/publish")
async def publish(
    name: str, body: PublishRequest, ctx: Ctx, caller: TemplateWrite
) -> distribution.PublishResult:
    return await run_in_threadpool(
        distribution.publish, ctx, name, version=body.version, actor=caller.name
    )


@router.post("/templates/{name}/versions/{number}/validate")
def validate(name: str, number: VersionNumber, ctx: Ctx, caller: TemplateWrite) -> VersionView:
    """At HQ: enable a version a site published (pending-validation): it becomes current here if
    newer, and every site assigned the template receives it on its next sync."""
    return distribution.validate_version(ctx, name, number, actor=caller.name)


# --- what a site token reads at HQ --------------------------------------------------------


@router.get("/sync/catalog")
def catalog(ctx: Ctx, caller: SiteCaller) -> dict:
    return distribution.catalog(ctx, caller.name)


@router.get(
    "/sync/layers/{digest}",
    response_class=LayerResponse,
    responses={
        200: {"content": {"application/octet-stream": BYTES}},
        206: {"description": "The range asked for", "content": {"application/octet-stream": BYTES}},
    },
)
def layer(digest: str, ctx: Ctx, caller: SiteCaller) -> LayerResponse:
    """The layer file, zero-copy under ``goldfleet serve``; Range requests are answered as by
    Starlette's FileResponse (206, Content-Range, 416)."""
    path = distribution.layer_file(ctx, caller.name, digest)
    return LayerResponse(path, media_type="application/octet-stream")


@router.post("/sync/report", status_code=204)
def report(body: distribution.SyncReport, ctx: Ctx, caller: SiteCaller) -> None:
    distribution.record_report(ctx, caller.name, body)


@router.post("/sync/publish/{template}/plan")
def publish_plan(
    template: str, body: PublishAsk, ctx: Ctx, caller: SiteCaller
) -> distribution.PublishPlan:
    return distribution.publish_plan(ctx, caller.name, template, body.digests)


@router.post("/sync/publish/{template}", status_code=201, openapi_extra=UPLOAD)
async def receive_publish(
    template: str, request: Request, ctx: Ctx, caller: SiteCaller
) -> distribution.BundleView:
    """A site's new version as a bundle (the body); refused before a byte is stored when the
    site may not publish this template."""
    check_name(template, "template name")
    await run_in_threadpool(distribution.publish_plan, ctx, caller.name, template, [])
    limit = ctx.settings.max_virtual_size * 4 + (64 << 20)
    async with received_body(request, ctx, prefix="publish", limit=limit, what="upload") as file:
        return await run_in_threadpool(
            distribution.receive_publish, ctx, caller.name, template, file
        )
