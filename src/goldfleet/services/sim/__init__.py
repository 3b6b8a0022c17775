"""The simulated world of the ``sim`` driver, for admins and tests: users logging in and out,
messages they received, guests that shut themselves down."""

from __future__ import annotations

from goldfleet.services.sim._world import (
    SimExecView,
    SimMessageView,
    SimSessionView,
    SimVmView,
    guest_run,
    guest_shutdown,
    guest_write,
    list_messages,
    list_sessions,
    list_vms,
    login,
    logout,
)

__all__ = [
    "SimExecView",
    "SimMessageView",
    "SimSessionView",
    "SimVmView",
    "guest_run",
    "guest_shutdown",
    "guest_write",
    "list_messages",
    "list_sessions",
    "list_vms",
    "login",
    "logout",
]
