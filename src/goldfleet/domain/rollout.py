"""Rollout policy: how a bulk operation treats logged-in users, parallelism, canaries and
failures. Pure rules; the runner (services/operations.py) asks them what to do."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from goldfleet.errors import InvalidInput

_DURATION_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(s|m|h|d)?")
MAX_DURATION = 366 * 86400.0
# clones rebuilt at once, across the fleet or on one host, and the size of a canary: as many as
# one bulk create makes (domain/pools.py MAX_POOL_SIZE); more is a typo, not a plan
MAX_PARALLEL = 10_000
MAX_CANARY = 10_000
MAX_FAILURES = 1_000_000  # a failure count above any fleet
# the times an admin may give (deadline, start, publish): years 2000 to 9998, so that a time
# plus a year of grace or window still fits a datetime and every database stores it
EARLIEST = datetime(2000, 1, 1)
LATEST = datetime(9999, 1, 1)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


class Logoff(StrEnum):
    WAIT = "wait"  # never touch a clone with an active session
    NOTIFY_FORCE = "notify-force"  # message the users, wait the grace period, log them off
    FORCE = "force"  # log them off at once
    # leave users be: for work that does not disturb them (a start, a message). Set by the
    # services for those operations only; never accepted from an admin (build_policy)
    LEAVE = "leave"


class OpStatus(StrEnum):
    SCHEDULED = "scheduled"
    RUNNING = "running"
    PAUSED = "paused"
    CANCELLING = "cancelling"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE = (OpStatus.SCHEDULED, OpStatus.RUNNING, OpStatus.PAUSED, OpStatus.CANCELLING)
FINISHED = (OpStatus.DONE, OpStatus.FAILED, OpStatus.CANCELLED)


class ItemState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"  # left on its old version on purpose (deadline, failure policy)
    CANCELLED = "cancelled"


def parse_duration(text: str | float | int) -> float:
    """``90``, ``90s``, ``10m``, ``2h``, ``1d`` → seconds."""
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        m = _DURATION_RE.fullmatch(str(text).strip().lower())
        if m is None:
            raise InvalidInput(f"duration {text!r} is not valid: write e.g. 90s, 10m, 2h or 1d")
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    if seconds < 0:
        raise InvalidInput(f"duration {text!r} must not be negative")
    if not seconds <= MAX_DURATION:  # also refuses NaN
        raise InvalidInput(f"duration {text!r} is too long: at most 366 days")
    return seconds


def parse_time(text: str, now: datetime, what: str = "time") -> datetime:
    """``HH:MM`` (today, or tomorrow if already past), or an ISO date-time (UTC) from
    :data:`EARLIEST` up to :data:`LATEST`; ``what`` names the field in the refusal."""
    value = text.strip()
    m = re.fullmatch(r"([01]?[0-9]|2[0-3]):([0-5][0-9])", value)
    if m:
        at = now.replace(hour=int(m.group(1)), minute=int(m.group(2)), second=0, microsecond=0)
        return at if at > now else at + timedelta(days=1)
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(
            f"{what} {text!r} is not valid: write HH:MM or an ISO date-time like 2026-12-01T22:00"
        ) from None
    try:  # an offset may carry year 1 or 9999 past what a datetime holds
        utc = at if at.tzinfo is None else at.astimezone(UTC).replace(tzinfo=None)
    except OverflowError:
        utc = None
    if utc is None or not EARLIEST <= utc < LATEST:
        raise InvalidInput(
            f"{what} {text!r} is out of range: write a time from {EARLIEST:%Y-%m-%d} to"
            f" {LATEST - timedelta(days=1):%Y-%m-%d} (UTC)"
        )
    return utc


@dataclass(frozen=True, slots=True)
class Policy:
    logoff: Logoff = Logoff.WAIT
    deadline: datetime | None = None  # wait: clones still in use then are skipped
    grace_seconds: float = 600.0  # notify-force: time between the message and the logoff
    message: str = "This desktop will be updated; please save your work and log off."
    max_parallel: int | None = None  # clones rebuilt at once across the fleet
    per_host: int = 4  # clones rebuilt at once on one host
    canary: int = 0  # do this many first, then pause (or go on with canary_auto)
    canary_auto: bool = False
    stop_on_error: bool = True  # the default failure policy
    max_failures: int | None = None  # or tolerate this many failures …
    max_failures_pct: float | None = None  # … or this share of the operation

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["logoff"] = str(self.logoff)
        data["deadline"] = self.deadline.isoformat() if self.deadline else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Policy:
        if not data:
            return cls()
        data = dict(data)
        data["logoff"] = Logoff(data.get("logoff", Logoff.WAIT))
        if data.get("deadline"):
            data["deadline"] = datetime.fromisoformat(data["deadline"])
        return cls(**data)


def parse_max_failures(text: str) -> tuple[int | None, float | None]:
    """``3`` → (3, None); ``10%`` → (None, 10.0)."""
    value = text.strip()
    try:
        if value.endswith("%"):
            pct = float(value[:-1])
            if not 0 <= pct <= 100:
                raise ValueError
            return None, pct
        count = int(value)
        if not 0 <= count <= MAX_FAILURES:
            raise ValueError
        return count, None
    except ValueError:
        raise InvalidInput(
            f"--max-failures {text!r} is not valid: a count like 3 or a share like 10%"
        ) from None


def check_policy(policy: Policy, fleet: int) -> Policy:
    """Refuse a policy that cannot be met for a fleet of ``fleet`` clones."""
    if policy.max_parallel is not None and policy.max_parallel < 1:
        raise InvalidInput(f"--max-parallel must be at least 1, not {policy.max_parallel}")
    if policy.max_parallel is not None and policy.max_parallel > MAX_PARALLEL:
        raise InvalidInput(
            f"--max-parallel must be at most {MAX_PARALLEL}, not {policy.max_parallel}"
        )
    if policy.per_host < 1:
        raise InvalidInput(f"the per-host limit must be at least 1, not {policy.per_host}")
    if policy.per_host > MAX_PARALLEL:
        raise InvalidInput(
            f"the per-host limit must be at most {MAX_PARALLEL}, not {policy.per_host}"
        )
    if policy.canary < 0:
        raise InvalidInput("--canary must not be negative")
    if policy.canary > MAX_CANARY:
        raise InvalidInput(f"--canary must be at most {MAX_CANARY}, not {policy.canary}")
    if policy.canary and policy.canary > fleet:
        raise InvalidInput(
            f"--canary {policy.canary} is larger than the {fleet} clones this operation touches"
        )
    if policy.grace_seconds < 0:
        raise InvalidInput("--grace must not be negative")
    if policy.logoff != Logoff.WAIT and policy.deadline is not None:
        raise InvalidInput("--deadline goes with --logoff wait")
    if not policy.stop_on_error and policy.max_failures is None and policy.max_failures_pct is None:
        raise InvalidInput("without --stop-on-error, give --max-failures N or N%")
    return policy


def failures_exceeded(policy: Policy, failed: int, total: int) -> bool:
    """Whether the failure policy says: start nothing more."""
    if policy.max_failures is not None:
        return failed > policy.max_failures
    if policy.max_failures_pct is not None:
        return total > 0 and failed * 100.0 / total > policy.max_failures_pct
    return policy.stop_on_error and failed > 0


class SessionStep(StrEnum):
    GO = "go"  # nobody logged on (or logoff done): rebuild it
    WAIT = "wait"  # users logged on: not now
    NOTIFY = "notify"  # send the message now, then wait the grace period
    LOGOFF = "logoff"  # log the users off, then rebuild it
    SKIP = "skip"  # leave it on its old version (deadline passed)


def session_step(
    policy: Policy, users: list[str], notified_at: datetime | None, now: datetime
) -> tuple[SessionStep, str | None]:
    """What to do with a clone whose logged-in users are ``users``; with the reason shown."""
    if not users or policy.logoff == Logoff.LEAVE:
        return SessionStep.GO, None
    who = ", ".join(sorted(users))
    if policy.logoff == Logoff.FORCE:
        return SessionStep.LOGOFF, f"logging off {who}"
    if policy.logoff == Logoff.NOTIFY_FORCE:
        if notified_at is None:
            return SessionStep.NOTIFY, f"users notified: {who}"
        due = notified_at + timedelta(seconds=policy.grace_seconds)
        if now >= due:
            return SessionStep.LOGOFF, f"grace period over, logging off {who}"
        return SessionStep.WAIT, f"users notified: {who}; logoff at {due:%Y-%m-%d %H:%M:%S}"
    if policy.deadline is not None and now >= policy.deadline:
        return SessionStep.SKIP, f"deadline passed with users still logged on: {who}"
    return SessionStep.WAIT, f"waiting for users to log off: {who}"


def capacity(policy: Policy, running_total: int, batch: int) -> int:
    """How many more clones may start now, across the fleet."""
    limit = batch if policy.max_parallel is None else min(batch, policy.max_parallel)
    return max(0, limit - running_total)


def canary_gate(policy: Policy, passed: bool, started: int, running: int) -> tuple[int, bool]:
    """(how many may still start before the canary is judged, whether it is to be judged now)."""
    if not policy.canary or passed:
        return 1 << 30, False
    if started < policy.canary:
        return policy.canary - started, False
    return 0, running == 0


def build_policy(
    *,
    now: datetime,
    logoff: str = "wait",
    deadline: str | None = None,
    grace: str | None = None,
    message: str | None = None,
    max_parallel: int | None = None,
    per_host: int = 4,
    canary: int = 0,
    canary_auto: bool = False,
    stop_on_error: bool = True,
    max_failures: str | None = None,
) -> Policy:
    """A policy from what an admin typed (CLI flags or API fields)."""
    try:
        mode = Logoff(logoff)
        if mode == Logoff.LEAVE:
            raise ValueError(logoff)
    except ValueError:
        raise InvalidInput(
            f"--logoff {logoff!r} is not valid: use wait, notify-force or force"
        ) from None
    count, pct = parse_max_failures(max_failures) if max_failures else (None, None)
    if max_failures:
        stop_on_error = False
    kwargs: dict[str, Any] = {
        "logoff": mode,
        "deadline": parse_time(deadline, now, "--deadline") if deadline else None,
        "max_parallel": max_parallel,
        "per_host": per_host,
        "canary": canary,
        "canary_auto": canary_auto,
        "stop_on_error": stop_on_error,
        "max_failures": count,
        "max_failures_pct": pct,
    }
    if grace is not None:
        kwargs["grace_seconds"] = parse_duration(grace)
    if message:
        if len(message) > 1000:
            raise InvalidInput("--message is longer than 1000 characters")
        kwargs["message"] = message
    return Policy(**kwargs)
