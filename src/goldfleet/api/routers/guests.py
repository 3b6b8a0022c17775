"""Guests: quarantine policies of templates, compliance of clones, guest tool versions
(docs/guests.md). Reader tokens read; admin tokens apply policies and run checks."""

from __future__ import annotations

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from goldfleet.api.deps import Ctx, Reader, Writer
from goldfleet.services import guests
from goldfleet.services.guests import AgentsView, CheckView, GuestView, PolicyView

router = APIRouter(tags=["guests"])


class PolicyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policy: str = Field(max_length=1 << 20)  # the TOML text


class CheckRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    template: str | None = None  # None: every template


@router.put("/templates/{name}/compliance")
def apply_policy(name: str, body: PolicyRequest, ctx: Ctx, caller: Writer) -> PolicyView:
    """Validate the policy on this server, keep it numbered, define its filters and evaluate
    the template's running clones under it. A policy with problems is refused (422) with
    every problem and its line; nothing changes."""
    return guests.apply_policy(ctx, name, body.policy, actor=caller.name)


@router.get("/templates/{name}/compliance")
def show_policy(
    name: str, ctx: Ctx, caller: Reader, number: int | None = Query(default=None, ge=1)
) -> PolicyView:
    return guests.show_policy(ctx, name, number)


@router.get("/compliance")
def compliance_status(
    ctx: Ctx, caller: Reader, template: str | None = Query(default=None, max_length=63)
) -> list[GuestView]:
    return guests.status(ctx, template=template)


@router.post("/compliance/check")
def compliance_check(body: CheckRequest, ctx: Ctx, caller: Writer) -> CheckView:
    return guests.check(ctx, template=body.template)


@router.get("/agents")
def agent_status(ctx: Ctx, caller: Reader) -> AgentsView:
    return guests.agents(ctx)
