"""Wiring: settings → database, store, driver and operation runner. The one place that builds
them, called by ``goldfleet serve``, the demo and the tests; nothing is built at import time."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from threading import Lock

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from goldfleet.config import Settings
from goldfleet.db.engine import make_engine, migrate
from goldfleet.drivers.base import Driver
from goldfleet.errors import InvalidInput
from goldfleet.store.edge import EdgeStores
from goldfleet.store.layers import LayerStore
from goldfleet.store.qemu import Limits, QemuImg
from goldfleet.store.volumes import VolumeStore


class Clock:
    """Naive UTC time; tests that need to move time replace ``ctx.clock``."""

    def now(self) -> datetime:
        return datetime.now(UTC).replace(tzinfo=None)


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
    runner: object | None = None  # services.operations.Runner, set by bootstrap
    clock: Clock = field(default_factory=Clock)
    edges: EdgeStores | None = None  # hosts' edge stores (docs/edge.md); None: off

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


def make_driver(settings: Settings, sessions: sessionmaker[Session]) -> Driver:
    if settings.driver == "sim":
        from goldfleet.drivers.sim import SimDriver, SimPlan

        return SimDriver(
            sessions, hosts=settings.sim_hosts, plan=SimPlan.from_json(settings.sim_plan)
        )
    if settings.driver == "libvirt":
        try:
            from goldfleet.drivers.libvirt import LibvirtDriver
        except ImportError as exc:
            raise InvalidInput(str(exc)) from None

        return LibvirtDriver(uris=settings.libvirt_uris)
    raise InvalidInput(f"driver {settings.driver!r} is not available; use 'sim' or 'libvirt'")


def bootstrap(settings: Settings, *, run_migrations: bool = True) -> Context:
    if settings.edge_root is not None and not settings.edge_root.is_absolute():
        raise InvalidInput(
            f"edge_root {str(settings.edge_root)!r} is not an absolute path; VMs name their"
            " layers by absolute path (docs/edge.md)"
        )
    engine = make_engine(settings.db_url)
    if run_migrations:
        migrate(engine)
    sessions = sessionmaker(engine, expire_on_commit=False)
    qemu = QemuImg()
    limits = Limits(cpu_seconds=settings.inspect_cpu_seconds, address_space=settings.inspect_memory)
    server_id = str(uuid.uuid4())
    layers = LayerStore(settings.store, qemu, limits, owner=server_id)
    layers.ensure()
    volumes = VolumeStore(settings.store, qemu, layers)
    volumes.ensure()
    ctx = Context(
        settings=settings,
        engine=engine,
        sessions=sessions,
        qemu=qemu,
        layers=layers,
        volumes=volumes,
        driver=make_driver(settings, sessions),
        server_id=server_id,
        edges=EdgeStores(settings.edge_root, qemu, limits) if settings.edge_root else None,
    )
    from goldfleet.services.operations import Runner

    ctx.runner = Runner(ctx)
    return ctx
