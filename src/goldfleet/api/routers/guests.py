"""Guests: quarantine policies of templates, compliance of clones, guest tool versions
(docs/guests.md). compliance.read reads, compliance.write applies policies and runs checks,
agent.update updates guest tools (docs/access.md)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from goldfleet.api.deps import Allow, Caller, Ctx
from goldfleet.api.schemas import MAX_ID, Rollout, RowId
from goldfleet.domain.access import template_path
from goldfleet.services import access, guests, rollouts
from goldfleet.services.guests import (
    AgentsView,
    AgentUpdateView,
    CheckView,
    GuestView,
    PolicyView,
)

router = APIRouter(tags=["guests"])

PolicyWriter = Annotated[access.Caller, Allow("compliance.write", "template")]
PolicyReader = Annotated[access.Caller, Allow("compliance.read", "template")]


class PolicyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policy: str = Field(max_length=1 << 20)  # the TOML text


class CheckRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    template: str | None = None  # None: every template


@router.put("/templates/{name}/compliance")
def apply_policy(name: str, body: PolicyRequest, ctx: Ctx, caller: PolicyWriter) -> PolicyView:
    """Validate the policy on this server, keep it numbered, define its filters and evaluate
    the template's running clones under it. A policy with problems is refused (422) with
    every problem and its line; nothing changes."""
    return guests.apply_policy(ctx, name, body.policy, actor=caller.name)


@router.get("/templates/{name}/compliance")
def show_policy(
    name: str,
    ctx: Ctx,
    caller: PolicyReader,
    number: int | None = Query(default=None, ge=1, le=MAX_ID),
) -> PolicyView:
    return guests.show_policy(ctx, name, number)


@router.get("/compliance")
def compliance_status(
    ctx: Ctx, caller: Caller, template: str | None = Query(default=None, max_length=63)
) -> list[GuestView]:
    """The clones the caller may see (compliance.read on them, their template or /)."""
    return access.visible(
        caller,
        "compliance.read",
        guests.status(ctx, template=template),
        lambda g: template_path(g.template) | {f"clone:{g.clone}"},
    )


@router.post("/compliance/check")
def compliance_check(body: CheckRequest, ctx: Ctx, caller: Caller) -> CheckView:
    """Of one template (compliance.write on it), or of every template (on /)."""
    access.authorize(
        ctx, caller, "compliance.write", "template" if body.template else None, body.template
    )
    return guests.check(ctx, template=body.template)


@router.get("/agents")
def agent_status(
    ctx: Ctx, caller: Annotated[access.Caller, Allow("compliance.read")]
) -> AgentsView:
    return guests.agents(ctx)


class AgentUpdateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    templates: list[str] | None = Field(default=None, max_length=1000)  # None: the outdated
    exclude: list[str] = Field(default_factory=list, max_length=1000)
    recreate_full: StrictBool = False  # recreate full clones instead of pushing the tool into them
    rollout: Rollout | None = None  # the recreate's policy (logoff, grace, message, canary…)


@router.post("/agents/update", status_code=201)
def agent_update(body: AgentUpdateRequest, ctx: Ctx, caller: Caller) -> list[AgentUpdateView]:
    """One durable request per template, advanced by the server step by step (see
    GET /agents/updates). agent.update on each named template, or on / for the default
    selection (every outdated template)."""
    for name in body.templates or [None]:
        access.authorize(ctx, caller, "agent.update", "template" if name else None, name)
    policy, start_at = rollouts.policy_from(ctx, body.rollout)
    return guests.start_update(
        ctx,
        templates=body.templates,
        exclude=body.exclude,
        recreate_full=body.recreate_full,
        policy=policy,
        start_at=start_at,
        actor=caller.name,
    )


@router.get("/agents/updates")
def agent_updates(ctx: Ctx, caller: Caller) -> list[AgentUpdateView]:
    return access.visible(
        caller, "compliance.read", guests.list_updates(ctx), lambda u: template_path(u.template)
    )


@router.get("/agents/updates/{update_id}")
def agent_update_show(update_id: RowId, ctx: Ctx, caller: Caller) -> AgentUpdateView:
    found = guests.show_update(ctx, update_id)
    access.authorize(ctx, caller, "compliance.read", "template", found.template)
    return found
