"""The composition root: settings → database, store, driver, and the operation runner with the
work each service package hands it. The one place that builds them, called by ``goldfleet
serve``, the demo and the tests; nothing is built at import time.

It sits above the service packages (docs/architecture.md): the runner (services/rollouts) knows
no other service; here it is given the clone work of services/fleet and the periodic tasks of
fleet, pools and distribution, and the catalog is given distribution's template guard."""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session, sessionmaker

from goldfleet.config import Settings
from goldfleet.context import Clock, Context
from goldfleet.db.engine import make_engine, migrate
from goldfleet.drivers.base import Driver
from goldfleet.errors import InvalidInput
from goldfleet.services import clusters, distribution, fleet, guests, hosts, pools, rollouts
from goldfleet.store.edge import EdgeStores
from goldfleet.store.layers import LayerStore
from goldfleet.store.qemu import Limits, QemuImg
from goldfleet.store.volumes import VolumeStore

__all__ = ["Clock", "Context", "bootstrap", "make_driver"]


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


def _driver_sessions(settings: Settings, sessions: sessionmaker[Session]) -> sessionmaker[Session]:
    """The sim driver's simulated hypervisor commits without waiting for the disk (one VM
    defined per clone; goldfleet's own commit that follows, which records the clone, carries
    it to disk: db/engine.py ``make_engine``)."""
    if settings.driver != "sim":
        return sessions
    return sessionmaker(make_engine(settings.db_url, durable=False), expire_on_commit=False)


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
        driver=make_driver(settings, _driver_sessions(settings, sessions)),
        server_id=server_id,
        edges=EdgeStores(settings.edge_root, qemu, limits) if settings.edge_root else None,
    )
    ctx.template_guards.append(distribution.check_local_change)
    ctx.version_hold = distribution.held_for_validation
    periodic = [
        rollouts.Periodic("power", settings.reconcile_seconds, fleet.reconcile_power),
        rollouts.Periodic("pools", settings.reconcile_seconds, pools.reconcile_pools),
        # at a site: scheduled syncs and versions reaching their publish time (a no-op at HQ)
        rollouts.Periodic("site", 1.0, distribution.site_tick, reconcile=False),
        # edge stores fed with each newly current version (on at a site by default)
        rollouts.Periodic("edge-feed", 1.0, hosts.feed_edges, reconcile=False),
        # clusters' scheduled update syncs (docs/hosts.md)
        rollouts.Periodic("cluster-sync", 1.0, clusters.sync_tick, reconcile=False),
        # clusters' rolling updates, driven in a thread, each step recorded (docs/host-updates.md)
        rollouts.Periodic("cluster-update", 1.0, clusters.update_tick, reconcile=False),
    ]
    # guest tool updates: each open request advanced by its next step
    periodic.append(rollouts.Periodic("agent-update", 1.0, guests.agent_tick, reconcile=False))
    if settings.compliance_seconds > 0:  # guests' agents read, quarantine evaluated
        periodic.append(rollouts.Periodic("compliance", settings.compliance_seconds, guests.tick))
    ctx.runner = rollouts.Runner(ctx, fleet.CloneWork(ctx), periodic=periodic)
    return ctx
