"""Hosts and their edge stores: list them, prefetch a version's chain to one, prune the layers
no clone needs any more, and make sure a linked clone is defined only on a host that holds its
whole chain (docs/edge.md).

With ``edge_root`` unset (the default) edge stores are off: ``host list`` still lists the
driver's hosts, ``host prefetch`` and ``host prune`` are refused, and clone actions take none
of these steps.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from goldfleet.context import Context
from goldfleet.db.tables import Clone, EdgeFeed, Layer, OperationItem, Template, Version
from goldfleet.domain import edge, sites
from goldfleet.domain.model import CloneKind
from goldfleet.domain.names import NAME_RE
from goldfleet.domain.rollout import ItemState
from goldfleet.errors import Conflict
from goldfleet.services.common import audit, chain, get_template, get_version, leases, streams
from goldfleet.store.edge import EdgeStores
from goldfleet.store.layers import LayerInfo

log = logging.getLogger("goldfleet.hosts")

HOST_LEASE_WAIT = 600.0  # seconds a copy or prune waits for another server's on the same host


class HostVersionView(BaseModel):
    template: str
    version: int
    current: bool
    complete: bool  # every layer of the chain is in the host's edge store
    missing_layers: int
    missing_bytes: int


class HostView(BaseModel):
    name: str
    clones: int  # clones goldfleet placed on the host
    edge_store: str | None = None  # the folder; None when edge stores are off
    reachable: bool = False  # the folder exists (the host's disk is mounted there)
    layers: int = 0  # layers held
    bytes: int = 0  # bytes held
    versions: list[HostVersionView] = []
    # the background copies of current versions into this host (docs/edge.md), per template
    feeds: list[dict[str, Any]] = []
    note: str | None = None


class HostsView(BaseModel):
    edge_stores: bool
    edge_root: str | None
    hosts: list[HostView]


class PrefetchView(BaseModel):
    host: str
    template: str
    version: int
    layers: int  # in the chain
    copied: list[str]  # digests copied now, parents first
    bytes_copied: int
    complete: bool


class HostPruneView(BaseModel):
    host: str
    removed: list[str] = []  # digests removed (or, in a dry run, to remove), children first
    bytes_freed: int = 0
    kept: int = 0  # layers the host still holds
    note: str | None = None  # why the host was skipped


class PruneView(BaseModel):
    dry_run: bool
    keep_current: bool
    hosts: list[HostPruneView]


@dataclass(frozen=True)
class PrefetchPlan:
    """What a prefetch will do, decided (and refused) before any byte moves."""

    host: str
    template: str
    version: int
    chain: tuple[str, ...]  # top first
    missing: tuple[str, ...]  # parents first
    missing_bytes: int


def edges_of(ctx: Context) -> EdgeStores:
    if ctx.edges is None:
        raise Conflict(
            "edge stores are off on this server: set edge_root in config.toml (or"
            " GOLDFLEET_EDGE_ROOT) and restart it; see docs/edge.md"
        )
    return ctx.edges


def host_lease(ctx: Context, host: str) -> AbstractContextManager[None]:
    """Copies into a host's edge store and prunes of it, one server at a time (every server
    sharing the database); within a server, EdgeStores' own per-host lock orders threads."""
    return leases.hold(
        ctx, f"host:{host}", wait=HOST_LEASE_WAIT, what=f"the edge store of host {host}"
    )


def check_host(ctx: Context, host: str) -> str:
    return edge.check_host(host, ctx.driver.hosts())


def _chain(s: Session, top: str) -> tuple[str, ...]:
    return tuple(layer.digest for layer in chain(s, top))


# --- reading --------------------------------------------------------------------------------


def host_loads(s: Session) -> Counter[str]:
    """Clones per host, as goldfleet recorded them."""
    return Counter(
        dict(
            s.execute(
                select(Clone.host, func.count()).where(Clone.host.is_not(None)).group_by(Clone.host)
            ).all()
        )
    )


