"""Sites, HQ side: sites and their tokens and rights, what each receives, the catalog a site
reads, the layer files it may fetch, the states it reports and the versions it publishes.

A layer's digest names its bytes and, through its backing reference, its whole chain, so the
bytes a site needs for a version are exactly the layers it does not hold: nothing is chunked or
diffed. The site side (joining, syncing, schedules, publishing) is services/upstream.py; the
rules (which versions, which becomes current, schedules) are goldfleet.domain.sites.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator
from sqlalchemy import select

from goldfleet.context import Context
from goldfleet.db.tables import Layer, Site, SiteTemplate, Template, Token, Version, utcnow
from goldfleet.domain import sites as rules
from goldfleet.domain.model import Outline, VersionStatus
from goldfleet.domain.names import DIGEST_RE, NAME_RE, check_name
from goldfleet.domain.rules import chain_of
from goldfleet.errors import (
    Conflict,
    Forbidden,
    GoldfleetError,
    InvalidInput,
    NotFound,
    StoreError,
)
from goldfleet.services import access
from goldfleet.services.common import (
    VersionView,
    audit,
    chain,
    get_template,
    get_version,
    version_view,
)
from goldfleet.services.distribution import _bundles as bundles

log = logging.getLogger("goldfleet.sites")

LOCAL_PATCHES = "local-patches"
MAX_REASON = 2000  # characters of a reported reason kept
MAX_STATES = 10_000  # version states in one report
STATE_KEY_RE = re.compile(rf"{NAME_RE.pattern}:v[1-9][0-9]{{0,8}}")


class VersionState(BaseModel):
    state: str = Field(pattern="^(pending|transferring|verified|failed)$")
    done: int = Field(default=0, ge=0)
    total: int = Field(default=0, ge=0)
    reason: str = ""  # cut to MAX_REASON characters
    current: bool = False  # the site's current version of the template

    @field_validator("reason", mode="before")
    @classmethod
    def _cut(cls, value: object) -> object:
        return value[:MAX_REASON] if isinstance(value, str) else value


class SyncReport(BaseModel):
    states: dict[str, VersionState] = Field(max_length=MAX_STATES)  # "template:vN" -> state

    @field_validator("states")
    @classmethod
    def _keys(cls, states: dict[str, VersionState]) -> dict[str, VersionState]:
        bad = next((k for k in states if not STATE_KEY_RE.fullmatch(k)), None)
        if bad is not None:
            raise ValueError(f"{bad[:80]!r} is not TEMPLATE:vN")
        return states


class AssignmentView(BaseModel):
    template: str
    versions: str  # current | all | N
    publish_at: datetime | None
    activate: str  # the template's activation mode at HQ


class SiteView(BaseModel):
    name: str
    token_name: str
    token_revoked: bool
    created_at: datetime
    last_contact: datetime | None
    local_patches: bool
    templates: list[str]
    assignments: list[AssignmentView]
    states: dict[str, VersionState]


class SiteCreated(BaseModel):
    site: SiteView
    token: str  # shown once


class PublishPlan(BaseModel):
    """What HQ already holds of a version a site wants to publish."""

    template: str
    held_layers: list[str]  # of the digests the site asked about
    versions: dict[int, str]  # HQ's versions of the template: number -> top layer


def _assignments(s: Any, site: Site) -> list[tuple[SiteTemplate, Template]]:
    return list(
        s.execute(
            select(SiteTemplate, Template)
            .join(Template, SiteTemplate.template_id == Template.id)
            .where(SiteTemplate.site_id == site.id)
            .order_by(Template.name)
        ).tuples()
    )


def _site_view(s: Any, site: Site) -> SiteView:
    token = s.scalar(select(Token).where(Token.name == site.token_name))
    pairs = _assignments(s, site)
    return SiteView(
        name=site.name,
        token_name=site.token_name,
        token_revoked=token is None or token.revoked_at is not None,
        created_at=site.created_at,
        last_contact=site.last_contact,
        local_patches=site.local_patches,
        templates=[t.name for _, t in pairs],
        assignments=[
            AssignmentView(
                template=t.name, versions=a.versions, publish_at=a.publish_at, activate=t.activate
            )
            for a, t in pairs
        ],
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


def create_site(ctx: Context, name: str, *, local_patches: bool = False, actor: str) -> SiteCreated:
    _require_hq(ctx, "creating a site")
    check_name(name, "site name")
    token_name = check_name(f"site-{name}", "site name with its 'site-' prefix")
    with ctx.session() as s:
        if s.scalar(select(Site.id).where(Site.name == name)) is not None:
            raise Conflict(f"site {name} already exists")
    token = access.create_token(ctx, name=token_name, role="site", actor=actor)
    with ctx.session() as s:
        site = Site(name=name, token_name=token_name, states={}, local_patches=local_patches)
        s.add(site)
        audit.record(s, actor, "site.create", name, local_patches=local_patches)
        s.commit()
        return SiteCreated(site=_site_view(s, site), token=token)


def list_sites(ctx: Context) -> list[SiteView]:
    with ctx.session() as s:
        return [_site_view(s, x) for x in s.scalars(select(Site).order_by(Site.name))]


def set_rights(ctx: Context, name: str, *, local_patches: bool, actor: str) -> SiteView:
    """Give or take the ``local-patches`` right: the site may seal versions of its templates
    and publish them here."""
    _require_hq(ctx, "changing a site's rights")
    with ctx.session() as s:
        site = _get_site(s, name)
        site.local_patches = local_patches
        audit.record(s, actor, "site.rights", name, local_patches=local_patches)
        s.commit()
        return _site_view(s, site)


def revoke_site(ctx: Context, name: str, *, actor: str) -> SiteView:
    """Revoke the site's token: HQ answers 401 to it and serves nothing more."""
    _require_hq(ctx, "revoking a site")
    with ctx.session() as s:
        site = _get_site(s, name)
        token = s.scalar(select(Token).where(Token.name == site.token_name))
        if token is not None and token.revoked_at is None:
            token.revoked_at = utcnow()
        audit.record(s, actor, "site.revoke", name)
        s.commit()
        return _site_view(s, site)


