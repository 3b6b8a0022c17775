"""Sites, site side: joining HQ, the sync (on demand and on a schedule), when a received
version becomes current here, and publishing a locally sealed version to HQ.

The sync reads HQ's catalog and, per template, downloads the layers this site lacks
(services/transfer.py: Range resumes, sha256 while receiving, bandwidth limit) into dot-named
work files, then hands them, version by version and oldest first, to the bundle import's
install step (the same checks as any layer from outside, parents sealed first, the version
added in one transaction, everything that step made removed on a refusal; the versions before
it stay). A version is added only once its whole chain is verified here; it becomes current
when HQ says so (at once, at the assignment's publish time, or once every site verified it).
One sync runs at a time on a site, across all its servers (a claim in the database, held by a
live server), and never while the site applies the same template.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, Field, ValidationError, field_validator
from sqlalchemy import false, or_, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from goldfleet import crashpoints
from goldfleet.context import Context
from goldfleet.db.tables import (
    Layer,
    Operation,
    OperationItem,
    Server,
    Template,
    Upstream,
    Version,
)
from goldfleet.domain import sites as rules
from goldfleet.domain.model import TemplateStatus, VersionStatus
from goldfleet.domain.names import DIGEST_PATTERN, NAME_PATTERN
from goldfleet.domain.rollout import ACTIVE
from goldfleet.domain.rules import chain_of
from goldfleet.errors import Conflict, Forbidden, GoldfleetError, InvalidInput, NotFound
from goldfleet.services.common import audit, chain, get_template, get_version, streams
from goldfleet.services.distribution import _bundles as bundles
from goldfleet.services.distribution import _transfer as transfer
from goldfleet.services.distribution._sites import LOCAL_PATCHES, SyncReport, VersionState
from goldfleet.services.distribution._transfer import TokenBucket, UpstreamError, UpstreamRefused
from goldfleet.store.files import Abandoned

log = logging.getLogger("goldfleet.upstream")

SITE_TOKEN_FILE = "site.token"
UPSTREAM_FILE = "upstream.json"
REPORT_SECONDS = 1.0
FINISH_ATTEMPTS = 3
MAX_CATALOG = 64 << 20  # bytes of HQ's catalog this site reads at most
LINK_ID = 1
_PROCESS_ID = str(uuid.uuid4())  # owner of syncs started where no runner is registered

_sync_lock = threading.Lock()  # one sync per process; the database claim covers the others


class SyncResult(BaseModel):
    templates: list[str]
    versions_added: dict[str, list[int]]
    activated: dict[str, int]  # template -> version made current here
    pending: dict[str, dict[str, Any]]  # template -> {version, at}: current at its publish time
    layers_downloaded: int
    bytes_downloaded: int  # body bytes received from HQ, retries and re-fetches included
    failed: dict[str, str]  # template -> reason
    skipped: dict[str, str]  # template -> why it waits (being applied, in maintenance)
    # template -> versions sealed here that HQ has validated since: recognised, no bytes
    validated: dict[str, list[int]] = {}
    seeded: list[str] = []  # layers taken from the store's seed/ folder (checked), not fetched
    rejected: list[str] = []  # layer files here whose bytes did not match: moved aside, fetched
    limit: float | None = None  # the bandwidth limit it ran under, bytes a second


class UpstreamView(BaseModel):
    role: str
    joined: bool
    upstream_url: str | None
    site: str | None
    schedule: str | None  # cron expression, UTC
    limit: int | None  # bytes a second of every sync, unless a sync names its own; None: none
    next_sync_at: datetime | None
    syncing_since: datetime | None
    last_sync_at: datetime | None  # the last attempt, successful or not
    last_error: str | None  # the last attempt's problem; None when it had none
    last_success_at: datetime | None  # the last sync that ended without a problem
    rights: dict[str, bool]
    templates: list[str]  # the templates HQ sends this site
    pending: dict[str, dict[str, Any]]
    # template -> versions sealed here waiting for HQ's validation (pending-validation)
    awaiting_validation: dict[str, list[int]] = {}


class _CatalogLayer(BaseModel):
    digest: str = Field(pattern=DIGEST_PATTERN)
    parent: str | None = Field(pattern=DIGEST_PATTERN)
    size: int = Field(ge=0)
    virtual_size: int = Field(ge=0)


class _CatalogVersion(BaseModel):
    number: int = Field(ge=1)
    top_layer: str = Field(pattern=DIGEST_PATTERN)
    note: str = Field(default="", max_length=10_000)


class _CatalogEntry(BaseModel):
    template: str = Field(pattern=NAME_PATTERN)
    kind: str
    outline: dict[str, list[int]]
    current: int | None
    hq_current: int | None = None
    activate: str = "on-verify"
    publish_at: datetime | None = None  # UTC; an offset is converted
    versions: list[_CatalogVersion] = Field(max_length=100_000)
    layers: list[_CatalogLayer] = Field(max_length=100_000)

    @field_validator("publish_at")
    @classmethod
    def _utc(cls, at: datetime | None) -> datetime | None:
        return at if at is None or at.tzinfo is None else at.astimezone(UTC).replace(tzinfo=None)


class _Catalog(BaseModel):
    """What HQ says this site receives: checked before anything is done with it."""

    site: str
    rights: dict[str, bool] = {}
    templates: list[_CatalogEntry] = Field(max_length=10_000)


class PublishResult(BaseModel):
    template: str
    version: int
    layers_sent: int
    bytes_sent: int
    already_at_hq: bool


# --- the link to HQ -----------------------------------------------------------------------


def _write_private(path: Path, text: str) -> None:
    work = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(work, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(work, path)


def _require_site(ctx: Context, what: str) -> None:
    if ctx.settings.role != "site":
        raise Conflict(f'this server runs as hq; {what} needs role = "site" (GOLDFLEET_ROLE=site)')


def _stored(ctx: Context) -> dict[str, Any]:
    path = ctx.settings.home / UPSTREAM_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def _upstream(ctx: Context) -> tuple[str, str]:
    _require_site(ctx, "pulling from HQ")
    url = ctx.settings.upstream_url or _stored(ctx).get("url", "")
    token_file = ctx.settings.home / SITE_TOKEN_FILE
    if not url or not token_file.exists():
        raise Conflict("this site has not joined HQ yet: goldfleet site join URL --token T")
    return url.rstrip("/"), token_file.read_text().strip()


def _http(url: str, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=url,
        headers={"Authorization": f"Bearer {token}"},
        timeout=httpx.Timeout(60.0, connect=10.0),
    )


def _answer(http: httpx.Client, r: httpx.Response, path: str) -> Any:
    """HQ's answer as JSON, or the error HQ gave, as the same kind of error here."""
    if r.status_code < 400:
        return r.json() if r.content else None
    message = transfer.error_message(r) or r.reason_phrase
    if r.status_code == 401:
        raise UpstreamRefused(f"HQ at {http.base_url} refused this site's token (revoked or wrong)")
    kinds = {403: Forbidden, 404: NotFound, 409: Conflict, 422: InvalidInput}
    if r.status_code in kinds:
        raise kinds[r.status_code](f"HQ: {message}")
    raise UpstreamError(f"HQ answered {r.status_code} to {path}: {message[:300]}")


