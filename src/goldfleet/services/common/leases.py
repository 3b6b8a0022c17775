"""Leases: a named piece of work that one server at a time may do, across every server sharing
the database (PostgreSQL), with the runner's liveness rule: a lease is its owner's while the
owner's heartbeat (``servers``) is younger than ``lease_seconds``; a dead owner's lease is
taken over. Within one server a lease is re-entrant (its threads share it; the last to leave
gives it back), so a server's own threads still need their own in-process locks.

Used for hosts' edge stores (a prune and a copy into one host never interleave, whichever
servers run them); the same mechanism serves any later per-object exclusive work."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import IntegrityError

from goldfleet.context import Context
from goldfleet.db.tables import Lease, Server
from goldfleet.errors import Conflict

POLL = 0.1  # seconds between two attempts to take a lease another server holds
_guard = threading.Lock()
_held: dict[tuple[str, str], int] = {}  # (owner, lease) → this process's threads inside


def owner_of(ctx: Context) -> str:
    """This server's id (its ``servers`` row, once its runner registered)."""
    return ctx.server_id


def _take(ctx: Context, name: str, me: str) -> str | None:
    """Take the lease if it is free, ours or a dead server's; else the live holder's id."""
    now = ctx.clock.now()
    alive = select(Server.id).where(
        Server.heartbeat_at >= now - timedelta(seconds=ctx.settings.lease_seconds)
    )
    with ctx.session() as s:
        taken = s.execute(
            update(Lease)
            .where(Lease.name == name, or_(Lease.owner == me, Lease.owner.not_in(alive)))
            .values(owner=me, taken_at=now)
        ).rowcount
        if taken:
            s.commit()
            return None
        s.add(Lease(name=name, owner=me, taken_at=now))
        try:
            s.commit()
            return None
        except IntegrityError:
            s.rollback()
        holder = s.scalar(select(Lease.owner).where(Lease.name == name))
        return holder or ""  # "" : given back just now; the caller tries again


@contextmanager
def hold(ctx: Context, name: str, *, wait: float, what: str) -> Iterator[None]:
    """Do the work of ``name`` under its lease, waiting up to ``wait`` seconds for another
    server's to end; then refuse with a Conflict naming ``what`` and the holder."""
    me = owner_of(ctx)
    key = (me, name)
    deadline = time.monotonic() + wait
    while True:
        with _guard:
            if _held.get(key):
                _held[key] += 1
                break
            holder = _take(ctx, name, me)
            if holder is None:
                _held[key] = 1
                break
        if time.monotonic() >= deadline:
            with ctx.session() as s:
                server = s.get(Server, holder) if holder else None
                by = f"server {server.hostname} (pid {server.pid})" if server else "another server"
            raise Conflict(f"{what} is busy: {by} is working on it; try again when it is done")
        time.sleep(POLL)
    try:
        yield
    finally:
        with _guard:
            _held[key] -= 1
            if not _held[key]:
                del _held[key]
                with ctx.session() as s:
                    s.execute(delete(Lease).where(Lease.name == name, Lease.owner == me))
                    s.commit()
