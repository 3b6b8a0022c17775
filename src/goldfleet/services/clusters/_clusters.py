"""Clusters of hypervisor hosts and their updates (docs/hosts.md): create and show them,
change the coordinator, the one update channel and the proxy, sync from the channel's apt
repository (signed ``InRelease`` verified against the channel key, ``Packages`` checked against
it, the needed ``.deb``s downloaded to the coordinator's cache in the store with their sha256
verified), the sync schedule, and what the last sync made available (``/updates``).

The rolling update itself is ``_rolling.py``. Not built yet (issue 11): the offline bundle,
the ssh host agent.
"""

from __future__ import annotations

import base64
import bz2
import gzip
import hashlib
import logging
import lzma
import shutil
import tarfile
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from goldfleet import crashpoints
from goldfleet.context import Context
from goldfleet.db.tables import Clone, Cluster, ClusterHost, ClusterUpdate, Server
from goldfleet.domain import hostupdates as rules
from goldfleet.domain.sites import next_sync
from goldfleet.drivers.agents import HostUnreachable, make_agent
from goldfleet.errors import Conflict, GoldfleetError, InvalidInput, NotFound
from goldfleet.services.clusters._gpg import import_key, verify_clearsigned
from goldfleet.services.common import audit, streams
from goldfleet.store.debcache import DebCache

log = logging.getLogger("goldfleet.clusters")

MAX_BUNDLE = 16 << 30  # bytes an uploaded bundle may unpack to
MAX_INDEX = 256 << 20  # bytes of an InRelease or a (decompressed) Packages goldfleet reads
CHUNK = 1 << 20
_KEEP: Any = object()
_syncing = threading.Lock()  # this server's scheduled syncs, one at a time


class RepositoryError(GoldfleetError):
    """The channel's repository (or the proxy on the way) could not be read; nothing kept."""

    status_code = 502


# --- views ----------------------------------------------------------------------------------


class ChannelView(BaseModel):
    kind: str
    url: str | None = None
    suite: str | None = None
    components: list[str] = []
    arch: str | None = None
    fingerprint: str | None = None  # of the key InRelease must be signed with
    hash: str | None = None  # the update hash of the last sync from it


class ProxyView(BaseModel):
    url: str
    username: str | None = None
    password_set: bool  # the password itself is never shown


class ClusterHostView(BaseModel):
    name: str
    coordinator: bool
    state: str
    memory_mib: int | None = None
    vcpus: int | None = None
    clones: int  # clones goldfleet placed on the host
    booted_kernel: str | None = None
    installed_packages: int
    installed_at: datetime | None = None  # when its packages were last read
    latest_synced_updates_applied: bool | None = None  # None: no valid sync yet
    pending: dict[str, list[str]] = {}  # guidance of what it lacks, by category
    last_software_update: datetime | None = None
    last_update_hash: str | None = None


class ClusterView(BaseModel):
    name: str
    coordinator: str
    hosts: list[ClusterHostView]
    channel: ChannelView | None = None
    proxy: ProxyView | None = None
    sync_schedule: str  # in words ("daily at 02:00 UTC", "off")
    sync_cron: str | None = None
    next_sync_at: datetime | None = None
    syncing: bool
    last_update_sync: datetime | None = None
    last_sync_hash: str | None = None
    last_sync_coordinator: str | None = None
    last_sync_valid: bool = False
    last_error: str | None = None
    warnings: list[str] = []
    # the guidance rules in force, first match wins: the cluster's own, then the shipped ones
    guidance_rules: list[dict[str, str]] = []
    ha: dict[str, list[list[str]]] | None = None  # HA/balancing disable and enable commands


class SyncView(BaseModel):
    cluster: str
    coordinator: str
    hash: str
    packages: int  # made available
    downloaded: int  # .deb files fetched now (the others were in the cache already)
    bytes_downloaded: int
    cache: str  # the coordinator's cache folder
    offline_hosts: list[str] = []


class UpdatesView(BaseModel):
    hosts: list[dict[str, Any]]
    updates: list[dict[str, Any]]
    hash: str | None
    sync: dict[str, Any]


# --- reading --------------------------------------------------------------------------------


def _get(s: Session, name: str) -> Cluster:
    c = s.scalar(select(Cluster).where(Cluster.name == name))
    if c is None:
        raise NotFound(f"cluster {name!r} does not exist; see: goldfleet cluster list")
    return c


def _updating(s: Session, c: Cluster) -> bool:
    """A rolling update of the cluster is running or paused."""
    return (
        s.scalar(
            select(ClusterUpdate.id)
            .where(
                ClusterUpdate.cluster_id == c.id,
                ClusterUpdate.status.in_(rules.OPEN_UPDATE),
            )
            .limit(1)
        )
        is not None
    )


def _valid_sync(c: Cluster) -> tuple[bool, str | None]:
    last = c.last_sync
    if not last:
        return False, "no sync yet: goldfleet cluster sync " + c.name
    if last.get("coordinator") != c.coordinator:
        return False, (
            f"the last sync was made by {last.get('coordinator')}, not the coordinator"
            f" {c.coordinator}: sync again"
        )
    if c.channel is None or last.get("fingerprint") != c.channel.get("fingerprint"):
        return False, "the channel changed since the last sync: sync again"
    return True, None


