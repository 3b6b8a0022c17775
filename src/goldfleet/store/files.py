"""Small file helpers of the store: durable renames need their folder flushed; work files
carry the id of the server that makes them; a file checked once is known by its signature;
a file whose bytes do not match its name is moved aside."""

from __future__ import annotations

import os
import re
import secrets
import stat
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

# a server's id (Context.server_id, a uuid4) inside a work file's name
_SERVER_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

# whether the work of a server (its id; None: a file whose name has none) was abandoned: its
# server is dead, so nobody will finish or remove its work files but a starting server
Abandoned = Callable[[str | None], bool]


def work_owner(name: str) -> str | None:
    """The id of the server that made a work file, from its name (None: a name without one).

    Servers sharing a store (PostgreSQL) each remove at start only the work files of dead
    servers; the name is what ties a file to its server, whatever state the file is in."""
    found = _SERVER_ID.search(name)
    return found.group(0) if found else None


def work_name(prefix: str, owner: str, random: str, suffix: str = "") -> str:
    """``<prefix><owner>-<random><suffix>``; without an owner (a store used outside a server,
    in tests and tools) ``<prefix><random><suffix>``."""
    return f"{prefix}{owner}-{random}{suffix}" if owner else f"{prefix}{random}{suffix}"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def signature(path: Path) -> tuple[int, int, int] | None:
    """A plain file's size, modification time and inode (None: not there, or not a plain
    file): a file whose bytes were checked once is trusted again while this stays the same."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def move_aside(path: Path, folder: Path) -> Path:
    """Move a file whose bytes do not match its name into ``folder`` (made if need be), under
    its name and the time, so that nothing uses it and an admin can look at it."""
    folder.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    dest = folder / f"{path.name}.{stamp}-{secrets.token_hex(3)}"
    os.replace(path, dest)
    return dest