def list_hosts(ctx: Context) -> HostsView:
    """Every host of the driver; with edge stores on, what each holds of every version."""
    hosts = ctx.driver.hosts()
    with ctx.session() as s:
        load = host_loads(s)
        versions = []
        feeds: dict[str, list[dict[str, Any]]] = {}
        if ctx.edges is not None:
            sizes = dict(s.execute(select(Layer.digest, Layer.size)).all())
            rows = s.execute(
                select(Template, Version)
                .join(Version, Version.template_id == Template.id)
                .order_by(Template.name, Version.number)
            ).all()
            versions = [
                (t.name, v.number, t.current_version_id == v.id, _chain(s, v.top_layer))
                for t, v in rows
            ]
            for f in s.scalars(select(EdgeFeed).order_by(EdgeFeed.host, EdgeFeed.template)):
                feeds.setdefault(f.host, []).append(
                    {
                        "template": f.template,
                        "version": f.version,
                        "state": f.state,
                        "done": f.done,
                        "total": f.total,
                        "error": f.error,
                        "updated_at": f.updated_at.isoformat(),
                    }
                )
    views = []
    for host in hosts:
        view = HostView(name=host, clones=load.get(host, 0))
        views.append(view)
        if ctx.edges is None:
            continue
        if NAME_RE.fullmatch(host) is None:
            view.note = "this host's name cannot name a folder: it has no edge store"
            continue
        view.edge_store = str(ctx.edges.folder(host))
        view.feeds = feeds.get(host, [])
        view.reachable = ctx.edges.reachable(host)
        if not view.reachable:
            view.note = "not reachable: mount the host's local disk at this folder"
        held = ctx.edges.held(host)
        view.layers, view.bytes = len(held), sum(held.values())
        for template, number, current, digests in versions:
            missing = ctx.edges.missing(host, digests)
            view.versions.append(
                HostVersionView(
                    template=template,
                    version=number,
                    current=current,
                    complete=not missing,
                    missing_layers=len(missing),
                    missing_bytes=sum(sizes.get(d, 0) for d in missing),
                )
            )
    return HostsView(
        edge_stores=ctx.edges is not None,
        edge_root=str(ctx.edges.root) if ctx.edges is not None else None,
        hosts=views,
    )


# --- prefetch -------------------------------------------------------------------------------


def plan_prefetch(
    ctx: Context, host: str, template: str, version: int | None = None
) -> PrefetchPlan:
    """Check the request and look at what the host lacks; refusals come before any copy."""
    edges = edges_of(ctx)
    host = check_host(ctx, host)
    with ctx.session() as s:
        t = get_template(s, template)
        v = get_version(s, t, version)
        sites.check_version_enabled(t.name, v.number, v.status, "prefetched to a host")
        layers = chain(s, v.top_layer)
        digests = tuple(layer.digest for layer in layers)
        sizes = {layer.digest: layer.size for layer in layers}
        name, number = t.name, v.number
    edges.check_reachable(host)
    missing = tuple(edges.missing(host, digests))
    return PrefetchPlan(
        host=host,
        template=name,
        version=number,
        chain=digests,
        missing=missing,
        missing_bytes=sum(sizes[d] for d in missing),
    )


def run_prefetch(
    ctx: Context,
    plan: PrefetchPlan,
    *,
    actor: str,
    progress: Callable[[int], None] | None = None,
) -> PrefetchView:
    """Copy the layers the host lacks, parents first, each checked before it is committed."""
    with host_lease(ctx, plan.host):
        copied = edges_of(ctx).ensure(plan.host, plan.chain, ctx.layers, progress)
    view = PrefetchView(
        host=plan.host,
        template=plan.template,
        version=plan.version,
        layers=len(plan.chain),
        copied=[info.digest for info in copied],
        bytes_copied=sum(info.size for info in copied),
        complete=True,
    )
    with ctx.session() as s:
        audit.record(
            s,
            actor,
            "host.prefetch",
            plan.host,
            version=f"{plan.template}:v{plan.version}",
            layers_copied=len(copied),
            bytes_copied=view.bytes_copied,
        )
        s.commit()
    return view


