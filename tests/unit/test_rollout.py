"""Every pure rule of the rollout policy (domain/rollout.py), table-driven, no I/O."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from goldfleet.domain.rollout import (
    ACTIVE,
    EARLIEST,
    FINISHED,
    LATEST,
    Logoff,
    OpStatus,
    Policy,
    SessionStep,
    build_policy,
    canary_gate,
    capacity,
    check_policy,
    failures_exceeded,
    parse_duration,
    parse_max_failures,
    parse_time,
    session_step,
)
from goldfleet.errors import InvalidInput

NOW = datetime(2026, 11, 22, 10, 0, 30)
UNLIMITED = 1 << 30

# --- states -------------------------------------------------------------------------------


def test_every_operation_status_is_either_active_or_finished() -> None:
    assert set(ACTIVE) | set(FINISHED) == set(OpStatus)
    assert not set(ACTIVE) & set(FINISHED)
    assert OpStatus.PAUSED in ACTIVE and OpStatus.SCHEDULED in ACTIVE


@pytest.mark.parametrize(
    ("text", "mode"),
    [("wait", Logoff.WAIT), ("notify-force", Logoff.NOTIFY_FORCE), ("force", Logoff.FORCE)],
)
def test_logoff_modes_are_spelled_as_on_the_command_line(text: str, mode: Logoff) -> None:
    assert Logoff(text) is mode and str(mode) == text


# --- parse_duration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("90s", 90.0),
        ("10m", 600.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1.5m", 90.0),
        ("0.5s", 0.5),
        ("0", 0.0),
        ("0s", 0.0),
        (" 10M ", 600.0),
        ("2H", 7200.0),
        ("10 m", 600.0),
        (90, 90.0),
        (2.5, 2.5),
        (0, 0.0),
    ],
)
def test_parse_duration_accepts(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["", " ", "abc", "10x", "-5", "-5s", "5 minutes", "1h30m", "m", ".5s", "1e3", "10ms", "5s!"],
)
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_duration(text)
    assert info.value.message == (f"duration {text!r} is not valid: write e.g. 90s, 10m, 2h or 1d")


@pytest.mark.parametrize("value", [-1, -0.5])
def test_parse_duration_refuses_a_negative_number(value: float) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_duration(value)
    assert info.value.message == f"duration {value!r} must not be negative"


@given(
    n=st.integers(min_value=0, max_value=10**6),
    unit=st.sampled_from([("", 1), ("s", 1), ("m", 60), ("h", 3600), ("d", 86400)]),
)
def test_parse_duration_multiplies_by_the_unit(n: int, unit: tuple[str, int]) -> None:
    assume(n * unit[1] <= 366 * 86400)  # longer durations are refused (tested below)
    suffix, factor = unit
    assert parse_duration(f"{n}{suffix}") == n * factor
    assert parse_duration(f"{n}{suffix.upper()}") == n * factor


# --- parse_time ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10:01", datetime(2026, 11, 22, 10, 1)),  # later today
        ("23:59", datetime(2026, 11, 22, 23, 59)),
        ("10:00", datetime(2026, 11, 23, 10, 0)),  # 30 s past: tomorrow
        ("09:00", datetime(2026, 11, 23, 9, 0)),
        ("0:00", datetime(2026, 11, 23, 0, 0)),
        ("7:05", datetime(2026, 11, 23, 7, 5)),
        (" 22:15 ", datetime(2026, 11, 22, 22, 15)),
        ("2026-12-01T22:00", datetime(2026, 12, 1, 22, 0)),  # naive ISO: UTC
        ("2026-12-01T22:00:05", datetime(2026, 12, 1, 22, 0, 5)),
        ("2026-12-01 22:00", datetime(2026, 12, 1, 22, 0)),
        ("2026-12-01", datetime(2026, 12, 1)),
        ("2026-11-01T08:00", datetime(2026, 11, 1, 8, 0)),  # in the past: as given
    ],
)
def test_parse_time(text: str, expected: datetime) -> None:
    assert parse_time(text, NOW) == expected


@pytest.mark.parametrize(
    "text", ["", "24:00", "12:60", "noon", "12h", "2026-13-01T00:00", "tomorrow", "1:2"]
)
def test_parse_time_refuses(text: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_time(text, NOW)
    assert info.value.message == (
        f"time {text!r} is not valid: write HH:MM or an ISO date-time like 2026-12-01T22:00"
    )


@pytest.mark.parametrize(
    "text",
    [
        "0001-01-01T00:00",
        "1999-12-31T23:59:59",
        "9999-01-01",
        "9999-12-31T23:59",
        "2000-01-01T00:30+01:00",  # 1999-12-31T23:30 in UTC
        "0001-01-01T00:00+01:00",  # these two leave what a datetime holds: OverflowError before
        "9999-12-31T23:00-05:00",
    ],
)
def test_parse_time_refuses_a_time_out_of_range_naming_the_field(text: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_time(text, NOW, "--deadline")
    assert info.value.message == (
        f"--deadline {text!r} is out of range: write a time from 2000-01-01 to 9998-12-31 (UTC)"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2000-01-01", EARLIEST),
        ("2000-01-01T01:00+01:00", EARLIEST),
        ("9998-12-31T23:59:59.999999", LATEST - timedelta(microseconds=1)),
    ],
)
def test_parse_time_takes_the_ends_of_its_range(text: str, expected: datetime) -> None:
    assert parse_time(text, NOW) == expected


def test_parse_time_names_the_field_it_reads() -> None:
    with pytest.raises(InvalidInput) as info:
        parse_time("someday", NOW, "--at")
    assert info.value.message.startswith("--at 'someday' is not valid: write HH:MM")


@given(hour=st.integers(0, 23), minute=st.integers(0, 59))
def test_parse_time_hh_mm_is_the_next_such_moment(hour: int, minute: int) -> None:
    at = parse_time(f"{hour:02d}:{minute:02d}", NOW)
    assert (at.hour, at.minute, at.second, at.microsecond) == (hour, minute, 0, 0)
    assert NOW < at <= NOW + timedelta(days=1)


@pytest.fixture
def local_time_not_utc() -> Iterator[None]:
    """Run with the machine's local time zone 5 hours behind UTC (no tzdata needed)."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "EST+5"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old
        time.tzset()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-01T22:00+00:00", datetime(2026, 12, 1, 22, 0)),
        ("2026-12-01T22:00Z", datetime(2026, 12, 1, 22, 0)),
        ("2026-12-01T23:00+01:00", datetime(2026, 12, 1, 22, 0)),
    ],
)
def test_parse_time_with_an_offset_is_converted_to_utc(text: str, expected: datetime) -> None:
    assert parse_time(text, NOW) == expected