def _call(http: httpx.Client, method: str, path: str, **kw: Any) -> Any:
    try:
        r = http.request(method, path, **kw)
    except httpx.HTTPError as exc:
        raise UpstreamError(f"HQ at {http.base_url} cannot be reached: {exc}") from None
    return _answer(http, r, path)


def _catalog(http: httpx.Client) -> dict[str, Any]:
    """HQ's catalog for this site, read up to MAX_CATALOG bytes and checked field by field."""
    try:
        with http.stream("GET", "/sync/catalog") as r:
            if r.status_code >= 400:
                return _answer(http, r, "/sync/catalog")
            body = bytearray()
            for chunk in r.iter_bytes():
                body += chunk
                if len(body) > MAX_CATALOG:
                    raise UpstreamError(
                        f"HQ at {http.base_url} sent a catalog larger than"
                        f" {MAX_CATALOG >> 20} MiB; refused"
                    )
    except httpx.HTTPError as exc:
        raise UpstreamError(f"HQ at {http.base_url} cannot be reached: {exc}") from None
    try:
        return _Catalog.model_validate_json(bytes(body)).model_dump(mode="json")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise UpstreamError(
            f"HQ at {http.base_url} sent a catalog this site cannot read ({where}:"
            f" {first['msg']}); nothing was changed"
        ) from None


def _link(s: Any) -> Upstream:
    link = s.get(Upstream, LINK_ID)
    if link is None:
        try:
            s.add(Upstream(id=LINK_ID, rights={}, managed={}, pending={}))
            s.commit()
        except IntegrityError:  # another server made it first
            s.rollback()
        link = s.get(Upstream, LINK_ID)
    return link


def join(ctx: Context, url: str, token: str, *, actor: str) -> dict[str, str]:
    """Store HQ's URL and this site's token after HQ accepted the token."""
    _require_site(ctx, "joining an HQ")
    if not url.startswith(("http://", "https://")):
        raise InvalidInput(f"{url!r} is not an http(s) URL")
    url = url.rstrip("/")
    with _http(url, token) as http:
        answer = _catalog(http)
    _write_private(ctx.settings.home / SITE_TOKEN_FILE, token + "\n")
    _write_private(
        ctx.settings.home / UPSTREAM_FILE, json.dumps({"url": url, "site": answer["site"]})
    )
    with ctx.session() as s:
        _remember(s, answer)
        audit.record(s, actor, "site.join", url, site=answer["site"])
        s.commit()
    return {"upstream_url": url, "site": answer["site"]}


