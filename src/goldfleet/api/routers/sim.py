"""The simulated world of the sim driver (admin tokens only): users, messages, guests."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from goldfleet.api.deps import Allow, Ctx
from goldfleet.services import access, sim
from goldfleet.services.sim import SimExecView, SimMessageView, SimSessionView, SimVmView

router = APIRouter(prefix="/sim", tags=["sim"])

SimRead = Annotated[access.Caller, Allow("sim.read")]
SimWrite = Annotated[access.Caller, Allow("sim.write")]


class SimSessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vm: str
    user: str


@router.post("/sessions", status_code=201)
def login(body: SimSessionCreate, ctx: Ctx, caller: SimWrite) -> SimSessionView:
    return sim.login(ctx, vm=body.vm, user=body.user, actor=caller.name)


@router.delete("/sessions/{vm}/{user}", status_code=204)
def logout(vm: str, user: str, ctx: Ctx, caller: SimWrite) -> None:
    sim.logout(ctx, vm=vm, user=user, actor=caller.name)


@router.get("/sessions")
def list_sessions(ctx: Ctx, caller: SimRead, vm: str | None = None) -> list[SimSessionView]:
    return sim.list_sessions(ctx, vm=vm)


@router.get("/messages")
def list_messages(ctx: Ctx, caller: SimRead, vm: str | None = None) -> list[SimMessageView]:
    return sim.list_messages(ctx, vm=vm)


@router.post("/vms/{vm}/guest-shutdown")
def guest_shutdown(vm: str, ctx: Ctx, caller: SimWrite) -> SimVmView:
    return sim.guest_shutdown(ctx, vm=vm, actor=caller.name)


@router.get("/vms")
def list_vms(ctx: Ctx, caller: SimRead) -> list[SimVmView]:
    return sim.list_vms(ctx)


class SimRun(BaseModel):
    model_config = ConfigDict(extra="forbid")

    argv: list[str] = Field(min_length=1, max_length=16)


class SimFileWrite(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(max_length=255)
    text: str = Field(max_length=65536)


@router.post("/vms/{vm}/run")
def guest_run(vm: str, body: SimRun, ctx: Ctx, caller: SimWrite) -> SimExecView:
    return sim.guest_run(ctx, vm=vm, argv=body.argv, actor=caller.name)


@router.put("/vms/{vm}/files", status_code=204)
def guest_write(vm: str, body: SimFileWrite, ctx: Ctx, caller: SimWrite) -> None:
    sim.guest_write(
        ctx,
        vm=vm,
        path=body.path,
        data=body.text.encode("utf-8", "surrogatepass"),
        actor=caller.name,
    )
