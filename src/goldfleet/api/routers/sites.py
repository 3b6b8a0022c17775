"""Sites. At HQ: sites, assignments (admin) and the sync endpoints a site token reads. At a
site: joining HQ and running a sync (admin)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from goldfleet.api.deps import Ctx, Reader, SiteCaller, Writer
from goldfleet.services import sites

router = APIRouter(tags=["sites"])


class SiteCreate(BaseModel):
    name: str


class SiteAssign(BaseModel):
    template: str


class SiteJoin(BaseModel):
    url: str
    token: str = Field(repr=False)


class SyncRequest(BaseModel):
    limit: float | None = Field(default=None, gt=0)  # bytes a second


@router.get("/sites")
def list_sites(ctx: Ctx, caller: Reader) -> list[sites.SiteView]:
    return sites.list_sites(ctx)


@router.post("/sites", status_code=201)
def create_site(body: SiteCreate, ctx: Ctx, caller: Writer) -> sites.SiteCreated:
    return sites.create_site(ctx, body.name, actor=caller.name)


@router.post("/sites/{name}/templates")
def assign_template(name: str, body: SiteAssign, ctx: Ctx, caller: Writer) -> sites.SiteView:
    return sites.assign_template(ctx, name, body.template, actor=caller.name)


@router.post("/site/join")
def join(body: SiteJoin, ctx: Ctx, caller: Writer) -> dict[str, str]:
    return sites.join(ctx, body.url, body.token, actor=caller.name)


@router.post("/site/sync")
async def sync(body: SyncRequest, ctx: Ctx, caller: Writer) -> sites.SyncResult:
    return await run_in_threadpool(sites.sync, ctx, limit=body.limit, actor=caller.name)


# --- what a site token reads at HQ --------------------------------------------------------


@router.get("/sync/catalog")
def catalog(ctx: Ctx, caller: SiteCaller) -> dict:
    return sites.catalog(ctx, caller.name)


@router.get("/sync/layers/{digest}")
def layer(digest: str, ctx: Ctx, caller: SiteCaller) -> FileResponse:
    """The layer file; Starlette's FileResponse answers Range requests (206, Content-Range)."""
    path = sites.layer_file(ctx, caller.name, digest)
    return FileResponse(path, media_type="application/octet-stream")


@router.post("/sync/report", status_code=204)
def report(body: sites.SyncReport, ctx: Ctx, caller: SiteCaller) -> None:
    sites.record_report(ctx, caller.name, body)
