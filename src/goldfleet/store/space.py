"""Disk space, measured: free bytes where goldfleet writes, and whether a failure was a full
disk. The rules (does it fit, how it is said) are in domain/space.py."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

# SQLite's result code for "database or disk is full" (sqlite3.Error.sqlite_errorcode), and
# PostgreSQL's SQLSTATE disk_full (psycopg's Error.sqlstate)
SQLITE_FULL = 13
PG_DISK_FULL = "53100"
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# qemu-img reports a full disk only in its words
_FULL_WORDS = ("No space left on device", "Disk quota exceeded", "database or disk is full")


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the disk of ``path`` (or of its nearest
    existing folder: the work may not have made it yet)."""
    here = Path(path)
    while not here.exists() and here != here.parent:
        here = here.parent
    return shutil.disk_usage(here).free


def full_disk(exc: BaseException) -> str | None:
    """``"database"`` when ``exc`` (or what caused it) is the database saying its disk is full,
    ``"files"`` when it is a file write (ours or qemu-img's) that found no space, else None."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if getattr(e, "sqlite_errorcode", None) == SQLITE_FULL:
            return "database"
        if getattr(e, "sqlstate", None) == PG_DISK_FULL:
            return "database"
        if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
            return "files"
        words = str(e) + str(getattr(e, "stderr", "") or "")
        if any(w in words for w in _FULL_WORDS):
            return "database" if "database or disk is full" in words else "files"
        todo += [getattr(e, "orig", None), e.__cause__, e.__context__]
    return None
