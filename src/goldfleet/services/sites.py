"""Sites: HQ serves each site the templates assigned to it; a site pulls only the layers it lacks.

A layer's digest names its bytes and, through its backing reference, its whole chain, so the
bytes a site needs for a version are exactly the layers it does not hold: nothing is chunked or
diffed. HQ side: sites, their ``site`` tokens, assignments, the catalog a site sees, the layer
files it may read and the states it reports. Site side: joining HQ (URL and token in the home)
and the sync, which downloads into dot-named work files with HTTP Range resumes and a sha256
check, then hands the files to the bundle import's install step (the same checks as any layer
from outside, parents sealed first, versions added in one transaction, everything removed on
refusal). A version is added, and may become current, only once its whole chain is verified.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, Field
from sqlalchemy import select

from goldfleet.bootstrap import Context
from goldfleet.db.tables import Layer, Site, SiteTemplate, Template, Token, utcnow
from goldfleet.domain.names import DIGEST_RE, check_name
from goldfleet.errors import Conflict, GoldfleetError, InvalidInput, NotFound
from goldfleet.services import audit, auth, bundles, transfer
from goldfleet.services.common import chain, get_template
from goldfleet.services.transfer import TokenBucket, UpstreamError, UpstreamRefused

log = logging.getLogger("goldfleet.sites")

SITE_TOKEN_FILE = "site.token"
UPSTREAM_FILE = "upstream.json"
REPORT_SECONDS = 1.0

_sync_lock = threading.Lock()


class VersionState(BaseModel):
    state: str = Field(pattern="^(pending|transferring|verified|failed)$")
    done: int = Field(default=0, ge=0)
    total: int = Field(default=0, ge=0)
    reason: str = Field(default="", max_length=2000)


class SyncReport(BaseModel):
    states: dict[str, VersionState]  # "template:vN" -> state


class SiteView(BaseModel):
    name: str
    token_name: str
    token_revoked: bool
    created_at: datetime
    last_contact: datetime | None
    templates: list[str]
    states: dict[str, VersionState]


class SiteCreated(BaseModel):
    site: SiteView
    token: str  # shown once


class SyncResult(BaseModel):
    templates: list[str]
    versions_added: dict[str, list[int]]
    layers_downloaded: int
    bytes_downloaded: int  # body bytes received from HQ, retries and re-fetches included
    failed: dict[str, str]  # template -> reason


# --- HQ -----------------------------------------------------------------------------------


def _site_view(s: Any, site: Site) -> SiteView:
    token = s.scalar(select(Token).where(Token.name == site.token_name))
    names = s.scalars(
        select(Template.name)
        .join(SiteTemplate, SiteTemplate.template_id == Template.id)
        .where(SiteTemplate.site_id == site.id)
        .order_by(Template.name)
    )
    return SiteView(
        name=site.name,
        token_name=site.token_name,
        token_revoked=token is None or token.revoked_at is not None,
        created_at=site.created_at,
        last_contact=site.last_contact,
        templates=list(names),
        states={k: VersionState(**v) for k, v in sorted((site.states or {}).items())},
    )


def _get_site(s: Any, name: str) -> Site:
    site = s.scalar(select(Site).where(Site.name == check_name(name, "site name")))
    if site is None:
        raise NotFound(f"site {name} does not exist; see: goldfleet site list")
    return site


def _require_hq(ctx: Context, what: str) -> None:
    if ctx.settings.role != "hq":
        raise Conflict(f"this server runs as a site: {what} is done at HQ")


def create_site(ctx: Context, name: str, *, actor: str) -> SiteCreated:
    _require_hq(ctx, "creating a site")
    check_name(name, "site name")
    token_name = check_name(f"site-{name}", "site name with its 'site-' prefix")
    with ctx.session() as s:
        if s.scalar(select(Site.id).where(Site.name == name)) is not None:
            raise Conflict(f"site {name} already exists")
    token = auth.create_token(ctx, name=token_name, role="site", actor=actor)
    with ctx.session() as s:
        site = Site(name=name, token_name=token_name, states={})
        s.add(site)
        audit.record(s, actor, "site.create", name)
        s.commit()
        return SiteCreated(site=_site_view(s, site), token=token)


def list_sites(ctx: Context) -> list[SiteView]:
    with ctx.session() as s:
        return [_site_view(s, x) for x in s.scalars(select(Site).order_by(Site.name))]


def assign_template(ctx: Context, site: str, template: str, *, actor: str) -> SiteView:
    _require_hq(ctx, "assigning templates to sites")
    with ctx.session() as s:
        row, t = _get_site(s, site), get_template(s, template)
        held = s.scalar(
            select(SiteTemplate.id).where(
                SiteTemplate.site_id == row.id, SiteTemplate.template_id == t.id
            )
        )
        if held is None:
            s.add(SiteTemplate(site_id=row.id, template_id=t.id))
            audit.record(s, actor, "site.assign", site, template=template)
            s.commit()
        return _site_view(s, row)


def _site_of(s: Any, token_name: str) -> Site:
    site = s.scalar(select(Site).where(Site.token_name == token_name))
    if site is None:
        raise NotFound(f"token {token_name} belongs to no site")
    return site


def _assigned(s: Any, site: Site) -> list[Template]:
    return list(
        s.scalars(
            select(Template)
            .join(SiteTemplate, SiteTemplate.template_id == Template.id)
            .where(SiteTemplate.site_id == site.id)
            .order_by(Template.name)
        )
    )


def catalog(ctx: Context, token_name: str) -> dict[str, Any]:
    """What a site receives: each assigned template with all its versions and their layers."""
    with ctx.session() as s:
        site = _site_of(s, token_name)
        site.last_contact = utcnow()
        out = []
        for t in _assigned(s, site):
            layers: dict[str, Layer] = {}
            for v in t.versions:
                for x in chain(s, v.top_layer):
                    layers[x.digest] = x
            out.append(
                {
                    "template": t.name,
                    "kind": t.kind,
                    "outline": {
                        "temp": list(t.outline.get("temp", [])),
                        "data": list(t.outline.get("data", [])),
                    },
                    "current": t.current_version.number if t.current_version else None,
                    "versions": [
                        {"number": v.number, "top_layer": v.top_layer, "note": v.note}
                        for v in sorted(t.versions, key=lambda v: v.number)
                    ],
                    "layers": [
                        {
                            "digest": x.digest,
                            "parent": x.parent,
                            "size": x.size,
                            "virtual_size": x.virtual_size,
                        }
                        for x in sorted(layers.values(), key=lambda x: (x.depth, x.digest))
                    ],
                }
            )
        s.commit()
        return {"site": site.name, "templates": out}


def layer_file(ctx: Context, token_name: str, digest: str) -> Path:
    """The file of a layer the site may read: one in a chain of a template assigned to it."""
    if not DIGEST_RE.fullmatch(digest):
        raise InvalidInput(f"{digest!r} is not a layer digest")
    with ctx.session() as s:
        site = _site_of(s, token_name)
        for t in _assigned(s, site):
            for v in t.versions:
                if any(x.digest == digest for x in chain(s, v.top_layer)):
                    return ctx.layers.path(digest)
    raise NotFound(f"layer {digest} is not in a template assigned to this site")


def record_report(ctx: Context, token_name: str, report: SyncReport) -> None:
    with ctx.session() as s:
        site = _site_of(s, token_name)
        states = dict(site.states or {})
        states.update({k: v.model_dump() for k, v in report.states.items()})
        site.states = states
        site.last_contact = utcnow()
        s.commit()


# --- site ---------------------------------------------------------------------------------


def _write_private(path: Path, text: str) -> None:
    work = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(work, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(work, path)


def _upstream(ctx: Context) -> tuple[str, str]:
    if ctx.settings.role != "site":
        raise Conflict('this server runs as hq; set role = "site" to pull from an upstream')
    home = ctx.settings.home
    url = ctx.settings.upstream_url
    if not url and (home / UPSTREAM_FILE).exists():
        url = json.loads((home / UPSTREAM_FILE).read_text())["url"]
    token_file = home / SITE_TOKEN_FILE
    if not url or not token_file.exists():
        raise Conflict("this site has not joined HQ yet: goldfleet site join URL --token T")
    return url.rstrip("/"), token_file.read_text().strip()


def _http(url: str, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=url,
        headers={"Authorization": f"Bearer {token}"},
        timeout=httpx.Timeout(60.0, connect=10.0),
    )


def _get_json(http: httpx.Client, path: str) -> Any:
    try:
        r = http.get(path)
    except httpx.HTTPError as exc:
        raise UpstreamError(f"HQ at {http.base_url} cannot be reached: {exc}") from None
    if r.status_code == 401:
        raise UpstreamRefused(f"HQ at {http.base_url} refused this site's token (revoked or wrong)")
    if r.status_code >= 400:
        raise UpstreamError(f"HQ answered {r.status_code} to {path}: {r.text[:200]}")
    return r.json()


def join(ctx: Context, url: str, token: str, *, actor: str) -> dict[str, str]:
    """Store HQ's URL and this site's token after HQ accepted the token."""
    if ctx.settings.role != "site":
        raise Conflict('this server runs as hq; start it with role = "site" to join an HQ')
    if not url.startswith(("http://", "https://")):
        raise InvalidInput(f"{url!r} is not an http(s) URL")
    with _http(url.rstrip("/"), token) as http:
        answer = _get_json(http, "/sync/catalog")
    _write_private(ctx.settings.home / SITE_TOKEN_FILE, token + "\n")
    _write_private(ctx.settings.home / UPSTREAM_FILE, json.dumps({"url": url.rstrip("/")}))
    with ctx.session() as s:
        audit.record(s, actor, "site.join", url, site=answer["site"])
        s.commit()
    return {"upstream_url": url.rstrip("/"), "site": answer["site"]}


class _Reporter:
    """Per-version states, sent to HQ at most once a second (HQ down: kept for the next one)."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http
        self.states: dict[str, VersionState] = {}
        self.sent_at = 0.0

    def send(self, force: bool = False) -> None:
        if not force and time.monotonic() - self.sent_at < REPORT_SECONDS:
            return
        self.sent_at = time.monotonic()
        body = SyncReport(states=self.states).model_dump()
        try:
            self.http.post("/sync/report", json=body)
        except httpx.HTTPError as exc:
            log.warning("could not report to HQ: %s", exc)


