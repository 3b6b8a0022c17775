"""Edge stores: which layers a host lacks, where a new clone goes, when it may not go there,
and which layers a prune may remove.

An edge store is a host's local copy of the layers its clones read (docs/edge.md). A linked
clone reads its version's whole chain, so it may run on a host only once every layer of that
chain is there; a full clone's system volume is a standalone copy and reads no layer.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass

from goldfleet.domain.model import CloneKind
from goldfleet.domain.names import check_name
from goldfleet.domain.rules import layers_of_chains
from goldfleet.errors import Conflict, InvalidInput, NotFound


def reads_chain(kind: str) -> bool:
    """Does a clone of this kind read its version's layers while it runs?"""
    return kind == CloneKind.LINKED


def check_host(host: str, hosts: Sequence[str]) -> str:
    """A host of the driver whose name is safe as a folder name (never a path by itself)."""
    if host not in hosts:
        raise NotFound(
            f"host {host!r} is not one of the driver's hosts ({', '.join(hosts) or 'none'});"
            " see: goldfleet host list"
        )
    try:
        return check_name(host, "host name")
    except InvalidInput as exc:
        raise InvalidInput(f"{exc.message}; such a host cannot have an edge store") from None


def missing_layers(chain: Sequence[str], present: Container[str]) -> list[str]:
    """The layers of ``chain`` (top first) not in ``present``, parents first: the order they
    must be copied in, since a layer is checked against its parent's copy."""
    return [digest for digest in reversed(chain) if digest not in present]


def choose_host(
    hosts: Sequence[str],
    load: Mapping[str, int],
    complete: Container[str],
    unreachable: Collection[str] = (),
) -> str:
    """Where a new clone goes: the least-loaded host (fewest clones); among equally loaded
    hosts, one that already holds the chain; then the driver's order. A host whose edge store
    is not reachable (its disk not mounted) takes no new clone while others can.

    Load comes first so that a fleet spreads over every host; a host without the chain costs
    one copy of the layers, once, and then takes its share."""
    if not hosts:
        raise Conflict("the driver has no hosts to place a clone on")
    usable = [h for h in hosts if h not in unreachable]
    if not usable:
        raise Conflict(
            f"no host can take the clone: the edge stores of {', '.join(hosts)} are not"
            " reachable; mount each host's disk under edge_root (see: goldfleet host list)"
        )
    order = {h: i for i, h in enumerate(usable)}
    return min(usable, key=lambda h: (load.get(h, 0), h not in complete, order[h]))


def check_placement(clone: str, host: str, missing: Sequence[str]) -> None:
    """A clone is never defined on a host whose copy of its chain is incomplete."""
    if missing:
        raise Conflict(
            f"clone {clone} cannot be placed on host {host}: its edge store lacks"
            f" {len(missing)} layer(s) of the chain, first {missing[0]}; run: goldfleet host"
            f" prefetch {host} TEMPLATE:VERSION"
        )


# --- prune ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlacedClone:
    """A clone as a prune sees it: where it runs, and the versions it reads or is about to."""

    kind: str
    host: str | None  # None: not placed yet
    version: int  # the version it is on (an id)
    targets: tuple[int, ...] = ()  # of its action under way and its queued or running items


def versions_to_keep(
    host: str, clones: Iterable[PlacedClone], current: Iterable[int], *, keep_current: bool
) -> set[int]:
    """The versions whose chains must stay on ``host``: those of its linked clones, now and
    after their pending actions, and (``keep_current``) every template's current version, so
    that the next rollout or new clone does not copy them again. A linked clone not placed yet
    may land on any host, so its targets stay on every one."""
    keep = set(current) if keep_current else set()
    for c in clones:
        if not reads_chain(c.kind):
            continue
        if c.host == host:
            keep.add(c.version)
            keep.update(c.targets)
        elif c.host is None:
            keep.update(c.targets)
    return keep


@dataclass(frozen=True, slots=True)
class Keep:
    """What a prune of one host must keep: whole chains (every kept layer's parent is kept)."""

    layers: frozenset[str]
    parents: Mapping[str, str | None]  # the catalog: every layer's parent


def keep_chains(tops: Iterable[str], parents: Mapping[str, str | None]) -> Keep:
    """Each top layer and all its parents."""
    return Keep(frozenset(layers_of_chains(tops, parents)), parents)


def removable_layers(held: Iterable[str], keep: Keep) -> list[str]:
    """The held layers a prune removes: all but the kept ones, children before parents, so
    that a prune stopped half-way leaves only whole chains. Layers the catalog no longer has
    (their versions were deleted) come first: no catalog layer has them as parent."""

    def depth(digest: str | None) -> float:
        n = 0
        while digest is not None:
            if digest not in keep.parents:
                return math.inf
            digest, n = keep.parents[digest], n + 1
        return n

    return sorted((d for d in held if d not in keep.layers), key=lambda d: (-depth(d), d))