def _assignment(s: Any, site: Site, t: Template) -> SiteTemplate | None:
    return s.scalar(
        select(SiteTemplate).where(
            SiteTemplate.site_id == site.id, SiteTemplate.template_id == t.id
        )
    )


def assign_template(
    ctx: Context,
    site: str,
    template: str,
    *,
    versions: str = "all",
    publish_at: datetime | None = None,
    activate: str | None = None,
    actor: str,
) -> SiteView:
    """SITE receives TEMPLATE's ``versions``; a new current version goes live there at
    ``publish_at`` (None: once verified). ``activate`` sets the template's mode for every site.
    Assigning again changes the options."""
    _require_hq(ctx, "assigning templates to sites")
    versions = rules.parse_versions(versions)
    if activate is not None:
        rules.check_activate(activate)
    with ctx.session() as s:
        row, t = _get_site(s, site), get_template(s, template)
        held = _assignment(s, row, t)
        if held is None:
            held = SiteTemplate(site_id=row.id, template_id=t.id)
            s.add(held)
        held.versions, held.publish_at = versions, publish_at
        if activate is not None:
            t.activate = activate
        audit.record(
            s,
            actor,
            "site.assign",
            site,
            template=template,
            versions=versions,
            publish_at=publish_at.isoformat() if publish_at else None,
            activate=t.activate,
        )
        s.commit()
        return _site_view(s, row)


def unassign_template(ctx: Context, site: str, template: str, *, actor: str) -> SiteView:
    """SITE receives nothing more of TEMPLATE (what it holds stays there)."""
    _require_hq(ctx, "assigning templates to sites")
    with ctx.session() as s:
        row, t = _get_site(s, site), get_template(s, template)
        held = _assignment(s, row, t)
        if held is None:
            raise NotFound(f"template {template} is not assigned to site {site}")
        s.delete(held)
        row.states = {k: v for k, v in (row.states or {}).items() if not k.startswith(f"{t.name}:")}
        audit.record(s, actor, "site.unassign", site, template=template)
        s.commit()
        return _site_view(s, row)


# --- what a site token reads --------------------------------------------------------------


def _site_of(s: Any, token_name: str) -> Site:
    site = s.scalar(select(Site).where(Site.token_name == token_name))
    if site is None:
        raise NotFound(f"token {token_name} belongs to no site")
    return site


def _verified_everywhere(s: Any, t: Template) -> dict[str, set[int]]:
    """Per site assigned ``t``: the versions it reports verified."""
    out: dict[str, set[int]] = {}
    prefix = f"{t.name}:v"
    for site in s.scalars(
        select(Site)
        .join(SiteTemplate, SiteTemplate.site_id == Site.id)
        .where(SiteTemplate.template_id == t.id)
    ):
        out[site.name] = {
            int(k[len(prefix) :])
            for k, v in (site.states or {}).items()
            if k.startswith(prefix) and k[len(prefix) :].isdigit() and v["state"] == "verified"
        }
    return out


def _chains(s: Any, versions: list[Version]) -> dict[str, Layer]:
    """Every layer of the chains of ``versions``, by digest."""
    layers: dict[str, Layer] = {}
    for v in versions:
        for x in chain(s, v.top_layer):
            layers[x.digest] = x
    return layers