def sync(ctx: Context, *, limit: float | None = None, actor: str) -> SyncResult:
    """Pull every assigned template's versions from HQ; one sync at a time."""
    url, token = _upstream(ctx)
    if not _sync_lock.acquire(blocking=False):
        raise Conflict("a sync is already running on this site; wait for it to finish")
    try:
        with _http(url, token) as http:
            return _sync(ctx, http, TokenBucket(limit), actor)
    finally:
        _sync_lock.release()


def _held(ctx: Context, digests: list[str]) -> set[str]:
    with ctx.session() as s:
        return {d for d in digests if s.get(Layer, d) is not None and ctx.layers.has(d)}


def _sync(ctx: Context, http: httpx.Client, bucket: TokenBucket, actor: str) -> SyncResult:
    answer = _get_json(http, "/sync/catalog")
    reporter = _Reporter(http)
    result = SyncResult(
        templates=[], versions_added={}, layers_downloaded=0, bytes_downloaded=0, failed={}
    )
    for entry in answer["templates"]:
        name = entry["template"]
        result.templates.append(name)
        held = _held(ctx, [x["digest"] for x in entry["layers"]])
        body = {
            "format": bundles.FORMAT,
            "template": name,
            "kind": entry["kind"],
            "outline": entry["outline"],
            "current": entry["current"],
            "since": None,
            "policy_only": False,
            "versions": entry["versions"],
            "layers": [x | {"included": x["digest"] not in held} for x in entry["layers"]],
        }
        works: dict[str, Path] = {}
        try:
            m = bundles._parse_manifest(json.dumps(body).encode())
            _sync_template(ctx, http, bucket, m, works, reporter, result, actor)
        except GoldfleetError as exc:
            for w in works.values():
                w.unlink(missing_ok=True)
            result.failed[name] = exc.message
            for key, st in reporter.states.items():
                if key.startswith(f"{name}:") and st.state != "verified":
                    reporter.states[key] = VersionState(
                        state="failed", done=st.done, total=st.total, reason=exc.message
                    )
            log.warning("sync of %s failed: %s", name, exc.message)
            if isinstance(exc, UpstreamRefused):
                break
        reporter.send(force=True)
    with ctx.session() as s:
        audit.record(
            s,
            actor,
            "site.sync",
            "upstream",
            bytes=result.bytes_downloaded,
            added=result.versions_added,
            failed=result.failed,
        )
        s.commit()
    return result


