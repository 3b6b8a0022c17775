"""Pools: clones of one template kept at a size with a buffer of idle ones, assigned to users,
recreated inside maintenance windows, which take assigned clones back from their users."""

from __future__ import annotations

from goldfleet.services.pools._pools import (
    AssignmentView,
    PoolView,
    assign,
    create_pool,
    delete_pool,
    drain_pool,
    enable_pool,
    list_pools,
    reconcile_pools,
    release,
    resize_pool,
    set_window,
    show_pool,
)

__all__ = [
    "AssignmentView",
    "PoolView",
    "assign",
    "create_pool",
    "delete_pool",
    "drain_pool",
    "enable_pool",
    "list_pools",
    "reconcile_pools",
    "release",
    "resize_pool",
    "set_window",
    "show_pool",
]
