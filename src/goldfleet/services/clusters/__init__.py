"""Clusters of hypervisor hosts and their updates (docs/hosts.md): the coordinator, the one
update channel (an apt repository whose InRelease is verified against the channel's key), the
proxy, the sync and its schedule, what is available (``/updates``) with its guidance."""

from __future__ import annotations

from goldfleet.services.clusters._clusters import (
    ClusterView,
    HostUpdateView,
    RepositoryError,
    SyncView,
    UpdatePlanView,
    UpdatesView,
    create_cluster,
    disable_channel,
    list_clusters,
    set_channel,
    set_coordinator,
    set_guidance_rules,
    set_proxy,
    set_sync_schedule,
    show_cluster,
    show_host,
    stream_sync,
    sync,
    sync_tick,
    update_plan,
    updates,
)

__all__ = [
    "ClusterView",
    "HostUpdateView",
    "RepositoryError",
    "SyncView",
    "UpdatePlanView",
    "UpdatesView",
    "create_cluster",
    "disable_channel",
    "list_clusters",
    "set_channel",
    "set_coordinator",
    "set_guidance_rules",
    "set_proxy",
    "set_sync_schedule",
    "show_cluster",
    "show_host",
    "stream_sync",
    "sync",
    "sync_tick",
    "update_plan",
    "updates",
]