def _catalog_entry(s: Any, a: SiteTemplate, t: Template) -> dict[str, Any]:
    current = t.current_version.number if t.current_version else None
    enabled = [v for v in t.versions if v.status == VersionStatus.ENABLED]  # not those waiting
    chosen = rules.select_versions([v.number for v in enabled], current, a.versions)
    versions = [v for v in sorted(enabled, key=lambda v: v.number) if v.number in chosen]
    verified = _verified_everywhere(s, t) if t.activate != "on-verify" else {}
    layers = _chains(s, versions)
    return {
        "template": t.name,
        "kind": t.kind,
        "outline": {
            "temp": list(t.outline.get("temp", [])),
            "data": list(t.outline.get("data", [])),
        },
        "current": rules.effective_current(current, chosen, t.activate, verified),
        "hq_current": current,
        "activate": t.activate,
        "publish_at": a.publish_at.isoformat() if a.publish_at else None,
        "versions": [
            {"number": v.number, "top_layer": v.top_layer, "note": v.note} for v in versions
        ],
        "layers": [
            {"digest": x.digest, "parent": x.parent, "size": x.size, "virtual_size": x.virtual_size}
            for x in sorted(layers.values(), key=lambda x: (x.depth, x.digest))
        ],
    }


def catalog(ctx: Context, token_name: str) -> dict[str, Any]:
    """What a site receives: each assigned template with its chosen versions, their layers and
    the version to make current there."""
    with ctx.session() as s:
        site = _site_of(s, token_name)
        site.last_contact = utcnow()
        out = [_catalog_entry(s, a, t) for a, t in _assignments(s, site)]
        s.commit()
        return {
            "site": site.name,
            "rights": {LOCAL_PATCHES: site.local_patches},
            "templates": out,
        }


def _layer_of_site(token_name: str, digest: str) -> Any:
    """Whether ``digest`` is in a chain of a version of a template assigned to the site of
    ``token_name``: one recursive query from the versions' top layers down their parents (each
    layer once), instead of loading every chain per layer request, Range resumes included."""
    walked = (
        select(Version.top_layer.label("digest"))
        .join(SiteTemplate, SiteTemplate.template_id == Version.template_id)
        .join(Site, Site.id == SiteTemplate.site_id)
        .where(Site.token_name == token_name, Version.status == VersionStatus.ENABLED)
        .cte("walked", recursive=True)
    )
    parents = select(Layer.parent).join(walked, Layer.digest == walked.c.digest)
    walked = walked.union(parents.where(Layer.parent.is_not(None)))
    return select(walked.c.digest).where(walked.c.digest == digest).exists().select()


def layer_file(ctx: Context, token_name: str, digest: str) -> Path:
    """The file of a layer the site may read: one in a chain of a template assigned to it."""
    if not DIGEST_RE.fullmatch(digest):
        raise InvalidInput(f"{digest!r} is not a layer digest")
    with ctx.session() as s:
        site_name = _site_of(s, token_name).name
        if not s.scalar(_layer_of_site(token_name, digest)):
            raise NotFound(f"layer {digest} is not in a template assigned to this site")
    path = ctx.layers.path(digest)
    if not path.is_file():
        message = (
            f"layer {digest} is in HQ's catalog but its file is missing from HQ's store; an"
            " admin at HQ should run: goldfleet store verify"
        )
        log.error("site %s asked for a layer: %s", site_name, message)
        raise StoreError(message)
    return path


def record_report(ctx: Context, token_name: str, report: SyncReport) -> None:
    """Keep the states the site reports of versions HQ has of the templates assigned to it;
    the others (and those of versions gone since) are dropped."""
    with ctx.session() as s:
        site = _site_of(s, token_name)
        known = {f"{t.name}:v{v.number}" for _, t in _assignments(s, site) for v in t.versions}
        dropped = sorted(set(report.states) - known)
        if dropped:
            log.warning(
                "site %s reported %d states of versions it was not given (ignored): %s",
                site.name,
                len(dropped),
                ", ".join(dropped[:5]),
            )
        states = {**(site.states or {}), **{k: v.model_dump() for k, v in report.states.items()}}
        site.states = {k: v for k, v in states.items() if k in known}
        site.last_contact = utcnow()
        s.commit()


# --- versions a site publishes ------------------------------------------------------------


def _publisher(s: Any, token_name: str, template: str) -> tuple[Site, Template]:
    site = _site_of(s, token_name)
    if not site.local_patches:
        raise Forbidden(
            f"site {site.name} has no {LOCAL_PATCHES} right: it may not publish versions; an"
            f" admin at HQ gives it with: goldfleet site rights {site.name} --local-patches"
        )
    names = {t.name: t for _, t in _assignments(s, site)}
    if template not in names:
        raise Forbidden(
            f"template {template} is not assigned to site {site.name}; a site publishes only"
            " versions of templates HQ assigned to it"
        )
    return site, names[template]