def _remember(s: Any, answer: dict[str, Any]) -> None:
    """What HQ says of this site: its rights and the templates it sends."""
    link = _link(s)
    link.rights = {LOCAL_PATCHES: bool(answer.get("rights", {}).get(LOCAL_PATCHES))}
    link.managed = {e["template"]: e.get("hq_current") for e in answer["templates"]}


def status(ctx: Context) -> UpstreamView:
    stored = _stored(ctx)
    joined = (ctx.settings.home / SITE_TOKEN_FILE).exists()
    with ctx.session() as s:
        link = _link(s)
        return UpstreamView(
            role=ctx.settings.role,
            joined=joined,
            upstream_url=ctx.settings.upstream_url or stored.get("url"),
            site=stored.get("site"),
            schedule=link.schedule,
            limit=link.sync_limit,
            next_sync_at=link.next_sync_at,
            syncing_since=link.sync_started_at if link.sync_owner else None,
            last_sync_at=link.last_sync_at,
            last_error=link.last_error,
            last_success_at=link.last_success_at,
            rights={LOCAL_PATCHES: bool((link.rights or {}).get(LOCAL_PATCHES))},
            templates=sorted(link.managed or {}),
            pending=dict(link.pending or {}),
            awaiting_validation=_awaiting_validation(s),
        )


def _awaiting_validation(s: Any) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for name, number in s.execute(
        select(Template.name, Version.number)
        .join(Version, Version.template_id == Template.id)
        .where(Version.status == VersionStatus.PENDING_VALIDATION)
        .order_by(Template.name, Version.number)
    ):
        out.setdefault(name, []).append(number)
    return out


_KEEP: Any = object()  # set_schedule: leave this setting as it is


def set_schedule(
    ctx: Context, schedule: str | None = _KEEP, *, limit: int | None = _KEEP, actor: str
) -> UpstreamView:
    """Sync on ``schedule`` (``daily [HH:MM]``, ``weekly DAY [HH:MM]`` or cron, UTC; None: only on
    demand) and/or cap every sync at ``limit`` bytes a second (None: no cap)."""
    _require_site(ctx, "a sync schedule")
    if schedule is _KEEP and limit is _KEEP:
        raise InvalidInput("say what to change: a schedule, a bandwidth limit, or both")
    if limit is not _KEEP and limit is not None and limit <= 0:
        raise InvalidInput("a bandwidth limit must be larger than zero (or none)")
    cron = None if schedule is _KEEP or schedule is None else rules.parse_schedule(schedule)
    with ctx.session() as s:
        link = _link(s)
        changed: dict[str, Any] = {}
        if schedule is not _KEEP:
            link.schedule = changed["schedule"] = cron
            link.next_sync_at = None if cron is None else rules.next_sync(cron, ctx.clock.now())
        if limit is not _KEEP:
            link.sync_limit = changed["limit"] = limit
        audit.record(s, actor, "site.schedule", "upstream", **changed)
        s.commit()
    return status(ctx)


def check_local_change(ctx: Context, template: str) -> None:
    """At a site, a template HQ sends may be patched here only with the local-patches right."""
    if ctx.settings.role != "site":
        return
    with ctx.session() as s:
        link = s.get(Upstream, LINK_ID)
        if link is None or template not in (link.managed or {}):
            return
        if not (link.rights or {}).get(LOCAL_PATCHES):
            raise Forbidden(
                f"template {template} comes from HQ and this site has no {LOCAL_PATCHES} right:"
                " patch it at HQ, or ask HQ for the right (goldfleet site rights SITE"
                " --local-patches at HQ, then goldfleet site sync here)"
            )


def held_for_validation(ctx: Context, template: str) -> str | None:
    """At a site, a version sealed here of a template HQ sends waits for HQ's validation (Dell
    Wyse WSM's rule for a patch of an HQ-managed image); a template local to the site does not
    wait. Returns why it waits, or None."""
    if ctx.settings.role != "site":
        return None
    with ctx.session() as s:
        link = s.get(Upstream, LINK_ID)
        if link is None or template not in (link.managed or {}):
            return None
    return (
        f"template {template} comes from HQ: a version sealed here waits for HQ's validation;"
        f" send it with: goldfleet template publish {template}"
    )


# --- one sync at a time -------------------------------------------------------------------


