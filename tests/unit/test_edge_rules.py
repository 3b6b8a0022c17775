"""Edge store rules (domain/edge.py): what a host lacks, where a new clone goes, when it may not."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from goldfleet.domain import edge
from goldfleet.domain.model import CloneKind
from goldfleet.errors import Conflict, InvalidInput, NotFound

TOP, MID, BASE = "sha256:" + "c" * 64, "sha256:" + "b" * 64, "sha256:" + "a" * 64
CHAIN = (TOP, MID, BASE)  # top first, as versions store it
HOSTS = ["kvm-01", "kvm-02", "kvm-03"]


def test_missing_layers_come_parents_first() -> None:
    assert edge.missing_layers(CHAIN, set()) == [BASE, MID, TOP]
    assert edge.missing_layers(CHAIN, {BASE}) == [MID, TOP]
    assert edge.missing_layers(CHAIN, {MID}) == [BASE, TOP]
    assert edge.missing_layers(CHAIN, set(CHAIN)) == []
    assert edge.missing_layers((), set()) == []


@given(st.sets(st.sampled_from(CHAIN)))
def test_missing_layers_are_exactly_the_absent_ones_in_copy_order(present: set[str]) -> None:
    missing = edge.missing_layers(CHAIN, present)
    assert set(missing) == set(CHAIN) - present
    order = [d for d in reversed(CHAIN) if d in missing]
    assert missing == order  # a layer is never copied before its parent


def test_only_linked_clones_read_the_chain() -> None:
    assert edge.reads_chain(CloneKind.LINKED)
    assert not edge.reads_chain(CloneKind.FULL)


def test_new_clones_go_to_the_least_loaded_host() -> None:
    assert edge.choose_host(HOSTS, {"kvm-01": 3, "kvm-02": 1, "kvm-03": 2}, set()) == "kvm-02"
    # load first: holding the chain does not pull every clone onto one host
    assert edge.choose_host(HOSTS, {"kvm-01": 2, "kvm-02": 1}, {"kvm-01"}) == "kvm-03"


def test_equally_loaded_hosts_prefer_one_that_holds_the_chain_then_the_driver_order() -> None:
    assert edge.choose_host(HOSTS, {}, {"kvm-03"}) == "kvm-03"
    assert edge.choose_host(HOSTS, {}, {"kvm-02", "kvm-03"}) == "kvm-02"
    assert edge.choose_host(HOSTS, {}, set()) == "kvm-01"
    assert edge.choose_host(HOSTS, {"kvm-01": 1, "kvm-02": 1, "kvm-03": 2}, {"kvm-02"}) == "kvm-02"


def test_a_fleet_spreads_evenly_over_the_hosts() -> None:
    load: dict[str, int] = {}
    for _ in range(30):
        host = edge.choose_host(HOSTS, load, {"kvm-01"})
        load[host] = load.get(host, 0) + 1
    assert load == {"kvm-01": 10, "kvm-02": 10, "kvm-03": 10}


def test_no_host_no_placement() -> None:
    with pytest.raises(Conflict, match="no hosts"):
        edge.choose_host([], {}, set())


def test_a_host_whose_edge_store_is_not_reachable_takes_no_new_clone() -> None:
    load: dict[str, int] = {}
    for _ in range(6):
        host = edge.choose_host(HOSTS, load, set(), unreachable={"kvm-02"})
        load[host] = load.get(host, 0) + 1
    assert load == {"kvm-01": 3, "kvm-03": 3}
    with pytest.raises(Conflict) as info:
        edge.choose_host(HOSTS, {}, set(), unreachable=set(HOSTS))
    assert "not reachable" in info.value.message and "kvm-03" in info.value.message


def test_a_clone_is_never_placed_on_a_host_whose_chain_is_incomplete() -> None:
    edge.check_placement("desk-001", "kvm-01", [])
    with pytest.raises(Conflict) as info:
        edge.check_placement("desk-001", "kvm-01", [MID, TOP])
    assert "desk-001" in info.value.message
    assert "kvm-01" in info.value.message
    assert MID in info.value.message  # the first layer it lacks
    assert "goldfleet host prefetch kvm-01" in info.value.message


@pytest.mark.parametrize(
    ("host", "error"),
    [
        ("kvm-09", NotFound),  # not one of the driver's hosts
        ("", NotFound),
    ],
)
def test_unknown_hosts_are_refused(host: str, error: type[Exception]) -> None:
    with pytest.raises(error, match="goldfleet host list"):
        edge.check_host(host, HOSTS)


@pytest.mark.parametrize("host", ["qemu:///system", "../etc", "a/b", "KVM", ".hidden"])
def test_a_host_name_that_is_not_a_safe_name_never_becomes_a_folder(host: str) -> None:
    with pytest.raises(InvalidInput, match="cannot have an edge store"):
        edge.check_host(host, [*HOSTS, host])


def test_a_known_host_with_a_safe_name_is_accepted() -> None:
    assert edge.check_host("kvm-02", HOSTS) == "kvm-02"


# --- prune ----------------------------------------------------------------------------------

V1_TOP = "sha256:" + "d" * 64  # v1 = (V1_TOP, BASE); v2 = (TOP, MID, BASE), as in CHAIN
OTHER = "sha256:" + "e" * 64  # another template's base layer
GONE = "sha256:" + "f" * 64  # a layer whose version was deleted: not in the catalog
PARENTS = {BASE: None, MID: BASE, TOP: MID, V1_TOP: BASE, OTHER: None}
TOPS = {1: V1_TOP, 2: TOP, 3: OTHER}  # version id → top layer


def placed(host: str | None, version: int, *targets: int, kind: str = CloneKind.LINKED):
    return edge.PlacedClone(kind=kind, host=host, version=version, targets=targets)


def kept_versions(clones, current=(), keep_current=True, host="kvm-01") -> set[int]:
    return edge.versions_to_keep(host, clones, current, keep_current=keep_current)


def test_a_host_keeps_the_versions_of_its_linked_clones_now_and_after_their_actions() -> None:
    assert kept_versions([placed("kvm-01", 1)]) == {1}
    assert kept_versions([placed("kvm-01", 1, 2)]) == {1, 2}  # a rebuild onto v2 under way
    assert kept_versions([placed("kvm-02", 1, 2)]) == set()  # another host's clone
    assert kept_versions([placed("kvm-01", 1, kind=CloneKind.FULL)]) == set()  # reads no layer
    # not placed yet: it may come here, on the version it is about to get
    assert kept_versions([placed(None, 1, 2)]) == {2}
    assert kept_versions([placed(None, 1)]) == set()  # reads the site store


def test_current_versions_are_kept_unless_asked_not_to() -> None:
    assert kept_versions([], current=[2, 3]) == {2, 3}
    assert kept_versions([], current=[2, 3], keep_current=False) == set()
    assert kept_versions([placed("kvm-01", 1)], current=[2], keep_current=False) == {1}


def test_a_prune_after_a_rollout_removes_the_old_top_and_keeps_shared_parents() -> None:
    held = {V1_TOP, BASE, MID, TOP}
    keep = edge.keep_chains([TOPS[2]], PARENTS)
    assert keep.layers == {TOP, MID, BASE}
    assert edge.removable_layers(held, keep) == [V1_TOP]
    # a clone still on v1 keeps it
    keep = edge.keep_chains([TOPS[1], TOPS[2]], PARENTS)
    assert edge.removable_layers(held, keep) == []


def test_layers_go_children_before_parents_unknown_ones_first() -> None:
    held = {BASE, MID, TOP, V1_TOP, OTHER, GONE}
    removed = edge.removable_layers(held, edge.keep_chains([], PARENTS))
    assert set(removed) == held
    assert removed[0] == GONE
    for child, parent in PARENTS.items():
        if parent is not None:
            assert removed.index(child) < removed.index(parent)


@given(
    st.sets(st.sampled_from([BASE, MID, TOP, V1_TOP, OTHER, GONE])),
    st.sets(st.sampled_from(sorted(TOPS))),
)
def test_no_kept_layer_ever_loses_its_parent(held: set[str], versions: set[int]) -> None:
    keep = edge.keep_chains([TOPS[v] for v in versions], PARENTS)
    removed = edge.removable_layers(held, keep)
    assert set(removed) == held - keep.layers
    assert not {PARENTS.get(d) for d in keep.layers} & set(removed)
    for v in versions:  # every kept chain is whole in what stays
        digest: str | None = TOPS[v]
        while digest is not None:
            assert digest in keep.layers
            digest = PARENTS[digest]
