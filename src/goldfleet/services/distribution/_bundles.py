"""Offline update bundles: a template's versions and the layers a receiver lacks, in one signed
file, for sites that cannot reach this server.

A bundle is a plain tar, written and read as a stream, with its members in a fixed order:
``manifest.json``, ``signature``, then ``layers/sha256-<hex>.qcow2`` for each carried layer in
the manifest's order (parents first). The signature is an Ed25519 signature over the sha256 of
the manifest's bytes; the manifest lists every layer's digest, so the signature covers the
layers too. A receiver trusts its own key and the keys an admin added by name.

The file is hostile until proven otherwise: members are read one by one (never extracted by
name), the signature is checked before any layer byte is read, every layer is hashed while it
is written to a dot-named work file, then checked like an outside image against its declared
parent. Only when every layer checks do the versions enter the catalog, in one transaction; a
refusal removes every file it made and writes nothing.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import io
import json
import logging
import os
import queue
import secrets
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from goldfleet import crashpoints
from goldfleet.context import Context
from goldfleet.db.tables import Clone, Layer, Template, Version
from goldfleet.domain import bundles as policy_rules
from goldfleet.domain import rules
from goldfleet.domain.model import CloneKind, Outline, VersionStatus
from goldfleet.domain.names import DIGEST_PATTERN, check_name, layer_filename
from goldfleet.errors import (
    BadImage,
    Conflict,
    GoldfleetError,
    InvalidInput,
    NotFound,
    StoreError,
)
from goldfleet.services.catalog import add_layer, used_layers
from goldfleet.services.common import audit, chain, get_template
from goldfleet.store.layers import LayerInfo
from goldfleet.store.qemu import QemuError

FORMAT = "goldfleet-bundle/1"
MANIFEST = "manifest.json"
SIGNATURE = "signature"
KEY_FILE = "bundle-signing.key"
TRUSTED_FILE = "trusted-keys.json"
MAX_MANIFEST = 4 << 20
MAX_SIGNATURE = 4096
# a pax or GNU long-name header's body, read whole and searched by tarfile: goldfleet writes
# pax headers only for sizes of 8 GiB or more (under 512 bytes); tarfile's search of a pax body
# takes time quadratic in its length (seconds at 64 KiB)
MAX_TAR_HEADER = 4096
CHUNK = 1 << 20

log = logging.getLogger("goldfleet.bundles")

import_lock = threading.Lock()  # one import at a time: a refusal removes only its own files


# --- keys ---------------------------------------------------------------------------------


class KeyView(BaseModel):
    name: str
    public_key: str  # raw Ed25519 public key, hex
    fingerprint: str


class KeysView(BaseModel):
    own: KeyView
    trusted: list[KeyView]


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()[:32]


def _key_view(name: str, raw: bytes) -> KeyView:
    return KeyView(name=name, public_key=raw.hex(), fingerprint=fingerprint(raw))


def signing_key(ctx: Context) -> Ed25519PrivateKey:
    """The server's signing key, made on first use (PEM, readable by the owner only)."""
    path = ctx.settings.home / KEY_FILE
    if not path.exists():
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # made by a concurrent request: use that one
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
                f.flush()
                os.fsync(f.fileno())
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise GoldfleetError(f"{path} does not hold an Ed25519 key; move it away to make a new one")
    return key


def _read_trusted(ctx: Context) -> dict[str, bytes]:
    path = ctx.settings.home / TRUSTED_FILE
    if not path.exists():
        return {}
    entries = json.loads(path.read_text()).get("keys", [])
    return {e["name"]: bytes.fromhex(e["public_key"]) for e in entries}


