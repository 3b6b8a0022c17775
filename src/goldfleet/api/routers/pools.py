"""Pools: clones of one template kept at a size with a buffer of idle ones; users are assigned
clones from them. A grant on the pool (or its template) covers the pool and its clones."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from goldfleet.api.deps import Allow, Caller, Ctx
from goldfleet.api.schemas import QueryFlag
from goldfleet.domain.access import pool_path
from goldfleet.domain.pools import MAX_POOL_SIZE, MAX_WINDOW_MINUTES
from goldfleet.services import access, pools
from goldfleet.services.common import CloneView, OperationView
from goldfleet.services.pools import AssignmentView, PoolView

router = APIRouter(prefix="/pools", tags=["pools"])


class PoolCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    template: str
    min: int = Field(default=0, ge=0, le=MAX_POOL_SIZE)
    max: int = Field(ge=1, le=MAX_POOL_SIZE)
    buffer: int = Field(default=0, ge=0, le=MAX_POOL_SIZE)
    window_cron: str | None = None
    window_minutes: int | None = Field(default=None, ge=1, le=MAX_WINDOW_MINUTES)
    window_logoff: str | None = None  # wait | notify-force | force
    window_grace: str | None = None  # e.g. 10m
    window_message: str | None = Field(default=None, max_length=1000)


class PoolWindow(BaseModel):
    """A pool's maintenance window and how it treats the users of assigned clones; cron and
    minutes both null: no window."""

    model_config = ConfigDict(extra="forbid")

    cron: str | None = None
    minutes: int | None = Field(default=None, ge=1, le=MAX_WINDOW_MINUTES)
    logoff: str | None = None
    grace: str | None = None
    message: str | None = Field(default=None, max_length=1000)


class PoolSize(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min: int = Field(default=0, ge=0, le=MAX_POOL_SIZE)
    max: int = Field(ge=1, le=MAX_POOL_SIZE)
    buffer: int = Field(default=0, ge=0, le=MAX_POOL_SIZE)


class PoolUser(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: str


class PoolDeleted(BaseModel):
    pool: str
    operation: OperationView | None  # deleting the pool's clones, unless they were kept


@router.post("", status_code=201)
def create_pool(body: PoolCreate, ctx: Ctx, caller: Caller) -> PoolView:
    access.authorize(ctx, caller, "pool.write", "template", body.template)
    return pools.create_pool(
        ctx,
        name=body.name,
        template=body.template,
        min_size=body.min,
        max_size=body.max,
        buffer=body.buffer,
        window_cron=body.window_cron,
        window_minutes=body.window_minutes,
        window_logoff=body.window_logoff,
        window_grace=body.window_grace,
        window_message=body.window_message,
        actor=caller.name,
    )


@router.put("/{name}/size")
def resize(
    name: str,
    body: PoolSize,
    ctx: Ctx,
    caller: Annotated[access.Caller, Allow("pool.write", "pool")],
) -> PoolView:
    """New minimum, maximum and buffer (a maximum below the pool's clones is refused)."""
    return pools.resize_pool(
        ctx, name, min_size=body.min, max_size=body.max, buffer=body.buffer, actor=caller.name
    )


@router.put("/{name}/window")
def set_window(
    name: str,
    body: PoolWindow,
    ctx: Ctx,
    caller: Annotated[access.Caller, Allow("pool.write", "pool")],
) -> PoolView:
    return pools.set_window(
        ctx,
        name,
        cron=body.cron,
        minutes=body.minutes,
        logoff=body.logoff,
        grace=body.grace,
        message=body.message,
        actor=caller.name,
    )


@router.get("")
def list_pools(ctx: Ctx, caller: Caller) -> list[PoolView]:
    return access.visible(
        caller, "pool.read", pools.list_pools(ctx), lambda p: pool_path(p.name, p.template)
    )


@router.get("/{name}")
def show_pool(
    name: str, ctx: Ctx, caller: Annotated[access.Caller, Allow("pool.read", "pool")]
) -> PoolView:
    return pools.show_pool(ctx, name)


@router.post("/{name}/assign")
def assign(
    name: str,
    body: PoolUser,
    ctx: Ctx,
    caller: Annotated[access.Caller, Allow("pool.assign", "pool")],
) -> AssignmentView:
    return pools.assign(ctx, name, body.user, actor=caller.name)


@router.post("/{name}/release")
def release(
    name: str,
    body: PoolUser,
    ctx: Ctx,
    caller: Annotated[access.Caller, Allow("pool.assign", "pool")],
) -> CloneView:
    return pools.release(ctx, name, body.user, actor=caller.name)


@router.post("/{name}/drain")
def drain(
    name: str, ctx: Ctx, caller: Annotated[access.Caller, Allow("pool.write", "pool")]
) -> PoolView:
    return pools.drain_pool(ctx, name, actor=caller.name)


@router.post("/{name}/enable")
def enable(
    name: str, ctx: Ctx, caller: Annotated[access.Caller, Allow("pool.write", "pool")]
) -> PoolView:
    return pools.enable_pool(ctx, name, actor=caller.name)


@router.delete("/{name}")
def delete_pool(
    name: str,
    ctx: Ctx,
    caller: Annotated[access.Caller, Allow("pool.write", "pool")],
    keep_clones: QueryFlag = False,
) -> PoolDeleted:
    op = pools.delete_pool(ctx, name, keep_clones=keep_clones, actor=caller.name)
    return PoolDeleted(pool=name, operation=op)
