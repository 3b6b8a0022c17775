"""Offline update bundles between two servers' homes, through the service layer.

Every refusal is checked by what it leaves behind: no new file in the layer folder and no new
row in the catalog or the audit log."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from goldfleet.bootstrap import bootstrap
from goldfleet.context import Context
from goldfleet.db.tables import AuditEntry, Layer, Template, Version
from goldfleet.errors import Conflict, InvalidInput, NoSpace, StoreError
from goldfleet.home import init_home
from goldfleet.services import catalog, fleet
from goldfleet.services.distribution import _bundles as bundles

MiB = 1 << 20


@pytest.fixture
def make_ctx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], Context]]:
    made: list[Context] = []
    monkeypatch.setenv("GOLDFLEET_HOME", str(tmp_path / "unused"))

    def make(name: str) -> Context:
        settings, _ = init_home(tmp_path / name)
        c = bootstrap(settings)
        made.append(c)
        return c

    yield make
    for c in made:
        c.runner.shutdown()  # type: ignore[union-attr]
        c.engine.dispose()


@pytest.fixture
def sender(make_ctx, tmp_path: Path) -> Context:
    c = make_ctx("sender")
    image = tmp_path / "base.raw"
    with image.open("wb") as f:
        f.truncate(8 * MiB)
        f.write(b"\x11" * 4096)
    catalog.import_template(
        c, name="base", image=image, fmt="raw", temp=["16M"], data=["16M"], actor="t"
    )
    return c


@pytest.fixture
def receiver(make_ctx, sender: Context) -> Context:
    c = make_ctx("receiver")
    own = bundles.show_keys(sender).own.public_key
    bundles.trust_key(c, "hq", own, actor="t")
    return c


def patch(ctx: Context, byte: int, offset: int) -> int:
    view = catalog.enter_maintenance(ctx, "base", actor="t")
    ctx.qemu.write_pattern(Path(view.overlay_path), offset, 4096, byte)
    return catalog.exit_maintenance(ctx, "base", actor="t").version


def export(ctx: Context, path: Path, since: int | None = None, policy_only: bool = False) -> Path:
    with path.open("wb") as f:
        bundles.export_bundle(ctx, "base", since, policy_only, f)
    return path


def members(path: Path) -> list[str]:
    with tarfile.open(path, "r:") as tar:
        return tar.getnames()


def state(ctx: Context) -> tuple:
    with ctx.session() as s:
        rows = tuple(
            s.scalar(select(func.count()).select_from(t)) for t in (Layer, Version, Template)
        )
        audit = s.scalar(select(func.count()).select_from(AuditEntry))
    return sorted(os.listdir(ctx.layers.dir)), rows, audit


def refused(ctx: Context, path: Path, error: type, match: str) -> None:
    before = state(ctx)
    with pytest.raises(error, match=match):
        bundles.import_bundle(ctx, path, actor="t")
    assert state(ctx) == before


def build(path: Path, parts: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:") as tar:
        for name, data in parts:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def parts_of(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path, "r:") as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def flip(path: Path, member: str, at: int) -> None:
    with tarfile.open(path, "r:") as tar:
        offset = tar.getmember(member).offset_data + at
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


# --- round trips --------------------------------------------------------------------------


def test_full_round_trip_clones_read_the_senders_bytes(sender, receiver, tmp_path):
    patch(sender, 0x21, 4096)
    path = export(sender, tmp_path / "full.bundle")
    r = bundles.import_bundle(receiver, path, actor="t")
    assert r.versions_added == [1, 2] and r.layers_received == 2 and r.signer == "hq"
    got = catalog.list_versions(receiver, "base")
    assert [(v.number, v.top_layer, v.current) for v in got] == [
        (v.number, v.top_layer, v.current) for v in catalog.list_versions(sender, "base")
    ]
    assert catalog.show_template(receiver, "base").temp == [16 * MiB]
    fleet.create_clones(receiver, template="base", name="c2", actor="t", wait=True)
    system = Path(fleet.show_clone(receiver, "c2").volumes[0].path)
    assert receiver.qemu.read(system, 0, 4096) == b"\x11" * 4096
    assert receiver.qemu.read(system, 4096, 4096) == b"\x21" * 4096
    for v in got:
        top = v.chain[0]
        assert receiver.layers.verify(top, v.chain[1] if len(v.chain) > 1 else None) == []
    # the same bundle again: every version is already held
    again = bundles.import_bundle(receiver, path, actor="t")
    assert again.versions_added == [] and again.versions_skipped == [1, 2]


def test_since_carries_only_the_new_layer(sender, receiver, tmp_path):
    bundles.import_bundle(receiver, export(sender, tmp_path / "v1.bundle"), actor="t")
    patch(sender, 0x22, 0)
    v2 = catalog.list_versions(sender, "base")[-1]
    path = export(sender, tmp_path / "since1.bundle", since=1)
    assert members(path) == [
        "manifest.json",
        "signature",
        f"layers/sha256-{v2.top_layer.removeprefix('sha256:')}.qcow2",
    ]
    r = bundles.import_bundle(receiver, path, actor="t")
    assert r.versions_added == [2] and r.layers_received == 1
    assert catalog.show_template(receiver, "base").current_version == 2
    fleet.create_clones(receiver, template="base", name="c", actor="t", wait=True)
    system = Path(fleet.show_clone(receiver, "c").volumes[0].path)
    assert receiver.qemu.read(system, 0, 4096) == b"\x22" * 4096


def test_policy_only_carries_no_layer(sender, receiver, tmp_path):
    bundles.import_bundle(receiver, export(sender, tmp_path / "v1.bundle"), actor="t")
    path = export(sender, tmp_path / "policy.bundle", policy_only=True)
    assert members(path) == ["manifest.json", "signature"]
    before = sorted(os.listdir(receiver.layers.dir))
    r = bundles.import_bundle(receiver, path, actor="t")
    assert r.versions_added == [] and r.layers_received == 0
    assert sorted(os.listdir(receiver.layers.dir)) == before


def test_export_of_an_unknown_version_is_refused(sender, tmp_path):
    with pytest.raises(Exception, match="no version v7"):
        export(sender, tmp_path / "x.bundle", since=7)


# --- refusals that change nothing ---------------------------------------------------------


@pytest.fixture
def since_bundle(sender, receiver, tmp_path) -> Path:
    """The receiver holds v1; the sender's v2 is exported since v1."""
    bundles.import_bundle(receiver, export(sender, tmp_path / "v1.bundle"), actor="t")
    patch(sender, 0x22, 0)
    return export(sender, tmp_path / "since1.bundle", since=1)


