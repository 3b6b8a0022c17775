"""Pool rules (domain/pools.py): sizes, how many clones to add, maintenance windows. No I/O."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from goldfleet.domain.pools import (
    MAX_POOL_SIZE,
    MAX_WINDOW_MINUTES,
    Window,
    check_sizes,
    check_user,
    check_window,
    provision_count,
    window_state,
)
from goldfleet.errors import InvalidInput

# --- sizes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("min_size", "max_size", "buffer"),
    [(0, 1, 0), (0, 1, 1), (2, 10, 3), (10, 10, 10), (0, MAX_POOL_SIZE, 0)],
)
def test_valid_sizes(min_size: int, max_size: int, buffer: int) -> None:
    check_sizes("p", min_size, max_size, buffer)


@pytest.mark.parametrize(
    ("min_size", "max_size", "buffer", "message"),
    [
        (5, 4, 0, "--min 5 is larger than --max 4"),
        (0, 4, 5, "--buffer 5 is larger than --max 4"),
        (0, 0, 0, "--max must be between 1 and"),
        (0, MAX_POOL_SIZE + 1, 0, "--max must be between 1 and"),
        (-1, 4, 0, "--min must be a whole number >= 0"),
        (0, 4, -1, "--buffer must be a whole number >= 0"),
        (0, 4.5, 0, "--max must be a whole number"),
        (True, 4, 0, "--min must be a whole number"),
    ],
)
def test_invalid_sizes_name_the_pool_and_the_flag(
    min_size: int, max_size: int, buffer: int, message: str
) -> None:
    with pytest.raises(InvalidInput, match="pool desks") as exc:
        check_sizes("desks", min_size, max_size, buffer)
    assert message in exc.value.message


@pytest.mark.parametrize(
    "user", ["alice", "Alice.Smith", "a", "bob@example.org", "u_1-2", "x" * 63]
)
def test_valid_user_names(user: str) -> None:
    assert check_user(user) == user


@pytest.mark.parametrize("user", ["", "-alice", "al ice", "CORP\\alice", "x" * 64, "ü", "a/b"])
def test_invalid_user_names(user: str) -> None:
    with pytest.raises(InvalidInput, match="user name"):
        check_user(user)


# --- how many clones to add ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "idle", "assigned", "min_size", "max_size", "buffer", "expected"),
    [
        (0, 0, 0, 0, 10, 2, 2),  # new pool: the buffer
        (0, 0, 0, 5, 10, 2, 5),  # new pool: min is more than the buffer
        (2, 2, 0, 0, 10, 2, 0),  # buffer full
        (2, 1, 1, 0, 10, 2, 1),  # one assigned: one more
        (5, 0, 5, 0, 10, 2, 2),  # all assigned
        (9, 0, 9, 0, 10, 2, 1),  # only one fits under max
        (10, 0, 10, 0, 10, 2, 0),  # at max
        (12, 0, 12, 0, 10, 2, 0),  # above max (max was lowered): nothing, never negative
        (3, 3, 0, 5, 10, 2, 2),  # buffer met, min not
        (4, 1, 1, 0, 10, 2, 1),  # two failed clones count in total, not as idle
        (0, 0, 0, 0, 10, 0, 0),  # no buffer, no min: on demand only
    ],
)
def test_provision_count_table(
    total: int, idle: int, assigned: int, min_size: int, max_size: int, buffer: int, expected: int
) -> None:
    assert provision_count(total, idle, assigned, min_size, max_size, buffer) == expected


@pytest.mark.parametrize(
    ("total", "idle", "assigned", "buffer", "waiting", "expected"),
    [
        (0, 0, 0, 0, 1, 1),  # on demand: a user asks, the pool has nothing idle
        (1, 1, 0, 0, 1, 0),  # one is already coming for them
        (3, 0, 3, 2, 1, 3),  # the user's clone and the buffer
        (9, 0, 9, 2, 1, 1),  # max allows only one
        (10, 0, 10, 0, 1, 0),  # at max: nobody gets one
    ],
)
def test_provision_count_for_waiting_users(
    total: int, idle: int, assigned: int, buffer: int, waiting: int, expected: int
) -> None:
    assert provision_count(total, idle, assigned, 0, 10, buffer, waiting) == expected


def test_provision_count_refuses_inconsistent_counts() -> None:
    with pytest.raises(ValueError):
        provision_count(2, 2, 1, 0, 10, 2)
    with pytest.raises(ValueError):
        provision_count(-1, 0, 0, 0, 10, 2)


@st.composite
def pools(draw: st.DrawFn) -> tuple[int, int, int, int, int, int]:
    max_size = draw(st.integers(1, 200))
    min_size = draw(st.integers(0, max_size))
    buffer = draw(st.integers(0, max_size))
    total = draw(st.integers(0, 250))
    assigned = draw(st.integers(0, total))
    idle = draw(st.integers(0, total - assigned))
    return total, idle, assigned, min_size, max_size, buffer


@given(pools())
def test_provisioning_never_exceeds_max(p: tuple[int, int, int, int, int, int]) -> None:
    total, _idle, _assigned, _min_size, max_size, _buffer = p
    n = provision_count(*p)
    assert n >= 0
    assert total + n <= max(max_size, total)
    if total >= max_size:
        assert n == 0


@given(pools())
def test_provisioning_meets_buffer_and_min_when_max_allows(
    p: tuple[int, int, int, int, int, int],
) -> None:
    total, idle, _assigned, min_size, max_size, buffer = p
    n = provision_count(*p)
    if total + max(buffer - idle, 0) <= max_size:
        assert idle + n >= buffer
    else:  # max does not allow: everything up to max (nothing when already past it)
        assert total + n == max(total, max_size)
    if min_size >= total:
        assert total + n >= min_size


@given(pools())
def test_provisioning_adds_nothing_needless(p: tuple[int, int, int, int, int, int]) -> None:
    """Only what the buffer or min asks for: one clone fewer would leave one of them unmet."""
    total, idle, _assigned, min_size, _max_size, buffer = p
    n = provision_count(*p)
    if n > 0:
        assert idle + n - 1 < buffer or total + n - 1 < min_size


@given(pools(), st.integers(1, 5))
def test_repeated_passes_settle_and_stay_under_max(
    p: tuple[int, int, int, int, int, int], passes: int
) -> None:
    """Pass after pass (the new clones becoming idle), the pool settles and never grows past max."""
    total, idle, assigned, min_size, max_size, buffer = p
    assume(total <= max_size)
    for _ in range(passes):
        n = provision_count(total, idle, assigned, min_size, max_size, buffer)
        total, idle = total + n, idle + n
        assert total <= max_size
    assert provision_count(total, idle, assigned, min_size, max_size, buffer) == 0


# --- windows ------------------------------------------------------------------------------

SAT_22 = "0 22 * * 6"  # Saturdays 22:00 UTC
D = datetime


@pytest.mark.parametrize(
    ("cron", "minutes", "now", "expected"),
    [
        # 2026-01-03 is a Saturday
        (SAT_22, 120, D(2026, 1, 3, 21, 59), (False, D(2026, 1, 3, 22), D(2026, 1, 4, 0))),
        (SAT_22, 120, D(2026, 1, 3, 22, 0), (True, D(2026, 1, 3, 22), D(2026, 1, 4, 0))),
        (SAT_22, 120, D(2026, 1, 3, 23, 59, 59), (True, D(2026, 1, 3, 22), D(2026, 1, 4, 0))),
        (SAT_22, 120, D(2026, 1, 4, 0, 0), (False, D(2026, 1, 10, 22), D(2026, 1, 11, 0))),
        (SAT_22, 120, D(2026, 1, 6, 12, 0), (False, D(2026, 1, 10, 22), D(2026, 1, 11, 0))),
        # a window across midnight and the end of the year
        (
            "30 23 31 12 *",
            60,
            D(2027, 1, 1, 0, 15),
            (True, D(2026, 12, 31, 23, 30), D(2027, 1, 1, 0, 30)),
        ),
        # overlapping windows merge: every 10 minutes for 15 minutes is open until the last
        (
            "0,10,20 3 * * *",
            15,
            D(2026, 5, 1, 3, 12),
            (True, D(2026, 5, 1, 3, 10), D(2026, 5, 1, 3, 35)),
        ),
        (
            "0,10,20 3 * * *",
            15,
            D(2026, 5, 1, 3, 35),
            (False, D(2026, 5, 2, 3, 0), D(2026, 5, 2, 3, 35)),
        ),
        # touching windows merge too
        ("0 1,2 * * *", 60, D(2026, 5, 1, 1, 30), (True, D(2026, 5, 1, 1), D(2026, 5, 1, 3))),
        # day-of-month and day-of-week both given: either matches (cron's rule)
        ("0 4 1 * 1", 30, D(2026, 6, 1, 4, 10), (True, D(2026, 6, 1, 4), D(2026, 6, 1, 4, 30))),
        # microseconds do not matter
        (SAT_22, 120, D(2026, 1, 3, 22, 0, 0, 5), (True, D(2026, 1, 3, 22), D(2026, 1, 4, 0))),
    ],
)
def test_window_state_table(
    cron: str, minutes: int, now: datetime, expected: tuple[bool, datetime, datetime]
) -> None:
    state = window_state(cron, minutes, now)
    assert isinstance(state, Window)
    assert tuple(state) == expected
    is_open, _opens_at, _closes_at = state  # a plain triple too
    assert is_open is expected[0]


def test_window_always_open_reports_a_close_far_ahead() -> None:
    state = window_state("* * * * *", 5, D(2026, 1, 1))
    assert state.is_open
    assert state.closes_at - D(2026, 1, 1) > timedelta(hours=10)


@pytest.mark.parametrize(
    ("cron", "minutes", "message"),
    [
        ("0 22 * *", 60, "five fields"),
        ("0 0 22 * * 6", 60, "five fields"),  # cronsim's seconds field is not offered
        ("61 22 * * 6", 60, "not valid"),
        ("0 25 * * *", 60, "not valid"),
        ("0 0 31 2 *", 60, "not valid"),  # a date that never comes
        ("every saturday", 60, "five fields"),
        ("", 60, "five fields"),
        ("0 22 * * 6", 0, "between 1 and"),
        ("0 22 * * 6", -5, "between 1 and"),
        ("0 22 * * 6", MAX_WINDOW_MINUTES + 1, "between 1 and"),
        ("0 22 * * 6", 1.5, "whole number"),
        ("0 22 * * 6", True, "whole number"),
        ("0 22 * * 6 " + "1" * 100, 60, "five fields"),
    ],
)
def test_bad_windows_are_refused(cron: str, minutes: int, message: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        window_state(cron, minutes, D(2026, 1, 1))
    assert message in exc.value.message


def test_window_needs_both_parts_or_none() -> None:
    assert check_window(None, None) is None
    assert check_window("  0  22 * * 6 ", 60) == ("0 22 * * 6", 60)
    with pytest.raises(InvalidInput, match="both"):
        check_window("0 22 * * 6", None)
    with pytest.raises(InvalidInput, match="both"):
        check_window(None, 60)


@given(
    st.datetimes(min_value=D(2000, 1, 1), max_value=D(2090, 1, 1)),
    st.sampled_from(["0 22 * * 6", "15 3 * * *", "0 */6 * * *", "30 1 1 * *", "0 0,12 * * 1-5"]),
    st.integers(1, 300),
)
def test_window_state_is_consistent(now: datetime, cron: str, minutes: int) -> None:
    """Open: it opened at or before now and closes after. Closed: it opens after now, and not a
    second earlier. Either way it lasts at least the duration and is closed when it closes."""
    is_open, opens_at, closes_at = window_state(cron, minutes, now)
    assert closes_at - opens_at >= timedelta(minutes=minutes)
    if is_open:
        assert opens_at <= now < closes_at
    else:
        assert now < opens_at
        assert window_state(cron, minutes, opens_at).is_open
        assert not window_state(cron, minutes, opens_at - timedelta(seconds=1)).is_open
    assert window_state(cron, minutes, closes_at - timedelta(seconds=1)).is_open
    assert not window_state(cron, minutes, closes_at).is_open
