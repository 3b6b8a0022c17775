"""Edge stores: which layers a host lacks, where a new clone goes, and when it may not go there.

An edge store is a host's local copy of the layers its clones read (docs/edge.md). A linked
clone reads its version's whole chain, so it may run on a host only once every layer of that
chain is there; a full clone's system volume is a standalone copy and reads no layer.
"""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence

from goldfleet.domain.model import CloneKind
from goldfleet.domain.names import check_name
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


def choose_host(hosts: Sequence[str], load: Mapping[str, int], complete: Container[str]) -> str:
    """Where a new clone goes: the least-loaded host (fewest clones); among equally loaded
    hosts, one that already holds the chain; then the driver's order.

    Load comes first so that a fleet spreads over every host; a host without the chain costs
    one copy of the layers, once, and then takes its share."""
    if not hosts:
        raise Conflict("the driver has no hosts to place a clone on")
    order = {h: i for i, h in enumerate(hosts)}
    return min(hosts, key=lambda h: (load.get(h, 0), h not in complete, order[h]))


def check_placement(clone: str, host: str, missing: Sequence[str]) -> None:
    """A clone is never defined on a host whose copy of its chain is incomplete."""
    if missing:
        raise Conflict(
            f"clone {clone} cannot be placed on host {host}: its edge store lacks"
            f" {len(missing)} layer(s) of the chain, first {missing[0]}; run: goldfleet host"
            f" prefetch {host} TEMPLATE:VERSION"
        )