def _me(ctx: Context) -> str:
    return getattr(ctx.runner, "server_id", None) or _PROCESS_ID


def _claimable(ctx: Context, now: datetime, *, own_is_stale: bool) -> Any:
    """The site's sync claim may be taken: nobody holds it, its holder is no live server, or
    (``own_is_stale``: no sync of this process runs) it is this server's own, left by a sync
    that ended without releasing it."""
    alive = select(Server.id).where(
        Server.heartbeat_at >= now - timedelta(seconds=ctx.settings.lease_seconds)
    )
    mine = Upstream.sync_owner == _me(ctx) if own_is_stale else false()
    return or_(Upstream.sync_owner.is_(None), Upstream.sync_owner.not_in(alive), mine)


def _claim(ctx: Context) -> str:
    """Take the site's sync claim, or refuse: a claim held by a live server is its own. The
    caller holds ``_sync_lock``: a claim this process still holds is then left over."""
    me, now = _me(ctx), ctx.clock.now()
    with ctx.session() as s:
        _link(s)
        taken = s.execute(
            update(Upstream)
            .where(
                Upstream.id == LINK_ID,
                _claimable(ctx, now, own_is_stale=True),
            )
            .values(sync_owner=me, sync_started_at=now)
        ).rowcount
        s.commit()
        if taken != 1:
            since = s.get(Upstream, LINK_ID).sync_started_at
            raise Conflict(
                f"a sync is already running on this site (since {since:%Y-%m-%d %H:%M:%S} UTC);"
                " wait for it to finish: goldfleet site status"
            )
    return me


def _finish(ctx: Context, me: str, problem: str | None) -> None:
    """Release the claim; plan the next sync: a retry after a problem, else the schedule.
    Tried a few times (a busy database); a claim still not released is taken over by this
    server's next sync or scheduled tick (:func:`_claimable`)."""
    for attempt in range(FINISH_ATTEMPTS):
        try:
            now = ctx.clock.now()
            with ctx.session() as s:
                link = _link(s)
                if link.sync_owner == me:
                    link.sync_owner = None
                link.last_sync_at, link.last_error = now, problem
                if not problem:
                    link.last_success_at = now
                if problem:
                    link.next_sync_at = now + timedelta(seconds=ctx.settings.sync_retry_seconds)
                elif link.schedule:
                    link.next_sync_at = rules.next_sync(link.schedule, now)
                else:
                    link.next_sync_at = None
                s.commit()
            return
        except SQLAlchemyError as exc:
            log.warning("could not release the sync claim (attempt %d): %s", attempt + 1, exc)
            time.sleep(0.5 * (attempt + 1))
    log.error("the sync claim was not released; the next sync of this server takes it over")


def sync(
    ctx: Context,
    *,
    limit: float | None = _KEEP,
    actor: str,
    progress: streams.Report | None = None,
) -> SyncResult:
    """Pull every assigned template's versions from HQ; one sync at a time. ``limit``: bytes a
    second, None for none; by default the site's own limit (:func:`set_schedule`).
    ``progress`` is told the layer bytes received so far and the bytes this sync must fetch."""
    url, token = _upstream(ctx)
    if limit is _KEEP:
        with ctx.session() as s:
            limit = _link(s).sync_limit
    if not _sync_lock.acquire(blocking=False):
        raise Conflict("a sync is already running on this site; wait for it to finish")
    try:
        me = _claim(ctx)
        problem: str | None = "the sync stopped unexpectedly"
        try:
            with _http(url, token) as http:
                result = _sync(ctx, http, TokenBucket(limit), actor, progress)
                result.limit = limit
            problem = "; ".join(
                [f"{k}: {v}" for k, v in {**result.failed, **result.skipped}.items()]
            )
            return result
        except GoldfleetError as exc:
            problem = exc.message
            raise
        finally:
            _finish(ctx, me, problem or None)
    finally:
        _sync_lock.release()


def recover_sync(ctx: Context, abandoned: Abandoned) -> list[str]:
    """After a crash: a sync claim left in the link is a sync that was under way (its versions
    up to the kill are stored, the rest and their activation are not). It is run again at once
    by the schedule's tick, as a failed sync is, so that what it was asked for is completed
    without anyone asking again."""
    if ctx.settings.role != "site":
        return []
    with ctx.session() as s:
        link = s.get(Upstream, LINK_ID)
        if link is None or link.sync_owner is None or not abandoned(link.sync_owner):
            return []  # no sync was under way, or a live server's still is
        now = ctx.clock.now()
        link.sync_owner = None
        link.last_error = "the sync was interrupted (the server stopped); it runs again now"
        link.next_sync_at = now
        s.commit()
    return ["the sync interrupted by the crash runs again now"]