def _sync_template(
    ctx: Context,
    http: httpx.Client,
    bucket: TokenBucket,
    m: bundles.Manifest,
    works: dict[str, Path],
    reporter: _Reporter,
    result: SyncResult,
    actor: str,
) -> None:
    parents = {x.digest: x.parent for x in m.layers}
    sizes = {x.digest: x.size for x in m.layers if x.included}
    needs: dict[str, list[str]] = {}  # version key -> layers of its chain this site lacks
    for v in m.versions:
        digest: str | None = v.top_layer
        lacking = []
        while digest is not None:
            if digest in sizes:
                lacking.append(digest)
            digest = parents[digest]
        key = f"{m.template}:v{v.number}"
        needs[key] = lacking
        total = sum(sizes[d] for d in lacking)
        state = "pending" if lacking else "verified"
        reporter.states[key] = VersionState(state=state, done=0, total=total)
    reporter.send(force=True)
    bundles._check_catalog(ctx, m)
    done: dict[str, int] = {}

    def progress(digest: str, held: int, wire: int) -> None:
        done[digest] = held
        result.bytes_downloaded += wire
        for key, lacking in needs.items():
            if digest in lacking:
                st = reporter.states[key]
                st.state, st.done = "transferring", sum(done.get(d, 0) for d in lacking)
        reporter.send()

    for x in m.layers:
        if not x.included:
            continue
        works[x.digest] = ctx.layers.dir / f".import-sync-{secrets.token_hex(8)}.qcow2"
        transfer.download(
            http, x, works[x.digest], bucket, lambda h, w, d=x.digest: progress(d, h, w)
        )
        result.layers_downloaded += 1
    with bundles._import_lock:
        view = bundles.install_layers(
            ctx, m, works, [], source="upstream", actor=actor, action="site.sync"
        )
    result.versions_added[m.template] = view.versions_added
    for key in needs:
        reporter.states[key] = VersionState(
            state="verified", done=reporter.states[key].total, total=reporter.states[key].total
        )
