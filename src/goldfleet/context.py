"""The resources a service works with: settings, database, store, driver, clock.

Built once by :mod:`goldfleet.bootstrap` (the composition root, which sits above the services)
and handed to every service function. Nothing here imports a service: the runner and the
checks one service package runs on behalf of another reach a service only through the slots
below, which the bootstrap fills (docs/architecture.md)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from threading import Lock
from typing import Protocol

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from goldfleet.config import Settings
from goldfleet.domain.space import disk_full
from goldfleet.drivers.base import Driver
from goldfleet.store.edge import EdgeStores
from goldfleet.store.layers import LayerStore
from goldfleet.store.qemu import QemuImg
from goldfleet.store.space import free_bytes, full_disk
from goldfleet.store.volumes import VolumeStore


class Clock:
    """Naive UTC time; tests that need to move time replace ``ctx.clock``."""

    def now(self) -> datetime:
        return datetime.now(UTC).replace(tzinfo=None)


class OperationRunner(Protocol):
    """What services and the server need of the operation runner (services/rollouts): start
    and stop it, wake it for new work, wait for an operation to finish."""

    server_id: str

    def start(self, op_id: int | None = None) -> None: ...

    def wait(self, op_id: int, timeout: float | None = None) -> None: ...

    def register(self) -> None: ...

    def start_background(self) -> None: ...

    def shutdown(self) -> None: ...

    def held(self, op_id: int) -> tuple[str, int] | None:
        """While the database cannot record an operation's pause yet: why it is paused, and
        how many of its clones in work went back to the queue (in memory, for now)."""
        ...

    def record_held(self) -> bool:
        """Try now to record what is held in memory; True when nothing is held any more."""
        ...


# a check another service package asks for before a template is changed here (e.g. at a site,
# a template HQ sends may be patched only with the local-patches right); raises to refuse
TemplateGuard = Callable[["Context", str], None]


@dataclass
class Context:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    qemu: QemuImg
    layers: LayerStore
    volumes: VolumeStore
    driver: Driver
    # this process's id among the servers of a database (its ``servers`` row, the owner of the
    # work it claims, the tag of its work files); new at every start
    server_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    # the id of the home it serves, set by ``goldfleet serve`` once it holds the home's lock
    # (goldfleet/homelock.py); None in-process (tests, benchmarks), which serve no home
    home_id: str | None = None
    template_locks: dict[str, Lock] = field(default_factory=dict)
    _locks_guard: Lock = field(default_factory=Lock)
    runner: OperationRunner | None = None  # set by the bootstrap
    clock: Clock = field(default_factory=Clock)
    edges: EdgeStores | None = None  # hosts' edge stores (docs/edge.md); None: off
    template_guards: list[TemplateGuard] = field(default_factory=list)
    # why a version sealed here of a template must wait for validation elsewhere (None: it
    # need not); set by the bootstrap (a site's patch of a template HQ sends: docs/sites.md)
    version_hold: Callable[[Context, str], str | None] | None = None

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: rolled back unless the caller commits."""
        s = self.sessions()
        try:
            yield s
        finally:
            s.rollback()
            s.close()

    def template_lock(self, name: str) -> Lock:
        """Serialises maintenance steps of one template inside this server."""
        with self._locks_guard:
            return self.template_locks.setdefault(name, Lock())

    def disk_full_reason(self, exc: BaseException) -> str | None:
        """``disk full at PLACE: N free`` when ``exc`` was a full disk, else None. PLACE is the
        store for file work, the database's folder for the database (SQLite) or "the
        database server" (whose disk this machine cannot measure)."""
        kind = full_disk(exc)
        if kind is None:
            return None
        if kind == "files":
            return disk_full(str(self.settings.store), free_bytes(self.settings.store))
        if self.engine.dialect.name == "sqlite" and self.engine.url.database:
            folder = Path(self.engine.url.database).resolve().parent
            return disk_full(str(folder), free_bytes(folder))
        return disk_full("the database server", None)

    def held_for_validation(self, template: str) -> str | None:
        """Why a version of ``template`` sealed here must wait for validation, or None."""
        return self.version_hold(self, template) if self.version_hold is not None else None

    def check_template_change(self, template: str) -> None:
        """Ask every registered guard whether ``template`` may be changed here."""
        for guard in self.template_guards:
            guard(self, template)