def site_tick(ctx: Context) -> None:
    """Called by the runner loop: make due versions current, start a due sync."""
    if ctx.settings.role != "site":
        return
    activate_due(ctx)
    now = ctx.clock.now()
    with ctx.session() as s:
        due = s.scalar(
            select(Upstream.id).where(
                Upstream.id == LINK_ID,
                Upstream.next_sync_at.is_not(None),
                Upstream.next_sync_at <= now,
                _claimable(ctx, now, own_is_stale=not _sync_lock.locked()),
            )
        )
    if due is None or _sync_lock.locked():
        return
    if not (ctx.settings.home / SITE_TOKEN_FILE).exists():
        return
    threading.Thread(target=_background_sync, args=(ctx,), name="goldfleet-sync").start()


def _background_sync(ctx: Context) -> None:
    try:
        r = sync(ctx, actor="schedule")
        log.info("scheduled sync: added %s, %s bytes", r.versions_added, r.bytes_downloaded)
    except GoldfleetError as exc:
        log.warning("scheduled sync failed: %s", exc.message)
    except Exception:
        log.exception("scheduled sync failed")


# --- the sync -----------------------------------------------------------------------------


class _Reporter:
    """Per-version states, sent to HQ at most once a second (HQ down: kept for the next one);
    the bytes received of the layers this sync must fetch, told to ``progress``."""

    def __init__(self, http: httpx.Client, progress: streams.Report | None) -> None:
        self.http = http
        self.states: dict[str, VersionState] = {}
        self.sent_at = 0.0
        self.progress = progress
        self.total = 0  # bytes of the layers this sync must fetch
        self.received: dict[str, int] = {}  # digest -> bytes held so far

    def moved(self, digest: str, held: int) -> None:
        self.received[digest] = held
        if self.progress is not None:
            done = sum(self.received.values())
            self.progress(done, max(done, self.total))

    def send(self, force: bool = False) -> None:
        if not force and time.monotonic() - self.sent_at < REPORT_SECONDS:
            return
        self.sent_at = time.monotonic()
        body = SyncReport(states=self.states).model_dump()
        try:
            self.http.post("/sync/report", json=body)
        except httpx.HTTPError as exc:
            log.warning("could not report to HQ: %s", exc)


def _busy(ctx: Context, name: str) -> str | None:
    """Why template ``name`` must not change here now, if it must not."""
    with ctx.session() as s:
        t = s.scalar(select(Template).where(Template.name == name))
        if t is None:
            return None
        if t.status != TemplateStatus.READY:
            return f"template {name} is in {t.status} here; it syncs after that"
        op_id = s.scalar(
            select(Operation.id)
            .join(OperationItem, OperationItem.operation_id == Operation.id)
            .join(Version, OperationItem.target_version_id == Version.id)
            .where(
                Version.template_id == t.id,
                Operation.status.in_(list(ACTIVE)),
                OperationItem.state.in_(["queued", "running"]),
            )
            .limit(1)
        )
    if op_id is not None:
        return f"operation {op_id} is applying template {name} here; it syncs after that"
    return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, GoldfleetError):
        return exc.message
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            "the disk of this site's store is full; the versions it could not hold were not"
            " added (nothing of them was activated) and their partial files were removed; free"
            " space and sync again"
        )
    return f"{type(exc).__name__}: {exc}"


def _held(ctx: Context, digests: list[str], result: SyncResult) -> set[str]:
    """The layers this site holds and may build on without fetching them: a row in the
    catalog and a file whose bytes hash to its digest (hashed once per file and server, then
    known by its size, time and inode). A file that does not match is moved aside into the
    store's ``rejected/`` and fetched again."""
    with ctx.session() as s:
        rows = {d for d in digests if s.get(Layer, d) is not None}
    held = set()
    for d in sorted(rows):
        checked = ctx.layers.check_file(d)
        if checked == "ok":
            held.add(d)
        elif checked == "rejected":
            result.rejected.append(d)
    return held


