"""A pool window's logoff policy and what it does with an assigned clone
(goldfleet.domain.pools: check_window_policy, window_policy, unassign_step)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from goldfleet.domain.pools import (
    WINDOW_MESSAGE,
    check_window_policy,
    unassign_step,
    window_policy,
)
from goldfleet.domain.rollout import Logoff, SessionStep
from goldfleet.errors import InvalidInput

OPENED = datetime(2026, 1, 10, 22, 0)


def test_defaults_are_the_rollouts_wait_and_grace_with_the_window_message() -> None:
    assert check_window_policy(None, None, None) == {
        "logoff": "wait",
        "grace_seconds": 600.0,
        "message": WINDOW_MESSAGE,
    }
    policy = window_policy(None)
    assert (policy.logoff, policy.grace_seconds, policy.message) == (
        Logoff.WAIT,
        600.0,
        WINDOW_MESSAGE,
    )
    stored = check_window_policy("notify-force", "2m", "bye")
    assert window_policy(stored).grace_seconds == 120.0


@pytest.mark.parametrize(
    ("logoff", "grace", "message", "error"),
    [
        ("later", None, None, "--window-logoff 'later' is not valid"),
        (None, "soon", None, "duration 'soon' is not valid"),
        (None, "-1", None, "not valid"),
        (None, None, "", "--window-message must have 1 to 1000 characters"),
        (None, None, "x" * 1001, "--window-message must have 1 to 1000 characters"),
    ],
)
def test_bad_window_policies_are_refused(
    logoff: str | None, grace: str | None, message: str | None, error: str
) -> None:
    with pytest.raises(InvalidInput, match=error):
        check_window_policy(logoff, grace, message)


def test_nobody_logged_on_is_taken_back_at_once_whatever_the_policy() -> None:
    for mode in ("wait", "notify-force", "force"):
        policy = window_policy(check_window_policy(mode, None, None))
        assert unassign_step(policy, [], None, OPENED, OPENED)[0] == SessionStep.GO


def test_notify_force_tells_once_per_window_then_logs_off_after_the_grace() -> None:
    policy = window_policy(check_window_policy("notify-force", "10m", None))
    now = OPENED + timedelta(minutes=1)
    assert unassign_step(policy, ["alice"], None, OPENED, now)[0] == SessionStep.NOTIFY
    told = OPENED + timedelta(minutes=1)
    assert unassign_step(policy, ["alice"], told, OPENED, told + timedelta(minutes=9))[0] == (
        SessionStep.WAIT
    )
    assert unassign_step(policy, ["alice"], told, OPENED, told + timedelta(minutes=10))[0] == (
        SessionStep.LOGOFF
    )
    # a message of an earlier window does not count: this window tells them again
    earlier = OPENED - timedelta(days=7)
    assert unassign_step(policy, ["alice"], earlier, OPENED, now)[0] == SessionStep.NOTIFY


def test_wait_waits_and_force_logs_off() -> None:
    wait = window_policy(None)
    assert unassign_step(wait, ["bob"], None, OPENED, OPENED + timedelta(hours=5))[0] == (
        SessionStep.WAIT
    )
    force = window_policy(check_window_policy("force", None, None))
    assert unassign_step(force, ["bob"], None, OPENED, OPENED)[0] == SessionStep.LOGOFF
