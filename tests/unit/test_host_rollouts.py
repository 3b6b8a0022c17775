"""Rules of the rolling update (domain/hostupdates.py): placement by capacity, whether hosts
may be out at once, HA commands, the prechecks beyond the sync's."""

from __future__ import annotations

import pytest

from goldfleet.domain import hostupdates as rules
from goldfleet.errors import InvalidInput

Vm = rules.Vm


def test_place_puts_the_largest_first_where_most_memory_is_free() -> None:
    free = {"a": (4096, 8), "b": (6144, 8)}
    got = rules.place(
        [Vm("small", 1024, 1), Vm("big", 4096, 2), Vm("mid", 2048, 1)], free, ["a", "b"]
    )
    assert got == {"big": "b", "mid": "a", "small": "a"}
    assert free == {"a": (4096, 8), "b": (6144, 8)}  # not changed


def test_a_vm_that_fits_nowhere_is_none_and_vcpus_count() -> None:
    free = {"a": (8192, 2)}
    assert rules.place([Vm("wide", 1024, 4), Vm("huge", 9000, 1)], free, ["a"]) == {
        "huge": None,
        "wide": None,
    }
    assert rules.place([Vm("x", 1, 1)], free, []) == {"x": None}


def test_place_preferring_fills_the_first_group_first() -> None:
    free = {"done": (4096, 8), "later": (65536, 64)}
    vms = [Vm("a", 2048, 1), Vm("b", 2048, 1), Vm("c", 2048, 1)]
    got = rules.place_preferring(vms, free, [["done"], ["later"]])
    assert sorted(got.values()) == ["done", "done", "later"]
    assert rules.place_preferring([Vm("x", 1 << 20, 1)], free, [["done"], ["later"]]) == {"x": None}


def test_free_capacity_unlimited_when_not_given() -> None:
    free = rules.free_capacity({"a": (None, None), "b": (4096, 4)}, {"b": [Vm("v", 1024, 1)]})
    assert free["a"] == (rules.UNLIMITED, rules.UNLIMITED) and free["b"] == (3072, 3)


def test_holds_all_decides_how_many_hosts_may_be_out() -> None:
    cap = {h: (8192, 64) for h in ("h1", "h2", "h3", "h4")}
    load = {h: [Vm(f"{h}-{i}", 2048, 1) for i in range(2)] for h in cap}  # half full
    assert rules.holds_all(cap, load, ["h1"])
    assert rules.holds_all(cap, load, ["h1", "h2"])  # 8 VMs onto 2 hosts of 4 each
    assert not rules.holds_all(cap, load, ["h1", "h2", "h3"])


def test_commands_are_argv_lists() -> None:
    assert rules.check_commands([["ha-manager", "x"]], "d") == [["ha-manager", "x"]]
    for bad in ("ha-manager x", [[]], [["a", ""]], [["a\0"]], [[1]], [["a"]] * 21):
        with pytest.raises(InvalidInput):
            rules.check_commands(bad, "d")


def test_max_hosts_is_within_the_cluster() -> None:
    assert rules.check_max_hosts(2, 4) == 2
    for bad in (0, 5, True):
        with pytest.raises(InvalidInput):
            rules.check_max_hosts(bad, 4)


def test_update_prechecks_each_by_name() -> None:
    base = [rules.Precheck("hosts-online", True)]
    got = rules.update_prechecks(
        base=base,
        reachable={"h1": None, "h2": "no dpkg database"},
        pending_mandatory={"h3": ["restart-toolstack"]},
        ha_commands=False,
        ha_already_disabled=False,
        open_update="#3 (paused)",
    )
    failed = {p.name: p.reason for p in got if not p.ok}
    assert set(failed) == {
        "hosts-online",
        "no-pending-mandatory-guidance",
        "ha-and-balancing-disabled",
        "no-update-running",
    }
    assert "h2: no dpkg database" in failed["hosts-online"]
    assert "h3: restart-toolstack" in failed["no-pending-mandatory-guidance"]
    ok = rules.update_prechecks(
        base=base,
        reachable={"h1": None},
        pending_mandatory={},
        ha_commands=False,
        ha_already_disabled=True,
        open_update=None,
    )
    assert all(p.ok for p in ok)