def _sync(
    ctx: Context,
    http: httpx.Client,
    bucket: TokenBucket,
    actor: str,
    progress: streams.Report | None,
) -> SyncResult:
    answer = _catalog(http)
    with ctx.session() as s:
        _remember(s, answer)
        s.commit()
    reporter = _Reporter(http, progress)
    sizes = {x["digest"]: x["size"] for e in answer["templates"] for x in e["layers"]}
    result = SyncResult(
        templates=[],
        versions_added={},
        activated={},
        pending={},
        layers_downloaded=0,
        bytes_downloaded=0,
        failed={},
        skipped={},
    )
    held = _held(ctx, list(sizes), result)  # grows as the templates' versions are installed
    reporter.total = sum(
        size
        for digest, size in sizes.items()
        if digest not in held and not ctx.layers.seed_path(digest).is_file()
    )
    for entry in answer["templates"]:
        name = entry["template"]
        result.templates.append(name)
        busy = _busy(ctx, name)
        if busy:
            result.skipped[name] = busy
            continue
        works: dict[str, Path] = {}
        try:
            _sync_template(ctx, http, bucket, entry, held, works, reporter, result, actor)
        except (GoldfleetError, OSError) as exc:
            for w in works.values():
                w.unlink(missing_ok=True)
            message = _reason(exc)
            result.failed[name] = message
            for key, st in reporter.states.items():
                if key.startswith(f"{name}:") and st.state != "verified":
                    reporter.states[key] = VersionState(
                        state="failed", done=st.done, total=st.total, reason=message
                    )
            log.warning("sync of %s failed: %s", name, message)
            if isinstance(exc, UpstreamRefused):
                break
        reporter.send(force=True)
    if any(result.versions_added.values()):
        try:  # HQ now knows what this site verified: the version to make current may be newer
            answer = _catalog(http)
        except GoldfleetError as exc:
            log.warning("could not read HQ's catalog again: %s", exc.message)
    for entry in answer["templates"]:
        if entry["template"] not in result.skipped:  # a failed one may have added versions
            _activate(ctx, entry, result, actor)
    _mark_current(ctx, reporter)
    reporter.send(force=True)
    with ctx.session() as s:
        audit.record(
            s,
            actor,
            "site.sync",
            "upstream",
            bytes=result.bytes_downloaded,
            added=result.versions_added,
            activated=result.activated,
            validated=result.validated,
            seeded=result.seeded,
            rejected=result.rejected,
            failed=result.failed,
            skipped=result.skipped,
        )
        s.commit()
    return result


def _manifest(entry: dict[str, Any], held: set[str]) -> bundles.Manifest:
    """The catalog entry as a bundle manifest: the install step's checks apply as they are.
    It names no current version: the site decides that itself (:func:`_activate`)."""
    body = {
        "format": bundles.FORMAT,
        "template": entry["template"],
        "kind": entry["kind"],
        "outline": entry["outline"],
        "current": None,
        "since": None,
        "policy_only": False,
        "versions": entry["versions"],
        "layers": [
            {k: x[k] for k in ("digest", "parent", "size", "virtual_size")}
            | {"included": x["digest"] not in held}
            for x in entry["layers"]
        ],
    }
    return bundles.parse_manifest(json.dumps(body).encode())


def _sync_template(
    ctx: Context,
    http: httpx.Client,
    bucket: TokenBucket,
    entry: dict[str, Any],
    held: set[str],
    works: dict[str, Path],
    reporter: _Reporter,
    result: SyncResult,
    actor: str,
) -> None:
    m = _manifest(entry, held)
    _check_sizes(ctx, m)
    conflicts = _conflicts(ctx, m)
    if conflicts:  # this site's own vN differs from HQ's: the other versions still come
        m = m.model_copy(update={"versions": [v for v in m.versions if v.number not in conflicts]})
        for number, reason in conflicts.items():
            reporter.states[f"{m.template}:v{number}"] = VersionState(
                state="failed", done=0, total=0, reason=reason
            )
    validated = _recognise(ctx, m, actor)
    if validated:
        result.validated[m.template] = validated
    parents = {x.digest: x.parent for x in m.layers}
    sizes = {x.digest: x.size for x in m.layers if x.included}
    needs: dict[str, list[str]] = {}  # version key -> layers of its chain this site lacks
    for v in m.versions:
        key = f"{m.template}:v{v.number}"
        needs[key] = lacking = [d for d in chain_of(v.top_layer, parents) if d in sizes]
        total = sum(sizes[d] for d in lacking)
        state = "pending" if lacking else "verified"
        reporter.states[key] = VersionState(state=state, done=0, total=total)
    reporter.send(force=True)
    bundles.check_catalog(ctx, m)
    # refused before a byte is fetched, with the space needed and free, rather than when the
    # disk fills half way (the versions already held stay)
    lacking = {d for layers in needs.values() for d in layers}
    ctx.layers.check_room(
        f"{_layers(len(lacking))} of {m.template} from HQ", sum(sizes[d] for d in lacking)
    )

    def progress(digest: str, so_far: int, wire: int) -> None:
        reporter.moved(digest, so_far)
        result.bytes_downloaded += wire
        for key, lacking in needs.items():
            if digest in lacking:
                st = reporter.states[key]
                st.state = "transferring"
                st.done = sum(reporter.received.get(d, 0) for d in lacking)
        reporter.send()

    # version by version, oldest first: each is added as soon as its whole chain is verified,
    # so a failure later (a refused layer, a full disk, HQ gone) keeps the versions before it
    by_digest = {x.digest: x for x in m.layers}
    fetched: set[str] = set()
    added = result.versions_added.setdefault(m.template, [])
    for v in sorted(m.versions, key=lambda v: v.number):
        key = f"{m.template}:v{v.number}"
        todo = [d for d in reversed(needs[key]) if d not in fetched]  # parents first
        for digest in todo:
            placed = ctx.layers.seed_path(digest).exists()
            seeded = ctx.layers.take_seed(digest) if placed else None
            if seeded is not None:  # placed by hand and checked: no byte from HQ
                works[digest] = seeded
                result.seeded.append(digest)
                continue
            if placed:  # its bytes did not match: moved aside, fetched now
                result.rejected.append(digest)
            works[digest] = ctx.layers.work_path(".import-sync-")
            transfer.download(
                http,
                by_digest[digest],
                works[digest],
                bucket,
                lambda h, w, d=digest: progress(d, h, w),
            )
            result.layers_downloaded += 1
        in_chain = set(chain_of(v.top_layer, parents))
        one = m.model_copy(
            update={
                "versions": [v],
                "layers": [
                    x.model_copy(update={"included": x.digest in todo})
                    for x in m.layers
                    if x.digest in in_chain
                ],
            }
        )
        with bundles.import_lock:
            view = bundles.install_layers(
                ctx, one, works, [], source="upstream", actor=actor, action="site.sync", hashed=True
            )
        crashpoints.reached("site-sync.added")
        fetched.update(todo)
        held.update(todo)
        added.extend(view.versions_added)
        total = reporter.states[key].total
        reporter.states[key] = VersionState(state="verified", done=total, total=total)
        reporter.send()
    if conflicts:
        result.failed[m.template] = "; ".join(conflicts.values())