def _rules_of(c: Cluster) -> tuple[rules.GuidanceRule, ...]:
    """The cluster's own guidance rules first, then the shipped ones."""
    return rules.parse_rules(c.guidance_rules or []) + rules.DEFAULT_RULES


def _lacks_guidance(
    last: dict[str, Any], host: str, ruleset: tuple[rules.GuidanceRule, ...] = rules.DEFAULT_RULES
) -> dict[str, list[str]]:
    entries = {p["package"]: p for p in last.get("packages", [])}
    lacking = [_entry(entries[x["package"]]) for x in last.get("lacks", {}).get(host, [])]
    return rules.host_guidance(lacking, last.get("booted", {}).get(host), ruleset)


def _entry(p: dict[str, Any]) -> rules.PackageEntry:
    return rules.PackageEntry(
        package=p["package"],
        version=p["version"],
        architecture=p["architecture"],
        filename=p["filename"],
        size=p["size"],
        sha256=p["sha256"],
        source=p["source"],
        section=p.get("section", ""),
        description=p.get("description", ""),
        declared=p.get("declared", ""),
        livepatch_kernel=p.get("livepatch_kernel", ""),
    )


def _alive(s: Session, ctx: Context, owner: str | None) -> bool:
    if owner is None:
        return False
    beat = s.scalar(select(Server.heartbeat_at).where(Server.id == owner))
    if beat is None:
        return owner == ctx.server_id and _syncing.locked()
    return beat >= ctx.clock.now() - timedelta(seconds=ctx.settings.lease_seconds)


def _view(ctx: Context, s: Session, c: Cluster) -> ClusterView:
    loads = Counter(
        dict(
            s.execute(
                select(Clone.host, func.count())
                .where(Clone.host.in_([h.name for h in c.hosts]))
                .group_by(Clone.host)
            ).all()
        )
    )
    valid, note = _valid_sync(c)
    last = c.last_sync or {}
    ruleset = _rules_of(c)
    hosts = []
    for h in c.hosts:
        applied = None
        pending: dict[str, list[str]] = {}
        if valid and h.last_update_hash and h.last_update_hash == last.get("hash"):
            applied = True  # a rolling update applied this sync's packages
            pending = {k: v for k, v in ((h.pending or {}).get("host") or {}).items() if v}
        elif valid:
            applied = not last.get("lacks", {}).get(h.name)
            pending = {k: v for k, v in _lacks_guidance(last, h.name, ruleset).items() if v}
        hosts.append(
            ClusterHostView(
                name=h.name,
                coordinator=h.name == c.coordinator,
                state=h.state,
                memory_mib=h.memory_mib,
                vcpus=h.vcpus,
                clones=loads.get(h.name, 0),
                booted_kernel=h.booted_kernel,
                installed_packages=len(h.installed or {}),
                installed_at=h.installed_at,
                latest_synced_updates_applied=applied,
                pending=pending,
                last_software_update=h.last_software_update,
                last_update_hash=h.last_update_hash,
            )
        )
    channel = None
    if c.channel is not None:
        ch = c.channel
        channel = ChannelView(
            kind=ch["kind"],
            url=ch.get("url"),
            suite=ch.get("suite"),
            components=ch.get("components", []),
            arch=ch.get("arch"),
            fingerprint=ch.get("fingerprint"),
            hash=last.get("hash") if valid else None,
        )
    proxy = None
    if c.proxy is not None:
        proxy = ProxyView(
            url=c.proxy["url"],
            username=c.proxy.get("username"),
            password_set=bool(c.proxy.get("password")),
        )
    warnings = []
    if note is not None and c.channel is not None:
        warnings.append(note)
    applied_at = [h.last_software_update for h in c.hosts if h.last_software_update]
    old = rules.old_update_warning(max(applied_at) if applied_at else None, ctx.clock.now())
    if old:
        warnings.append(old)
    return ClusterView(
        name=c.name,
        coordinator=c.coordinator,
        ha=c.ha,
        hosts=hosts,
        channel=channel,
        proxy=proxy,
        sync_schedule=rules.describe_schedule(c.sync_schedule),
        sync_cron=c.sync_schedule,
        next_sync_at=c.next_sync_at,
        syncing=_alive(s, ctx, c.sync_owner),
        last_update_sync=c.last_update_sync,
        last_sync_hash=last.get("hash"),
        last_sync_coordinator=last.get("coordinator"),
        last_sync_valid=valid,
        last_error=c.last_error,
        warnings=warnings,
        guidance_rules=[
            {
                "packages": r.glob or r.pattern,
                "category": r.category,
                "task": r.task,
                "why": r.why,
                "source": "cluster" if r.glob else "default",
            }
            for r in ruleset
        ],
    )


def show_cluster(ctx: Context, name: str) -> ClusterView:
    with ctx.session() as s:
        return _view(ctx, s, _get(s, name))


