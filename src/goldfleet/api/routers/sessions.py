"""Sessions: users logged into clones, listed, messaged and logged off by hand. Reader tokens
list, admin tokens message and log off."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from goldfleet.api.deps import Ctx, Reader, Writer
from goldfleet.services import fleet
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
    caller: Reader,
    template: str | None = None,
    pool: str | None = None,
    host: str | None = None,
) -> SessionList:
    """The users of running clones; ``errors``: clones the driver could not answer for."""
    return fleet.list_sessions(ctx, template=template, pool=pool, host=host)


@router.post("/message")
def send_message(body: SessionMessage, ctx: Ctx, caller: Writer) -> MessageReport:
    return fleet.send_message(
        ctx, text=body.text, clone=body.clone, all_of=body.all_of, actor=caller.name
    )


@router.delete("/{clone}/{user}")
def logoff(clone: str, user: str, ctx: Ctx, caller: Writer) -> LogoffView:
    return fleet.logoff(ctx, clone, user, actor=caller.name)
