"""Names of templates, clones, pools and tokens, and the file names of layers.

A user-supplied name is never used as a path by itself; it is still held to a strict pattern so
that it is safe in logs, URLs, libvirt domain names and shells.
"""

from __future__ import annotations

import re

from goldfleet.errors import InvalidInput

NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
DIGEST_RE = re.compile(r"sha256:([0-9a-f]{64})")
# anchored, for pydantic's ``pattern`` (which searches, it does not match the whole string)
NAME_PATTERN = rf"^{NAME_RE.pattern}$"
DIGEST_PATTERN = rf"^{DIGEST_RE.pattern}$"
LAYER_FILE_RE = re.compile(r"sha256-([0-9a-f]{64})\.qcow2")
VERSION_RE = re.compile(r"v?([1-9][0-9]{0,8})")
MAX_VERSION = 999_999_999  # the largest version number VERSION_RE reads


def check_name(value: str, kind: str = "name") -> str:
    """Return ``value`` if it is a valid name, else raise :class:`InvalidInput`."""
    if not isinstance(value, str) or NAME_RE.fullmatch(value) is None:
        raise InvalidInput(
            f"{kind} {value!r} is not valid: use 1 to 63 characters from a-z, 0-9, '.', '_'"
            " and '-',"
            " starting with a letter or digit"
        )
    return value


def layer_filename(digest: str) -> str:
    """``sha256:<hex>`` → ``sha256-<hex>.qcow2``, the layer's file name in every store."""
    m = DIGEST_RE.fullmatch(digest)
    if m is None:
        raise InvalidInput(f"{digest!r} is not a layer digest (expected sha256:<64 hex digits>)")
    return f"sha256-{m.group(1)}.qcow2"


def digest_of_filename(filename: str) -> str | None:
    """``sha256-<hex>.qcow2`` → ``sha256:<hex>``; anything else → None."""
    m = LAYER_FILE_RE.fullmatch(filename)
    return f"sha256:{m.group(1)}" if m else None


def parse_version(text: str) -> int:
    """``v3`` or ``3`` → 3."""
    m = VERSION_RE.fullmatch(text.strip())
    if m is None:
        raise InvalidInput(f"version {text!r} is not valid: use v1, v2, … (or 1, 2, …)")
    return int(m.group(1))


def parse_version_ref(ref: str) -> tuple[str, int | None]:
    """``TEMPLATE[:VERSION]`` → (template name, version number or None for current)."""
    name, sep, version = ref.partition(":")
    check_name(name, "template name")
    return name, (parse_version(version) if sep else None)


def numbered_names(prefix: str, taken: set[str], count: int) -> list[str]:
    """``count`` fresh names ``prefix-001``, ``prefix-002``…, never reusing a taken number
    (``web-1000`` follows ``web-999``)."""
    pattern = re.compile(re.escape(prefix) + r"-([0-9]+)")
    used = {int(m.group(1)) for name in taken if (m := pattern.fullmatch(name))}
    names: list[str] = []
    i = 1
    while len(names) < count:
        if i not in used:
            names.append(check_name(f"{prefix}-{i:03d}", "clone name"))
        i += 1
    return names