def list_clusters(ctx: Context) -> list[ClusterView]:
    with ctx.session() as s:
        return [_view(ctx, s, c) for c in s.scalars(select(Cluster).order_by(Cluster.name))]


# --- changes --------------------------------------------------------------------------------


def create_cluster(
    ctx: Context,
    name: str,
    hosts: list[str],
    coordinator: str,
    *,
    memory_mib: int | None = None,
    vcpus: int | None = None,
    actor: str,
) -> ClusterView:
    rules.check_cluster(name, hosts, coordinator, ctx.driver.hosts())
    for what, value in (("memory", memory_mib), ("vcpus", vcpus)):
        if value is not None and not 1 <= value <= 1 << 40:
            raise InvalidInput(f"--{what} {value} is not valid: a positive number")
    with ctx.session() as s:
        if s.scalar(select(Cluster.id).where(Cluster.name == name)) is not None:
            raise Conflict(f"cluster {name} already exists")
        taken = s.execute(
            select(ClusterHost.name, Cluster.name)
            .join(Cluster, Cluster.id == ClusterHost.cluster_id)
            .where(ClusterHost.name.in_(hosts))
        ).all()
        if taken:
            host, other = taken[0]
            raise Conflict(f"host {host} is already in cluster {other}: a host is in one cluster")
        c = Cluster(name=name, coordinator=coordinator)
        c.hosts = [ClusterHost(name=h, memory_mib=memory_mib, vcpus=vcpus) for h in hosts]
        s.add(c)
        audit.record(s, actor, "cluster.create", name, hosts=hosts, coordinator=coordinator)
        s.commit()
        return _view(ctx, s, c)


def set_coordinator(ctx: Context, name: str, host: str, *, actor: str) -> ClusterView:
    """Changing the coordinator invalidates the last sync: a new one by the new coordinator is
    needed before its updates count (``last_sync_valid``)."""
    with ctx.session() as s:
        c = _get(s, name)
        rules.check_coordinator(name, [h.name for h in c.hosts], host)
        before = c.coordinator
        c.coordinator = host
        audit.record(s, actor, "cluster.coordinator", name, before=before, after=host)
        s.commit()
        return _view(ctx, s, c)


def set_channel(
    ctx: Context,
    name: str,
    kind: str,
    *,
    url: str | None = None,
    suite: str | None = None,
    components: list[str] | None = None,
    arch: str = "amd64",
    key: bytes | None = None,
    actor: str,
) -> ClusterView:
    rules.check_channel_kind(kind)
    if kind == "offline":
        if url or suite or components:
            raise InvalidInput(
                "the offline channel takes no --url, --suite, --components: its bundles carry"
                " them (give the --key they are signed with)"
            )
        channel: dict[str, Any] = {"kind": kind, "fingerprint": None}
        if key:
            fingerprint, keyring = import_key(key)
            channel.update(
                fingerprint=fingerprint,
                keyring=base64.b64encode(keyring).decode(),
                arch=arch,
                url=None,
            )
    else:
        rules.check_repository(url or "", suite or "", components or [], arch)
        if not key:
            raise InvalidInput(
                f"the {kind} channel needs the key its InRelease is signed with (--key FILE)"
            )
        fingerprint, keyring = import_key(key)
        channel = {
            "kind": kind,
            "url": (url or "").rstrip("/"),
            "suite": suite,
            "components": list(components or []),
            "arch": arch,
            "fingerprint": fingerprint,
            "keyring": base64.b64encode(keyring).decode(),
        }
    with ctx.session() as s:
        c = _get(s, name)
        rules.check_channel_change(name, c.channel["kind"] if c.channel else None, kind)
        c.channel = channel
        audit.record(
            s,
            actor,
            "cluster.channel",
            name,
            kind=kind,
            url=channel.get("url"),
            fingerprint=channel.get("fingerprint"),
        )
        s.commit()
        return _view(ctx, s, c)


def disable_channel(ctx: Context, name: str, *, actor: str) -> ClusterView:
    with ctx.session() as s:
        c = _get(s, name)
        if c.channel is None:
            raise Conflict(f"cluster {name} has no channel enabled")
        kind = c.channel["kind"]
        c.channel = None
        audit.record(s, actor, "cluster.channel.disable", name, kind=kind)
        s.commit()
        return _view(ctx, s, c)


def set_proxy(
    ctx: Context,
    name: str,
    url: str | None,
    *,
    username: str | None = None,
    password: str | None = None,
    actor: str,
) -> ClusterView:
    """The HTTP proxy a sync goes through (None: none). The password is kept for the sync and
    never returned, logged or audited."""
    if url is not None:
        if not url.startswith(("http://", "https://")) or any(c.isspace() for c in url):
            raise InvalidInput(f"proxy URL {url!r} is not valid: give http://HOST:PORT")
        if "@" in url.split("//", 1)[1].split("/", 1)[0]:
            raise InvalidInput("give the proxy's user and password as options, not in its URL")
        if (password is None) != (username is None):
            raise InvalidInput("give both --username and --password-file, or neither")
    with ctx.session() as s:
        c = _get(s, name)
        if url is None:
            if c.proxy is None:
                raise Conflict(f"cluster {name} has no proxy")
            c.proxy = None
            audit.record(s, actor, "cluster.proxy.disable", name)
        else:
            c.proxy = {"url": url, "username": username, "password": password}
            audit.record(
                s, actor, "cluster.proxy", name, url=url, username=username, password="(set)"
            )
        s.commit()
        return _view(ctx, s, c)


