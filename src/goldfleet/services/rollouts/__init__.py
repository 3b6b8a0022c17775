"""Durable operations: starting one over many clones under a rollout policy, the runner that
claims, executes and records their items (under leases, across servers), and reading and
steering them (pause, resume, cancel)."""

from __future__ import annotations

from goldfleet.services.rollouts._operations import (
    ItemView,
    cancel_operation,
    launch,
    list_items,
    list_operations,
    pause_operation,
    policy_from,
    recover_operations,
    refuse_busy,
    resume_operation,
    show_operation,
    start_operation,
)
from goldfleet.services.rollouts._runner import (
    CloneWork,
    Outcome,
    Periodic,
    Plan,
    Runner,
)

__all__ = [
    "CloneWork",
    "ItemView",
    "Outcome",
    "Periodic",
    "Plan",
    "Runner",
    "cancel_operation",
    "launch",
    "list_items",
    "list_operations",
    "pause_operation",
    "policy_from",
    "recover_operations",
    "refuse_busy",
    "resume_operation",
    "show_operation",
    "start_operation",
]