def publish_plan(ctx: Context, token_name: str, template: str, digests: list[str]) -> PublishPlan:
    """Which of ``digests`` HQ holds in the chains of ``template``'s versions (a site learns
    nothing of other layers), and HQ's versions of ``template``."""
    if len(digests) > 10_000 or not all(DIGEST_RE.fullmatch(d) for d in digests):
        raise InvalidInput("the digests asked about are not layer digests")
    with ctx.session() as s:
        _, t = _publisher(s, token_name, template)
        ours = _chains(s, t.versions)
        held = [d for d in digests if d in ours and ctx.layers.has(d)]
        return PublishPlan(
            template=t.name, held_layers=held, versions={v.number: v.top_layer for v in t.versions}
        )


def _refused(error: type[GoldfleetError], message: str) -> GoldfleetError:
    return error(f"publish refused: {message}; nothing was imported")


def _check_publish(s: Any, t: Template, m: bundles.Manifest) -> None:
    """A site publishes one new version of ``t``, numbered above HQ's newest, built only on
    layers of ``t``'s versions here, every layer HQ holds declared with HQ's parent."""
    if len(m.versions) != 1:
        raise _refused(
            InvalidInput,
            f"a site publishes exactly one version at a time; the bundle holds {len(m.versions)}",
        )
    number, top = m.versions[0].number, m.versions[0].top_layer
    newest = max((v.number for v in t.versions), default=0)
    if number <= newest:
        raise _refused(
            Conflict,
            f"v{number} of template {t.name} is not above v{newest}, HQ's newest; sync first and"
            " patch the newest version HQ distributes",
        )
    parents = {x.digest: x.parent for x in m.layers}
    if set(chain_of(top, parents)) != set(parents):
        raise _refused(InvalidInput, f"it lists layers outside the chain of its v{number}")
    ours = _chains(s, t.versions)
    for x in m.layers:
        if not x.included and x.digest not in ours:
            raise _refused(
                Forbidden,
                f"layer {x.digest} is not in a version of template {t.name} at HQ, and the"
                " bundle does not carry it; a site builds only on HQ's versions of its template",
            )
        held = s.get(Layer, x.digest)
        if held is not None and held.parent != x.parent:
            raise _refused(
                InvalidInput,
                f"the bundle declares parent {x.parent} for layer {x.digest}; HQ records"
                f" {held.parent}",
            )


def receive_publish(ctx: Context, token_name: str, template: str, file: Path) -> bundles.BundleView:
    """Import the bundle a site sent of its new version: same checks as any bundle from
    outside, but trusted by the site's token instead of a trusted key; it may not change the
    template's kind or outline, and holds one version above HQ's newest whose chain reuses
    only layers of the template's versions here (:func:`_check_publish`)."""
    with ctx.session() as s:
        site, t = _publisher(s, token_name, template)
        site_name, kind, outline = site.name, t.kind, t.outline

    def check(m: bundles.Manifest) -> None:
        if m.template != template:
            raise _refused(InvalidInput, f"the bundle holds template {m.template}, not {template}")
        if m.kind != kind or Outline.from_json(m.outline) != Outline.from_json(outline):
            raise _refused(
                Conflict,
                f"it changes the clone kind or outline of template {template}; only HQ changes"
                " those",
            )
        with ctx.session() as s:
            _check_publish(s, get_template(s, template), m)

    view = bundles.import_bundle(
        ctx,
        file,
        actor=token_name,
        signer=f"site {site_name}",
        check=check,
        action="site.publish",
        status=VersionStatus.PENDING_VALIDATION,
    )
    log.info(
        "site %s published %s v%s: it waits for validation (goldfleet template validate)",
        site_name,
        template,
        view.versions_added,
    )
    return view


# --- validating a site's patch --------------------------------------------------------------


def validate_version(ctx: Context, template: str, number: int, *, actor: str) -> VersionView:
    """``template validate NAME vN`` at HQ: enable a version a site published (it waits as
    ``pending-validation``). It becomes current here if it is newer than the current one, and
    every site assigned the template, the one that sealed it too, receives it on its next sync
    (the origin recognises its own layers and fetches nothing)."""
    _require_hq(ctx, "validating a site's version")
    with ctx.template_lock(template), ctx.session() as s:
        t = get_template(s, template)
        v = get_version(s, t, number)
        rules.check_validation(t.name, v.number, v.status, t.status)
        v.status = VersionStatus.ENABLED
        held = t.current_version.number if t.current_version else 0
        made_current = v.number > held
        if made_current:
            t.current_version_id = v.id
        audit.record(s, actor, "template.validate", t.name, version=v.number, current=made_current)
        s.commit()
        s.refresh(t)
        return version_view(s, t, v)
