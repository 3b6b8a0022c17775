"""Hostile images from outside: each is made here with real qemu-img/qemu-io or raw bytes, and
each must be refused with a clear message, leaving no file in the store and no row in the DB."""

from __future__ import annotations

import functools
import hashlib
import os
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from conftest import MiB, make_raw
from goldfleet.context import Context
from goldfleet.db.tables import AuditEntry, Clone, Layer, Operation, Template, Version
from goldfleet.errors import BadImage, InvalidInput
from goldfleet.services import catalog
from goldfleet.store import LayerStore, QemuImg
from goldfleet.store.inspect import inspect_image
from goldfleet.store.qemu import Limits, QemuError

TiB = 1 << 40
LIMIT = 2 * TiB  # the default max_virtual_size


def qemu_img(*args: object, cwd: Path | None = None) -> None:
    proc = subprocess.run(["qemu-img", *map(str, args)], capture_output=True, text=True, cwd=cwd)
    assert proc.returncode == 0, proc.stderr


def qcow2(path: Path, size: str = "16M", *options: str) -> Path:
    qemu_img("create", "-q", "-f", "qcow2", *options, path, size)
    return path


def patch(path: Path, offset: int, data: bytes) -> Path:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)
    return path


def fingerprint(path: Path) -> tuple[int, int, str | None] | None:
    """Size, mtime and (for files small enough to read) sha256 of an outside image."""
    if not path.is_file():
        return None  # a FIFO: reading it would block
    st = path.stat()
    small = st.st_size <= 64 * MiB
    return (
        st.st_size,
        st.st_mtime_ns,
        hashlib.sha256(path.read_bytes()).hexdigest() if small else None,
    )


# --- the hostile images -------------------------------------------------------------------
# Each maker gets an empty folder and returns the image and the format it is claimed to be.

Maker = Callable[[Path], tuple[Path, str]]


def with_backing_file(d: Path) -> tuple[Path, str]:
    qcow2(d / "base.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "img.qcow2", cwd=d)
    return d / "img.qcow2", "qcow2"


def with_missing_backing_file(d: Path) -> tuple[Path, str]:
    return qcow2(d / "img.qcow2", "16M", "-u", "-b", "gone.qcow2", "-F", "qcow2"), "qcow2"


def with_host_file_as_backing(d: Path) -> tuple[Path, str]:
    return qcow2(d / "img.qcow2", "16M", "-u", "-b", "/etc/passwd", "-F", "raw"), "qcow2"


def with_data_file(d: Path) -> tuple[Path, str]:
    return qcow2(d / "img.qcow2", "16M", "-o", f"data_file={d / 'ext.raw'}"), "qcow2"


def with_raw_data_file(d: Path) -> tuple[Path, str]:
    return qcow2(
        d / "img.qcow2", "16M", "-o", f"data_file={d / 'ext.raw'},data_file_raw=on"
    ), "qcow2"


def with_missing_data_file(d: Path) -> tuple[Path, str]:
    img = qcow2(d / "img.qcow2", "16M", "-o", f"data_file={d / 'ext.raw'}")
    (d / "ext.raw").unlink()
    return img, "qcow2"


def with_unknown_incompatible_feature(d: Path) -> tuple[Path, str]:
    # incompatible_features: big-endian u64 at byte 72 of a qcow2 v3 header; bit 60 is unknown
    return patch(qcow2(d / "img.qcow2"), 72, struct.pack(">Q", 1 << 60)), "qcow2"


def with_corrupt_bit(d: Path) -> tuple[Path, str]:
    # incompatible feature bit 1: the image is marked corrupt
    return patch(qcow2(d / "img.qcow2"), 72, struct.pack(">Q", 1 << 1)), "qcow2"


def truncated_after_magic(d: Path) -> tuple[Path, str]:
    img = d / "img.qcow2"
    img.write_bytes(b"QFI\xfb")
    return img, "qcow2"


def truncated_header(d: Path) -> tuple[Path, str]:
    full = qcow2(d / "full.qcow2").read_bytes()
    img = d / "img.qcow2"
    img.write_bytes(full[:100])
    return img, "qcow2"


def garbage_cluster_bits(d: Path) -> tuple[Path, str]:
    # cluster_bits: big-endian u32 at byte 20
    return patch(qcow2(d / "img.qcow2"), 20, struct.pack(">I", 99)), "qcow2"


def garbage_l1_table_offset(d: Path) -> tuple[Path, str]:
    # l1_table_offset: big-endian u64 at byte 40; not cluster-aligned
    return patch(qcow2(d / "img.qcow2"), 40, struct.pack(">Q", 0x1234567)), "qcow2"


def refcount_corruption(d: Path) -> tuple[Path, str]:
    """A header qemu-img opens, with a data cluster whose refcount is 0: qemu-img check finds it."""
    img = qcow2(d / "img.qcow2")
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x22 0 64k", str(img)],
        check=True,
        capture_output=True,
    )
    head = img.read_bytes()
    cluster = 1 << struct.unpack(">I", head[20:24])[0]
    refcount_table = struct.unpack(">Q", head[48:56])[0]
    block = struct.unpack(">Q", head[refcount_table : refcount_table + 8])[0]
    last = len(head) // cluster - 1  # the data cluster was allocated last
    return patch(img, block + 2 * last, b"\0\0"), "qcow2"


