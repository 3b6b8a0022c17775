"""Clones and their actions: create, start, stop, restore, rebase, recreate, retry, delete;
the file and driver work behind each (the runner's clone work), power reconciliation; the
sessions of users logged into clones, messaged and logged off by hand."""

from __future__ import annotations

from goldfleet.services.fleet._clones import (
    MAX_BULK,
    CloneWork,
    call_driver,
    check_recreate,
    create_clones,
    delete_clone,
    list_clones,
    logged_in,
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
from goldfleet.services.fleet._sessions import (
    LogoffView,
    MessageOutcome,
    MessageReport,
    SessionView,
    list_sessions,
    logoff,
    send_message,
)

__all__ = [
    "MAX_BULK",
    "CloneWork",
    "LogoffView",
    "MessageOutcome",
    "MessageReport",
    "SessionView",
    "call_driver",
    "check_recreate",
    "create_clones",
    "delete_clone",
    "list_clones",
    "list_sessions",
    "logged_in",
    "logoff",
    "rebase_clone",
    "rebase_many",
    "reconcile_power",
    "recover_clones",
    "recreate",
    "restore_clone",
    "retry",
    "send_message",
    "show_clone",
    "start_clone",
    "start_recreate",
    "stop_clone",
    "stopped",
]