def test_flipped_byte_in_a_layer_is_refused(receiver, since_bundle):
    layer = members(since_bundle)[2]
    flip(since_bundle, layer, 70_000)
    refused(receiver, since_bundle, InvalidInput, "does not match its digest")


def test_flipped_byte_in_the_manifest_is_refused(receiver, since_bundle):
    flip(since_bundle, "manifest.json", 40)
    refused(receiver, since_bundle, InvalidInput, "signature does not match")


def test_truncated_bundle_is_refused(receiver, since_bundle):
    size = since_bundle.stat().st_size
    with since_bundle.open("r+b") as f:
        f.truncate(size // 2)
    refused(receiver, since_bundle, InvalidInput, "truncated")


def test_unsigned_bundle_is_refused(receiver, since_bundle, tmp_path):
    parts = [p for p in parts_of(since_bundle) if p[0] != "signature"]
    refused(receiver, build(tmp_path / "unsigned", parts), InvalidInput, "not signed")


def test_untrusted_signer_is_refused(sender, receiver, since_bundle):
    bundles.untrust_key(receiver, "hq", actor="t")
    refused(receiver, since_bundle, InvalidInput, "untrusted key")


def test_receiver_lacking_the_base_version_is_refused(make_ctx, sender, since_bundle):
    fresh = make_ctx("fresh")
    bundles.trust_key(fresh, "hq", bundles.show_keys(sender).own.public_key, actor="t")
    refused(fresh, since_bundle, Conflict, "lacks the layers")


def test_path_traversal_member_is_refused(sender, receiver, since_bundle, tmp_path):
    parts = parts_of(since_bundle)
    parts[2] = ("../../evil.qcow2", parts[2][1])
    refused(receiver, build(tmp_path / "evil", parts), InvalidInput, "unsafe path")
    assert not (receiver.layers.root.parent / "evil.qcow2").exists()


def test_layer_with_a_backing_reference_elsewhere_is_refused(
    sender, receiver, since_bundle, tmp_path
):
    manifest, _signature, (_name, data) = parts_of(since_bundle)
    bad = tmp_path / "bad.qcow2"
    bad.write_bytes(data)
    subprocess.run(
        ["qemu-img", "rebase", "-u", "-f", "qcow2", "-b", "elsewhere.qcow2", "-F", "qcow2", bad],
        check=True,
    )
    raw = bad.read_bytes()
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    m = json.loads(manifest[1])
    old = m["versions"][0]["top_layer"]
    m["versions"][0]["top_layer"] = digest
    for x in m["layers"]:
        if x["digest"] == old:
            x["digest"], x["size"] = digest, len(raw)
    body = json.dumps(m).encode()
    signed = bundles.sign(bundles.signing_key(sender), body)
    path = build(
        tmp_path / "rebased",
        [
            ("manifest.json", body),
            ("signature", signed),
            (f"layers/sha256-{digest.removeprefix('sha256:')}.qcow2", raw),
        ],
    )
    refused(receiver, path, InvalidInput, "backing reference is 'elsewhere.qcow2'")


def test_a_bundle_larger_than_the_free_space_is_refused_before_a_layer_is_written(
    make_ctx, sender, tmp_path, monkeypatch
):
    """The receiver's store is a 16 MiB tmpfs (root only; skipped elsewhere); the bundle's
    layer holds 20 MiB of random bytes."""
    store = tmp_path / "small-store"
    store.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(store)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"mounting a small tmpfs needs root (CI runs as root): {mounted.stderr}")
    try:
        image = tmp_path / "big.raw"
        image.write_bytes(os.urandom(20 * MiB))
        catalog.import_template(sender, name="big", image=image, fmt="raw", actor="t")
        path = tmp_path / "big.bundle"
        with path.open("wb") as f:
            bundles.export_bundle(sender, "big", None, False, f)
        monkeypatch.setenv("GOLDFLEET_STORE_DIR", str(store))
        small = make_ctx("small")
        bundles.trust_key(small, "hq", bundles.show_keys(sender).own.public_key, actor="t")
        free = os.statvfs(store).f_bavail
        refused(small, path, NoSpace, f"not enough space for the layer of this bundle at {store}")
        with pytest.raises(NoSpace, match=r"it needs 2\d\.\d MiB \(20\.\d MiB and a margin\), 1"):
            bundles.import_bundle(small, path, actor="t")
        assert os.statvfs(store).f_bavail == free  # not a byte of the layer was written
    finally:
        subprocess.run(["umount", "-l", str(store)], check=False)


