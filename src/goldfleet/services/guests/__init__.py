"""Guests: the guest tool's version in templates and clones, the quarantine policies of
templates, and each running clone's network access under them (docs/guests.md)."""

from __future__ import annotations

from goldfleet.services.guests._compliance import (
    AgentsView,
    CheckView,
    GuestView,
    PolicyView,
    agents,
    apply_policy,
    check,
    count_outdated,
    policy_json,
    show_policy,
    status,
    tick,
)

__all__ = [
    "AgentsView",
    "CheckView",
    "GuestView",
    "PolicyView",
    "agents",
    "apply_policy",
    "check",
    "count_outdated",
    "policy_json",
    "show_policy",
    "status",
    "tick",
]
