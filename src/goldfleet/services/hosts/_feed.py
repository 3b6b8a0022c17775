"""Edge stores fed when a version becomes current (docs/edge.md): each template's current
version's chain is copied, in the background, into every host's edge store, so that the first
rollout onto it does not wait for copies.

A feed is a row per host and template (``edge_feeds``): scheduled (``queued``) when the
template's current version is not the one last fed to that host, then ``copying``, ``done`` or
``failed`` (tried again a minute later). One feed runs at a time per server, a layer at a time
under the host's lease (a rollout's copy into that host waits at most for one layer), at most
``edge_feed_limit`` bytes a second. A feed interrupted (a restart, a crash) goes on from the
layers already copied and from the end of the layer it was copying. A version fed once is not
fed again after a prune: a feed follows a version becoming current, it does not undo a prune.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

from sqlalchemy import select

from goldfleet.context import Context
from goldfleet.db.tables import EdgeFeed, Layer, Template, utcnow
from goldfleet.domain.model import CloneKind
from goldfleet.domain.names import NAME_RE
from goldfleet.errors import GoldfleetError
from goldfleet.services.common import audit, chain
from goldfleet.services.hosts._edge import host_lease

log = logging.getLogger("goldfleet.hosts")

RETRY_SECONDS = 60.0  # a failed feed is tried again after this
PROGRESS_SECONDS = 0.5  # a feed's progress is written at most this often

_running = threading.Lock()  # one feed at a time in this server


def feeding(ctx: Context) -> bool:
    """Edge stores on, and feeding on (``edge_feed``; by default at a site, not at hq)."""
    if ctx.edges is None:
        return False
    on = ctx.settings.edge_feed
    return ctx.settings.role == "site" if on is None else on


def _schedule(ctx: Context) -> None:
    """A feed for every host whose row does not name its template's current version."""
    hosts = [h for h in ctx.driver.hosts() if NAME_RE.fullmatch(h)]
    with ctx.session() as s:
        currents = [
            (t.name, t.current_version)
            for t in s.scalars(select(Template).where(Template.current_version_id.is_not(None)))
            if t.kind == CloneKind.LINKED
        ]
        rows = {(f.host, f.template): f for f in s.scalars(select(EdgeFeed))}
        changed = False
        for name, v in currents:
            total = sum(x.size for x in chain(s, v.top_layer))
            for host in hosts:
                f = rows.get((host, name))
                if f is not None and f.top_layer == v.top_layer:
                    continue
                if f is None:
                    f = EdgeFeed(host=host, template=name)
                    s.add(f)
                f.version, f.top_layer, f.state = v.number, v.top_layer, "queued"
                f.done, f.total, f.copied, f.error, f.updated_at = 0, total, 0, None, utcnow()
                changed = True
        if changed:
            s.commit()


def _next(ctx: Context) -> tuple[str, str] | None:
    retry = utcnow() - timedelta(seconds=RETRY_SECONDS)
    with ctx.session() as s:
        for f in s.scalars(select(EdgeFeed).order_by(EdgeFeed.updated_at)):
            if f.state in ("queued", "copying") or (f.state == "failed" and f.updated_at < retry):
                return f.host, f.template
    return None


def feed_edges(ctx: Context) -> None:
    """Called by the runner loop: schedule feeds of newly current versions, and start the
    next feed in the background if none runs here."""
    if not feeding(ctx) or _running.locked():
        return
    _schedule(ctx)
    todo = _next(ctx)
    if todo is not None and _running.acquire(blocking=False):
        threading.Thread(target=_run, args=(ctx, *todo), name="goldfleet-feed").start()


def _set(ctx: Context, host: str, template: str, top: str, **values: object) -> bool:
    """Update the feed's row if it still feeds ``top`` (False: a newer version took over)."""
    with ctx.session() as s:
        f = s.get(EdgeFeed, (host, template))
        if f is None or f.top_layer != top:
            return False
        for k, v in values.items():
            setattr(f, k, v)
        f.updated_at = utcnow()
        s.commit()
        return True


def _run(ctx: Context, host: str, template: str) -> None:
    try:
        _feed(ctx, host, template)
    except Exception:  # a thread's failure must not be silent
        log.exception("the feed of %s to host %s failed", template, host)
    finally:
        _running.release()


def _feed(ctx: Context, host: str, template: str) -> None:
    edges = ctx.edges
    assert edges is not None
    with ctx.session() as s:
        f = s.get(EdgeFeed, (host, template))
        if f is None:
            return
        top, number = f.top_layer, f.version
        layers = chain(s, top)
        digests = [x.digest for x in layers]
        sizes = {x.digest: x.size for x in layers}
        parents = {x.digest: x.parent for x in layers}
        known = s.get(Layer, top) is not None
    if not known:
        _set(ctx, host, template, top, state="failed", error="the version is gone")
        return
    copied, resumed = 0, 0
    try:
        edges.check_reachable(host)
        missing = edges.missing(host, digests)
        done = sum(sizes[d] for d in digests if d not in missing)
        if not _set(ctx, host, template, top, state="copying", done=done, error=None):
            return
        last = [time.monotonic()]
        moved = [0]

        def progress(n: int) -> None:
            moved[0] += n
            if time.monotonic() - last[0] >= PROGRESS_SECONDS:
                last[0] = time.monotonic()
                _set(ctx, host, template, top, done=done + moved[0], copied=copied + moved[0])

        for digest in missing:
            with host_lease(ctx, host):
                edges.resumed.pop((host, digest), None)
                info = edges.feed_layer(
                    host,
                    ctx.layers.path(digest),
                    digest,
                    parents[digest],
                    progress,
                    limit=ctx.settings.edge_feed_limit,
                )
            from_partial = edges.resumed.pop((host, digest), 0)
            if info is not None:  # None: the host held it (checked) when its turn came
                resumed += from_partial
                copied += info.size - from_partial
            done += sizes[digest]
            moved[0] = 0
            _set(ctx, host, template, top, done=done, copied=copied)
    except (GoldfleetError, OSError) as exc:
        message = exc.message if isinstance(exc, GoldfleetError) else f"{exc.strerror}: {exc}"
        _set(ctx, host, template, top, state="failed", error=message)
        log.warning("feeding %s v%s to host %s failed: %s", template, number, host, message)
        return
    edges.missing(host, digests)  # the chain is known complete now
    if _set(ctx, host, template, top, state="done", done=done, copied=copied):
        with ctx.session() as s:
            audit.record(
                s,
                "goldfleet",
                "host.feed",
                host,
                version=f"{template}:v{number}",
                layers_copied=len(missing),
                bytes_copied=copied,
                resumed_from=resumed,
            )
            s.commit()