@pytest.mark.usefixtures("local_time_not_utc")
def test_parse_time_with_an_offset_is_utc_whatever_the_local_zone() -> None:
    assert parse_time("2026-12-01T22:00+00:00", NOW) == datetime(2026, 12, 1, 22, 0)


# --- parse_max_failures -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("0", (0, None)),
        ("3", (3, None)),
        (" 3 ", (3, None)),
        ("10%", (None, 10.0)),
        ("0%", (None, 0.0)),
        ("100%", (None, 100.0)),
        ("12.5%", (None, 12.5)),
    ],
)
def test_parse_max_failures_accepts(text: str, parsed: tuple[int | None, float | None]) -> None:
    assert parse_max_failures(text) == parsed


@pytest.mark.parametrize(
    "text",
    [
        *("", "%", "-1", "-1%", "101%", "3.5", "three", "10 %x", "nan%", "inf%", "5%%"),
        *("1000001", "1" + "0" * 30),  # more failures than any fleet has clones
    ],
)
def test_parse_max_failures_refuses(text: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_max_failures(text)
    assert info.value.message == (
        f"--max-failures {text!r} is not valid: a count like 3 or a share like 10%"
    )


# --- failures_exceeded --------------------------------------------------------------------

STOP = Policy()
COUNT_0 = Policy(stop_on_error=False, max_failures=0)
COUNT_2 = Policy(stop_on_error=False, max_failures=2)
PCT_50 = Policy(stop_on_error=False, max_failures_pct=50.0)
PCT_0 = Policy(stop_on_error=False, max_failures_pct=0.0)


@pytest.mark.parametrize(
    ("policy", "failed", "total", "exceeded"),
    [
        (STOP, 0, 10, False),
        (STOP, 1, 10, True),
        (STOP, 10, 10, True),
        (Policy(stop_on_error=False), 5, 10, False),  # no budget at all: never stops
        (COUNT_0, 0, 10, False),
        (COUNT_0, 1, 10, True),
        (COUNT_2, 2, 10, False),
        (COUNT_2, 3, 10, True),
        (PCT_50, 2, 4, False),  # exactly 50 %: within the budget
        (PCT_50, 3, 4, True),
        (PCT_50, 1, 1, True),
        (PCT_50, 0, 0, False),
        (PCT_0, 0, 10, False),
        (PCT_0, 1, 1000, True),
        (Policy(stop_on_error=False, max_failures_pct=100.0), 10, 10, False),
        # a count or a share replaces stop-on-error
        (Policy(stop_on_error=True, max_failures=2), 1, 10, False),
        (Policy(stop_on_error=True, max_failures_pct=50.0), 1, 10, False),
    ],
)
def test_failures_exceeded(policy: Policy, failed: int, total: int, exceeded: bool) -> None:
    assert failures_exceeded(policy, failed, total) is exceeded


@given(
    budget=st.one_of(
        st.builds(lambda n: Policy(stop_on_error=False, max_failures=n), st.integers(0, 100)),
        st.builds(
            lambda p: Policy(stop_on_error=False, max_failures_pct=p),
            st.floats(0, 100, allow_nan=False),
        ),
        st.just(STOP),
    ),
    total=st.integers(1, 1000),
    data=st.data(),
)
def test_failures_exceeded_is_monotonic(budget: Policy, total: int, data: st.DataObject) -> None:
    """Once the budget is spent, more failures never make it fine again."""
    a = data.draw(st.integers(0, total))
    b = data.draw(st.integers(a, total))
    assert not failures_exceeded(budget, 0, total)
    if failures_exceeded(budget, a, total):
        assert failures_exceeded(budget, b, total)


# --- capacity -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_parallel", "running", "batch", "slots"),
    [
        (None, 0, 25, 25),
        (None, 10, 25, 15),
        (None, 25, 25, 0),
        (None, 30, 25, 0),  # more running than the batch (another server's): never negative
        (1, 0, 25, 1),
        (1, 1, 25, 0),
        (3, 1, 25, 2),
        (30, 5, 25, 20),  # the batch caps a larger max-parallel
        (5, 9, 25, 0),
    ],
)
def test_capacity(max_parallel: int | None, running: int, batch: int, slots: int) -> None:
    assert capacity(Policy(max_parallel=max_parallel), running, batch) == slots


