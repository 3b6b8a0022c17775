"""What a bundle may change in a template's policies, and what each change means for clones.
Pure rules; services/distribution asks them on import and on ``bundle import --check``.

A bundle carries a template's policies (today its clone kind and its outline) beside its
versions. VMware ACE lets a policy-only package change only what does not need the image;
goldfleet marks each policy in :data:`POLICIES`:

- ``applies``: whether a change reaches the clones that exist (``all clones``) or only those
  made after the import (``new clones``: a clone's kind is chosen when it is made). A change
  that reaches new clones only is reported as such, never silently applied.
- ``needs_image``: only a bundle carrying a version (a full package) may change it; a
  policy-only bundle that changes it is refused with that reason.
- ``fixed_with_clones``: no bundle may change it while the template has clones, because the
  clones' volumes follow it (the outline: data volumes are never rebuilt by goldfleet).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from goldfleet.errors import Conflict


class Applies(StrEnum):
    ALL_CLONES = "all clones"
    NEW_CLONES = "new clones"


@dataclass(frozen=True, slots=True)
class TemplatePolicy:
    name: str
    applies: Applies
    needs_image: bool = False
    fixed_with_clones: bool = False
    why: str = ""  # said in a refusal


POLICIES: tuple[TemplatePolicy, ...] = (
    TemplatePolicy(
        "kind",
        Applies.NEW_CLONES,
        why="a clone's kind (linked or full) is chosen when it is made",
    ),
    TemplatePolicy(
        "outline",
        Applies.ALL_CLONES,
        fixed_with_clones=True,
        why=(
            "its clones' temp and data volumes follow the outline, and goldfleet never rebuilds"
            " data volumes; make a new template for the new outline and move users to it"
        ),
    ),
)


@dataclass(frozen=True, slots=True)
class PolicyChange:
    name: str
    before: str
    after: str
    applies: Applies
    note: str


def policy_changes(
    template: str,
    before: dict[str, str],
    after: dict[str, str],
    *,
    clones: int,
    policy_only: bool,
    policies: tuple[TemplatePolicy, ...] = POLICIES,
) -> list[PolicyChange]:
    """The changes a bundle makes to ``template``'s policies (values as text), each with what it
    means for the template's ``clones``; raises :class:`Conflict` for a change the bundle may
    not make, with the reason. ``before`` is empty for a template the bundle creates."""
    changes: list[PolicyChange] = []
    for p in policies:
        old, new = before.get(p.name), after.get(p.name)
        if old is None or new is None or old == new:
            continue
        if p.fixed_with_clones and clones:
            what = "a policy-only bundle" if policy_only else "a bundle"
            raise Conflict(
                f"bundle refused: {what} may not change the {p.name} of template {template}"
                f" ({old} to {new}) while it has {clones} clones: {p.why}; nothing was imported"
            )
        if p.needs_image and policy_only:
            raise Conflict(
                f"bundle refused: the {p.name} of template {template} ({old} to {new}) needs the"
                f" image: only a bundle carrying a version may change it ({p.why}); export one"
                " without --policy-only; nothing was imported"
            )
        if p.applies == Applies.NEW_CLONES:
            note = (
                f"applies to new clones only: the {clones} existing clones keep their {p.name}"
                if clones
                else "applies to new clones only (the template has no clones)"
            )
        elif clones:
            note = f"applies to the {clones} existing clones and to new ones"
        else:
            note = "applies to every clone (the template has no clones)"
        changes.append(PolicyChange(p.name, old, new, p.applies, note))
    return changes


def outline_text(outline: dict[str, list[int]]) -> str:
    """An outline as one comparable line: ``temp=[67108864] data=[]``."""
    return f"temp={list(outline.get('temp', []))} data={list(outline.get('data', []))}"
