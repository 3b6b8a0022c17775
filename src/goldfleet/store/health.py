"""What the last clean store verify vouches for, so ``store verify --since last`` reads again only
the files that changed since (docs/operations.md, "Store health").

A file is vouched for by its stat *fingerprint* taken just before it was checked: device, inode,
size, mode, mtime and ctime, in nanoseconds. Writing a file moves its mtime and ctime; replacing
it (a rename, a copy back from a backup) gives it another inode and ctime; chmod, a new hard link
or resetting the mtime with ``touch -d`` moves the ctime, which only turning the clock back sets.
So a file whose fingerprint is the one recorded has not been changed through the filesystem since
it was checked clean. What a fingerprint cannot see — a disk that rots a sector, a write to the
block device underneath — only a full verify finds; ``full_at`` says when one last read every
file.

A file changed less than ``RACY_NS`` before its fingerprint was taken may be written again in the
same timestamp tick without its times moving (git's "racily clean" index entries): it is not
vouched for and is checked again next time.

The record is one JSON file at the store's root, written only after a verify that found no
problem, by an atomic rename.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from goldfleet.store.files import fsync_dir

RECORD_FILE = "verified.json"
RECORD_FORMAT = 1
RACY_NS = 1_000_000_000  # timestamps are coarse (a kernel tick); a second is far past that

Fingerprint = tuple[int, int, int, int, int, int]


def fingerprint(path: Path | str) -> Fingerprint | None:
    """The file's stat fingerprint (the link itself, never what a symbolic link names); None
    when it does not exist."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mode, st.st_mtime_ns, st.st_ctime_ns)


def settled(fp: Fingerprint, taken_ns: int | None = None) -> bool:
    """Whether a file with this fingerprint, taken at ``taken_ns`` (default: now), was last
    changed long enough before that any later change must move its times."""
    taken_ns = time.time_ns() if taken_ns is None else taken_ns
    return max(fp[4], fp[5]) <= taken_ns - RACY_NS


def entry(fp: Fingerprint, expected: str) -> str:
    """A file's line in the record: its fingerprint and what it was checked against, as one
    string (30,000 of them load, compare and save at C speed)."""
    return f"{fp[0]}:{fp[1]}:{fp[2]}:{fp[3]}:{fp[4]}:{fp[5]}:{expected}"


@dataclass(frozen=True, slots=True)
class VerifyRecord:
    """A clean verify: when (``at``), when one last read every file (``full_at``), and each
    file it vouches for (its path in the store → ``entry``)."""

    at: datetime
    full_at: datetime
    files: dict[str, str]

    def vouches(self, key: str, fp: Fingerprint | None, expected: str) -> bool:
        return fp is not None and self.files.get(key) == entry(fp, expected)


def load_record(root: Path) -> VerifyRecord | None:
    """The store's record, or None when there is none or it cannot be read (then everything is
    verified: a damaged record never vouches for a file)."""
    try:
        raw = json.loads((root / RECORD_FILE).read_text())
        files = raw["files"]
        if (
            raw.get("format") != RECORD_FORMAT
            or not isinstance(files, dict)
            or not all(isinstance(v, str) for v in files.values())
        ):
            return None
        return VerifyRecord(
            at=datetime.fromisoformat(raw["at"]),
            full_at=datetime.fromisoformat(raw["full_at"]),
            files=files,
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def save_record(root: Path, record: VerifyRecord) -> None:
    """Replace the store's record atomically (readable by the server's user only)."""
    body = {
        "format": RECORD_FORMAT,
        "at": record.at.isoformat(),
        "full_at": record.full_at.isoformat(),
        "files": record.files,
    }
    work = root / f".{RECORD_FILE}.{secrets.token_hex(4)}"
    fd = os.open(work, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(body, separators=(",", ":")))  # the C encoder; dump() is not
            f.flush()
            os.fsync(f.fileno())
        os.replace(work, root / RECORD_FILE)
    finally:
        work.unlink(missing_ok=True)
    fsync_dir(root)