def set_guidance_rules(
    ctx: Context, name: str, items: list[Any] | None, *, actor: str
) -> ClusterView:
    """The cluster's own guidance rules (tried before the shipped ones); None: none."""
    if items is not None:
        rules.parse_rules(items)
    with ctx.session() as s:
        c = _get(s, name)
        c.guidance_rules = items or None
        audit.record(s, actor, "cluster.guidance-rules", name, rules=items or [])
        s.commit()
        return _view(ctx, s, c)


def set_sync_schedule(
    ctx: Context, name: str, kind: str, *, day: int | None = None, at: str | None = None, actor: str
) -> ClusterView:
    cron = rules.parse_sync_schedule(kind, day=day, at=at)
    with ctx.session() as s:
        c = _get(s, name)
        c.sync_schedule = cron
        c.next_sync_at = None if cron is None else next_sync(cron, ctx.clock.now())
        audit.record(s, actor, "cluster.sync-schedule", name, cron=cron)
        s.commit()
        return _view(ctx, s, c)


# --- the sync -------------------------------------------------------------------------------


def _claim(ctx: Context, name: str, *, bundle: bool = False) -> None:
    with ctx.session() as s:
        c = _get(s, name)
        if c.channel is None:
            raise Conflict(
                f"cluster {name} has no update channel: goldfleet cluster channel {name} normal"
                " --url URL --suite S --components C --key KEYFILE"
            )
        if c.channel["kind"] == "offline" and not bundle:
            raise Conflict(
                f"cluster {name} is on the offline channel: its updates come from an uploaded"
                f" bundle (goldfleet cluster bundle upload {name} FILE)"
            )
        if _alive(s, ctx, c.sync_owner):
            raise Conflict(f"a sync of cluster {name} is running; try again when it is done")
        if _updating(s, c):
            raise Conflict(
                f"a rolling update of cluster {name} is not finished: no sync until it is"
                f" (goldfleet cluster update-status {name})"
            )
        c.sync_owner = ctx.server_id
        c.sync_started_at = ctx.clock.now()
        s.commit()


def _release(ctx: Context, name: str, error: str | None) -> None:
    with ctx.session() as s:
        c = _get(s, name)
        if c.sync_owner == ctx.server_id:
            c.sync_owner = None
            c.sync_started_at = None
        c.last_error = error
        s.commit()


BUNDLE_URL = "http://bundle.invalid"  # an uploaded bundle's files, read from its folder