_luks_dir = tempfile.TemporaryDirectory(prefix="goldfleet-luks-")


@functools.cache
def luks_qcow2() -> bytes:
    """Made once: LUKS key setup benchmarks the CPU, which is slow and fails now and then under
    load ("Unable to get accurate CPU usage"), so it is retried."""
    img = Path(_luks_dir.name) / "img.qcow2"
    for _ in range(5):
        img.unlink(missing_ok=True)
        proc = subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "--object", "secret,id=s0,data=hostile",
             "-o", "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10", str(img),
             "16M"],
            capture_output=True,
            text=True,
        )  # fmt: skip
        if proc.returncode == 0:
            return img.read_bytes()
    raise AssertionError(proc.stderr)


def encrypted(d: Path) -> tuple[Path, str]:
    """LUKS-encrypted qcow2: goldfleet has no key, so it cannot check or convert it."""
    img = d / "img.qcow2"
    img.write_bytes(luks_qcow2())
    return img, "qcow2"


def raw_claimed_qcow2(d: Path) -> tuple[Path, str]:
    return make_raw(d / "img.raw", 4 * MiB, {0: b"\x33" * 512}), "qcow2"


def vmdk_claimed_qcow2(d: Path) -> tuple[Path, str]:
    return make_raw(d / "img.vmdk", 4 * MiB, {0: b"KDMV\x01\x00\x00\x00"}), "qcow2"


def qcow2_claimed_raw(d: Path) -> tuple[Path, str]:
    return qcow2(d / "img.qcow2"), "raw"


def vmdk_claimed_raw(d: Path) -> tuple[Path, str]:
    return make_raw(d / "img.vmdk", 4 * MiB, {0: b"KDMV\x01\x00\x00\x00"}), "raw"


def qcow2_above_limit(d: Path) -> tuple[Path, str]:
    return qcow2(d / "img.qcow2", "3T"), "qcow2"


def raw_above_limit(d: Path) -> tuple[Path, str]:
    img = d / "img.raw"
    with img.open("wb") as f:
        f.truncate(3 * TiB)  # sparse
    return img, "raw"


def empty_qcow2(d: Path) -> tuple[Path, str]:
    (d / "img.qcow2").touch()
    return d / "img.qcow2", "qcow2"


def empty_raw(d: Path) -> tuple[Path, str]:
    (d / "img.raw").touch()
    return d / "img.raw", "raw"


def fifo_claimed_raw(d: Path) -> tuple[Path, str]:
    os.mkfifo(d / "img.raw")  # reading it would block forever
    return d / "img.raw", "raw"


