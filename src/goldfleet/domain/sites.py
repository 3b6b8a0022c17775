"""Rules of distribution between HQ and its sites: what a site receives, when a version becomes
current there, and when a site syncs. Pure functions, no I/O; times are naive UTC."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime

from cronsim import CronSim, CronSimError

from goldfleet.domain.model import TemplateStatus, VersionStatus
from goldfleet.errors import Conflict, InvalidInput

MAX_SCHEDULE = 100
MAX_VERSIONS = 10_000  # the most versions a site may be told to keep (--versions N)
ACTIVATE_MODES = ("on-verify", "when-all-verified")
RIGHTS = ("local-patches",)
_DAYS = {
    name: number
    for number, full in enumerate(
        ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
    )
    for name in (full, full[:3])
}
_TIME = re.compile(r"([01]?[0-9]|2[0-3]):([0-5][0-9])")
_SCHEDULE_HELP = (
    "write 'daily [HH:MM]', 'weekly DAY [HH:MM]' (DAY: mon..sun) or a five-field cron"
    " expression in UTC such as '30 1 * * *'"
)


def parse_versions(spec: str | int) -> str:
    """``current``, ``all`` or a count N (the N newest versions); returned normalised."""
    text = str(spec).strip().lower()
    if text in ("current", "all"):
        return text
    # ASCII digits only: str.isdigit() also takes '²' (int() refuses it) and 5000-digit numbers
    if re.fullmatch(r"[0-9]{1,5}", text) and 1 <= int(text) <= MAX_VERSIONS:
        return str(int(text))
    raise InvalidInput(
        f"--versions {spec!r} is not valid: write current, all, or a number N of newest versions"
    )


def select_versions(numbers: Iterable[int], current: int | None, spec: str) -> list[int]:
    """The version numbers a site receives under ``spec`` (see :func:`parse_versions`); the
    current version is always among them when it exists."""
    ordered = sorted(set(numbers))
    if spec == "all":
        chosen = ordered
    elif spec == "current":
        chosen = [current] if current is not None else ordered[-1:]
    else:
        chosen = ordered[-int(spec) :]
        if current is not None and current not in chosen:
            chosen = sorted([*chosen[1:], current]) if chosen else [current]
    return chosen


def effective_current(
    current: int | None,
    chosen: Iterable[int],
    activate: str,
    verified: Mapping[str, set[int]],
) -> int | None:
    """The version a site should make current.

    ``on-verify``: HQ's current version (the site makes it current once its own chain is
    verified). ``when-all-verified``: the newest chosen version, up to HQ's current, that every
    assigned site (the keys of ``verified``) reports verified; None while there is none."""
    if current is None or activate == "on-verify":
        return current
    ready = [n for n in chosen if n <= current and all(n in v for v in verified.values())]
    return max(ready) if ready else None


def parse_schedule(spec: str) -> str:
    """A sync schedule as a five-field cron expression (UTC)."""
    text = " ".join(str(spec).split()).lower()
    if not text or len(text) > MAX_SCHEDULE:
        raise InvalidInput(f"sync schedule {spec!r} is not valid: {_SCHEDULE_HELP}")
    words = text.split(" ")

    def at(word: str | None) -> tuple[int, int]:
        if word is None:
            return 2, 0  # 02:00 UTC, a quiet hour
        m = _TIME.fullmatch(word)
        if not m:
            raise InvalidInput(f"sync schedule {spec!r}: {word!r} is not a time HH:MM")
        return int(m.group(1)), int(m.group(2))

    if words[0] == "daily" and len(words) <= 2:
        hour, minute = at(words[1] if len(words) == 2 else None)
        return f"{minute} {hour} * * *"
    if words[0] == "weekly" and 2 <= len(words) <= 3:
        day = _DAYS.get(words[1])
        if day is None:
            raise InvalidInput(f"sync schedule {spec!r}: {words[1]!r} is not a day (mon..sun)")
        hour, minute = at(words[2] if len(words) == 3 else None)
        return f"{minute} {hour} * * {day}"
    if len(words) != 5:
        raise InvalidInput(f"sync schedule {spec!r} is not valid: {_SCHEDULE_HELP}")
    try:
        next(CronSim(text, datetime(2000, 1, 1)))
    except (CronSimError, StopIteration) as exc:
        raise InvalidInput(
            f"sync schedule {spec!r} is not valid ({exc}): {_SCHEDULE_HELP}"
        ) from None
    return text


def next_sync(cron: str, after: datetime) -> datetime:
    """The first scheduled sync strictly after ``after``."""
    return next(CronSim(cron, after.replace(microsecond=0)))


def check_right(right: str) -> str:
    if right not in RIGHTS:
        raise InvalidInput(f"right {right!r} is not known; rights: {', '.join(RIGHTS)}")
    return right


def check_activate(mode: str) -> str:
    if mode not in ACTIVATE_MODES:
        raise InvalidInput(f"--activate {mode!r} is not valid: write {' or '.join(ACTIVATE_MODES)}")
    return mode


def check_validation(template: str, number: int, status: str, template_status: str) -> None:
    """HQ validates only a version that waits for it, and not while the template is in a
    maintenance step (a version made current then would change the base of its overlay)."""
    if status != VersionStatus.PENDING_VALIDATION:
        raise Conflict(
            f"v{number} of template {template} is {status}: it does not wait for validation"
        )
    if template_status != TemplateStatus.READY:
        raise Conflict(
            f"template {template} is in {template_status}: validate v{number} once that ends"
        )


def check_version_enabled(template: str, number: int, status: str, what: str) -> None:
    """A version waiting for HQ's validation is not used here: no clone is moved onto it and
    no edge store is given it (``what`` says what was asked)."""
    if status == VersionStatus.PENDING_VALIDATION:
        raise Conflict(
            f"v{number} of template {template} waits for HQ's validation: it cannot be {what}"
            " until HQ validates it (goldfleet template validate at HQ, then a sync here)"
        )