def _write_trusted(ctx: Context, keys: dict[str, bytes]) -> None:
    path = ctx.settings.home / TRUSTED_FILE
    work = path.with_name(f".{TRUSTED_FILE}.{secrets.token_hex(4)}")
    body = {"keys": [{"name": n, "public_key": k.hex()} for n, k in sorted(keys.items())]}
    fd = os.open(work, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(body, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(work, path)


def parse_public_key(text: str) -> bytes:
    """A raw Ed25519 public key given as 64 hex digits or base64 of its 32 bytes."""
    text = text.strip()
    raw: bytes | None = None
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raw = None
    if raw is None or len(raw) != 32:
        raise InvalidInput(
            "the public key is not valid: give the 32-byte Ed25519 key as 64 hex digits or as"
            " base64 (goldfleet keys show on the signing server prints it)"
        )
    return raw


def show_keys(ctx: Context) -> KeysView:
    own = _raw(signing_key(ctx).public_key())
    trusted = [_key_view(n, k) for n, k in sorted(_read_trusted(ctx).items())]
    return KeysView(own=_key_view("this server", own), trusted=trusted)


def trust_key(ctx: Context, name: str, public_key: str, *, actor: str) -> KeyView:
    check_name(name, "key name")
    raw = parse_public_key(public_key)
    keys = _read_trusted(ctx)
    if name in keys and keys[name] != raw:
        raise Conflict(f"a different key is trusted as {name}; untrust it first")
    keys[name] = raw
    _write_trusted(ctx, keys)
    with ctx.session() as s:
        audit.record(s, actor, "key.trust", name, fingerprint=fingerprint(raw))
        s.commit()
    return _key_view(name, raw)


def untrust_key(ctx: Context, name: str, *, actor: str) -> None:
    check_name(name, "key name")
    keys = _read_trusted(ctx)
    if name not in keys:
        raise NotFound(f"no key is trusted as {name}; see: goldfleet keys show")
    raw = keys.pop(name)
    _write_trusted(ctx, keys)
    with ctx.session() as s:
        audit.record(s, actor, "key.untrust", name, fingerprint=fingerprint(raw))
        s.commit()


# --- the manifest -------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class LayerEntry(_Strict):
    digest: str = Field(pattern=DIGEST_PATTERN)
    parent: str | None = Field(pattern=DIGEST_PATTERN)
    size: int = Field(ge=0)
    virtual_size: int = Field(ge=0)
    included: bool


class VersionEntry(_Strict):
    number: int = Field(ge=1)
    top_layer: str = Field(pattern=DIGEST_PATTERN)
    note: str = Field(max_length=10_000)


class Manifest(_Strict):
    format: str
    template: str
    kind: str
    outline: dict[str, list[int]]
    current: int | None
    since: int | None
    policy_only: bool
    versions: list[VersionEntry]
    layers: list[LayerEntry]  # parents before children


class SignatureFile(_Strict):
    algorithm: str
    public_key: str
    signature: str


class PolicyChangeView(BaseModel):
    name: str  # kind | outline
    before: str
    after: str
    applies: str  # all clones | new clones
    note: str


class BundleView(BaseModel):
    template: str
    versions_added: list[int]
    versions_skipped: list[int]
    layers_received: int
    signer: str
    # the key the template is bound to after the import (None: imported by a site's token)
    bound_to: str | None = None
    bound_now: bool = False  # this import bound the template to its signer's key
    policies: list[PolicyChangeView] = []  # the template policies this import changed


class BundleCheck(BaseModel):
    """What ``bundle import --check`` found: whether the import would succeed, and what it
    would change. Nothing was written."""

    file_ok: bool  # would the import succeed
    refusal: str | None = None  # why not
    template: str | None = None
    signer: str | None = None
    bound_to: str | None = None  # the key the template is (or would be) bound to
    bound_now: bool = False  # the import would bind the template
    creates_template: bool = False
    versions_added: list[int] = []
    versions_skipped: list[int] = []
    current_before: int | None = None
    current_after: int | None = None
    policies: list[PolicyChangeView] = []
    layers_checked: int = 0  # carried layers whose size and digest were checked
    layer_bytes: int = 0
    clones: int = 0  # clones of the template
    # clones not on the version current after the import: what `clone recreate --template`
    # would move (the import itself rebuilds none)
    clones_behind: list[str] = []


class BindingView(BaseModel):
    template: str
    key: str  # the trusted key's name ("this server" for the own key)
    fingerprint: str
    previous: str | None  # fingerprint of the key it was bound to


@dataclass(frozen=True)
class ExportPlan:
    manifest: bytes
    signature: bytes
    layers: list[tuple[str, Path, int]]  # member name, file, size


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o444
    info.type = tarfile.REGTYPE
    return info


def sign(key: Ed25519PrivateKey, manifest: bytes) -> bytes:
    body = {
        "algorithm": "ed25519-sha256",
        "public_key": _raw(key.public_key()).hex(),
        "signature": key.sign(hashlib.sha256(manifest).digest()).hex(),
    }
    return json.dumps(body, indent=2).encode()


# --- export -------------------------------------------------------------------------------


def plan_export(ctx: Context, template: str, since: int | None, policy_only: bool) -> ExportPlan:
    """Read the catalog and sign the manifest; no file is opened yet."""
    with ctx.session() as s:
        t = get_template(s, template)
        versions: list[Version] = []
        base: set[str] = set()
        if not policy_only:
            if since is not None:
                held = {v.number: v for v in t.versions}
                if since not in held:
                    raise NotFound(
                        f"template {template} has no version v{since}; see: goldfleet template"
                        f" versions {template}"
                    )
                base = {x.digest for x in chain(s, held[since].top_layer)}
            versions = [v for v in t.versions if since is None or v.number > since]
            if not versions:
                raise Conflict(
                    f"template {template} has no version after v{since}; nothing to export"
                )
        current = t.current_version.number if t.current_version and not policy_only else None
        return plan_versions(ctx, s, t, versions, base, current=current, since=since)


def plan_versions(
    ctx: Context,
    s: Session,
    t: Template,
    versions: list[Version],
    held: set[str],
    *,
    current: int | None,
    since: int | None = None,
) -> ExportPlan:
    """A signed manifest of ``versions`` of ``t`` carrying every layer of their chains but the
    ``held`` ones (an empty list of versions: the template's settings only)."""
    layers: dict[str, Layer] = {}
    for v in versions:
        for layer in chain(s, v.top_layer):
            layers[layer.digest] = layer
    ordered = sorted(layers.values(), key=lambda x: (x.depth, x.digest))
    manifest = Manifest(
        format=FORMAT,
        template=t.name,
        kind=t.kind,
        outline={"temp": list(t.outline.get("temp", [])), "data": t.outline.get("data", [])},
        current=current,
        since=since if versions else None,
        policy_only=not versions,
        versions=[
            VersionEntry(number=v.number, top_layer=v.top_layer, note=v.note) for v in versions
        ],
        layers=[
            LayerEntry(
                digest=x.digest,
                parent=x.parent,
                size=x.size,
                virtual_size=x.virtual_size,
                included=x.digest not in held,
            )
            for x in ordered
        ],
    )
    body = json.dumps(manifest.model_dump(), indent=2).encode()
    carried = [
        (f"layers/{layer_filename(x.digest)}", ctx.layers.path(x.digest), x.size)
        for x in manifest.layers
        if x.included
    ]
    return ExportPlan(manifest=body, signature=sign(signing_key(ctx), body), layers=carried)


def write_bundle(plan: ExportPlan, out: IO[bytes]) -> None:
    """Stream the bundle into ``out`` (a file or a pipe; nothing is seeked)."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, data in ((MANIFEST, plan.manifest), (SIGNATURE, plan.signature)):
            tar.addfile(_tar_info(name, len(data)), _BytesReader(data))
        for name, path, size in plan.layers:
            try:
                with path.open("rb") as f:
                    tar.addfile(_tar_info(name, size), f)
            except OSError as exc:  # a layer file gone or shorter than its size, a full disk
                raise StoreError(f"the bundle could not be written at {name}: {exc}") from exc


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.pos + n
        chunk, self.pos = self.data[self.pos : end], min(end, len(self.data))
        return chunk


def export_bundle(
    ctx: Context, template: str, since: int | None, policy_only: bool, out_stream: IO[bytes]
) -> ExportPlan:
    plan = plan_export(ctx, template, since, policy_only)
    write_bundle(plan, out_stream)
    return plan


class _Gone(Exception):
    """The consumer of a bundle stream went away."""


def _put(q: queue.Queue[object], item: object, gone: threading.Event) -> None:
    """Put ``item`` on the bounded queue ``q``, waiting while it is full; give up (``_Gone``)
    once ``gone`` is set, so a writer is never left blocked on a queue nobody reads."""
    while not gone.is_set():
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            pass
    raise _Gone


class _QueueWriter:
    def __init__(self, q: queue.Queue[object], gone: threading.Event) -> None:
        self.q, self.gone = q, gone

    def write(self, data: bytes) -> int:
        _put(self.q, bytes(data), self.gone)
        return len(data)

    def flush(self) -> None:
        pass


def stream_bundle(plan: ExportPlan) -> Iterator[bytes]:
    """The bundle as chunks, written by a thread (for an HTTP response or request body).

    A failure of the writer (a layer file gone or short) is raised here after the chunks before
    it, so the body ends incomplete (an HTTP response is aborted) rather than as a shorter tar
    that looks whole. When the consumer stops early (closes this generator, or drops it), the
    writer gives up and closes its layer file."""
    q: queue.Queue[object] = queue.Queue(maxsize=16)
    gone = threading.Event()
    done = object()

    def run() -> None:
        outcome: object = done
        try:
            write_bundle(plan, _QueueWriter(q, gone))  # type: ignore[arg-type]
        except _Gone:
            return
        except BaseException as exc:
            outcome = exc
        with contextlib.suppress(_Gone):  # nobody is reading any more
            _put(q, outcome, gone)

    threading.Thread(target=run, daemon=True, name="bundle-writer").start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                log.error("a bundle stream was aborted: %s", item)
                raise item
            yield cast(bytes, item)
    finally:
        gone.set()


# --- import -------------------------------------------------------------------------------


def _refuse(message: str) -> InvalidInput:
    return InvalidInput(f"bundle refused: {message}; nothing was imported")


_LONG_NAME = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
_PAX = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)


class _CheckedHeader(tarfile.TarInfo):
    """A member header as an import reads it: tarfile reads the body of a pax or GNU long-name
    header whole into memory (and a sparse map as long as it declares) before the member it
    describes, so before the signature is checked. Those are refused from their declared size,
    before any of it is read: larger than MAX_TAR_HEADER, one extended header following another,
    and sparse members (goldfleet writes none of these). ``_proc_member`` is the hook tarfile
    names for subclasses; tests/integration/test_bundles.py checks each refusal."""

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise _sparse(self)
        if self.type not in _LONG_NAME + _PAX:
            return super()._proc_member(tar)  # type: ignore[misc]
        kind = "long-name" if self.type in _LONG_NAME else "pax"
        if self.size > MAX_TAR_HEADER:
            raise _refuse(
                f"it has a {kind} header of {self.size} bytes at byte {self.offset}, more than"
                f" {MAX_TAR_HEADER}"
            )
        if getattr(tar, "_goldfleet_extended", False):
            raise _refuse(f"a {kind} header at byte {self.offset} follows another extended header")
        tar._goldfleet_extended = True  # type: ignore[attr-defined]
        try:
            return super()._proc_member(tar)  # type: ignore[misc]
        finally:
            tar._goldfleet_extended = False  # type: ignore[attr-defined]

    # called by tarfile for a pax header that makes the next member sparse, before its map
    def _proc_gnusparse_00(self, member: tarfile.TarInfo, *_: object) -> None:
        raise _sparse(member)

    _proc_gnusparse_01 = _proc_gnusparse_10 = _proc_gnusparse_00


def _sparse(member: tarfile.TarInfo) -> InvalidInput:
    return _refuse(f"member {member.name!r} is a sparse file")


def _open_tar(raw: IO[bytes]) -> tarfile.TarFile:
    """Read ``raw`` as a tar stream, member by member, refusing headers tarfile would read
    whole (_CheckedHeader)."""
    return tarfile.open(fileobj=raw, mode="r|", tarinfo=_CheckedHeader)


def _next_member(tar: tarfile.TarFile, expected: str) -> tarfile.TarInfo:
    try:
        member = tar.next()
    except tarfile.TarError as exc:
        raise _refuse(f"the file is truncated or not a bundle ({exc})") from None
    if member is None:
        raise _refuse(f"the file is truncated or incomplete: {expected} is missing")
    name = member.name
    if name.startswith("/") or ".." in name.split("/"):
        raise _refuse(f"member {name!r} has an unsafe path")
    if not member.isreg():
        raise _refuse(f"member {name!r} is a link, device or folder, not a plain file")
    if name != expected:
        if expected == SIGNATURE:
            raise _refuse("it is not signed (no signature after the manifest)")
        raise _refuse(f"unexpected member {name!r} where {expected} was expected")
    return member


def _read_small(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int) -> bytes:
    if member.size > limit:
        raise _refuse(f"{member.name} is {member.size} bytes, more than {limit}")
    f = tar.extractfile(member)
    assert f is not None
    try:
        data = f.read()
    except tarfile.TarError:
        data = b""
    if len(data) != member.size:
        raise _refuse(f"the file is truncated inside {member.name}")
    return data


def _verify(
    ctx: Context, manifest: bytes, signature: bytes, trusted_as: str | None = None
) -> tuple[str, bytes]:
    """The name and raw key of the trusted key that signed ``manifest``; refuse anything else. With
    ``trusted_as`` (a sender authenticated otherwise) any key will do, but the signature must
    still match the manifest."""
    try:
        sig = SignatureFile.model_validate_json(signature)
        raw, value = bytes.fromhex(sig.public_key), bytes.fromhex(sig.signature)
        public = Ed25519PublicKey.from_public_bytes(raw)
    except (ValidationError, ValueError):
        raise _refuse("its signature member is malformed") from None
    own = _raw(signing_key(ctx).public_key())
    names = {own: "this server"} | {k: n for n, k in _read_trusted(ctx).items()}
    if trusted_as is not None:
        names = {raw: trusted_as}
    if raw not in names:
        raise _refuse(
            f"it is signed by an untrusted key {fingerprint(raw)} ({raw.hex()}); trust it with:"
            f" goldfleet keys trust NAME {raw.hex()}"
        )
    try:
        public.verify(value, hashlib.sha256(manifest).digest())
    except InvalidSignature:
        raise _refuse(
            f"the signature does not match the manifest (tampered with after signing by"
            f" {names[raw]})"
        ) from None
    return names[raw], raw


def _key_names(ctx: Context) -> dict[bytes, str]:
    own = _raw(signing_key(ctx).public_key())
    return {own: "this server"} | {k: n for n, k in _read_trusted(ctx).items()}


def _key_label(ctx: Context, raw: bytes) -> str:
    name = _key_names(ctx).get(raw)
    shown = f"key {name}" if name else "a key no longer trusted"
    return f"{shown} ({fingerprint(raw)})"


def _check_binding(ctx: Context, t: Template | None, template: str, raw: bytes) -> bool:
    """Refuse a bundle for a template bound to another key than ``raw``, the one that signed
    the bundle; True when the import would bind the template now (its first bundle)."""
    if t is None or t.bundle_key is None:
        return True
    if t.bundle_key == raw.hex():
        return False
    bound = bytes.fromhex(t.bundle_key)
    signer = _key_names(ctx).get(raw, raw.hex())
    raise Conflict(
        f"bundle refused: template {template} is bound to {_key_label(ctx, bound)}, which"
        f" signed its first bundle; this one is signed by {_key_label(ctx, raw)}, of another"
        f" project. If the template moved to that key's project on purpose, rebind it first:"
        f" goldfleet bundle rebind {template} {signer}; nothing was imported"
    )


def rebind(ctx: Context, template: str, key: str, *, actor: str) -> BindingView:
    """Bind ``template`` to the trusted key ``key`` (its name, or its public key) so that its
    next bundles may come from that key's project; audited."""
    names = _key_names(ctx)
    raw = next((k for k, n in names.items() if n == key), None)
    if raw is None:
        try:
            raw = parse_public_key(key)
        except InvalidInput:
            raw = None
        if raw is not None and raw not in names:
            raise Conflict(
                f"key {fingerprint(raw)} is not trusted here; trust it first with: goldfleet"
                f" keys trust NAME {raw.hex()}"
            )
    if raw is None:
        raise NotFound(
            f"no trusted key is named {key!r}; give a name or public key from: goldfleet keys show"
        )
    with ctx.template_lock(template), ctx.session() as s:
        t = get_template(s, template)
        previous = fingerprint(bytes.fromhex(t.bundle_key)) if t.bundle_key else None
        t.bundle_key = raw.hex()
        audit.record(
            s,
            actor,
            "bundle.rebind",
            template,
            key=names[raw],
            fingerprint=fingerprint(raw),
            previous=previous,
        )
        s.commit()
    return BindingView(
        template=template, key=names[raw], fingerprint=fingerprint(raw), previous=previous
    )


def parse_manifest(data: bytes) -> Manifest:
    try:
        m = Manifest.model_validate_json(data)
    except ValidationError as exc:
        raise _refuse(f"its manifest is not valid ({exc.error_count()} problems)") from None
    if m.format != FORMAT:
        raise _refuse(f"format {m.format!r} is not supported (expected {FORMAT})")
    check_name(m.template, "template name")
    if m.kind not in (CloneKind.LINKED, CloneKind.FULL):
        raise _refuse(f"clone kind {m.kind!r} is not valid")
    if set(m.outline) - {"temp", "data"} or any(x < 0 for v in m.outline.values() for x in v):
        raise _refuse("its outline is not valid")
    rules.check_outline(Outline.from_json(m.outline))
    seen: set[str] = set()
    for x in m.layers:
        if x.digest in seen or (x.parent is not None and x.parent not in seen):
            raise _refuse(f"layer {x.digest} is listed twice or before its parent")
        seen.add(x.digest)
    numbers = [v.number for v in m.versions]
    if len(set(numbers)) != len(numbers) or any(v.top_layer not in seen for v in m.versions):
        raise _refuse("its versions are listed twice or name layers it does not list")
    if m.policy_only and (m.versions or m.layers):
        raise _refuse("a policy-only bundle carries versions or layers")
    if m.current is not None and m.current not in numbers:
        raise _refuse(f"its current version v{m.current} is not among its versions")
    return m


def check_catalog(ctx: Context, m: Manifest) -> None:
    """Refuse what the catalog forbids, before any layer byte is read (and again at commit)."""
    with ctx.session() as s:
        t = s.scalar(select(Template).where(Template.name == m.template))
        if t is None:
            if m.policy_only:
                raise NotFound(
                    f"template {m.template} does not exist here; a policy-only bundle only"
                    " changes the settings of a template this server holds"
                )
        else:
            rules.check_can_change_template(t.name, t.status, "import a bundle into")
            held = {v.number: v.top_layer for v in t.versions}
            for v in m.versions:
                if v.number in held and held[v.number] != v.top_layer:
                    raise Conflict(
                        f"bundle refused: template {m.template} already has a different"
                        f" v{v.number} (layer {held[v.number]}, the bundle's is {v.top_layer});"
                        " nothing was imported"
                    )
            _policy_changes(s, t, m)  # refuses what the bundle may not change
        missing = [
            x.digest
            for x in m.layers
            if not x.included and (s.get(Layer, x.digest) is None or not ctx.layers.has(x.digest))
        ]
    if missing:
        base = f"{m.template}:v{m.since}" if m.since is not None else "its base version"
        raise Conflict(
            f"bundle refused: it was made for a server holding {base}, and this server lacks"
            f" the layers {', '.join(missing)}; import a bundle made without --since (or with"
            f" an earlier one) first; nothing was imported"
        )


class _Discard(io.RawIOBase):
    """Where a check's layer bytes go once hashed."""

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        return len(data)


def _policies(kind: str, outline: dict[str, list[int]]) -> dict[str, str]:
    return {"kind": kind, "outline": policy_rules.outline_text(outline)}


def _policy_changes(s: Session, t: Template | None, m: Manifest) -> list[PolicyChangeView]:
    """What ``m`` changes in ``t``'s policies, each with what it means for its clones; refuses
    (domain/bundles.py) what a bundle, or a policy-only one, may not change."""
    if t is None:
        return []
    if Outline.from_json(m.outline) == Outline.from_json(t.outline):
        outline = t.outline  # the same outline, however its JSON is spelt
    else:
        outline = m.outline
    clones = s.scalar(select(func.count()).where(Clone.template_id == t.id)) or 0
    changes = policy_rules.policy_changes(
        m.template,
        _policies(t.kind, t.outline),
        _policies(m.kind, outline),
        clones=clones,
        policy_only=m.policy_only,
    )
    return [
        PolicyChangeView(
            name=c.name, before=c.before, after=c.after, applies=c.applies, note=c.note
        )
        for c in changes
    ]


def _receive_layer(ctx: Context, tar: tarfile.TarFile, x: LayerEntry, work: Path | None) -> None:
    """Read layer ``x`` from the bundle into ``work`` while hashing it; without ``work`` (a
    check) only hash it."""
    member = _next_member(tar, f"layers/{layer_filename(x.digest)}")
    if member.size != x.size:
        raise _refuse(
            f"layer {x.digest} is {member.size} bytes in the file, the manifest says {x.size}"
        )
    src = tar.extractfile(member)
    assert src is not None
    h = hashlib.sha256()
    received = 0
    f: IO[bytes] | io.RawIOBase
    if work is None:
        f = _Discard()
    else:
        f = os.fdopen(os.open(work, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")
    with f:
        while received < x.size:
            try:
                block = src.read(min(CHUNK, x.size - received))
            except tarfile.TarError:
                block = b""
            if not block:
                raise _refuse(f"the file is truncated inside layer {x.digest}")
            h.update(block)
            f.write(block)
            received += len(block)
        if work is not None:
            f.flush()
            os.fsync(f.fileno())  # the install step takes this digest and neither rereads nor syncs
    if "sha256:" + h.hexdigest() != x.digest:
        raise _refuse(
            f"layer {x.digest} does not match its digest (its bytes were changed after signing)"
        )


def import_bundle(
    ctx: Context,
    file: Path,
    *,
    actor: str,
    signer: str | None = None,
    check: Callable[[Manifest], None] | None = None,
    action: str = "bundle.import",
    status: str = VersionStatus.ENABLED,
) -> BundleView:
    """Import a bundle file. By default its signer must be a trusted key; a caller that trusts
    the sender by other means (a site's token) names it as ``signer``: the signature must then
    still match the manifest. ``check`` may refuse the manifest before any layer is read.
    ``status`` pending-validation: the versions added wait for validation (a site's publish);
    the bundle's current version is then not made current."""
    with import_lock:
        return _import(ctx, file, actor, signer, check, action, status)


def _import(
    ctx: Context,
    file: Path,
    actor: str,
    trusted_as: str | None,
    check: Callable[[Manifest], None] | None,
    action: str,
    status: str = VersionStatus.ENABLED,
) -> BundleView:
    works: dict[str, Path] = {}
    committed: list[str] = []  # layers this import sealed that were not in the store before
    try:
        with file.open("rb") as raw, _open_tar(raw) as tar:
            manifest = _read_small(tar, _next_member(tar, MANIFEST), MAX_MANIFEST)
            signature = _read_small(tar, _next_member(tar, SIGNATURE), MAX_SIGNATURE)
            signer, key = _verify(ctx, manifest, signature, trusted_as)
            m = parse_manifest(manifest)
            # a bundle trusted by its key is bound to its template's project; a site's publish
            # (trusted by the site's token) is not
            bind = key if trusted_as is None else None
            if bind is not None:
                with ctx.session() as s:
                    t = s.scalar(select(Template).where(Template.name == m.template))
                    _check_binding(ctx, t, m.template, bind)
            if check is not None:
                check(m)
            check_catalog(ctx, m)
            # refused before a layer is written, not when the disk fills half way
            included = [x for x in m.layers if x.included]
            ctx.layers.check_room(
                "the layer of this bundle"
                if len(included) == 1
                else f"the {len(included)} layers of this bundle",
                sum(x.size for x in included),
            )
            for x in m.layers:
                if x.included:
                    works[x.digest] = ctx.layers.work_path(".import-bundle-")
                    _receive_layer(ctx, tar, x, works[x.digest])
            try:
                extra = tar.next()
            except tarfile.TarError:
                extra = None
            if extra is not None:
                raise _refuse(f"unexpected member {extra.name!r} after the last layer")
    except tarfile.TarError as exc:
        _discard(ctx, works, committed)
        raise _refuse(f"the file is truncated or not a bundle ({exc})") from None
    except BaseException:
        _discard(ctx, works, committed)
        raise
    # each work file was made here (O_EXCL, 0600), hashed to its digest while written and
    # fsynced: the install step need not read it again
    return install_layers(
        ctx,
        m,
        works,
        committed,
        source=signer,
        actor=actor,
        action=action,
        hashed=True,
        bind=bind,
        status=status,
    )


def install_layers(
    ctx: Context,
    m: Manifest,
    works: dict[str, Path],
    committed: list[str],
    *,
    source: str,
    actor: str,
    action: str = "bundle.import",
    hashed: bool = False,
    bind: bytes | None = None,
    status: str = VersionStatus.ENABLED,
) -> BundleView:
    """Check received work files like outside images, seal them, then add the versions.

    ``works`` holds a received, digest-checked work file for every layer of ``m`` marked
    ``included``; the others must already be in the store. Shared by bundle import and site
    sync: both receive layers from outside. A refusal removes every file this made. ``bind``: the
    key that signed a bundle, which the template must be bound to (or is bound to now). ``hashed``:
    each work file was created, hashed to its digest and fsynced by this process while it
    received it (site sync), so it is not read again (LayerStore.check_and_hash)."""
    try:
        # qemu-img check opens a layer's parent by its file name, so layers are checked and
        # sealed parents first; a later refusal removes the ones sealed here
        infos: list[LayerInfo] = []
        for x in m.layers:
            if not x.included:
                continue
            _check_reference(ctx, works[x.digest], x)
            info = ctx.layers.check_and_hash(
                works[x.digest], parent=x.parent, hashed=x.digest if hashed else None
            )
            if (info.digest, info.size, info.virtual_size) != (x.digest, x.size, x.virtual_size):
                raise _refuse(f"layer {x.digest} is not what the manifest declares")
            if info.virtual_size > ctx.settings.max_virtual_size:
                raise _refuse(f"layer {x.digest} is larger than the configured limit")
            if not ctx.layers.has(x.digest):
                committed.append(x.digest)
            ctx.layers.commit_work(works.pop(x.digest), info)
            infos.append(info)
        crashpoints.reached("bundle-import.sealed")
        return _register(ctx, m, infos, source, actor, action, bind, status)
    except BadImage as exc:
        _discard(ctx, works, committed)
        raise _refuse(exc.message) from None
    except BaseException:
        _discard(ctx, works, committed)
        raise


def _check_reference(ctx: Context, work: Path, x: LayerEntry) -> None:
    """Refuse a foreign backing reference before qemu-img check would open that file."""
    try:
        info = ctx.qemu.info(work, "qcow2", limits=ctx.layers.limits)
    except QemuError as exc:
        raise _refuse(f"layer {x.digest} is not a readable qcow2 image: {exc.message}") from None
    expected = layer_filename(x.parent) if x.parent else None
    if info.get("backing-filename") != expected:
        raise _refuse(
            f"layer {x.digest}: its backing reference is {info.get('backing-filename')!r},"
            f" expected {expected!r} (its declared parent)"
        )


def _discard(ctx: Context, works: dict[str, Path], committed: list[str]) -> None:
    for work in works.values():
        work.unlink(missing_ok=True)
    if committed:
        with ctx.session() as s:
            used = used_layers(s)
        for digest in committed:
            if digest not in used:
                ctx.layers.remove(digest)


def _register(
    ctx: Context,
    m: Manifest,
    infos: list[LayerInfo],
    signer: str,
    actor: str,
    action: str,
    bind: bytes | None,
    status: str = VersionStatus.ENABLED,
) -> BundleView:
    with ctx.template_lock(m.template):
        check_catalog(ctx, m)
        with ctx.session() as s:
            for info in infos:
                add_layer(s, info)
            t = s.scalar(select(Template).where(Template.name == m.template))
            bound_now = _check_binding(ctx, t, m.template, bind) if bind is not None else False
            policies = _policy_changes(s, t, m)
            if t is None:
                t = Template(name=m.template, kind=m.kind, outline=m.outline)
                s.add(t)
                s.flush()
            else:
                t.kind, t.outline = m.kind, m.outline
            if bound_now:
                t.bundle_key = bind.hex()  # type: ignore[union-attr]
            bound_to = (
                _key_names(ctx).get(bytes.fromhex(t.bundle_key), t.bundle_key)
                if t.bundle_key
                else None
            )
            held = {v.number for v in t.versions}
            added, skipped = [], []
            for v in m.versions:
                if v.number in held:
                    skipped.append(v.number)
                    continue
                s.add(
                    Version(
                        template_id=t.id,
                        number=v.number,
                        top_layer=v.top_layer,
                        note=v.note,
                        status=status,
                    )
                )
                added.append(v.number)
            s.flush()
            s.refresh(t)
            current = t.current_version.number if t.current_version else 0
            if m.current is not None and m.current > current and status == VersionStatus.ENABLED:
                t.current_version_id = next(v.id for v in t.versions if v.number == m.current)
            audit.record(
                s,
                actor,
                action,
                m.template,
                signer=signer,
                added=added,
                skipped=skipped,
                policy_only=m.policy_only,
                policies=[f"{p.name}: {p.before} -> {p.after} ({p.note})" for p in policies],
                bound=fingerprint(bind) if bound_now and bind else None,
                **({"status": status} if status != VersionStatus.ENABLED else {}),
            )
            s.commit()
    return BundleView(
        template=m.template,
        versions_added=added,
        versions_skipped=skipped,
        layers_received=len(infos),
        signer=signer,
        bound_to=bound_to if bind is not None else None,
        bound_now=bound_now,
        policies=policies,
    )


def check_bundle(ctx: Context, file: Path) -> BundleCheck:
    """``bundle import --check``: everything an import checks before it writes (signature,
    binding, manifest, catalog rules, room, each carried layer's size and digest, read and
    hashed but written nowhere) and what it would change. Writes nothing; a refusal is the
    answer's ``refusal``, not an error."""
    if file.stat().st_size == 0:  # no request body: nothing to judge
        raise InvalidInput("no bundle was sent: send the bundle file as the request body")
    report = BundleCheck(file_ok=False)
    try:
        with file.open("rb") as raw, _open_tar(raw) as tar:
            manifest = _read_small(tar, _next_member(tar, MANIFEST), MAX_MANIFEST)
            signature = _read_small(tar, _next_member(tar, SIGNATURE), MAX_SIGNATURE)
            report.signer, key = _verify(ctx, manifest, signature)
            m = parse_manifest(manifest)
            report.template = m.template
            with ctx.session() as s:
                t = s.scalar(select(Template).where(Template.name == m.template))
                report.bound_now = _check_binding(ctx, t, m.template, key)
                bound = bytes.fromhex(t.bundle_key) if t and t.bundle_key else key
                report.bound_to = _key_names(ctx).get(bound, bound.hex())
            check_catalog(ctx, m)
            included = [x for x in m.layers if x.included]
            ctx.layers.check_room(
                f"the {len(included)} layers of this bundle", sum(x.size for x in included)
            )
            for x in included:
                _receive_layer(ctx, tar, x, None)
                report.layers_checked += 1
                report.layer_bytes += x.size
            try:
                extra = tar.next()
            except tarfile.TarError:
                extra = None
            if extra is not None:
                raise _refuse(f"unexpected member {extra.name!r} after the last layer")
        _what_changes(ctx, m, report)
        report.file_ok = True
    except tarfile.TarError as exc:
        report.refusal = f"bundle refused: the file is truncated or not a bundle ({exc})"
    except GoldfleetError as exc:
        report.refusal = exc.message
    return report


def _what_changes(ctx: Context, m: Manifest, report: BundleCheck) -> None:
    with ctx.session() as s:
        t = s.scalar(select(Template).where(Template.name == m.template))
        held = {v.number for v in t.versions} if t is not None else set()
        report.creates_template = t is None
        report.versions_added = [v.number for v in m.versions if v.number not in held]
        report.versions_skipped = [v.number for v in m.versions if v.number in held]
        before = t.current_version.number if t is not None and t.current_version else None
        report.current_before = before
        after = before
        if m.current is not None and m.current > (before or 0):
            after = m.current
        report.current_after = after
        report.policies = _policy_changes(s, t, m)
        if t is not None:
            rows = s.execute(
                select(Clone.name, Version.number)
                .join(Version, Version.id == Clone.version_id)
                .where(Clone.template_id == t.id)
                .order_by(Clone.name)
            ).all()
            report.clones = len(rows)
            report.clones_behind = [name for name, number in rows if number != after]
