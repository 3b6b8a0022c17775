"""Hosts and their edge stores: which host a new clone goes to, copies of a version's layers
to a host ahead of a rollout (prefetch), the feed of each newly current version to every host,
removal of layers no clone there needs (prune)."""

from __future__ import annotations

from goldfleet.services.hosts._edge import (
    HostsView,
    Placer,
    PrefetchView,
    PruneView,
    keep_on,
    list_hosts,
    place_new,
    plan_prefetch,
    prefetch,
    prepare_host,
    prune,
    run_prefetch,
    stream_prefetch,
)
from goldfleet.services.hosts._feed import feed_edges, feeding

__all__ = [
    "HostsView",
    "Placer",
    "PrefetchView",
    "PruneView",
    "feed_edges",
    "feeding",
    "keep_on",
    "list_hosts",
    "place_new",
    "plan_prefetch",
    "prefetch",
    "prepare_host",
    "prune",
    "run_prefetch",
    "stream_prefetch",
]