HOSTILE: list = [
    pytest.param(with_backing_file, "has a backing file ('base.qcow2')", id="backing-file"),
    pytest.param(with_missing_backing_file, "has a backing file ('gone.qcow2')", id="backing-gone"),
    pytest.param(with_host_file_as_backing, "backing file ('/etc/passwd')", id="backing-host"),
    pytest.param(with_data_file, "uses an external data file", id="data-file"),
    pytest.param(with_raw_data_file, "uses an external data file", id="data-file-raw"),
    pytest.param(with_missing_data_file, "uses an external data file", id="data-file-gone"),
    pytest.param(
        with_unknown_incompatible_feature,
        "cannot read the image safely: qemu-img: Could not open",
        id="unknown-incompatible-feature",
    ),
    pytest.param(with_corrupt_bit, "marked corrupt", id="corrupt-bit"),
    pytest.param(truncated_after_magic, "cannot read the image safely", id="truncated-after-magic"),
    pytest.param(truncated_header, "qcow2 header too short", id="truncated-header"),
    pytest.param(garbage_cluster_bits, "Unsupported cluster size", id="cluster-bits"),
    pytest.param(garbage_l1_table_offset, "cannot read the image safely", id="l1-offset"),
    pytest.param(refcount_corruption, "qemu-img check found 2 corruptions", id="refcount"),
    pytest.param(encrypted, "encrypt.key-secret' is required", id="encrypted"),
    pytest.param(
        raw_claimed_qcow2,
        "given as qcow2 but has no qcow2 header; if it is a raw disk, use --format raw",
        id="raw-as-qcow2",
    ),
    pytest.param(vmdk_claimed_qcow2, "(its header says vmdk)", id="vmdk-as-qcow2"),
    pytest.param(
        qcow2_claimed_raw,
        "given as raw but its header says qcow2; import it with --format qcow2",
        id="qcow2-as-raw",
    ),
    pytest.param(
        vmdk_claimed_raw, "header says vmdk, which goldfleet does not import", id="vmdk-as-raw"
    ),
    pytest.param(
        qcow2_above_limit,
        "virtual size 3T is above the limit of 2T (setting max_virtual_size)",
        id="qcow2-too-big",
    ),
    pytest.param(raw_above_limit, "virtual size 3T is above the limit of 2T", id="raw-too-big"),
    pytest.param(empty_qcow2, "the image is empty", id="empty-qcow2"),
    pytest.param(empty_raw, "the image is empty", id="empty-raw"),
    pytest.param(fifo_claimed_raw, "the image is empty", id="fifo"),
]

EXTRA_WORDS = {
    with_unknown_incompatible_feature: "Unknown incompatible feature: 1000000000000000",
    garbage_cluster_bits: "2^99",
}


def made(maker: Maker, tmp_path: Path) -> tuple[Path, str, object]:
    d = tmp_path / "outside"
    d.mkdir()
    image, fmt = maker(d)
    return image, fmt, fingerprint(image)


# --- refused by the layer store -----------------------------------------------------------


@pytest.fixture
def layers(tmp_path: Path) -> LayerStore:
    store = LayerStore(tmp_path / "store", QemuImg())
    store.ensure()
    return store


def store_files(store: LayerStore) -> list[str]:
    return sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*") if p.is_file())


@pytest.mark.parametrize(("maker", "words"), HOSTILE)
def test_layer_store_refuses(maker: Maker, words: str, layers: LayerStore, tmp_path: Path) -> None:
    image, fmt, before = made(maker, tmp_path)
    with pytest.raises(BadImage) as info:
        layers.import_image(image, fmt, max_virtual_size=LIMIT)
    message = info.value.message
    assert words in message
    if maker in EXTRA_WORDS:
        assert EXTRA_WORDS[maker] in message
    assert "Traceback" not in message
    assert info.value.status_code == 422
    assert store_files(layers) == []
    assert layers.sealed_digests() == set()
    assert fingerprint(image) == before, "inspection must never write to the outside image"