def _recognise(ctx: Context, m: bundles.Manifest, actor: str) -> list[int]:
    """Versions sealed here and waiting for validation that HQ now distributes with the same
    top layer: HQ validated them. They are enabled here (their layers are this site's own,
    nothing is fetched) and become current as HQ says (:func:`_activate`)."""
    tops = {v.number: v.top_layer for v in m.versions}
    done = []
    with ctx.template_lock(m.template), ctx.session() as s:
        t = s.scalar(select(Template).where(Template.name == m.template))
        for v in t.versions if t is not None else []:
            if v.status == VersionStatus.PENDING_VALIDATION and tops.get(v.number) == v.top_layer:
                v.status = VersionStatus.ENABLED
                audit.record(s, actor, "template.validated", t.name, version=v.number, by="HQ")
                done.append(v.number)
        s.commit()
    return done


def _layers(n: int) -> str:
    return "the layer" if n == 1 else f"the {n} layers"


def _check_sizes(ctx: Context, m: bundles.Manifest) -> None:
    """Refuse, before any byte is fetched, a layer larger than this site takes: its virtual
    size above ``max_virtual_size``, or its file far larger than its virtual size (a qcow2
    layer's metadata is a few percent of it)."""
    limit = ctx.settings.max_virtual_size
    for x in m.layers:
        if x.included and (x.virtual_size > limit or x.size > 2 * x.virtual_size + (64 << 20)):
            raise InvalidInput(
                f"HQ declares layer {x.digest} of {x.size} bytes, virtual size"
                f" {x.virtual_size}: above this site's limit (max_virtual_size {limit}) or"
                " impossible for a qcow2 layer; not fetched"
            )


def _conflicts(ctx: Context, m: bundles.Manifest) -> dict[int, str]:
    """HQ's versions whose number this site holds with another top layer (a version sealed
    here and not published): those are not added; the others are."""
    with ctx.session() as s:
        t = s.scalar(select(Template).where(Template.name == m.template))
        held = {v.number: v.top_layer for v in t.versions} if t is not None else {}
    return {
        v.number: (
            f"v{v.number} here is this site's own (layer {held[v.number]}), HQ's v{v.number} is"
            f" another (layer {v.top_layer}); HQ's is not added here. Delete this site's"
            f" (goldfleet template delete-version {m.template} v{v.number}) to take HQ's"
        )
        for v in m.versions
        if v.number in held and held[v.number] != v.top_layer
    }


# --- which version is current here --------------------------------------------------------


def _make_current(ctx: Context, s: Any, t: Template, number: int, actor: str) -> bool:
    v = next((v for v in t.versions if v.number == number), None)
    held = t.current_version.number if t.current_version else 0
    if v is None or number <= held or v.status != VersionStatus.ENABLED:
        return False
    t.current_version_id = v.id
    audit.record(s, actor, "template.activate", t.name, version=number)
    return True