def prefetch(
    ctx: Context,
    host: str,
    template: str,
    version: int | None = None,
    *,
    actor: str,
    progress: Callable[[int], None] | None = None,
) -> PrefetchView:
    """``host prefetch HOST TEMPLATE[:VERSION]``: make the version's chain complete there."""
    return run_prefetch(
        ctx, plan_prefetch(ctx, host, template, version), actor=actor, progress=progress
    )


def stream_prefetch(ctx: Context, plan: PrefetchPlan, *, actor: str) -> Iterator[bytes]:
    """The prefetch as JSON lines for an HTTP response (services/streams.py): ``start`` with
    the layers and bytes missing, ``progress`` in bytes copied of those, then ``done`` with the
    result or ``error``."""

    def work(report: streams.Report) -> PrefetchView:
        done = [0]

        def progress(n: int) -> None:
            done[0] += n
            report(done[0], plan.missing_bytes)

        return run_prefetch(ctx, plan, actor=actor, progress=progress)

    start = {
        "host": plan.host,
        "template": plan.template,
        "version": plan.version,
        "layers": len(plan.chain),
        "missing_layers": len(plan.missing),
        "missing_bytes": plan.missing_bytes,
        "total": plan.missing_bytes,
    }
    return streams.stream(start, work, what=f"prefetch to host {plan.host}")


# --- prune ---------------------------------------------------------------------------------


def keep_on(ctx: Context, host: str, keep_current: bool) -> edge.Keep:
    """The chains that must stay on ``host``, read from the database now
    (domain.edge.versions_to_keep): its linked clones' versions, the targets of their actions
    and queued or running items, those of clones not placed yet, and the current versions."""
    with ctx.session() as s:
        here = or_(Clone.host == host, Clone.host.is_(None))
        linked = (Clone.kind == CloneKind.LINKED) & here
        targets: dict[int, set[int]] = {}
        for clone_id, version_id in s.execute(
            select(OperationItem.clone_id, OperationItem.target_version_id)
            .join(Clone, OperationItem.clone_id == Clone.id)
            .where(OperationItem.state.in_([ItemState.QUEUED, ItemState.RUNNING]), linked)
        ):
            if version_id is not None:
                targets.setdefault(clone_id, set()).add(version_id)
        placed = [
            edge.PlacedClone(
                kind=kind,
                host=where,
                version=version_id,
                targets=tuple(targets.get(clone_id, set()) | ({target} if target else set())),
            )
            for clone_id, kind, where, version_id, target in s.execute(
                select(
                    Clone.id, Clone.kind, Clone.host, Clone.version_id, Clone.target_version_id
                ).where(linked)
            )
        ]
        current = s.scalars(
            select(Template.current_version_id).where(Template.current_version_id.is_not(None))
        )
        versions = edge.versions_to_keep(host, placed, current, keep_current=keep_current)
        tops = dict(s.execute(select(Version.id, Version.top_layer)).all())
        parents = dict(s.execute(select(Layer.digest, Layer.parent)).all())
    return edge.keep_chains((tops[v] for v in versions if v in tops), parents)