@given(
    max_parallel=st.one_of(st.none(), st.integers(1, 100)),
    running=st.integers(0, 200),
    batch=st.integers(1, 100),
)
def test_capacity_never_exceeds_the_limits(
    max_parallel: int | None, running: int, batch: int
) -> None:
    slots = capacity(Policy(max_parallel=max_parallel), running, batch)
    limit = batch if max_parallel is None else min(batch, max_parallel)
    assert 0 <= slots <= limit
    assert running + slots <= max(limit, running)
    if running < limit:
        assert running + slots == limit


# --- canary_gate --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("canary", "passed", "started", "running", "gate"),
    [
        (0, False, 0, 0, (UNLIMITED, False)),  # no canary
        (0, False, 7, 3, (UNLIMITED, False)),
        (2, True, 2, 0, (UNLIMITED, False)),  # already judged
        (2, True, 5, 2, (UNLIMITED, False)),
        (2, False, 0, 0, (2, False)),
        (2, False, 1, 1, (1, False)),
        (2, False, 2, 2, (0, False)),  # all started, still running: wait
        (2, False, 2, 1, (0, False)),
        (2, False, 2, 0, (0, True)),  # all finished: judge now
        (2, False, 3, 0, (0, True)),
        (1, False, 0, 0, (1, False)),
    ],
)
def test_canary_gate(
    canary: int, passed: bool, started: int, running: int, gate: tuple[int, bool]
) -> None:
    assert canary_gate(Policy(canary=canary), passed, started, running) == gate


@given(canary=st.integers(1, 50), started=st.integers(0, 100), running=st.integers(0, 50))
def test_canary_gate_never_lets_more_than_the_canary_start(
    canary: int, started: int, running: int
) -> None:
    may_start, judge = canary_gate(Policy(canary=canary), False, started, running)
    assert may_start == max(0, canary - started)
    assert judge == (started >= canary and running == 0)


# --- session_step -------------------------------------------------------------------------

WAIT = Policy(logoff=Logoff.WAIT)
WAIT_DEADLINE = Policy(logoff=Logoff.WAIT, deadline=NOW + timedelta(minutes=5))
NOTIFY = Policy(logoff=Logoff.NOTIFY_FORCE, grace_seconds=600)
FORCE = Policy(logoff=Logoff.FORCE)
T = NOW  # when the users were notified
DUE = "2026-11-22 10:10:30"


