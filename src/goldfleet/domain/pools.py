"""Pools: clones of one template kept at a size, with a buffer of idle ones. Pure rules.

A pool is sized by three numbers: ``min`` clones in all, ``buffer`` idle (unassigned) clones
ready for the next users, and never more than ``max``. :func:`provision_count` says how many
clones to add; the service layer provisions them as one operation.

A pool may have a *maintenance window*: a cron expression (five fields, UTC) saying when a
window opens, and a duration in minutes. Recreating the pool's clones after a new version
happens only inside a window. :func:`window_state` says whether a window is open at a moment
and when it opens and closes; windows that overlap or touch count as one.

A window disables the pool as Parallels RAS's schedule disables an RDSH group: while it is
open the pool assigns nothing, and the clones assigned to users are taken back (unassigned)
under the window's logoff policy, the rollouts' one (:func:`unassign_step`): ``wait`` takes a
clone back once nobody is logged on, ``notify-force`` messages its users, waits the grace and
logs them off, ``force`` logs them off at once. When the window ends assignments start afresh.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import NamedTuple

from cronsim import CronSim, CronSimError

from goldfleet.domain.rollout import Logoff, Policy, SessionStep, parse_duration, session_step
from goldfleet.errors import InvalidInput

MAX_POOL_SIZE = 10_000  # as many clones as one bulk create makes
MAX_WINDOW_MINUTES = 7 * 24 * 60  # a window longer than a week is no window
MAX_CRON_LENGTH = 100
# windows that overlap or touch are merged; this many at most (a cron that keeps the window
# open for ever reports a close this many windows ahead)
MAX_MERGED_WINDOWS = 1000

# user names as directory services write them: letters, digits, '.', '_', '@', '-'
USER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,62}")


class PoolState(StrEnum):
    """What a pool does with requests for clones."""

    ENABLED = "enabled"  # assigns idle clones, provisions to keep the buffer
    DRAINING = "draining"  # drained by an admin: assigns nothing, provisions nothing
    MAINTENANCE = "maintenance"  # its idle clones are being recreated in its window


class Window(NamedTuple):
    """Whether a maintenance window is open at a moment; if it is, the one open now, else the
    next one."""

    is_open: bool
    opens_at: datetime
    closes_at: datetime


def check_user(user: str) -> str:
    if not isinstance(user, str) or USER_RE.fullmatch(user) is None:
        raise InvalidInput(
            f"user name {user!r} is not valid: use 1 to 63 characters from A-Z, a-z, 0-9, '.',"
            " '_', '@' and '-', starting with a letter or digit"
        )
    return user


def check_sizes(pool: str, min_size: int, max_size: int, buffer: int) -> None:
    """``0 <= min <= max``, ``0 <= buffer <= max``, ``1 <= max <= MAX_POOL_SIZE``."""
    for label, value in (("--min", min_size), ("--max", max_size), ("--buffer", buffer)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidInput(f"pool {pool}: {label} must be a whole number >= 0, not {value!r}")
    if not 1 <= max_size <= MAX_POOL_SIZE:
        raise InvalidInput(
            f"pool {pool}: --max must be between 1 and {MAX_POOL_SIZE}, not {max_size}"
        )
    if min_size > max_size:
        raise InvalidInput(
            f"pool {pool}: --min {min_size} is larger than --max {max_size}; lower --min or raise"
            " --max"
        )
    if buffer > max_size:
        raise InvalidInput(
            f"pool {pool}: --buffer {buffer} is larger than --max {max_size}; a pool never holds"
            " more than --max clones, so lower --buffer or raise --max"
        )


def provision_count(
    total: int,
    idle: int,
    assigned: int,
    min_size: int,
    max_size: int,
    buffer: int,
    waiting: int = 0,
) -> int:
    """How many clones to add so that ``buffer`` idle ones are ready (besides one for each of
    ``waiting`` users asking for a clone now) and ``min`` exist in all, without going above
    ``max``.

    ``total`` counts every clone of the pool (idle, assigned, failed); ``idle`` the unassigned
    ones that are or will soon be ready; ``assigned`` those given to users."""
    if min(total, idle, assigned, waiting) < 0 or idle + assigned > total:
        raise ValueError(f"inconsistent counts: total {total}, idle {idle}, assigned {assigned}")
    room = max(0, max_size - total)
    wanted = max(buffer + waiting - idle, min_size - total, 0)
    return min(wanted, room)


def check_window(cron: str | None, minutes: int | None) -> tuple[str, int] | None:
    """A window is a five-field cron expression (UTC) and a duration; both or neither."""
    if cron is None and minutes is None:
        return None
    if cron is None or minutes is None:
        raise InvalidInput(
            "a maintenance window needs both a cron expression (--window-cron) and a duration"
            " in minutes (--window-minutes)"
        )
    if isinstance(minutes, bool) or not isinstance(minutes, int):
        raise InvalidInput(f"window duration {minutes!r} is not a whole number of minutes")
    if not 1 <= minutes <= MAX_WINDOW_MINUTES:
        raise InvalidInput(
            f"window duration must be between 1 and {MAX_WINDOW_MINUTES} minutes (a week),"
            f" not {minutes}"
        )
    expr = " ".join(str(cron).split())
    fields = expr.split(" ") if expr else []
    if len(expr) > MAX_CRON_LENGTH or len(fields) != 5:
        raise InvalidInput(
            f"window cron expression {cron!r} is not valid: write five fields (minute hour"
            " day-of-month month day-of-week, UTC), e.g. '0 22 * * 6' for Saturdays at 22:00"
        )
    try:
        CronSim(expr, datetime(2000, 1, 1))
    except CronSimError as exc:
        raise InvalidInput(
            f"window cron expression {cron!r} is not valid: {exc}; write five fields (minute"
            " hour day-of-month month day-of-week, UTC), e.g. '0 22 * * 6'"
        ) from None
    return expr, minutes


def _next_start(expr: str, after: datetime) -> datetime:
    """The first window start strictly after ``after``."""
    try:
        return next(CronSim(expr, after))
    except StopIteration:
        raise InvalidInput(f"window cron expression {expr!r} never matches a date") from None


def _merged_close(expr: str, start: datetime, length: timedelta) -> datetime:
    """The end of the window opened at ``start``, with later windows overlapping it merged."""
    closes = start + length
    it = CronSim(expr, start)
    for _ in range(MAX_MERGED_WINDOWS):
        try:
            following = next(it)
        except StopIteration:
            break
        if following > closes:
            break
        closes = max(closes, following + length)
    return closes


def window_state(cron: str, minutes: int, now: datetime) -> Window:
    """Is a window open at ``now`` (naive UTC)? Open windows run from a cron match (inclusive)
    for ``minutes`` (exclusive). Raises :class:`InvalidInput` for a bad expression or
    duration."""
    checked = check_window(cron, minutes)
    assert checked is not None
    expr, minutes = checked
    if now.tzinfo is not None:
        now = now.astimezone(UTC).replace(tzinfo=None)
    length = timedelta(minutes=minutes)
    # the latest start at or before now (cron matches fall on whole minutes)
    upto = now.replace(microsecond=0) + timedelta(seconds=1)
    try:
        last: datetime | None = next(CronSim(expr, upto, reverse=True))
    except StopIteration:
        last = None
    # every window has the same length: if any covers now, the one opened last does
    if last is not None and last <= now < last + length:
        return Window(True, last, _merged_close(expr, last, length))
    opens = _next_start(expr, now)
    return Window(False, opens, _merged_close(expr, opens, length))


WINDOW_MESSAGE = (
    "This desktop is being taken back for maintenance; please save your work and log off."
)


def check_window_policy(
    logoff: str | None, grace: str | float | None, message: str | None
) -> dict[str, object]:
    """A window's logoff policy from what an admin typed, as JSON (the rollout policy's
    ``logoff``, ``grace_seconds`` and ``message``); unset fields take the rollout defaults."""
    try:
        mode = Logoff(logoff or Logoff.WAIT)
        if mode == Logoff.LEAVE:
            raise ValueError(logoff)
    except ValueError:
        raise InvalidInput(
            f"--window-logoff {logoff!r} is not valid: use wait, notify-force or force"
        ) from None
    seconds = Policy().grace_seconds if grace is None else parse_duration(grace)
    text = WINDOW_MESSAGE if message is None else message
    if not text.strip() or len(text) > 1000:
        raise InvalidInput("--window-message must have 1 to 1000 characters")
    return {"logoff": str(mode), "grace_seconds": seconds, "message": text}


def window_policy(data: dict[str, object] | None) -> Policy:
    """The stored window policy as a rollout :class:`Policy` (none stored: wait)."""
    data = data or check_window_policy(None, None, None)
    return Policy(
        logoff=Logoff(str(data["logoff"])),
        grace_seconds=float(data["grace_seconds"]),  # type: ignore[arg-type]
        message=str(data["message"]),
    )


def unassign_step(
    policy: Policy,
    users: list[str],
    notified_at: datetime | None,
    opened_at: datetime,
    now: datetime,
) -> tuple[SessionStep, str | None]:
    """What an open window does with a clone assigned to a user whose logged-in users are
    ``users``: the rollouts' :func:`session_step`, with the message counted only if it was
    sent in this window (``notified_at`` at or after ``opened_at``). ``GO`` takes the clone
    back at once, ``LOGOFF`` after logging its users off; a window has no deadline."""
    told = notified_at if notified_at is not None and notified_at >= opened_at else None
    return session_step(policy, users, told, now)
