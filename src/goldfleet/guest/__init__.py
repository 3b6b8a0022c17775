"""The goldfleet guest tool as shipped in this package, and how its versions compare.

``goldfleet-guest`` (beside this file) is a POSIX shell program that image builders copy into
a guest (``goldfleet guest-tool path`` says where it is) and that goldfleet installs or updates
through the QEMU guest agent. This module reads its version and the fixed paths it uses in a
guest; it imports nothing of goldfleet so that every layer may use it.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

__all__ = [
    "GUEST_DESCRIPTOR_PATH",
    "GUEST_POLICY_PATH",
    "GUEST_TOOL_PATH",
    "is_outdated",
    "tool_path",
    "tool_version",
    "version_in",
    "version_key",
]

GUEST_TOOL_PATH = "/usr/local/bin/goldfleet-guest"
"""Where goldfleet installs the tool in a guest."""
GUEST_POLICY_PATH = "/etc/goldfleet/quarantine.policy"
GUEST_DESCRIPTOR_PATH = "/var/lib/goldfleet/nq-descriptor"

_VERSION_LINE = re.compile(r"^TOOL_VERSION=([0-9]+(?:\.[0-9]+){0,3})$", re.MULTILINE)
_VERSION = re.compile(r"^[0-9]+(?:\.[0-9]+){0,3}$")


def tool_path() -> Path:
    """The packaged copy of ``goldfleet-guest``."""
    return Path(__file__).with_name("goldfleet-guest")


def version_in(program: str) -> str | None:
    """The version a copy of the tool declares in its ``TOOL_VERSION=`` line, if any."""
    m = _VERSION_LINE.search(program)
    return m.group(1) if m else None


@cache
def tool_version() -> str:
    """The version of the packaged tool, read from its ``TOOL_VERSION=`` line."""
    found = version_in(tool_path().read_text())
    if found is None:
        raise RuntimeError(f"{tool_path()} has no TOOL_VERSION line")
    return found


def version_key(version: str) -> tuple[int, ...] | None:
    """A sortable key of a dotted version, or ``None`` for what is not one (garbage a guest
    answered with is not a version)."""
    text = version.strip()
    if not _VERSION.match(text):
        return None
    parts = tuple(int(p) for p in text.split("."))
    return parts + (0,) * (4 - len(parts))


def is_outdated(version: str | None, packaged: str | None = None) -> bool:
    """Whether a guest's tool needs the update: missing, unreadable or older than packaged."""
    if version is None:
        return True
    key = version_key(version)
    target = version_key(packaged or tool_version())
    return key is None or (target is not None and key < target)