@pytest.mark.parametrize(
    ("policy", "users", "notified_at", "now", "step", "reason"),
    [
        # nobody logged on: go, whatever the mode
        (WAIT, [], None, NOW, SessionStep.GO, None),
        (WAIT_DEADLINE, [], None, NOW + timedelta(days=1), SessionStep.GO, None),
        (NOTIFY, [], None, NOW, SessionStep.GO, None),
        (NOTIFY, [], T, NOW, SessionStep.GO, None),
        (FORCE, [], None, NOW, SessionStep.GO, None),
        # wait: never touch a clone in use
        (
            WAIT,
            ["bob", "alice"],
            None,
            NOW,
            SessionStep.WAIT,
            "waiting for users to log off: alice, bob",
        ),
        (
            WAIT,
            ["alice"],
            None,
            NOW + timedelta(days=365),
            SessionStep.WAIT,
            "waiting for users to log off: alice",
        ),
        # wait with a deadline: skipped once it has passed (the deadline itself included)
        (
            WAIT_DEADLINE,
            ["alice"],
            None,
            NOW,
            SessionStep.WAIT,
            "waiting for users to log off: alice",
        ),
        (
            WAIT_DEADLINE,
            ["alice"],
            None,
            NOW + timedelta(minutes=5, microseconds=-1),
            SessionStep.WAIT,
            "waiting for users to log off: alice",
        ),
        (
            WAIT_DEADLINE,
            ["alice"],
            None,
            NOW + timedelta(minutes=5),
            SessionStep.SKIP,
            "deadline passed with users still logged on: alice",
        ),
        (
            WAIT_DEADLINE,
            ["bob", "alice"],
            None,
            NOW + timedelta(hours=1),
            SessionStep.SKIP,
            "deadline passed with users still logged on: alice, bob",
        ),
        # notify-force: message first, then the grace period, then the logoff
        (NOTIFY, ["alice"], None, NOW, SessionStep.NOTIFY, "users notified: alice"),
        (NOTIFY, ["bob", "alice"], None, NOW, SessionStep.NOTIFY, "users notified: alice, bob"),
        (NOTIFY, ["alice"], T, T, SessionStep.WAIT, f"users notified: alice; logoff at {DUE}"),
        (
            NOTIFY,
            ["alice"],
            T,
            T + timedelta(seconds=599.999),
            SessionStep.WAIT,
            f"users notified: alice; logoff at {DUE}",
        ),
        (
            NOTIFY,
            ["alice"],
            T,
            T + timedelta(seconds=600),
            SessionStep.LOGOFF,
            "grace period over, logging off alice",
        ),
        (
            NOTIFY,
            ["alice"],
            T,
            T + timedelta(days=3),
            SessionStep.LOGOFF,
            "grace period over, logging off alice",
        ),
        (
            Policy(logoff=Logoff.NOTIFY_FORCE, grace_seconds=0),
            ["alice"],
            T,
            T,
            SessionStep.LOGOFF,
            "grace period over, logging off alice",
        ),
        # force: at once, with or without an earlier message
        (FORCE, ["bob", "alice"], None, NOW, SessionStep.LOGOFF, "logging off alice, bob"),
        (FORCE, ["alice"], T, NOW, SessionStep.LOGOFF, "logging off alice"),
    ],
)
def test_session_step(
    policy: Policy,
    users: list[str],
    notified_at: datetime | None,
    now: datetime,
    step: SessionStep,
    reason: str | None,
) -> None:
    assert session_step(policy, users, notified_at, now) == (step, reason)


@given(
    mode=st.sampled_from(list(Logoff)),
    notified=st.one_of(st.none(), st.datetimes(datetime(2020, 1, 1), datetime(2030, 1, 1))),
    now=st.datetimes(datetime(2020, 1, 1), datetime(2030, 1, 1)),
)
def test_session_step_goes_when_nobody_is_logged_on(
    mode: Logoff, notified: datetime | None, now: datetime
) -> None:
    assert session_step(Policy(logoff=mode), [], notified, now) == (SessionStep.GO, None)


