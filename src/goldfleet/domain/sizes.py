"""Sizes as admins write them: 10G, 512M, 1.5T, 4096 (bytes). Binary units (G = GiB)."""

from __future__ import annotations

import re
from decimal import ROUND_CEILING, Decimal

from goldfleet.errors import InvalidInput

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_LARGEST = 1 << 80  # far beyond any disk; keeps arithmetic exact and bounded
_SIZE_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:I?B)?", re.IGNORECASE)
_PER_SECOND_RE = re.compile(r"\s*/\s*s(?:ec)?$", re.IGNORECASE)
MAX_RATE = 1 << 50  # bytes a second: a PiB/s, far above any link, within a 64-bit column


def parse_size(text: str | int, *, maximum: int | None = None) -> int:
    """Parse a size into bytes, rounded up to a 512-byte sector; refuse 0, junk and excess."""
    if isinstance(text, int):
        value = text
    else:
        m = _SIZE_RE.fullmatch(str(text).strip())
        if m is None:
            raise InvalidInput(f"size {text!r} is not valid: write e.g. 20G, 512M or 1T")
        exact = Decimal(m.group(1)) * _UNITS[m.group(2).upper()]
        if exact > _LARGEST:
            raise InvalidInput(f"size {text!r} is far too large")
        value = int(exact.to_integral_value(rounding=ROUND_CEILING))
    if value <= 0:
        raise InvalidInput(f"size {text!r} must be larger than zero")
    value = (value + 511) // 512 * 512
    if maximum is not None and value > maximum:
        raise InvalidInput(f"size {text!r} is above the limit of {format_size(maximum)}")
    return value


def parse_rate(text: str) -> int:
    """A bandwidth as admins write it, into bytes a second: 50MB/s, 10M/s, 1.5G (binary units)."""
    try:
        return parse_size(_PER_SECOND_RE.sub("", str(text).strip()), maximum=MAX_RATE)
    except InvalidInput:
        raise InvalidInput(
            f"bandwidth {text!r} is not valid: write e.g. 50MB/s, 10M/s or 1G/s"
        ) from None


def format_size(value: int) -> str:
    """Bytes → the shortest exact-ish form: 20G, 512M, 1.5T."""
    for unit in ("T", "G", "M", "K"):
        scale = _UNITS[unit]
        if value >= scale:
            shown = value / scale
            return f"{shown:.0f}{unit}" if shown == int(shown) else f"{shown:.1f}{unit}"
    return f"{value}B"
