from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from pydantic_core import to_json

from goldfleet.api.deps import Allow, Caller, Ctx
from goldfleet.api.schemas import (
    CloneBulkPublic,
    CloneCreate,
    CloneMessageMany,
    CloneRebase,
    CloneRebaseMany,
    CloneRecreate,
    CloneRetry,
    CloneSelection,
)
from goldfleet.domain.names import MAX_VERSION
from goldfleet.services import access, fleet, rollouts
from goldfleet.services.common import CloneView, OperationView

router = APIRouter(prefix="/clones", tags=["clones"])

MAX_PAGE = 1000  # clones in one page of GET /clones?limit=


@router.get("", response_model=list[CloneView])
def list_clones(
    ctx: Ctx,
    caller: Caller,
    request: Request,
    template: str | None = None,
    state: Annotated[str | None, Query(description="A status (ready…) or power state.")] = None,
    host: Annotated[str | None, Query(max_length=255)] = None,
    version: Annotated[
        int | None, Query(ge=1, le=MAX_VERSION, description="A version number.")
    ] = None,
    limit: Annotated[int | None, Query(ge=1, le=MAX_PAGE)] = None,
    after: Annotated[str | None, Query(description="The last clone of the page before.")] = None,
) -> Response:
    """Clones in name order, filtered here rather than by the client. Without ``limit``, every
    match, as before paging existed; with it, one page and, while more follow, a header
    ``Link: </clones?…&after=NAME>; rel="next"`` (RFC 8288), so the body stays a plain list.
    Only the clones the caller may read are listed."""
    page = fleet.clone_rows(
        ctx,
        reach=access.reach(caller, "clone.read"),
        template=template,
        state=state,
        host=host,
        version=version,
        after=after,
        limit=None if limit is None else limit + 1,  # one more: is there a next page?
    )
    headers = {}
    if limit is not None and len(page) > limit:
        page = page[:limit]
        following = request.url.include_query_params(after=page[-1]["name"])
        headers["Link"] = f'<{following.path}?{following.query}>; rel="next"'
    # the rows as they are, in pydantic's own JSON (the bytes CloneView's would give): no
    # model per row, and not FastAPI's response-model path, which dumps, validates and encodes
    # every row again — most of a 1,000-clone page's time
    return Response(to_json(page), media_type="application/json", headers=headers)


@router.post("", status_code=202)
def create_clones(body: CloneCreate, ctx: Ctx, caller: Caller) -> CloneBulkPublic:
    access.authorize(ctx, caller, "clone.create", "template", body.template)
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
def recreate(body: CloneRecreate, ctx: Ctx, caller: Caller) -> OperationView:
    if body.name is not None:
        access.authorize(ctx, caller, "clone.recreate", "clone", body.name)
    else:
        access.authorize(ctx, caller, "clone.recreate", "template", body.template)
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
def rebase_many(body: CloneRebaseMany, ctx: Ctx, caller: Caller) -> OperationView:
    """Rebase every clone of a template (onto ``to``, default its current version)."""
    access.authorize(ctx, caller, "clone.rebase", "template", body.template)
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


def _selected(
    ctx: Ctx, caller: access.Caller, body: CloneSelection, action: str, text: str | None = None
) -> OperationView:
    """start, stop, message, logoff of the clones named (the permission on each) or of a
    template's ready clones (the permission on the template): one operation."""
    if body.names is not None:
        for name in body.names:  # every clone, before anything is done to any
            access.authorize(ctx, caller, f"clone.{action}", "clone", name)
    else:
        access.authorize(ctx, caller, f"clone.{action}", "template", body.template)
    policy, start_at = rollouts.policy_from(ctx, body.rollout)
    return fleet.bulk_action(
        ctx,
        names=body.names,
        template=body.template,
        action=action,
        text=text,
        actor=caller.name,
        wait=body.wait,
        policy=policy,
        start_at=start_at,
    )


@router.post("/start", status_code=202)
def start_many(body: CloneSelection, ctx: Ctx, caller: Caller) -> OperationView:
    """Start the clones named or a template's ready clones, as one operation."""
    return _selected(ctx, caller, body, "start")


@router.post("/stop", status_code=202)
def stop_many(body: CloneSelection, ctx: Ctx, caller: Caller) -> OperationView:
    """Stop them, as one operation; logged-in users as the rollout's logoff says (force when
    no rollout is given)."""
    return _selected(ctx, caller, body, "stop")


@router.post("/message", status_code=202)
def message_many(body: CloneMessageMany, ctx: Ctx, caller: Caller) -> OperationView:
    """Send ``text`` to the users of the running clones among them, as one operation."""
    return _selected(ctx, caller, body, "message", body.text)


@router.post("/logoff", status_code=202)
def logoff_many(body: CloneSelection, ctx: Ctx, caller: Caller) -> OperationView:
    """Log off every user of them, as one operation: at once, or with notify-force after the
    rollout's message and grace period."""
    return _selected(ctx, caller, body, "logoff")


@router.post("/retry", status_code=202)
def retry(body: CloneRetry, ctx: Ctx, caller: Caller) -> OperationView:
    """A clone's failed action again (clone.recreate on it), or every failed clone's
    (clone.recreate on /)."""
    access.authorize(ctx, caller, "clone.recreate", "clone" if body.name else None, body.name)
    return fleet.retry(ctx, name=body.name, all_failed=body.all, actor=caller.name, wait=body.wait)


@router.get("/{name}")
def show_clone(
    name: str, ctx: Ctx, caller: Annotated[access.Caller, Allow("clone.read", "clone")]
) -> CloneView:
    return fleet.show_clone(ctx, name)


@router.post("/{name}/start")
def start_clone(
    name: str, ctx: Ctx, caller: Annotated[access.Caller, Allow("clone.start", "clone")]
) -> CloneView:
    return fleet.start_clone(ctx, name, actor=caller.name)


@router.post("/{name}/stop")
def stop_clone(
    name: str, ctx: Ctx, caller: Annotated[access.Caller, Allow("clone.stop", "clone")]
) -> CloneView:
    return fleet.stop_clone(ctx, name, actor=caller.name)


@router.post("/{name}/restore")
def restore_clone(
    name: str, ctx: Ctx, caller: Annotated[access.Caller, Allow("clone.restore", "clone")]
) -> CloneView:
    return fleet.restore_clone(ctx, name, actor=caller.name)


@router.post("/{name}/rebase")
def rebase_clone(
    name: str,
    ctx: Ctx,
    caller: Annotated[access.Caller, Allow("clone.rebase", "clone")],
    body: CloneRebase | None = None,
) -> CloneView:
    return fleet.rebase_clone(ctx, name, to=(body or CloneRebase()).to, actor=caller.name)


@router.delete("/{name}", status_code=204)
def delete_clone(
    name: str, ctx: Ctx, caller: Annotated[access.Caller, Allow("clone.delete", "clone")]
) -> None:
    fleet.delete_clone(ctx, name, actor=caller.name)
