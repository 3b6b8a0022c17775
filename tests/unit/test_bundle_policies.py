"""What a bundle may change in a template's policies (goldfleet.domain.bundles)."""

from __future__ import annotations

import pytest

from goldfleet.domain.bundles import Applies, TemplatePolicy, outline_text, policy_changes
from goldfleet.errors import Conflict

LINKED = {"kind": "linked", "outline": outline_text({"temp": [1], "data": [2]})}
FULL = {**LINKED, "kind": "full"}
BIGGER = {**LINKED, "outline": outline_text({"temp": [1], "data": [4]})}


@pytest.mark.parametrize("policy_only", [True, False])
def test_the_kind_applies_to_new_clones_and_says_so(policy_only: bool) -> None:
    [change] = policy_changes("base", LINKED, FULL, clones=3, policy_only=policy_only)
    assert (change.name, change.before, change.after) == ("kind", "linked", "full")
    assert change.applies == Applies.NEW_CLONES
    assert "the 3 existing clones keep their kind" in change.note
    [alone] = policy_changes("base", LINKED, FULL, clones=0, policy_only=policy_only)
    assert "has no clones" in alone.note


def test_nothing_changed_reports_nothing_and_a_new_template_has_nothing_before() -> None:
    assert policy_changes("base", LINKED, dict(LINKED), clones=5, policy_only=True) == []
    assert policy_changes("base", {}, FULL, clones=0, policy_only=True) == []


@pytest.mark.parametrize(
    ("policy_only", "who"), [(True, "a policy-only bundle"), (False, "a bundle")]
)
def test_the_outline_of_a_template_with_clones_is_refused_with_the_reason(
    policy_only: bool, who: str
) -> None:
    with pytest.raises(Conflict, match=f"{who} may not change the outline of template base") as e:
        policy_changes("base", LINKED, BIGGER, clones=2, policy_only=policy_only)
    assert "2 clones" in e.value.message and "data volumes" in e.value.message
    [change] = policy_changes("base", LINKED, BIGGER, clones=0, policy_only=policy_only)
    assert change.applies == Applies.ALL_CLONES


def test_a_policy_marked_as_needing_the_image_is_refused_in_a_policy_only_bundle() -> None:
    marked = (TemplatePolicy("quarantine", Applies.ALL_CLONES, needs_image=True, why="w"),)
    before, after = {"quarantine": "v1"}, {"quarantine": "v2"}
    with pytest.raises(Conflict, match="needs the image: only a bundle carrying a version"):
        policy_changes("base", before, after, clones=0, policy_only=True, policies=marked)
    [change] = policy_changes("base", before, after, clones=4, policy_only=False, policies=marked)
    assert change.note == "applies to the 4 existing clones and to new ones"