@given(
    users=st.lists(st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True), min_size=1, max_size=4),
    now=st.datetimes(datetime(2020, 1, 1), datetime(2030, 1, 1)),
)
def test_session_step_wait_without_deadline_never_touches_a_clone_in_use(
    users: list[str], now: datetime
) -> None:
    step, reason = session_step(WAIT, users, None, now)
    assert step == SessionStep.WAIT
    assert reason is not None and all(u in reason for u in users)


def test_an_absurd_grace_is_refused_or_harmless() -> None:
    try:
        policy = check_policy(build_policy(now=NOW, logoff="notify-force", grace="4000000d"), 1)
    except InvalidInput:
        return
    session_step(policy, ["alice"], NOW, NOW)  # must not raise


# --- check_policy -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "fleet", "message"),
    [
        (Policy(max_parallel=0), 10, "--max-parallel must be at least 1, not 0"),
        (Policy(max_parallel=-3), 10, "--max-parallel must be at least 1, not -3"),
        (Policy(per_host=0), 10, "the per-host limit must be at least 1, not 0"),
        (Policy(canary=-1), 10, "--canary must not be negative"),
        (
            Policy(canary=11),
            10,
            "--canary 11 is larger than the 10 clones this operation touches",
        ),
        (Policy(canary=1), 0, "--canary 1 is larger than the 0 clones this operation touches"),
        (Policy(grace_seconds=-1), 10, "--grace must not be negative"),
        (
            Policy(logoff=Logoff.FORCE, deadline=NOW),
            10,
            "--deadline goes with --logoff wait",
        ),
        (
            Policy(logoff=Logoff.NOTIFY_FORCE, deadline=NOW),
            10,
            "--deadline goes with --logoff wait",
        ),
        (Policy(stop_on_error=False), 10, "without --stop-on-error, give --max-failures N or N%"),
        (Policy(max_parallel=10_001), 10, "--max-parallel must be at most 10000, not 10001"),
        (
            Policy(max_parallel=10**23),
            10,
            "--max-parallel must be at most 10000, not 100000000000000000000000",
        ),
        (Policy(per_host=10_001), 10, "the per-host limit must be at most 10000, not 10001"),
        (Policy(canary=10_001), 20_000, "--canary must be at most 10000, not 10001"),
    ],
)
def test_check_policy_refuses(policy: Policy, fleet: int, message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        check_policy(policy, fleet)
    assert info.value.message == message


@pytest.mark.parametrize(
    ("policy", "fleet"),
    [
        (Policy(), 0),
        (Policy(), 10),
        (Policy(max_parallel=1), 10),
        (Policy(max_parallel=100), 10),  # more than the fleet is fine
        (Policy(max_parallel=10_000, per_host=10_000, canary=10_000), 20_000),  # the bounds
        (Policy(canary=10), 10),  # the whole fleet as canary
        (Policy(canary=1), 10),
        (Policy(logoff=Logoff.WAIT, deadline=NOW), 10),
        (Policy(stop_on_error=False, max_failures=0), 10),
        (Policy(stop_on_error=False, max_failures_pct=25.0), 10),
        (Policy(logoff=Logoff.NOTIFY_FORCE, grace_seconds=0), 10),
    ],
)
def test_check_policy_accepts(policy: Policy, fleet: int) -> None:
    assert check_policy(policy, fleet) is policy


# --- build_policy -------------------------------------------------------------------------


def test_build_policy_defaults() -> None:
    p = build_policy(now=NOW)
    assert p == Policy()
    assert (p.logoff, p.grace_seconds, p.per_host, p.stop_on_error) == (
        Logoff.WAIT,
        600.0,
        4,
        True,
    )
    assert p.message.startswith("This desktop will be updated")


def test_build_policy_from_every_field() -> None:
    p = build_policy(
        now=NOW,
        logoff="notify-force",
        grace="2m",
        message="Rebooting for updates",
        max_parallel=3,
        per_host=2,
        canary=5,
        canary_auto=True,
        max_failures="10%",
    )
    assert p == Policy(
        logoff=Logoff.NOTIFY_FORCE,
        grace_seconds=120.0,
        message="Rebooting for updates",
        max_parallel=3,
        per_host=2,
        canary=5,
        canary_auto=True,
        stop_on_error=False,
        max_failures_pct=10.0,
    )


@pytest.mark.parametrize(
    ("max_failures", "count", "pct", "stop"),
    [
        (None, None, None, True),
        ("", None, None, True),
        ("0", 0, None, False),
        ("3", 3, None, False),
        ("50%", None, 50.0, False),
    ],
)
def test_build_policy_max_failures_replaces_stop_on_error(
    max_failures: str | None, count: int | None, pct: float | None, stop: bool
) -> None:
    p = build_policy(now=NOW, max_failures=max_failures)
    assert (p.max_failures, p.max_failures_pct, p.stop_on_error) == (count, pct, stop)


def test_build_policy_deadline_is_read_against_now() -> None:
    p = build_policy(now=NOW, deadline="18:00")
    assert p.deadline == datetime(2026, 11, 22, 18, 0)
    assert build_policy(now=NOW, deadline="2026-12-24T06:00").deadline == datetime(
        2026, 12, 24, 6, 0
    )


def test_build_policy_refuses_a_deadline_in_year_1_naming_it() -> None:
    with pytest.raises(InvalidInput) as info:
        build_policy(now=NOW, deadline="0001-01-01")
    assert info.value.message.startswith("--deadline '0001-01-01' is out of range")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"logoff": "later"},
            "--logoff 'later' is not valid: use wait, notify-force or force",
        ),
        ({"logoff": ""}, "--logoff '' is not valid: use wait, notify-force or force"),
        ({"grace": "soon"}, "duration 'soon' is not valid: write e.g. 90s, 10m, 2h or 1d"),
        (
            {"deadline": "whenever"},
            "--deadline 'whenever' is not valid: write HH:MM or an ISO date-time like"
            " 2026-12-01T22:00",
        ),
        (
            {"max_failures": "many"},
            "--max-failures 'many' is not valid: a count like 3 or a share like 10%",
        ),
        ({"message": "x" * 1001}, "--message is longer than 1000 characters"),
    ],
)
def test_build_policy_refuses(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        build_policy(now=NOW, **kwargs)
    assert info.value.message == message


def test_build_policy_keeps_a_message_of_1000_characters() -> None:
    assert build_policy(now=NOW, message="x" * 1000).message == "x" * 1000


# --- Policy as JSON -----------------------------------------------------------------------

policies = st.builds(
    Policy,
    logoff=st.sampled_from(list(Logoff)),
    deadline=st.one_of(st.none(), st.datetimes(datetime(2000, 1, 1), datetime(2100, 1, 1))),
    grace_seconds=st.floats(0, 1e7, allow_nan=False),
    message=st.text(max_size=200),
    max_parallel=st.one_of(st.none(), st.integers(1, 10_000)),
    per_host=st.integers(1, 64),
    canary=st.integers(0, 10_000),
    canary_auto=st.booleans(),
    stop_on_error=st.booleans(),
    max_failures=st.one_of(st.none(), st.integers(0, 10_000)),
    max_failures_pct=st.one_of(st.none(), st.floats(0, 100, allow_nan=False)),
)


@given(policies)
def test_policy_json_round_trip(policy: Policy) -> None:
    stored = json.loads(json.dumps(policy.to_json()))  # as the database keeps it
    assert Policy.from_json(stored) == policy


def test_policy_json_is_plain() -> None:
    p = Policy(logoff=Logoff.NOTIFY_FORCE, deadline=datetime(2026, 12, 1, 22, 0), canary=2)
    data = p.to_json()
    assert data["logoff"] == "notify-force" and data["deadline"] == "2026-12-01T22:00:00"
    assert json.loads(json.dumps(data)) == data


@pytest.mark.parametrize("stored", [None, {}])
def test_policy_from_nothing_is_the_default(stored: dict | None) -> None:
    assert Policy.from_json(stored) == Policy()


def test_policy_from_a_partial_row_fills_the_defaults() -> None:
    assert Policy.from_json({"logoff": "force", "canary": 3}) == Policy(
        logoff=Logoff.FORCE, canary=3
    )


def test_leave_is_the_services_own_logoff_mode_never_an_admins():
    """A start or a message (Logoff.LEAVE) never waits on users; an admin cannot ask for it
    (a rebuild under it would shut a VM down under its users)."""
    now = datetime(2026, 1, 1)
    leave = Policy(logoff=Logoff.LEAVE)
    assert session_step(leave, ["alice"], None, now) == (SessionStep.GO, None)
    assert session_step(Policy(), ["alice"], None, now)[0] == SessionStep.WAIT
    with pytest.raises(InvalidInput, match="--logoff 'leave' is not valid"):
        build_policy(now=now, logoff="leave")
    assert Policy.from_json(leave.to_json()) == leave
