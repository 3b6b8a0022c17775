"""Named crash points: the commit boundaries of goldfleet's durable multi-step actions.

A multi-step action (a maintenance exit with a recreate, a pool's creation and provisioning, a
bundle import…) commits more than once, or commits and then changes files. The rule of
docs/architecture.md ("Durable multi-step actions: the rule") says what must hold if the server
dies between two of those steps. To prove it, every such boundary is marked here with a name,
and the crash-injection suite (tests/e2e/test_e2e_crash_injection.py) kills a real server at
each one in turn: ``GOLDFLEET_CRASH_AT=NAME`` makes the server send itself SIGKILL — exactly
what ``kill -9`` does — the moment it reaches point ``NAME``.

The variable is read when a point is reached, never at import; unset (always, outside tests) a
point costs one environment lookup. Every name is listed in :data:`POINTS`, with what is
durable when it is reached; marking a point that is not listed is a programming error, so a
point cannot drift out of the suite's sight (tests/unit/test_crashpoints.py checks that the
source marks each listed point exactly once).
"""

from __future__ import annotations

import os
import signal

ENV = "GOLDFLEET_CRASH_AT"

POINTS: dict[str, str] = {
    # catalog: maintenance
    "maintenance-enter.requested": "template entering maintenance, overlay file not made",
    "maintenance-enter.overlay-made": "overlay file made, template not yet in maintenance",
    "maintenance-abort.committed": "template ready again, overlay file not yet removed",
    "maintenance-exit.requested": "template exiting, the exit and its rollout stored; overlay"
    " not yet hashed",
    "maintenance-exit.hashed": "overlay hashed, the digest being sealed stored; not renamed",
    "maintenance-exit.sealed": "overlay renamed to its sealed layer; no version yet",
    "maintenance-exit.committed": "new version current (and its rollout's operation stored);"
    " runner not yet woken",
    # catalog: new layers and versions, removed layers
    "template-import.sealed": "imported image sealed as a layer; no template yet",
    "template-from-clone.sealed": "clone's system volume sealed as a layer; no template yet",
    "template-flatten.flattened": "flattened layer written; no version yet",
    "template-delete.committed": "template deleted; its layer files not yet removed",
    "version-delete.committed": "version deleted; its layer files not yet removed",
    # guests: agent update (services/guests/_agents.py)
    "agent-update.requested": "agent update requests stored; no step done",
    "agent-update.entered": "template in maintenance for the update; the request not yet told",
    "agent-update.installed": "tool installed in the maintenance VM; the request not yet told",
    # fleet
    "clone-create.committed": "clones and their create operation stored; runner not yet woken",
    # pools
    "pool-create.committed": "pool stored; its first provisioning not yet started",
    "pool-assign.committed": "clone assigned to the user; not yet started",
    "pool-window.committed": "window recreate operation stored; runner not yet woken",
    "pool-window.told": "window message sent to the users of assigned clones; the time not"
    " yet stored",
    "pool-window.stopped": "a clone the window takes back stopped; not yet unassigned",
    # distribution
    "bundle-import.sealed": "received layers sealed; their versions not yet stored",
    "site-sync.added": "a version received by a site's sync stored; not yet made current",
    # clusters (docs/hosts.md)
    "cluster-sync.claimed": "a cluster's sync claimed; nothing read or downloaded",
    "cluster-sync.downloaded": "the needed .debs in the coordinator's cache; the sync's result"
    " (hash, hosts' packages) not yet stored",
    # the rolling update of a cluster (docs/host-updates.md)
    "host-update.ha-disabled": "HA/balancing disable commands run; not yet recorded",
    "host-update.migrated": "a VM live-migrated off the host being updated; its host not yet"
    " recorded for the clone",
    "host-update.applied": "dpkg installed the host's packages; the versions not yet recorded",
    "host-update.rebooted": "the host's reboot asked (its VMs evacuated); not yet recorded",
    "host-update.step": "a host's step done (the first: disabled); not yet recorded",
    "host-update.ha-enabled": "HA/balancing enable commands run after the last host; the"
    " update not yet recorded done",
}


def reached(name: str) -> None:
    """Die here, as ``kill -9`` would, if the crash-injection suite asks for point ``name``."""
    if name not in POINTS:
        raise ValueError(f"crash point {name!r} is not listed in goldfleet.crashpoints.POINTS")
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
        os._exit(137)  # not reached: SIGKILL to oneself is delivered before kill() returns
