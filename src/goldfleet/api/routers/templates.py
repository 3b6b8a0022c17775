from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool

from goldfleet.api.deps import Allow, Caller, Ctx
from goldfleet.api.schemas import UPLOAD, MaintenanceExit, TemplateFromClone, VersionNumber
from goldfleet.api.uploads import received_body
from goldfleet.domain.access import template_path
from goldfleet.services import access, catalog, rollouts
from goldfleet.services.common import MaintenanceExitView, TemplateView, VersionView

router = APIRouter(prefix="/templates", tags=["templates"])


@router.get("")
def list_templates(ctx: Ctx, caller: Caller) -> list[TemplateView]:
    return access.visible(
        caller, "template.read", catalog.list_templates(ctx), lambda t: template_path(t.name)
    )


@router.post("/import", status_code=201, openapi_extra=UPLOAD)
async def import_template(
    request: Request,
    ctx: Ctx,
    caller: Caller,
    name: str,
    format: str = "qcow2",
    kind: str = "linked",
    temp: Annotated[list[str], Query()] = [],  # noqa: B006 - FastAPI reads the default
    data: Annotated[list[str], Query()] = [],  # noqa: B006
) -> TemplateView:
    """Upload an image (the request body) and import it as v1 of a new template."""
    await run_in_threadpool(access.authorize, ctx, caller, "template.write", "template", name)
    await run_in_threadpool(catalog.check_new_name, ctx, name)
    limit = ctx.settings.max_virtual_size + (64 << 20)
    async with received_body(request, ctx, prefix="upload", limit=limit, what="image") as image:
        return await run_in_threadpool(
            catalog.import_template,
            ctx,
            name=name,
            image=image,
            fmt=format,
            temp=temp,
            data=data,
            kind=kind,
            actor=caller.name,
        )


@router.post("/from-clone", status_code=201)
def create_from_clone(body: TemplateFromClone, ctx: Ctx, caller: Caller) -> TemplateView:
    access.authorize(ctx, caller, "clone.read", "clone", body.clone)
    access.authorize(ctx, caller, "template.write", "template", body.name)
    return catalog.create_from_clone(ctx, name=body.name, clone=body.clone, actor=caller.name)


@router.get("/{name}")
def show_template(
    name: str, ctx: Ctx, caller: Annotated[access.Caller, Allow("template.read", "template")]
) -> TemplateView:
    return catalog.show_template(ctx, name)


@router.get("/{name}/versions")
def list_versions(
    name: str, ctx: Ctx, caller: Annotated[access.Caller, Allow("template.read", "template")]
) -> list[VersionView]:
    return catalog.list_versions(ctx, name)


@router.delete("/{name}", status_code=204)
def delete_template(
    name: str, ctx: Ctx, caller: Annotated[access.Caller, Allow("template.write", "template")]
) -> None:
    catalog.delete_template(ctx, name, actor=caller.name)


@router.delete("/{name}/versions/{number}", status_code=204)
def delete_version(
    name: str,
    number: VersionNumber,
    ctx: Ctx,
    caller: Annotated[access.Caller, Allow("template.write", "template")],
) -> None:
    catalog.delete_version(ctx, name, number, actor=caller.name)


@router.post("/{name}/flatten")
def flatten(
    name: str, ctx: Ctx, caller: Annotated[access.Caller, Allow("template.write", "template")]
) -> VersionView:
    return catalog.flatten_template(ctx, name, actor=caller.name)


@router.post("/{name}/maintenance/enter")
def enter_maintenance(
    name: str, ctx: Ctx, caller: Annotated[access.Caller, Allow("template.maintenance", "template")]
) -> TemplateView:
    return catalog.enter_maintenance(ctx, name, actor=caller.name)


@router.post("/{name}/maintenance/exit")
def exit_maintenance(
    name: str,
    ctx: Ctx,
    caller: Annotated[access.Caller, Allow("template.maintenance", "template")],
    body: MaintenanceExit | None = None,
) -> MaintenanceExitView:
    body = body or MaintenanceExit()
    policy, start_at = rollouts.policy_from(ctx, body.rollout)
    return catalog.exit_maintenance(
        ctx,
        name,
        recreate=body.recreate,
        shutdown=body.shutdown,
        actor=caller.name,
        policy=policy,
        start_at=start_at,
        guest_tool_version=body.guest_tool_version,
        quarantine_version=body.quarantine_version,
    )


@router.post("/{name}/maintenance/start")
def start_maintenance_vm(
    name: str, ctx: Ctx, caller: Annotated[access.Caller, Allow("template.maintenance", "template")]
) -> TemplateView:
    """Boot the maintenance overlay as a VM through the driver."""
    return catalog.start_maintenance_vm(ctx, name, actor=caller.name)


@router.post("/{name}/maintenance/abort")
def abort_maintenance(
    name: str, ctx: Ctx, caller: Annotated[access.Caller, Allow("template.maintenance", "template")]
) -> TemplateView:
    return catalog.abort_maintenance(ctx, name, actor=caller.name)