class _FolderTransport(httpx.BaseTransport):
    """Answers ``GET http://bundle.invalid/PATH`` with the file PATH of an unpacked bundle
    (safe relative paths only): the sync reads a bundle exactly as it reads a repository."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.lstrip("/")
        try:
            rules.safe_path(path, "bundle")
        except InvalidInput:
            return httpx.Response(404)
        file = self.root / path
        if not file.is_file():
            return httpx.Response(404)
        return httpx.Response(200, content=file.read_bytes())


def _folder_client(root: Path) -> httpx.Client:
    return httpx.Client(transport=_FolderTransport(root))


MAX_BUNDLE_FILES = 10_000


def _unpack(bundle: Path, into: Path, limit: int) -> tuple[str, list[str]]:
    """A bundle: a tar of an apt repository (``dists/SUITE/InRelease``, its indexes,
    ``pool/…/*.deb``). Only regular files and folders under safe relative names are unpacked,
    at most ``limit`` bytes; returns its suite and components."""
    try:
        with tarfile.open(bundle) as tar:
            members = tar.getmembers()
            if len(members) > MAX_BUNDLE_FILES:
                raise InvalidInput(f"the bundle has more than {MAX_BUNDLE_FILES} entries")
            total = 0
            for m in members:
                name = m.name.removeprefix("./").rstrip("/")
                if not name or name == ".":
                    continue
                rules.safe_path(name, "the bundle")
                if m.isdir():
                    (into / name).mkdir(parents=True, exist_ok=True)
                    continue
                if not m.isfile():
                    raise InvalidInput(f"the bundle's {name} is not a regular file or folder")
                total += m.size
                if total > limit:
                    raise InvalidInput(f"the bundle unpacks to more than {limit} bytes")
                (into / name).parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(m)
                assert src is not None
                with src, open(into / name, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
    except tarfile.TarError as exc:
        raise InvalidInput(f"the bundle is not a tar file: {exc}") from None
    dists = into / "dists"
    suites = [p.name for p in dists.iterdir() if p.is_dir()] if dists.is_dir() else []
    if len(suites) != 1 or not (dists / suites[0] / "InRelease").is_file():
        raise InvalidInput(
            "the bundle must hold one apt repository: dists/SUITE/InRelease (signed), its"
            " Packages indexes and the .debs they name"
        )
    components = sorted(
        p.name
        for p in (dists / suites[0]).iterdir()
        if p.is_dir() and any(q.name.startswith("binary-") for q in p.iterdir())
    )
    if not components:
        raise InvalidInput(f"the bundle's suite {suites[0]} has no component with packages")
    return suites[0], components


def upload_bundle(ctx: Context, name: str, bundle: Path, *, actor: str) -> SyncView:
    """The offline channel's sync: a bundle (a tar of a signed apt repository) verified exactly
    as a sync verifies a repository (InRelease against the channel's key, indexes and .debs
    against it), what the hosts lack put in the coordinator's cache, the update hash."""
    with ctx.session() as s:
        c = _get(s, name)
        if c.channel is None or c.channel["kind"] != "offline":
            raise Conflict(
                f"cluster {name} is not on the offline channel (goldfleet cluster channel {name}"
                " offline --key KEYFILE)"
            )
        if not c.channel.get("keyring"):
            raise Conflict(
                f"the offline channel of cluster {name} has no key to verify a bundle with:"
                f" goldfleet cluster channel {name} offline --key KEYFILE"
            )
    # one folder per cluster: the claim makes this upload the cluster's only one, and a folder
    # a killed upload left is removed by the next
    work = ctx.settings.store / "host-updates" / f".bundle-{name}"
    _claim(ctx, name, bundle=True)
    try:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        suite, components = _unpack(bundle, work, MAX_BUNDLE)
        return _sync(ctx, name, actor, bundle=(work, suite, components))
    except GoldfleetError as exc:
        _release(ctx, name, exc.message)
        raise
    except Exception as exc:
        _release(ctx, name, f"the bundle's sync failed: {exc}")
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _http(proxy: dict[str, Any] | None) -> httpx.Client:
    kw: dict[str, Any] = {}
    if proxy is not None:
        auth = None
        if proxy.get("username") is not None:
            auth = (proxy["username"], proxy.get("password") or "")
        kw["proxy"] = httpx.Proxy(proxy["url"], auth=auth)
    return httpx.Client(
        timeout=httpx.Timeout(60.0, connect=10.0), follow_redirects=True, trust_env=False, **kw
    )


def _stream(http: httpx.Client, url: str, what: str) -> Iterator[bytes]:
    try:
        with http.stream("GET", url) as r:
            if r.status_code == 407:
                raise RepositoryError(
                    f"the proxy refused {what}: 407 Proxy Authentication Required (check the"
                    " proxy's username and password: goldfleet cluster proxy)"
                )
            if r.status_code != 200:
                raise RepositoryError(f"{what}: {url} answered HTTP {r.status_code}")
            yield from r.iter_bytes(CHUNK)
    except httpx.ProxyError as exc:
        raise RepositoryError(f"the proxy refused {what}: {exc}") from None
    except httpx.HTTPError as exc:
        raise RepositoryError(f"{what}: {url} could not be read: {exc}") from None


def _fetch(
    http: httpx.Client, url: str, what: str, limit: int = MAX_INDEX, named: bool = False
) -> bytes:
    """``named``: ``limit`` is the size the signed Release names."""
    out = bytearray()
    for chunk in _stream(http, url, what):
        out += chunk
        if len(out) > limit:
            if named:
                raise RepositoryError(
                    f"{what}: larger than the {limit} bytes the signed Release names (its size"
                    " differs from the signed Release); refused, nothing was downloaded"
                )
            raise RepositoryError(f"{what}: larger than {limit} bytes; refused")
    return bytes(out)


_DECOMPRESS = {"": lambda b: b, ".gz": gzip.decompress, ".xz": lzma.decompress}
_DECOMPRESS[".bz2"] = bz2.decompress


def _packages(
    http: httpx.Client, base: str, release: rules.Release, component: str, arch: str
) -> list[rules.PackageEntry]:
    """The component's Packages index, in the first form the signed Release lists, its bytes
    checked against the Release's sha256 and size."""
    stem = f"{component}/binary-{arch}/Packages"
    for ext in ("", ".xz", ".gz", ".bz2"):
        if stem + ext not in release.sha256:
            continue
        sha, size = release.sha256[stem + ext]
        data = _fetch(http, f"{base}/{stem}{ext}", f"{stem}{ext}", limit=size, named=True)
        got = hashlib.sha256(data).hexdigest()
        if len(data) != size or got != sha:
            raise RepositoryError(
                f"{stem}{ext}: its sha256 {got} differs from the signed Release's {sha};"
                " refused, nothing was downloaded"
            )
        try:
            text = _DECOMPRESS[ext](data)
        except (OSError, lzma.LZMAError, EOFError, ValueError) as exc:
            raise RepositoryError(f"{stem}{ext} cannot be decompressed: {exc}") from None
        if len(text) > MAX_INDEX:
            raise RepositoryError(f"{stem}: larger than {MAX_INDEX} bytes; refused")
        return rules.parse_packages(text.decode("utf-8", errors="replace"), stem)
    raise RepositoryError(
        f"the signed Release of suite {release.suite or '?'} lists no {stem}: check the"
        " channel's --components and the architecture"
    )


def _read_hosts(
    ctx: Context, hosts: list[str], cluster: str
) -> tuple[dict[str, dict[str, str]], dict[str, str | None], list[str]]:
    """Each host's installed packages and booted kernel through its agent; the hosts that
    cannot be read are offline. Nothing is stored here: the sync stores what it read with its
    result, in one transaction."""
    installed: dict[str, dict[str, str]] = {}
    booted: dict[str, str | None] = {}
    offline = []
    for host in hosts:
        agent = make_agent(ctx.settings, host)
        try:
            installed[host] = agent.installed()
            booted[host] = agent.booted_kernel()
        except HostUnreachable as exc:
            log.warning("cluster %s: %s", cluster, exc.message)
            offline.append(host)
    return installed, booted, offline


def sync(
    ctx: Context, name: str, *, actor: str, progress: streams.Report | None = None
) -> SyncView:
    """Read the channel's signed index, compare with what each host has installed, download
    the needed ``.deb``s into the coordinator's cache (sha256 verified) and record the update
    hash. Refused, keeping the last sync: an unsigned or wrongly signed repository, an index or
    a package whose sha256 differs, a proxy refusing the credentials."""
    _claim(ctx, name)
    try:
        result = _sync(ctx, name, actor, progress)
    except GoldfleetError as exc:
        _release(ctx, name, exc.message)
        raise
    except Exception as exc:
        _release(ctx, name, f"the sync failed: {exc}")
        raise
    return result


def _sync(
    ctx: Context,
    name: str,
    actor: str,
    progress: streams.Report | None = None,
    bundle: tuple[Path, str, list[str]] | None = None,
) -> SyncView:
    """``bundle``: (the folder it was unpacked to, its suite, its components): read from there
    instead of the channel's URL, verified the same way."""
    with ctx.session() as s:
        c = _get(s, name)
        channel = dict(c.channel or {})
        if bundle is not None:
            channel.update(url=BUNDLE_URL, suite=bundle[1], components=bundle[2])
        proxy = c.proxy
        coordinator = c.coordinator
        hosts = [h.name for h in c.hosts]
        ruleset = _rules_of(c)
    crashpoints.reached("cluster-sync.claimed")
    installed, booted, offline = _read_hosts(ctx, hosts, name)
    if coordinator in offline:
        raise Conflict(
            f"cluster {name}: the coordinator {coordinator} cannot be read; a sync is made"
            " by the coordinator (change it with goldfleet cluster coordinator)"
        )
    keyring = base64.b64decode(channel["keyring"])
    base = f"{channel['url']}/dists/{channel['suite']}"
    cache = DebCache(ctx.settings.store)
    cache.clear_work(name)  # a killed sync's partial downloads (this sync holds the cluster)
    opened = _http(proxy) if bundle is None else _folder_client(bundle[0])
    with opened as http:
        signed = _fetch(http, f"{base}/InRelease", "the channel's InRelease")
        text = verify_clearsigned(signed, keyring, f"the InRelease of {channel['url']}")
        release = rules.parse_release(text.decode("utf-8", errors="replace"))
        rules.check_release(release, channel["suite"], ctx.clock.now())
        entries = []
        for component in channel["components"]:
            entries += _packages(http, base, release, component, channel["arch"])
        plan = rules.plan_updates(entries, installed, channel["arch"])
        for e in plan.packages:  # the guidance fields are checked before any download
            rules.guidance_of(e, ruleset)
        fetch = []
        for e in plan.packages:
            path = cache.path(name, coordinator, e.sha256, e.filename)
            if not cache.held(path, e.sha256, e.size):
                fetch.append((e, path))
        total = sum(e.size for e, _ in fetch)
        done = [0]

        def moved_now(n: int) -> None:
            done[0] += n
            if progress is not None:
                progress(done[0], total)

        if progress is not None:
            progress(0, total)
        downloaded = moved = 0
        for e, path in fetch:
            url = f"{channel['url']}/{e.filename}"
            moved += cache.put(path, _stream(http, url, e.filename), e.sha256, e.size, moved_now)
            downloaded += 1
    crashpoints.reached("cluster-sync.downloaded")
    digest = rules.update_hash((e.package, e.version, e.sha256) for e in plan.packages)
    now = ctx.clock.now()
    record = {
        "hash": digest,
        "coordinator": coordinator,
        "fingerprint": channel["fingerprint"],
        "channel": channel["kind"],
        "at": now.isoformat(),
        "packages": [
            {
                "package": e.package,
                "version": e.version,
                "architecture": e.architecture,
                "filename": e.filename,
                "size": e.size,
                "sha256": e.sha256,
                "source": e.source,
                "section": e.section,
                "description": e.description,
                "declared": e.declared,
                "livepatch_kernel": e.livepatch_kernel,
            }
            for e in plan.packages
        ],
        "lacks": {
            h: [
                {"package": x.package, "installed": x.installed, "available": x.available}
                for x in v
            ]
            for h, v in plan.lacks.items()
        },
        "booted": booted,
        "offline": offline,
    }
    with ctx.session() as s:  # what was read from the hosts and the result, together
        c = _get(s, name)
        for h in c.hosts:
            if h.name in offline:
                h.state = "offline"
            elif h.name in installed:
                if h.state == "offline":
                    h.state = "enabled"
                h.installed = installed[h.name]
                h.booted_kernel = booted[h.name]
                h.installed_at = now
        c.last_sync = record
        c.last_update_sync = now
        c.last_error = None
        if c.sync_owner == ctx.server_id:
            c.sync_owner = None
            c.sync_started_at = None
        audit.record(
            s,
            actor,
            "cluster.sync",
            name,
            hash=digest,
            packages=len(plan.packages),
            downloaded=downloaded,
            coordinator=coordinator,
        )
        s.commit()
    log.info("cluster %s synced: %d packages, hash %s", name, len(plan.packages), digest)
    return SyncView(
        cluster=name,
        coordinator=coordinator,
        hash=digest,
        packages=len(plan.packages),
        downloaded=downloaded,
        bytes_downloaded=moved,
        cache=str(cache.folder(name, coordinator)),
        offline_hosts=offline,
    )


def stream_sync(ctx: Context, name: str, *, actor: str) -> Iterator[bytes]:
    """The sync as JSON lines (services/common/streams.py): ``start``, ``progress`` in bytes
    downloaded of those the hosts lack, then ``done`` with the result or ``error``; a long sync
    keeps its connection alive this way."""
    with ctx.session() as s:
        _get(s, name)  # an unknown cluster is a 404, before the stream starts

    def work(report: streams.Report) -> SyncView:
        return sync(ctx, name, actor=actor, progress=report)

    return streams.stream({"cluster": name, "total": 0}, work, what=f"sync of cluster {name}")


# --- what is available ----------------------------------------------------------------------


def updates(ctx: Context, name: str) -> UpdatesView:
    """As XenServer's ``/updates``: per host the packages it lacks and their guidance; per
    update (a source package) its packages, versions, description and guidance; the hash."""
    with ctx.session() as s:
        c = _get(s, name)
        valid, note = _valid_sync(c)
        last = c.last_sync or {}
        states = {h.name: h.state for h in c.hosts}
        ruleset = _rules_of(c)
    sync_info = {
        "at": last.get("at"),
        "coordinator": last.get("coordinator"),
        "valid": valid,
        "note": note,
        "offline_hosts": last.get("offline", []),
    }
    if not last:
        return UpdatesView(hosts=[], updates=[], hash=None, sync=sync_info)
    by_source: dict[str, list[dict[str, Any]]] = {}
    for p in last["packages"]:
        by_source.setdefault(p["source"], []).append(p)
    update_of = {p["package"]: src for src, ps in by_source.items() for p in ps}
    update_list = []
    for src in sorted(by_source):
        ps = by_source[src]
        update_list.append(
            {
                "id": src,
                "packages": [
                    {k: p[k] for k in ("package", "version", "sha256", "size")} for p in ps
                ],
                "versions": sorted({p["version"] for p in ps}),
                "description": "; ".join(
                    sorted({p["description"] for p in ps if p["description"]})
                ),
                "guidance": rules.merge(rules.guidance_of(_entry(p), ruleset) for p in ps),
            }
        )
    hosts_list = []
    for host, lacks in sorted(last["lacks"].items()):
        hosts_list.append(
            {
                "host": host,
                "state": states.get(host),
                "booted_kernel": last.get("booted", {}).get(host),
                "packages": lacks,
                "updates": sorted({update_of[x["package"]] for x in lacks}),
                "guidance": _lacks_guidance(last, host, ruleset),
            }
        )
    return UpdatesView(hosts=hosts_list, updates=update_list, hash=last["hash"], sync=sync_info)


# --- the schedule ---------------------------------------------------------------------------


def sync_tick(ctx: Context) -> None:
    """Called by the runner loop: start the syncs whose scheduled time has come, one at a time
    in this server; a sync that fails is recorded in ``last_error`` and tried at its next
    scheduled time."""
    if _syncing.locked():
        return
    now = ctx.clock.now()
    with ctx.session() as s:
        due = s.scalars(
            select(Cluster.name).where(
                Cluster.next_sync_at.is_not(None), Cluster.next_sync_at <= now
            )
        ).all()
    if due:
        threading.Thread(
            target=_scheduled, args=(ctx, list(due)), name="goldfleet-cluster-sync"
        ).start()


def _scheduled(ctx: Context, names: list[str]) -> None:
    if not _syncing.acquire(blocking=False):
        return
    try:
        for name in names:
            with ctx.session() as s:
                c = s.scalar(select(Cluster).where(Cluster.name == name))
                if c is None or c.next_sync_at is None or c.next_sync_at > ctx.clock.now():
                    continue
                if _alive(s, ctx, c.sync_owner) or _updating(s, c):
                    continue  # a sync or an update under way: the scheduled one waits
                c.next_sync_at = next_sync(c.sync_schedule or "", ctx.clock.now())
                s.commit()
            try:
                r = sync(ctx, name, actor="schedule")
                log.info("scheduled sync of cluster %s: hash %s", name, r.hash)
            except GoldfleetError as exc:
                log.warning("scheduled sync of cluster %s failed: %s", name, exc.message)
            except Exception:
                log.exception("scheduled sync of cluster %s failed", name)
    finally:
        _syncing.release()


# --- the rolling update's plan --------------------------------------------------------------


class HostPlanView(BaseModel):
    host: str
    coordinator: bool
    packages: list[dict[str, Any]]  # what it lacks: package, installed, available
    tasks: list[str]  # the guidance tasks the update at this level runs
    steps: list[str]  # in order
    deferred: dict[str, list[str]]  # left as pending guidance (above the level)


class PrecheckView(BaseModel):
    name: str
    ok: bool
    reason: str = ""


class UpdatePlanView(BaseModel):
    cluster: str
    hash: str
    level: str
    ready: bool  # every precheck below passed
    prechecks: list[PrecheckView]
    not_checked: list[str]  # prechecks of issue 11 goldfleet cannot decide yet
    hosts: list[HostPlanView]  # in update order: the coordinator first
    note: str


NOT_CHECKED = [
    "hosts-reachable-now, no-pending-mandatory-guidance, ha-and-balancing-disabled,"
    " no-update-running: checked when the update starts (goldfleet cluster update)",
]


def sync_prechecks(
    s: Session, ctx: Context, c: Cluster, requested_hash: str
) -> list[rules.Precheck]:
    """The prechecks about hosts and the last sync, asked alike by the plan and the update."""
    last = c.last_sync or {}
    return rules.prechecks(
        requested_hash=requested_hash,
        synced_hash=last.get("hash"),
        synced_by=last.get("coordinator"),
        coordinator=c.coordinator,
        host_states={h.name: h.state for h in c.hosts},
        offline_at_sync=last.get("offline", []),
        syncing=_alive(s, ctx, c.sync_owner),
    )


def update_plan(ctx: Context, name: str, requested_hash: str, level: str) -> UpdatePlanView:
    """What a rolling update of the cluster at ``level`` with ``requested_hash`` would do, and
    its prechecks by name. Nothing is run: ``cluster update`` runs it (_rolling.py)."""
    rules.check_level(level)
    with ctx.session() as s:
        c = _get(s, name)
        last = c.last_sync or {}
        checks = sync_prechecks(s, ctx, c, requested_hash)
        if last and c.channel is not None:
            same = last.get("fingerprint") == c.channel.get("fingerprint")
            checks.append(
                rules.Precheck(
                    "channel-unchanged",
                    same,
                    "" if same else "the channel changed since the last sync: sync again",
                )
            )
        order = rules.update_order([h.name for h in c.hosts], c.coordinator)
        coordinator = c.coordinator
        ruleset = _rules_of(c)
    plans = []
    for host in order:
        g = _lacks_guidance(last, host, ruleset) if last else rules.empty_guidance()
        tasks, deferred = rules.split_by_level(g, level)
        lacks = last.get("lacks", {}).get(host, []) if last else []
        plans.append(
            HostPlanView(
                host=host,
                coordinator=host == coordinator,
                packages=lacks,
                tasks=tasks,
                steps=rules.host_steps(tasks) if lacks else [],
                deferred={k: v for k, v in deferred.items() if v},
            )
        )
    return UpdatePlanView(
        cluster=name,
        hash=requested_hash,
        level=level,
        ready=all(p.ok for p in checks),
        prechecks=[PrecheckView(name=p.name, ok=p.ok, reason=p.reason) for p in checks],
        not_checked=NOT_CHECKED,
        hosts=plans,
        note="a plan only: goldfleet cluster update NAME --hash H --level L runs it"
        " (docs/host-updates.md)",
    )


class HostUpdateView(BaseModel):
    """A host as ``host show`` gives it: its cluster, if any, and its update state there."""

    name: str
    cluster: str | None = None
    state: ClusterHostView | None = None
    note: str | None = None


def show_host(ctx: Context, host: str) -> HostUpdateView:
    if host not in ctx.driver.hosts():
        raise NotFound(
            f"host {host!r} is not a host of this server's driver; see: goldfleet host list"
        )
    with ctx.session() as s:
        row = s.scalar(select(ClusterHost).where(ClusterHost.name == host))
        if row is None:
            return HostUpdateView(
                name=host, note="in no cluster: goldfleet cluster create NAME --hosts ..."
            )
        view = _view(ctx, s, row.cluster)
    state = next(h for h in view.hosts if h.name == host)
    return HostUpdateView(name=host, cluster=view.name, state=state)


# the helpers the rolling update (_rolling.py) shares
get_cluster = _get
valid_sync = _valid_sync
rules_of = _rules_of
lacks_guidance = _lacks_guidance
alive = _alive
cluster_view = _view