@pytest.mark.parametrize(("maker", "words"), HOSTILE)
def test_inspect_image_refuses(maker: Maker, words: str, tmp_path: Path) -> None:
    image, fmt, _ = made(maker, tmp_path)
    with pytest.raises(BadImage) as info:
        inspect_image(QemuImg(), image, fmt, max_virtual_size=LIMIT)
    assert words in info.value.message


def test_inspect_image_accepts_a_clean_image(tmp_path: Path) -> None:
    """The control case: the same tools make a clean image that passes."""
    image = qcow2(tmp_path / "img.qcow2")
    found = inspect_image(QemuImg(), image, "qcow2", max_virtual_size=LIMIT)
    assert found.fmt == "qcow2"
    assert found.virtual_size == 16 * MiB
    assert found.file_size == image.stat().st_size
    raw = make_raw(tmp_path / "img.raw", 4 * MiB)
    assert inspect_image(QemuImg(), raw, "raw", max_virtual_size=LIMIT).virtual_size == 4 * MiB


def test_virtual_size_exactly_at_the_limit_is_accepted(tmp_path: Path) -> None:
    image = qcow2(tmp_path / "img.qcow2", "32M")
    assert inspect_image(QemuImg(), image, "qcow2", max_virtual_size=32 * MiB).virtual_size == (
        32 * MiB
    )
    with pytest.raises(BadImage, match="virtual size 32M is above the limit of 31M"):
        inspect_image(QemuImg(), image, "qcow2", max_virtual_size=31 * MiB)


@pytest.mark.parametrize("fmt", ["vmdk", "qed", "QCOW2", "", "../raw"])
def test_unsupported_format_is_refused_before_reading(fmt: str, tmp_path: Path) -> None:
    image = qcow2(tmp_path / "img.qcow2")
    with pytest.raises(InvalidInput) as info:
        inspect_image(QemuImg(), image, fmt, max_virtual_size=LIMIT)
    assert info.value.message == f"format {fmt!r} is not supported: use one of qcow2, raw"


# --- refused by the service: nothing written, no row --------------------------------------


def state(ctx: Context) -> dict[str, object]:
    with ctx.session() as s:
        rows = {
            table.__tablename__: s.scalar(select(func.count()).select_from(table))
            for table in (Template, Version, Layer, Clone, Operation, AuditEntry)
        }
    files = sorted(
        str(p.relative_to(ctx.settings.store))
        for p in ctx.settings.store.rglob("*")
        if not p.is_dir()
    )
    return {"rows": rows, "files": files}


@pytest.mark.parametrize(("maker", "words"), HOSTILE)
def test_import_template_refuses_and_leaves_nothing(
    maker: Maker, words: str, ctx: Context, tmp_path: Path
) -> None:
    image, fmt, _ = made(maker, tmp_path)
    before = state(ctx)
    assert before["files"] == []
    with pytest.raises(BadImage) as info:
        catalog.import_template(
            ctx, name="hostile", image=image, fmt=fmt, temp=["64M"], data=["64M"], actor="admin"
        )
    assert words in info.value.message
    assert state(ctx) == before
    assert catalog.list_templates(ctx) == []


def test_import_template_refuses_an_unsupported_format(ctx: Context, tmp_path: Path) -> None:
    image = qcow2(tmp_path / "img.qcow2")
    before = state(ctx)
    with pytest.raises(InvalidInput, match="format 'vmdk' is not supported"):
        catalog.import_template(ctx, name="x", image=image, fmt="vmdk", actor="admin")
    assert state(ctx) == before


def test_a_refused_import_does_not_block_a_good_one(ctx: Context, tmp_path: Path) -> None:
    bad, fmt, _ = made(with_backing_file, tmp_path)
    with pytest.raises(BadImage):
        catalog.import_template(ctx, name="base", image=bad, fmt=fmt, actor="admin")
    good = make_raw(tmp_path / "good.raw", 4 * MiB, {0: b"\x44" * 512})
    view = catalog.import_template(ctx, name="base", image=good, fmt="raw", actor="admin")
    assert view.current_version == 1
    assert view.system_size == 4 * MiB
    assert len(ctx.layers.sealed_digests()) == 1
    assert state(ctx)["rows"]["templates"] == 1  # type: ignore[index]


