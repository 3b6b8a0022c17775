"""Every rule of templates, versions and clones, once. Each raises a user-facing error."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from goldfleet.domain.model import (
    CloneKind,
    CloneStatus,
    Outline,
    RecreateScope,
    TemplateStatus,
)
from goldfleet.errors import Conflict, HasDependents, InvalidInput

MAX_VOLUMES_PER_ROLE = 8


def check_outline(outline: Outline) -> Outline:
    for role, sizes in (("temp", outline.temp), ("data", outline.data)):
        if len(sizes) > MAX_VOLUMES_PER_ROLE:
            raise InvalidInput(
                f"an outline may have at most {MAX_VOLUMES_PER_ROLE} {role} volumes,"
                f" not {len(sizes)}"
            )
    return outline


def check_can_clone(template: str, status: str) -> None:
    """A template in (or moving into or out of) maintenance refuses new clones."""
    if status != TemplateStatus.READY:
        raise Conflict(
            f"template {template} is in {status}: new clones are refused until maintenance is"
            f" exited or aborted (goldfleet template maintenance exit|abort {template})"
        )


def check_can_enter_maintenance(template: str, status: str) -> None:
    if status != TemplateStatus.READY:
        raise Conflict(
            f"template {template} is already in {status}; exit or abort that maintenance first"
        )


def check_in_maintenance(template: str, status: str) -> None:
    if status != TemplateStatus.MAINTENANCE:
        raise Conflict(
            f"template {template} is not in maintenance (it is {status});"
            f" enter it first with: goldfleet template maintenance enter {template}"
        )


def check_can_change_template(template: str, status: str, action: str) -> None:
    """Deletion, flattening and similar changes wait until maintenance is over."""
    if status != TemplateStatus.READY:
        raise Conflict(f"template {template} is in {status}: cannot {action} it now")


def check_no_dependents(what: str, dependents: Iterable[str]) -> None:
    """A layer, version or template with dependents cannot be deleted."""
    found = sorted(set(dependents))
    if found:
        raise HasDependents(what, found)


def next_version_number(existing: Iterable[int]) -> int:
    """Versions are ordered and never reused: v(max+1)."""
    return max(existing, default=0) + 1


def check_clone_idle(clone: str, status: str) -> None:
    """A clone that is being created, rebuilt or deleted takes no other action."""
    if status in (CloneStatus.CREATING, CloneStatus.REBUILDING, CloneStatus.DELETING):
        raise Conflict(f"clone {clone} is {status}; wait until that finishes")


def check_clone_usable(clone: str, status: str) -> None:
    """Start, restore, rebase need a complete clone; a failed one is retried first."""
    check_clone_idle(clone, status)
    if status == CloneStatus.FAILED:
        raise Conflict(
            f"clone {clone} is failed; finish its last action with: goldfleet clone retry {clone}"
        )


def check_outlines_match(
    clone: str, source: Outline, target_template: str, target: Outline
) -> None:
    """Rebase keeps data volumes byte for byte and rebuilds temp volumes: both must line up."""
    if source != target:
        raise Conflict(
            f"cannot rebase clone {clone} onto template {target_template}: its outline"
            f" (temp {list(target.temp)}, data {list(target.data)}) differs from the clone's"
            f" (temp {list(source.temp)}, data {list(source.data)});"
            " choose a template with the same temp and data volumes"
        )


def select_for_recreate(
    clones: Iterable[tuple[str, str, int]],
    current_version_id: int,
    *,
    include_full: bool,
) -> list[str]:
    """Clones to rebuild after a new version: (name, kind, version id) → names, linked first.

    Clones already on the current version are skipped, so a recreate is idempotent."""
    linked, full = [], []
    for name, kind, version_id in clones:
        if version_id == current_version_id:
            continue
        if kind == CloneKind.FULL:
            if include_full:
                full.append(name)
        else:
            linked.append(name)
    return linked + full


def recreate_flags(scope: RecreateScope) -> tuple[bool, bool]:
    """``--recreate`` scope → (recreate anything, include full clones)."""
    return scope != RecreateScope.NONE, scope == RecreateScope.ALL


def needs_flatten(chain_depth: int, max_depth: int) -> bool:
    """Past the configured depth a chain is merged into a new base layer."""
    return chain_depth > max_depth


def chain_of(top: str | None, parents: Mapping[str, str | None]) -> list[str]:
    """A chain's layers, top first, from each layer's parent (a layer not in ``parents`` ends
    it)."""
    layers = []
    while top is not None:
        layers.append(top)
        top = parents.get(top)
    return layers


def layers_of_chains(tops: Iterable[str], parents: Mapping[str, str | None]) -> set[str]:
    """Every layer of the chains of ``tops``: each top and all its parents (shared parents are
    walked once)."""
    layers: set[str] = set()
    for top in tops:
        digest: str | None = top
        while digest is not None and digest not in layers:
            layers.add(digest)
            digest = parents.get(digest)
    return layers
