"""One server per home: ``goldfleet serve`` holds an OS lock on ``serve.lock`` in its home.

A second server on the same home would run startup recovery against the live one (removing its
uploads and work files, putting its templates back), take over its rollout items and point the
CLI (``server.json``) at itself. So ``serve`` takes this lock before it touches anything in the
home and keeps the file open for the life of the process.

The lock is ``flock(2)``: held by an open file description, released by the kernel when the
process ends however it ends (``kill -9`` included), so it never goes stale the way a row or a
pid file does, and closing some other descriptor of the same file does not drop it (unlike
``fcntl`` record locks). The descriptor is closed on exec in the programs the server runs
(qemu-img, ssh), which could otherwise keep the lock after the server died.

The file's content is information only, for the refusal message and for the next start: the
holder's pid, host and URL, and the home's id. The lock, not the content, says whether a server
runs. The home's id is a random id kept across starts: server rows carry it, so a server that
restarts knows the rows of its dead predecessors on this home and host (it holds the lock, so
no other process of this home is alive) and does not wait out their lease. A copy of a home
keeps the id: a second server must get a home of its own (``goldfleet init``), not a copy.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from goldfleet.errors import Conflict, StoreError

LOCK_FILE = "serve.lock"


@dataclass
class HomeLock:
    """The held lock of one home; the open descriptor is the lock."""

    path: Path
    fd: int
    home_id: str

    def announce(self, *, url: str) -> None:
        """Say who holds the lock (pid, host, URL), for the refusal of a second server."""
        _write(
            self.fd,
            {
                "home_id": self.home_id,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "url": url,
                "since": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        )

    def release(self) -> None:
        """Only for tests and tools that end before their process does; a server never calls
        it (the kernel releases the lock when the process ends)."""
        with contextlib.suppress(OSError):
            os.close(self.fd)


def lock_home(home: Path) -> HomeLock:
    """Take the home's lock, or refuse with the running server's pid and URL.

    Only ``goldfleet serve`` needs it. In-process contexts (tests, benchmarks, ``goldfleet
    init``) do not serve the home and take no lock."""
    path = home / LOCK_FILE
    try:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StoreError(
            f"cannot open {path}: {exc.strerror}; check that the home is writable by this user"
            " (or set GOLDFLEET_HOME to another folder)"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read(fd)
        os.close(fd)
        raise Conflict(_refusal(home, holder)) from None
    except OSError as exc:
        os.close(fd)
        raise StoreError(
            f"cannot lock {path}: {exc.strerror}; the home must be on a file system with"
            " flock(2) locks (a local disk)"
        ) from None
    previous = _read(fd)
    home_id = previous.get("home_id")
    if not isinstance(home_id, str) or not home_id:
        home_id = str(uuid.uuid4())
    lock = HomeLock(path=path, fd=fd, home_id=home_id)
    _write(fd, {"home_id": home_id, "pid": os.getpid(), "host": socket.gethostname()})
    return lock


def _refusal(home: Path, holder: dict[str, Any]) -> str:
    pid, url = holder.get("pid"), holder.get("url")
    if pid is None:
        who = "another goldfleet server that is starting"
    else:
        where = f" on host {holder['host']}" if holder.get("host") != socket.gethostname() else ""
        at = f" at {url}" if url else " (still starting)"
        who = f"goldfleet server pid {pid}{where}{at}"
    return (
        f"home {home} is already served by {who}; one server per home: use that server, or stop"
        " it first (a server on another home needs its own GOLDFLEET_HOME)"
    )


def _read(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):  # being written, or not ours: it is information only
        return {}
    return data if isinstance(data, dict) else {}


def _write(fd: int, data: dict[str, Any]) -> None:
    raw = json.dumps(data).encode() + b"\n"
    os.pwrite(fd, raw, 0)
    os.ftruncate(fd, len(raw))
