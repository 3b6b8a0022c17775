"""Every rule of templates, versions and clones (domain/rules.py) and the outline, no I/O."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from goldfleet.domain import rules
from goldfleet.domain.model import (
    CloneKind,
    CloneStatus,
    Outline,
    RecreateScope,
    TemplateStatus,
    VolumeRole,
)
from goldfleet.errors import Conflict, HasDependents, InvalidInput

NOT_READY = [s for s in TemplateStatus if s != TemplateStatus.READY]
G = 1 << 30

# --- outline ------------------------------------------------------------------------------


def test_outline_json_round_trip() -> None:
    outline = Outline(temp=(G,), data=(2 * G, 3 * G))
    assert outline.to_json() == {"temp": [G], "data": [2 * G, 3 * G]}
    assert Outline.from_json(outline.to_json()) == outline
    assert Outline.from_json({}) == Outline()


def test_outline_volume_files_system_first() -> None:
    outline = Outline(temp=(G, G), data=(G,))
    assert outline.volume_files() == [
        (VolumeRole.SYSTEM, 0, "system.qcow2"),
        (VolumeRole.TEMP, 0, "temp0.qcow2"),
        (VolumeRole.TEMP, 1, "temp1.qcow2"),
        (VolumeRole.DATA, 0, "data0.qcow2"),
    ]
    assert Outline().volume_files() == [(VolumeRole.SYSTEM, 0, "system.qcow2")]


@pytest.mark.parametrize("n", [0, 1, rules.MAX_VOLUMES_PER_ROLE])
def test_check_outline_accepts_up_to_the_limit(n: int) -> None:
    outline = Outline(temp=(G,) * n, data=(G,) * n)
    assert rules.check_outline(outline) is outline


@pytest.mark.parametrize("role", ["temp", "data"])
def test_check_outline_refuses_past_the_limit(role: str) -> None:
    n = rules.MAX_VOLUMES_PER_ROLE + 1
    outline = Outline(**{role: (G,) * n})
    with pytest.raises(InvalidInput) as info:
        rules.check_outline(outline)
    assert info.value.message == f"an outline may have at most 8 {role} volumes, not {n}"


# --- template states ----------------------------------------------------------------------


def test_check_can_clone_ready() -> None:
    rules.check_can_clone("base", TemplateStatus.READY)
    rules.check_can_clone("base", "ready")


@pytest.mark.parametrize("status", NOT_READY)
def test_check_can_clone_refuses_every_other_status(status: TemplateStatus) -> None:
    with pytest.raises(Conflict) as info:
        rules.check_can_clone("base", status)
    message = info.value.message
    assert message.startswith(f"template base is in {status}: new clones are refused")
    assert "goldfleet template maintenance exit|abort base" in message
    assert info.value.status_code == 409


def test_check_can_clone_refuses_an_unknown_status() -> None:
    with pytest.raises(Conflict, match="template base is in bogus"):
        rules.check_can_clone("base", "bogus")


def test_check_can_enter_maintenance_ready() -> None:
    rules.check_can_enter_maintenance("base", TemplateStatus.READY)


@pytest.mark.parametrize("status", NOT_READY)
def test_check_can_enter_maintenance_refuses_a_second_enter(status: TemplateStatus) -> None:
    with pytest.raises(Conflict) as info:
        rules.check_can_enter_maintenance("base", status)
    assert info.value.message == (
        f"template base is already in {status}; exit or abort that maintenance first"
    )


def test_check_in_maintenance() -> None:
    rules.check_in_maintenance("base", TemplateStatus.MAINTENANCE)


@pytest.mark.parametrize(
    "status",
    [
        TemplateStatus.READY,
        TemplateStatus.ENTERING_MAINTENANCE,
        TemplateStatus.EXITING_MAINTENANCE,
    ],
)
def test_check_in_maintenance_refuses(status: TemplateStatus) -> None:
    with pytest.raises(Conflict) as info:
        rules.check_in_maintenance("base", status)
    message = info.value.message
    assert f"template base is not in maintenance (it is {status})" in message
    assert "goldfleet template maintenance enter base" in message


def test_check_can_change_template_ready() -> None:
    rules.check_can_change_template("base", TemplateStatus.READY, "delete")


@pytest.mark.parametrize("status", NOT_READY)
def test_check_can_change_template_refuses_during_maintenance(status: TemplateStatus) -> None:
    with pytest.raises(Conflict) as info:
        rules.check_can_change_template("base", status, "delete")
    assert info.value.message == f"template base is in {status}: cannot delete it now"


# --- dependents and versions --------------------------------------------------------------


def test_check_no_dependents_none() -> None:
    rules.check_no_dependents("template base", [])
    rules.check_no_dependents("template base", iter(()))


def test_check_no_dependents_names_them_sorted_once() -> None:
    with pytest.raises(HasDependents) as info:
        rules.check_no_dependents(
            "template base", ["clone web-002", "template child (v1)", "clone web-002"]
        )
    exc = info.value
    assert isinstance(exc, Conflict)
    assert exc.dependents == ["clone web-002", "template child (v1)"]
    assert exc.message == (
        "template base is still used by clone web-002, template child (v1);"
        " remove or rebase those first"
    )


def test_check_no_dependents_accepts_a_generator() -> None:
    with pytest.raises(HasDependents, match="version base:v1 is still used by clone a"):
        rules.check_no_dependents("version base:v1", (f"clone {n}" for n in ["a"]))


def test_check_no_dependents_shortens_a_long_list() -> None:
    names = [f"clone c{i:02d}" for i in range(25)]
    with pytest.raises(HasDependents) as info:
        rules.check_no_dependents("template base", reversed(names))
    message = info.value.message
    assert message.startswith("template base is still used by clone c00, clone c01,")
    assert "clone c09 and 15 more;" in message
    assert "clone c10" not in message
    assert info.value.dependents == names


@pytest.mark.parametrize(
    ("existing", "expected"),
    [([], 1), ([1], 2), ([1, 2, 3], 4), ([3, 1], 4), ([1, 2, 5], 6), ([7], 8)],
)
def test_next_version_number(existing: list[int], expected: int) -> None:
    assert rules.next_version_number(existing) == expected
    assert rules.next_version_number(iter(existing)) == expected


@given(st.sets(st.integers(min_value=1, max_value=10_000)))
def test_next_version_number_is_never_reused(existing: set[int]) -> None:
    n = rules.next_version_number(existing)
    assert n not in existing
    assert all(n > e for e in existing)


# --- clones -------------------------------------------------------------------------------

BUSY = [CloneStatus.CREATING, CloneStatus.REBUILDING, CloneStatus.DELETING]


@pytest.mark.parametrize("status", [CloneStatus.READY, CloneStatus.FAILED])
def test_check_clone_idle_accepts(status: CloneStatus) -> None:
    rules.check_clone_idle("web-001", status)


@pytest.mark.parametrize("status", BUSY)
def test_check_clone_idle_refuses_busy(status: CloneStatus) -> None:
    with pytest.raises(Conflict) as info:
        rules.check_clone_idle("web-001", status)
    assert info.value.message == f"clone web-001 is {status}; wait until that finishes"


def test_check_clone_usable_ready() -> None:
    rules.check_clone_usable("web-001", CloneStatus.READY)


@pytest.mark.parametrize("status", BUSY)
def test_check_clone_usable_refuses_busy(status: CloneStatus) -> None:
    with pytest.raises(Conflict, match=f"clone web-001 is {status}; wait"):
        rules.check_clone_usable("web-001", status)


def test_check_clone_usable_refuses_failed_and_says_how_to_retry() -> None:
    with pytest.raises(Conflict) as info:
        rules.check_clone_usable("web-001", CloneStatus.FAILED)
    assert info.value.message == (
        "clone web-001 is failed; finish its last action with: goldfleet clone retry web-001"
    )


def test_check_outlines_match_equal() -> None:
    rules.check_outlines_match("web-001", Outline((G,), (G,)), "other", Outline((G,), (G,)))
    rules.check_outlines_match("web-001", Outline(), "other", Outline())


@pytest.mark.parametrize(
    "target",
    [
        Outline(temp=(G,), data=(2 * G,)),  # a data size differs
        Outline(temp=(2 * G,), data=(G,)),  # a temp size differs
        Outline(temp=(G,), data=()),  # a data volume fewer
        Outline(temp=(G,), data=(G, G)),  # a data volume more
        Outline(temp=(), data=(G,)),  # no temp volume
    ],
)
def test_check_outlines_match_refuses(target: Outline) -> None:
    source = Outline(temp=(G,), data=(G,))
    with pytest.raises(Conflict) as info:
        rules.check_outlines_match("web-001", source, "other", target)
    message = info.value.message
    assert message.startswith("cannot rebase clone web-001 onto template other:")
    assert f"(temp {list(target.temp)}, data {list(target.data)}) differs" in message
    assert f"the clone's (temp {list(source.temp)}, data {list(source.data)})" in message
    assert "choose a template with the same temp and data volumes" in message


def test_check_outlines_match_order_matters() -> None:
    with pytest.raises(Conflict):
        rules.check_outlines_match("c", Outline(data=(G, 2 * G)), "t", Outline(data=(2 * G, G)))


# --- recreate -----------------------------------------------------------------------------

L, F = CloneKind.LINKED, CloneKind.FULL
CLONES = [
    ("a-linked-old", L, 1),
    ("b-full-old", F, 1),
    ("c-linked-current", L, 2),
    ("d-full-current", F, 2),
    ("e-linked-older", L, 0),
]


def test_select_for_recreate_linked_only_by_default() -> None:
    assert rules.select_for_recreate(CLONES, 2, include_full=False) == [
        "a-linked-old",
        "e-linked-older",
    ]


def test_select_for_recreate_include_full() -> None:
    chosen = rules.select_for_recreate(CLONES, 2, include_full=True)
    assert sorted(chosen) == ["a-linked-old", "b-full-old", "e-linked-older"]


def test_select_for_recreate_skips_clones_on_the_current_version() -> None:
    assert rules.select_for_recreate(CLONES, 1, include_full=True) == [
        "c-linked-current",
        "e-linked-older",
        "d-full-current",
    ]
    assert rules.select_for_recreate([], 1, include_full=True) == []


def test_select_for_recreate_accepts_plain_strings() -> None:
    clones = [("x", "linked", 1), ("y", "full", 1)]
    assert rules.select_for_recreate(clones, 2, include_full=False) == ["x"]


def test_select_for_recreate_puts_linked_first() -> None:
    clones = [("a-full", F, 1), ("b-linked", L, 1), ("c-full", F, 1), ("d-linked", L, 1)]
    chosen = rules.select_for_recreate(clones, 2, include_full=True)
    assert chosen[:2] == ["b-linked", "d-linked"]
    assert sorted(chosen[2:]) == ["a-full", "c-full"]


clone_rows = st.lists(
    st.tuples(
        st.from_regex(r"[a-z]{1,6}", fullmatch=True),
        st.sampled_from([L, F]),
        st.integers(min_value=1, max_value=4),
    ),
    unique_by=lambda row: row[0],
    max_size=20,
)


@given(clone_rows, st.integers(min_value=1, max_value=4), st.booleans())
def test_select_for_recreate_is_idempotent(
    clones: list[tuple[str, str, int]], current: int, include_full: bool
) -> None:
    chosen = rules.select_for_recreate(clones, current, include_full=include_full)
    by_name = {name: (kind, v) for name, kind, v in clones}
    for name in chosen:
        kind, version = by_name[name]
        assert version != current
        assert include_full or kind == L
    # every clone not chosen either is on the current version or is a full one left out
    for name, kind, version in clones:
        if name not in chosen:
            assert version == current or (kind == F and not include_full)
    # after recreating the chosen ones, a second recreate has nothing to do
    after = [(n, k, current if n in chosen else v) for n, k, v in clones]
    assert rules.select_for_recreate(after, current, include_full=include_full) == []


@pytest.mark.parametrize(
    ("scope", "flags"),
    [
        (RecreateScope.NONE, (False, False)),
        (RecreateScope.LINKED, (True, False)),
        (RecreateScope.ALL, (True, True)),
        ("none", (False, False)),
        ("linked", (True, False)),
        ("all", (True, True)),
    ],
)
def test_recreate_flags(scope: RecreateScope, flags: tuple[bool, bool]) -> None:
    assert rules.recreate_flags(scope) == flags


@pytest.mark.parametrize(
    ("depth", "max_depth", "expected"),
    [(1, 8, False), (8, 8, False), (9, 8, True), (2, 1, True), (1, 1, False), (100, 8, True)],
)
def test_needs_flatten(depth: int, max_depth: int, expected: bool) -> None:
    assert rules.needs_flatten(depth, max_depth) is expected


# a catalog of layers: base <- mid <- top, base <- other (a branch), and a lone layer
PARENTS = {"base": None, "mid": "base", "top": "mid", "other": "base", "lone": None}


def test_chain_of_walks_from_the_top_to_the_base() -> None:
    assert rules.chain_of("top", PARENTS) == ["top", "mid", "base"]
    assert rules.chain_of("base", PARENTS) == ["base"]
    assert rules.chain_of(None, PARENTS) == []


def test_layers_of_chains_holds_each_top_and_all_its_parents_once() -> None:
    assert rules.layers_of_chains(["top", "other"], PARENTS) == {"top", "mid", "base", "other"}
    assert rules.layers_of_chains([], PARENTS) == set()
    assert "lone" not in rules.layers_of_chains(["top"], PARENTS)