# --- inspection under resource limits -----------------------------------------------------


def test_tiny_address_space_fails_fast_as_qemu_error(tmp_path: Path) -> None:
    image = qcow2(tmp_path / "img.qcow2")
    started = time.monotonic()
    with pytest.raises(QemuError) as info:
        QemuImg().info(image, "qcow2", limits=Limits(address_space=8 * MiB))
    assert time.monotonic() - started < 10
    assert info.value.returncode != 0
    assert info.value.message
    # the same call without the cap reads the image: the cap is what made it fail
    assert QemuImg().info(image, "qcow2", limits=Limits())["virtual-size"] == 16 * MiB


def test_inspection_under_tiny_limits_is_a_bad_image(tmp_path: Path) -> None:
    image = qcow2(tmp_path / "img.qcow2")
    with pytest.raises(BadImage, match="qemu-img cannot read the image safely"):
        inspect_image(
            QemuImg(), image, "qcow2", max_virtual_size=LIMIT, limits=Limits(address_space=8 * MiB)
        )


def test_layer_store_limits_apply_to_imports(tmp_path: Path) -> None:
    store = LayerStore(tmp_path / "store", QemuImg(), Limits(address_space=8 * MiB))
    store.ensure()
    image = make_raw(tmp_path / "img.raw", 4 * MiB)
    with pytest.raises(BadImage, match="cannot read the image safely"):
        store.import_image(image, "raw", max_virtual_size=LIMIT)
    assert store_files(store) == []


@pytest.fixture
def tiny_inspect_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOLDFLEET_INSPECT_MEMORY", str(8 * MiB))


def test_configured_inspect_memory_reaches_the_import(
    tiny_inspect_memory: None, ctx: Context, tmp_path: Path
) -> None:
    assert ctx.settings.inspect_memory == 8 * MiB
    image = make_raw(tmp_path / "img.raw", 4 * MiB)
    before = state(ctx)
    with pytest.raises(BadImage, match="cannot read the image safely"):
        catalog.import_template(ctx, name="base", image=image, fmt="raw", actor="admin")
    assert state(ctx) == before


def test_wall_clock_limit_stops_a_blocked_qemu_img(tmp_path: Path) -> None:
    """qemu-img blocks forever opening a FIFO nobody writes to; the wall limit ends it."""
    fifo = tmp_path / "img.raw"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(QemuError, match="timed out"):
        QemuImg().info(fifo, "raw", limits=Limits(wall_seconds=1))
    assert time.monotonic() - started < 10


def test_wall_clock_timeout_message_names_qemu_img(tmp_path: Path) -> None:
    fifo = tmp_path / "img.raw"
    os.mkfifo(fifo)
    with pytest.raises(QemuError) as info:
        QemuImg().info(fifo, "raw", limits=Limits(wall_seconds=1))
    assert info.value.message == "qemu-img timed out"


def test_cpu_limit_stops_a_spinning_process(tmp_path: Path) -> None:
    """A stand-in for a qemu-img that a hostile header sends into a loop: burns CPU forever."""
    spinner = tmp_path / "spin"
    spinner.write_text("#!/bin/sh\nwhile :; do :; done\n")
    spinner.chmod(0o755)
    started = time.monotonic()
    with pytest.raises(QemuError) as info:
        QemuImg(qemu_img=str(spinner)).info(
            tmp_path / "x", "qcow2", limits=Limits(cpu_seconds=1, wall_seconds=30)
        )
    assert time.monotonic() - started < 15  # killed by the CPU limit, not the wall clock
    assert info.value.returncode != 0
    assert "timed out" not in info.value.message
