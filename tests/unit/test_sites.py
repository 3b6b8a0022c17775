"""Distribution rules: which versions a site receives, which becomes current, sync schedules."""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from goldfleet.domain.sites import (
    check_activate,
    check_right,
    effective_current,
    next_sync,
    parse_schedule,
    parse_versions,
    select_versions,
)
from goldfleet.errors import InvalidInput


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("current", "current"),
        ("ALL", "all"),
        (" 3 ", "3"),
        (2, "2"),
        ("007", "7"),
        ("10000", "10000"),
    ],
)
def test_parse_versions(spec, expected):
    assert parse_versions(spec) == expected


@pytest.mark.parametrize(
    "spec",
    # '²' passed str.isdigit() and broke int() (a 500); so did 5000 digits (int()'s limit);
    # '٣' (Arabic-Indic 3) passed both: only ASCII digits are a count
    ["0", "-1", "latest", "", "1.5", "99999", "10001", "²", "٣", "9" * 5000],
)
def test_parse_versions_refuses(spec):
    with pytest.raises(InvalidInput, match="--versions"):
        parse_versions(spec)


def test_select_versions():
    assert select_versions([1, 2, 3, 4], 4, "all") == [1, 2, 3, 4]
    assert select_versions([1, 2, 3, 4], 3, "current") == [3]
    assert select_versions([1, 2, 3, 4], 4, "2") == [3, 4]
    # the current version is always sent, even when it is not among the newest
    assert select_versions([1, 2, 3, 4], 2, "2") == [2, 4]
    assert select_versions([1, 2, 3, 4], 2, "1") == [2]
    assert select_versions([1, 2], None, "current") == [2]
    assert select_versions([], None, "current") == []


@given(
    st.sets(st.integers(1, 50), min_size=1), st.integers(1, 60), st.sampled_from(["all", "1", "3"])
)
def test_select_versions_holds_current(numbers, pick, spec):
    current = pick if pick in numbers else None
    chosen = select_versions(numbers, current, spec)
    assert set(chosen) <= numbers
    assert chosen == sorted(chosen)
    if current is not None:
        assert current in chosen


def test_effective_current_on_verify_is_hq_current():
    assert effective_current(3, [1, 2, 3], "on-verify", {"a": set()}) == 3


def test_effective_current_when_all_verified():
    verified = {"a": {1, 2, 3}, "b": {1, 2}}
    assert effective_current(3, [1, 2, 3], "when-all-verified", verified) == 2
    verified["b"].add(3)
    assert effective_current(3, [1, 2, 3], "when-all-verified", verified) == 3
    # never beyond HQ's current, and nothing while no version is verified everywhere
    assert effective_current(2, [1, 2, 3], "when-all-verified", verified) == 2
    assert effective_current(3, [3], "when-all-verified", {"a": {3}, "b": set()}) is None
    assert effective_current(None, [1], "when-all-verified", {"a": {1}}) is None


@pytest.mark.parametrize(
    ("spec", "cron"),
    [
        ("daily", "0 2 * * *"),
        ("daily 23:15", "15 23 * * *"),
        ("Weekly sun", "0 2 * * 0"),
        ("weekly saturday 4:05", "5 4 * * 6"),
        ("30  1 * * *", "30 1 * * *"),
        ("*/15 * * * *", "*/15 * * * *"),
    ],
)
def test_parse_schedule(spec, cron):
    assert parse_schedule(spec) == cron


@pytest.mark.parametrize(
    "spec",
    ["", "hourly", "daily 25:00", "daily 3pm", "weekly", "weekly funday", "61 * * * *", "* * *"],
)
def test_parse_schedule_refuses(spec):
    with pytest.raises(InvalidInput, match="sync schedule"):
        parse_schedule(spec)


def test_next_sync():
    cron = parse_schedule("weekly mon 02:00")
    # 2026-11-22 is a Sunday
    assert next_sync(cron, datetime(2026, 11, 22, 12, 0)) == datetime(2026, 11, 23, 2, 0)
    assert next_sync(cron, datetime(2026, 11, 23, 2, 0)) == datetime(2026, 11, 30, 2, 0)


def test_rights_and_modes():
    assert check_right("local-patches") == "local-patches"
    assert check_activate("when-all-verified") == "when-all-verified"
    with pytest.raises(InvalidInput):
        check_right("root")
    with pytest.raises(InvalidInput):
        check_activate("later")
