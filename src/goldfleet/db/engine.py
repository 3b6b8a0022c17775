"""Engine, sessions and migrations. Nothing here runs at import time."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"


def make_engine(url: str, *, durable: bool = True) -> Engine:
    """goldfleet's engine: every commit is on disk when it returns (SQLite in WAL mode with
    ``synchronous=FULL``; PostgreSQL's default).

    ``durable=False`` is for state that a later durable commit may carry to disk (the sim
    driver's simulated hypervisor): a commit returns once written to the log, without waiting
    for the disk. A process killed right after loses nothing (the log is in the OS's cache);
    a power loss may lose such commits, but only those after the last durable one — the log
    is written in order, and a durable commit flushes everything before it (SQLite's WAL file,
    PostgreSQL's WAL)."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=8
        )
        synchronous = "FULL" if durable else "NORMAL"

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={synchronous}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    if durable:
        return create_engine(url, pool_pre_ping=True)
    return create_engine(
        url, pool_pre_ping=True, connect_args={"options": "-c synchronous_commit=off"}
    )


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


class UnitOfWork:
    """One transaction: rolled back unless ``commit()`` is called."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.factory = factory

    @contextmanager
    def __call__(self) -> Iterator[Session]:
        session = self.factory()
        try:
            yield session
        finally:
            session.rollback()
            session.close()