def prune(
    ctx: Context,
    host: str | None,
    *,
    keep_current: bool = True,
    dry_run: bool = False,
    actor: str,
) -> PruneView:
    """``host prune HOST|--all``: remove from edge stores the layers no clone needs any more.

    One host is refused like a prefetch (unknown 404, not reachable 409); with every host
    (``host`` None) those not reachable are reported with a note and skipped. The chains to
    keep are read again once the host's lock is held (EdgeStores.prune)."""
    edges = edges_of(ctx)
    if host is not None:
        names = [check_host(ctx, host)]
        edges.check_reachable(names[0])
    else:
        names = ctx.driver.hosts()
    views = []
    for name in names:
        view = HostPruneView(host=name)
        views.append(view)
        if NAME_RE.fullmatch(name) is None:
            view.note = "this host's name cannot name a folder: it has no edge store"
            continue
        try:
            with host_lease(ctx, name):
                removed = edges.prune(
                    name, lambda name=name: keep_on(ctx, name, keep_current), dry_run=dry_run
                )
        except Conflict as exc:
            if host is not None:
                raise
            view.note = f"skipped: {exc.message}"
            continue
        view.removed = [digest for digest, _ in removed]
        view.bytes_freed = sum(size for _, size in removed)
        view.kept = len(edges.held(name)) - (len(removed) if dry_run else 0)
        if dry_run:
            continue
        with ctx.session() as s:
            audit.record(
                s,
                actor,
                "host.prune",
                name,
                layers=len(removed),
                bytes=view.bytes_freed,
                keep_current=keep_current,
            )
            s.commit()
    return PruneView(dry_run=dry_run, keep_current=keep_current, hosts=views)


# --- clones on hosts ------------------------------------------------------------------------


class Placer:
    """Hosts for new clones in one claim pass of the runner (edge stores on): the clone counts
    are read once, then counted up as clones are placed, so a batch spreads over the hosts."""

    def __init__(self, ctx: Context, s: Session) -> None:
        self.ctx = ctx
        self.s = s
        self.load: Counter[str] | None = None
        self.chains: dict[int, tuple[str, ...]] = {}
        self.complete: dict[tuple[str, ...], set[str]] = {}  # chain → hosts holding it
        self.unreachable: set[str] | None = None  # hosts whose edge store folder is not there

    def chain_of(self, version_id: int) -> tuple[str, ...]:
        if version_id not in self.chains:
            self.chains[version_id] = _chain(self.s, self.s.get(Version, version_id).top_layer)
        return self.chains[version_id]

    def host_for(self, kind: str, digests: Sequence[str]) -> str:
        """Least-loaded host; for a linked clone, among those that can have an edge store and
        whose edge store is reachable, preferring one that holds the chain
        (domain.edge.choose_host)."""
        if self.load is None:
            self.load = host_loads(self.s)
        hosts = self.ctx.driver.hosts()
        complete: set[str] = set()
        unreachable: set[str] = set()
        if edge.reads_chain(kind):
            hosts = [h for h in hosts if NAME_RE.fullmatch(h)]  # the others have no edge store
            edges = edges_of(self.ctx)
            if self.unreachable is None:
                self.unreachable = {h for h in hosts if not edges.reachable(h)}
            unreachable = self.unreachable
            key = tuple(digests)
            if key not in self.complete:
                self.complete[key] = {
                    h for h in hosts if h not in unreachable and edges.is_complete(h, digests)
                }
            complete = self.complete[key]
        host = edge.choose_host(hosts, self.load, complete, unreachable)
        self.load[host] += 1
        return host


def place_new(ctx: Context, kind: str, digests: Sequence[str]) -> str:
    """A host for one new clone, outside a claim pass."""
    with ctx.session() as s:
        return Placer(ctx, s).host_for(kind, digests)


def prepare_host(ctx: Context, clone: str, host: str, digests: Sequence[str]) -> list[LayerInfo]:
    """Before a linked clone is (re)defined on ``host``: its chain (top first) is made complete
    in the host's edge store, copied now where it lacks layers; returns the layers copied (the
    caller's record puts them in the audit log). Raises, naming the host and the layer, when
    that cannot be done; the caller then changes nothing about the clone."""
    edges = edges_of(ctx)
    host = check_host(ctx, host)
    missing: list[str] = []
    copied: list[LayerInfo] = []
    if not edges.is_complete(host, digests):
        with host_lease(ctx, host):
            copied = edges.ensure(host, digests, ctx.layers)
        if copied:
            log.info(
                "copied %d layers (%d bytes) to the edge store of host %s for clone %s",
                len(copied),
                sum(i.size for i in copied),
                host,
                clone,
            )
        missing = edges.missing(host, digests)
    edge.check_placement(clone, host, missing)
    return copied