# --- export as a stream -------------------------------------------------------------------


def test_a_stream_whose_layer_is_gone_raises_instead_of_ending(sender):
    plan = bundles.plan_export(sender, "base", None, False)
    _name, path, _size = plan.layers[0]
    path.unlink()
    with pytest.raises(StoreError, match="the bundle could not be written"):
        b"".join(bundles.stream_bundle(plan))


def test_a_stream_closed_early_lets_its_writer_thread_end(sender, tmp_path):
    image = tmp_path / "big.raw"
    image.write_bytes(os.urandom(4 * MiB))
    catalog.import_template(sender, name="big", image=image, fmt="raw", actor="t")
    # far more than the stream's queue holds: the writer waits on it when the consumer goes
    plan = bundles.plan_export(sender, "big", None, False)
    before = set(threading.enumerate())
    chunks = bundles.stream_bundle(plan)
    next(chunks)
    writers = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    assert writers
    time.sleep(0.2)
    chunks.close()  # the client went away
    for t in writers:
        t.join(5)
        assert not t.is_alive()


# --- tar headers that would be read whole before the signature ----------------------------


def header(name: str, kind: bytes, size: int, fmt: int = tarfile.USTAR_FORMAT) -> bytes:
    """One tar header block (no body), as a hostile writer would put it."""
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, size
    return info.tobuf(fmt, "utf-8", "surrogateescape")