def _activate(ctx: Context, entry: dict[str, Any], result: SyncResult, actor: str) -> None:
    """Make HQ's version for this site current here, now or at the assignment's publish time.
    A version is only made current if it is newer than this site's current one (a version
    patched here stays current until HQ distributes a newer one)."""
    name, target = entry["template"], entry["current"]
    at = datetime.fromisoformat(entry["publish_at"]) if entry.get("publish_at") else None
    now = ctx.clock.now()
    with ctx.template_lock(name), ctx.session() as s:
        t = s.scalar(select(Template).where(Template.name == name))
        link = _link(s)
        pending = dict(link.pending or {})
        if t is None or target is None:
            return
        current = t.current_version.number if t.current_version else 0
        if target <= current or all(v.number != target for v in t.versions):
            if name in pending and pending[name]["version"] <= current:
                del pending[name]
        elif (at is not None and at > now) or t.status != TemplateStatus.READY:
            # at its publish time; a template put in maintenance during the sync: once that
            # ends (activate_due)
            at = at if at is not None and at > now else now
            pending[name] = {"version": target, "at": at.isoformat()}
            result.pending[name] = pending[name]
        elif _make_current(ctx, s, t, target, actor):
            pending.pop(name, None)
            result.activated[name] = target
        link.pending = pending
        s.commit()


def activate_due(ctx: Context) -> list[str]:
    """Versions whose publish time has come become current here."""
    now = ctx.clock.now()
    with ctx.session() as s:
        link = s.get(Upstream, LINK_ID)
        due = [
            (name, p["version"])
            for name, p in ((link.pending or {}) if link else {}).items()
            if datetime.fromisoformat(p["at"]) <= now
        ]
    done = []
    for name, number in due:
        with ctx.template_lock(name), ctx.session() as s:
            t = s.scalar(select(Template).where(Template.name == name))
            if t is not None and t.status == TemplateStatus.READY:
                _make_current(ctx, s, t, number, "schedule")
            elif t is not None:
                continue  # in maintenance: made current once that ends
            link = _link(s)
            link.pending = {k: v for k, v in (link.pending or {}).items() if k != name}
            s.commit()
            done.append(f"{name}:v{number}")
    return done


def _mark_current(ctx: Context, reporter: _Reporter) -> None:
    with ctx.session() as s:
        currents = {
            t.name: t.current_version.number
            for t in s.scalars(select(Template))
            if t.current_version is not None
        }
    for key, st in reporter.states.items():
        name, _, number = key.rpartition(":v")
        st.current = currents.get(name) == int(number)


# --- publishing a version sealed here -----------------------------------------------------


def publish(
    ctx: Context, template: str, *, version: int | None = None, actor: str
) -> PublishResult:
    """Send a version sealed here to HQ (default: the newest one waiting for validation, else
    the current one): only the layers HQ lacks travel. HQ checks it like any layer from
    outside and holds it ``pending-validation`` until an admin there validates it; then it
    goes to every site assigned the template, this one included (:func:`_recognise`)."""
    url, token = _upstream(ctx)
    with ctx.session() as s:
        t = get_template(s, template)
        waiting = [x.number for x in t.versions if x.status == VersionStatus.PENDING_VALIDATION]
        v = get_version(s, t, version if version is not None or not waiting else max(waiting))
        digests = [x.digest for x in chain(s, v.top_layer)]
        number, top = v.number, v.top_layer
    with _http(url, token) as http:
        plan = _call(http, "POST", f"/sync/publish/{template}/plan", json={"digests": digests})
        hq_top = plan["versions"].get(str(number))
        if hq_top == top:
            return PublishResult(
                template=template, version=number, layers_sent=0, bytes_sent=0, already_at_hq=True
            )
        if hq_top is not None:
            raise Conflict(
                f"HQ already has a different v{number} of template {template}: patch the newest"
                " version HQ distributes (goldfleet site sync first), then publish that"
            )
        with ctx.session() as s:
            t = get_template(s, template)
            v = get_version(s, t, number)
            current = number if t.current_version_id == v.id else None
            export = bundles.plan_versions(
                ctx, s, t, [v], set(plan["held_layers"]), current=current
            )
        sent = sum(size for _, _, size in export.layers)
        _call(
            http,
            "POST",
            f"/sync/publish/{template}",
            content=bundles.stream_bundle(export),
            headers={"Content-Type": "application/x-tar"},
            timeout=httpx.Timeout(None, connect=10.0),
        )
    with ctx.session() as s:
        audit.record(s, actor, "template.publish", template, version=number, bytes=sent)
        s.commit()
    return PublishResult(
        template=template,
        version=number,
        layers_sent=len(export.layers),
        bytes_sent=sent,
        already_at_hq=False,
    )
