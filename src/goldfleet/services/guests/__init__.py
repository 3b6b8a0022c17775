"""Guests: the guest tool's version in templates and clones, the quarantine policies of
templates, and each running clone's network access under them (docs/guests.md)."""

from __future__ import annotations

from goldfleet.services.guests._agents import (
    AgentUpdateView,
    agent_tick,
    list_updates,
    show_update,
    start_update,
)
from goldfleet.services.guests._compliance import (
    AgentsView,
    CheckView,
    GuestView,
    PolicyView,
    agent_counts,
    agents,
    apply_policy,
    check,
    count_outdated,
    show_policy,
    status,
    tick,
)

__all__ = [
    "AgentUpdateView",
    "AgentsView",
    "CheckView",
    "GuestView",
    "PolicyView",
    "agent_counts",
    "agent_tick",
    "agents",
    "apply_policy",
    "check",
    "count_outdated",
    "list_updates",
    "show_policy",
    "show_update",
    "start_update",
    "status",
    "tick",
]