def test_a_huge_pax_header_is_refused_before_it_is_read(receiver, tmp_path):
    path = tmp_path / "huge-pax"
    # declares 512 MiB of pax records; the file holds 8 MiB
    path.write_bytes(header("PaxHeader/manifest.json", tarfile.XHDTYPE, 512 * MiB) + bytes(8 * MiB))
    tracemalloc.start()
    try:
        refused(receiver, path, InvalidInput, "pax header of 536870912 bytes")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * MiB  # the declared body was never read (nor the 8 MiB that are there)


@pytest.mark.parametrize(
    ("kind", "size", "match"),
    [
        (tarfile.XGLTYPE, 1 << 30, "pax header of 1073741824 bytes"),
        (tarfile.GNUTYPE_LONGNAME, 1 << 30, "long-name header of 1073741824 bytes"),
        (tarfile.GNUTYPE_LONGLINK, 1 << 30, "long-name header of 1073741824 bytes"),
        (tarfile.GNUTYPE_SPARSE, 4096, "sparse"),
    ],
)
def test_other_headers_read_whole_are_refused(receiver, tmp_path, kind, size, match):
    path = tmp_path / "hostile"
    path.write_bytes(header("manifest.json", kind, size, tarfile.GNU_FORMAT) + b"\0" * 4096)
    refused(receiver, path, InvalidInput, match)


def test_a_pax_header_that_makes_a_sparse_member_is_refused(receiver, tmp_path):
    path = tmp_path / "pax-sparse"
    records = tarfile.TarInfo._create_pax_generic_header(  # a small, valid pax header
        {"GNU.sparse.major": "1", "GNU.sparse.minor": "0"}, tarfile.XHDTYPE, "utf-8"
    )
    # after the pax header and the member's own: the sparse map, declaring 10**12 entries
    path.write_bytes(records + header("manifest.json", tarfile.REGTYPE, 0) + b"1000000000000\n")
    refused(receiver, path, InvalidInput, "sparse")


def test_a_member_larger_than_8_gib_is_read_with_its_pax_size(receiver, tmp_path):
    """goldfleet writes a size of 8 GiB or more in a pax header (a layer may be that large):
    such a header passes, and the member has its full size."""
    path = tmp_path / "large"
    path.write_bytes(bundles._tar_info("manifest.json", 9 << 30).tobuf(tarfile.PAX_FORMAT))
    assert path.read_bytes()[156:157] == tarfile.XHDTYPE
    refused(receiver, path, InvalidInput, f"manifest.json is {9 << 30} bytes")


def test_an_extended_header_following_another_is_refused(receiver, tmp_path):
    path = tmp_path / "chained"
    small = header("PaxHeader/manifest.json", tarfile.XHDTYPE, 512)
    path.write_bytes((small + bytes(512)) * 2 + header("manifest.json", tarfile.REGTYPE, 0))
    refused(receiver, path, InvalidInput, "follows another extended header")


def test_a_manifest_digest_must_be_only_a_digest():
    """pydantic's ``pattern`` searches; the manifest's digests are anchored."""
    body = {
        "format": bundles.FORMAT,
        "template": "base",
        "kind": "linked",
        "outline": {"temp": [], "data": []},
        "current": 1,
        "since": None,
        "policy_only": False,
        "versions": [{"number": 1, "top_layer": "../sha256:" + "a" * 64, "note": ""}],
        "layers": [
            {
                "digest": "../sha256:" + "a" * 64,
                "parent": None,
                "size": 1,
                "virtual_size": 1,
                "included": True,
            }
        ],
    }
    with pytest.raises(InvalidInput, match="manifest is not valid"):
        bundles.parse_manifest(json.dumps(body).encode())
