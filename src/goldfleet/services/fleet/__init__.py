"""Clones and their actions: create, start, stop, restore, rebase, recreate, retry, delete;
the file and driver work behind each (the runner's clone work), power reconciliation."""

from __future__ import annotations

from goldfleet.services.fleet._clones import (
    MAX_BULK,
    CloneWork,
    call_driver,
    check_recreate,
    clone_rows,
    create_clones,
    delete_clone,
    list_clones,
    rebase_clone,
    rebase_many,
    reconcile_power,
    recover_clones,
    recreate,
    restore_clone,
    retry,
    show_clone,
    start_clone,
    start_recreate,
    stop_clone,
    stopped,
)

__all__ = [
    "MAX_BULK",
    "CloneWork",
    "call_driver",
    "check_recreate",
    "clone_rows",
    "create_clones",
    "delete_clone",
    "list_clones",
    "rebase_clone",
    "rebase_many",
    "reconcile_power",
    "recover_clones",
    "recreate",
    "restore_clone",
    "retry",
    "show_clone",
    "start_clone",
    "start_recreate",
    "stop_clone",
    "stopped",
]
