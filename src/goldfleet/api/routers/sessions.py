"""Sessions: users logged into clones, listed, messaged and logged off by hand. clone.read
lists (only the clones the caller may read), clone.message and clone.logoff act."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from goldfleet.api.deps import Allow, Caller, Ctx
from goldfleet.domain.access import clone_path
from goldfleet.services import access, fleet
from goldfleet.services.fleet import LogoffView, MessageReport, SessionList

router = APIRouter(prefix="/sessions", tags=["sessions"])


class SessionMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(max_length=1000)
    clone: str | None = None  # one clone …
    all_of: str | None = None  # … or every clone of this template with users logged in


@router.get("")
def list_sessions(
    ctx: Ctx,
    caller: Caller,
    template: str | None = None,
    pool: str | None = None,
    host: str | None = None,
) -> SessionList:
    """The users of running clones; ``errors``: clones the driver could not answer for."""
    found = fleet.list_sessions(ctx, template=template, pool=pool, host=host)
    sessions = access.visible(
        caller,
        "clone.read",
        found.sessions,
        lambda v: clone_path(v.clone, v.template, v.pool, None, None),
    )
    shown = {v.clone for v in sessions}
    if access.reach(caller, "clone.read").everything:
        return found
    return SessionList(sessions=sessions, errors=[e for e in found.errors if e.clone in shown])


@router.post("/message")
def send_message(body: SessionMessage, ctx: Ctx, caller: Caller) -> MessageReport:
    """clone.message on the clone, or on the template for --all-of."""
    if body.clone is not None:
        access.authorize(ctx, caller, "clone.message", "clone", body.clone)
    else:
        access.authorize(
            ctx, caller, "clone.message", "template" if body.all_of else None, body.all_of
        )
    return fleet.send_message(
        ctx, text=body.text, clone=body.clone, all_of=body.all_of, actor=caller.name
    )


@router.delete("/{clone}/{user}")
def logoff(
    clone: str,
    user: str,
    ctx: Ctx,
    caller: Annotated[access.Caller, Allow("clone.logoff", "clone", param="clone")],
) -> LogoffView:
    return fleet.logoff(ctx, clone, user, actor=caller.name)
