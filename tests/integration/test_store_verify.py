"""Store verify through the service layer on real files: parallel, incremental, and what
"changed since the last clean verify" means (store/health.py)."""

from __future__ import annotations

import os
import struct
import subprocess
import time
from pathlib import Path

import pytest

from goldfleet.services import catalog
from goldfleet.services import fleet as clones
from goldfleet.store.health import (
    RACY_NS,
    RECORD_FILE,
    fingerprint,
    load_record,
    settled,
)

MiB = 1 << 20


@pytest.fixture
def fleet(ctx, tmp_path: Path) -> dict[str, dict[str, Path]]:
    """A template of two layers and 6 linked clones (system, temp0, data0 each): clone name →
    volume name → path."""
    image = tmp_path / "base.raw"
    with image.open("wb") as f:
        f.truncate(8 * MiB)
        f.write(b"\x11" * 4096)
    catalog.import_template(
        ctx, name="base", image=image, fmt="raw", temp=["16M"], data=["16M"], actor="t"
    )
    view = catalog.enter_maintenance(ctx, "base", actor="t")
    ctx.qemu.write_pattern(Path(view.overlay_path), MiB, 4096, 0x22)
    catalog.exit_maintenance(ctx, "base", actor="t")
    _, names = clones.create_clones(ctx, template="base", count=6, actor="t", wait=True)
    return {
        n: {Path(v.path).stem: Path(v.path) for v in clones.show_clone(ctx, n).volumes}
        for n in names
    }


def settle() -> None:
    """Wait out the racy window, so files just made or changed can be vouched for."""
    time.sleep(RACY_NS / 1e9 + 0.05)


def layer_files(ctx) -> list[Path]:
    return sorted(ctx.layers.dir.glob("sha256-*.qcow2"))


def zero_refcount(path: Path, cluster: int = 0) -> None:
    """Set the refcount of one cluster to 0: qemu-img check then counts a corruption."""
    head = path.read_bytes()[: 1 << 20]
    table = struct.unpack(">Q", head[48:56])[0]
    block = struct.unpack(">Q", head[table : table + 8])[0]
    with path.open("r+b") as f:
        f.seek(block + 2 * cluster)
        f.write(b"\0\0")


def flip_layer_byte(path: Path, *, keep_times: bool = False) -> None:
    """Change one byte of guest data in a sealed layer (its qcow2 metadata intact), as a disk
    or a person could."""
    st = path.stat()
    blob = path.read_bytes()
    at = max(blob.find(b"\x11" * 4096), blob.find(b"\x22" * 4096)) + 100
    os.chmod(path, 0o644)
    with path.open("r+b") as f:
        f.seek(at)
        f.write(b"\x00")
    os.chmod(path, 0o444)
    if keep_times:  # hide the write from mtime (ctime cannot be set back)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def problem_files(report) -> list[str]:
    return [p.file for p in report.problems]


# --- the fingerprint ----------------------------------------------------------------------


def test_a_fingerprint_moves_with_every_change_through_the_filesystem(tmp_path):
    f = tmp_path / "v.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(f), "1M"], check=True)
    first = fingerprint(f)
    assert first is not None and fingerprint(f) == first
    time.sleep(0.02)
    st = f.stat()
    with f.open("r+b") as h:  # a write, then the mtime put back as it was
        h.seek(100)
        h.write(b"x")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_mtime_ns == st.st_mtime_ns
    assert fingerprint(f) != first  # the ctime moved
    second = fingerprint(f)
    time.sleep(0.02)
    os.chmod(f, 0o444)
    assert fingerprint(f) != second
    third = fingerprint(f)
    copy = tmp_path / "copy"
    copy.write_bytes(f.read_bytes())
    os.utime(copy, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns))
    os.chmod(copy, 0o444)
    os.replace(copy, f)  # the same bytes, times and mode, another file
    assert fingerprint(f) != third
    f.unlink()
    assert fingerprint(f) is None


def test_a_file_changed_within_the_racy_window_is_not_settled(tmp_path):
    f = tmp_path / "x"
    f.write_bytes(b"x")
    fp = fingerprint(f)
    assert not settled(fp)
    assert settled(fp, max(fp[4], fp[5]) + RACY_NS)


# --- parallel and serial ------------------------------------------------------------------


def test_the_parallel_verify_finds_exactly_what_the_serial_one_does(ctx, fleet):
    names = sorted(fleet)
    zero_refcount(fleet[names[0]]["system"])
    zero_refcount(fleet[names[2]]["data0"])
    fleet[names[3]]["temp0"].unlink()
    fleet[names[4]]["data0"].write_bytes(b"not a qcow2 image")
    top = layer_files(ctx)[0]
    flip_layer_byte(top)
    leftover = ctx.layers.dir / f"sha256-{'e' * 64}.qcow2"
    leftover.write_bytes(b"")

    serial = catalog.verify_store(ctx, workers=1)
    parallel = catalog.verify_store(ctx, workers=8)
    assert parallel.problems == serial.problems
    assert (parallel.files_checked, parallel.files_skipped) == (2 + 6 * 3, 0)
    found = {p.file.split(" ")[0]: p.problem for p in parallel.problems}
    uid = {n: fleet[n]["system"].parent.name for n in names}
    assert set(found) == {
        f"layers/{top.name}",
        f"layers/{leftover.name}",
        f"clones/{uid[names[0]]}/system.qcow2",
        f"clones/{uid[names[2]]}/data0.qcow2",
        f"clones/{uid[names[3]]}/temp0.qcow2",
        f"clones/{uid[names[4]]}/data0.qcow2",
    }
    assert "digest" in found[f"layers/{top.name}"]
    assert found[f"layers/{leftover.name}"] == "not in the catalog (left over)"
    assert found[f"clones/{uid[names[0]]}/system.qcow2"] == "qemu-img check found 1 corruptions"
    assert found[f"clones/{uid[names[3]]}/temp0.qcow2"] == "missing"
    assert found[f"clones/{uid[names[4]]}/data0.qcow2"].startswith("qemu-img check: ")
    # layers first, then the left-over layer, then the clones by name: the same order each run
    assert [p.file.split("/")[0] for p in parallel.problems] == ["layers"] * 2 + ["clones"] * 4


def test_progress_counts_every_file_checked(ctx, fleet):
    seen: list[tuple[int, int]] = []
    report = catalog.verify_store(ctx, progress=lambda done, total: seen.append((done, total)))
    assert report.problems == []
    assert seen[0] == (0, 20) and seen[-1] == (20, 20)
    assert [d for d, _ in seen] == list(range(21))


def test_one_verify_at_a_time(ctx, fleet):
    from goldfleet.errors import Conflict

    inside: list[Exception] = []

    def progress(done: int, total: int) -> None:
        if done == 1 and not inside:
            try:
                catalog.verify_store(ctx)
            except Conflict as exc:
                inside.append(exc)

    assert catalog.verify_store(ctx, progress=progress).problems == []
    assert len(inside) == 1 and "already running" in inside[0].message
    assert catalog.verify_store(ctx).problems == []  # and free again afterwards


# --- since the last clean verify ----------------------------------------------------------


def test_since_last_checks_only_what_changed_and_still_finds_corruption(ctx, fleet):
    names = sorted(fleet)
    first = catalog.verify_store(ctx, since_last=True)  # nothing recorded yet: everything
    assert (first.files_checked, first.files_skipped, first.since) == (20, 0, None)
    assert first.full_verify_at is not None and first.problems == []
    settle()
    clean = catalog.verify_store(ctx)
    assert clean.problems == [] and clean.files_checked == 20
    record = load_record(ctx.layers.root)
    assert record is not None and len(record.files) == 20

    again = catalog.verify_store(ctx, since_last=True)
    assert (again.files_checked, again.files_skipped) == (0, 20)
    assert again.since == record.at and again.full_verify_at == record.full_at
    # a clean run vouches on: the next one rests on it, and the full one stays the full one
    record = load_record(ctx.layers.root)
    assert record.full_at == clean.full_verify_at and record.at > clean.full_verify_at

    # a VM writes a data volume: that one file is checked again
    ctx.qemu.write_pattern(fleet[names[1]]["data0"], 0, 4096, 0x33)
    settle()
    r = catalog.verify_store(ctx, since_last=True)
    assert (r.files_checked, r.files_skipped, r.problems) == (1, 19, [])
    recorded = load_record(ctx.layers.root)
    assert recorded is not None and r.since == record.at and recorded.at > record.at

    # a corrupted clone volume, and a layer changed with its mtime put back
    zero_refcount(fleet[names[5]]["temp0"])
    top = layer_files(ctx)[-1]
    flip_layer_byte(top, keep_times=True)
    r = catalog.verify_store(ctx, since_last=True)
    assert r.files_checked == 2 and r.files_skipped == 18
    assert [p.file.split(" ")[0] for p in r.problems] == [
        f"layers/{top.name}",
        f"clones/{fleet[names[5]]['temp0'].parent.name}/temp0.qcow2",
    ]
    # a verify with problems is not recorded: they are reported until they are gone
    assert r.since == recorded.at and load_record(ctx.layers.root) == recorded
    r2 = catalog.verify_store(ctx, since_last=True)
    assert r2.problems == r.problems and r2.since == recorded.at


def test_since_last_rechecks_a_file_replaced_or_added_or_whose_parent_changed(ctx, fleet):
    names = sorted(fleet)
    settle()
    assert catalog.verify_store(ctx).problems == []
    # restore replaces the system and temp volumes by rename (other inodes): checked again
    clones.restore_clone(ctx, names[0], actor="t")
    clones.create_clones(ctx, template="base", name="late", actor="t", wait=True)
    settle()
    r = catalog.verify_store(ctx, since_last=True)
    # the restored clone's system and temp volumes, and the new clone's three
    assert (r.files_checked, r.files_skipped, r.problems) == (5, 18, [])
    assert r.clones_checked == 7

    # a record that does not say what a layer was checked against vouches for nothing there
    raw = (ctx.layers.root / RECORD_FILE).read_text()
    (ctx.layers.root / RECORD_FILE).write_text(raw.replace(":sha256:", ":sha256:0"))
    r = catalog.verify_store(ctx, since_last=True)
    assert r.files_checked == 1 and r.files_skipped == 22  # the layer with a parent


def test_a_damaged_record_vouches_for_nothing(ctx, fleet):
    settle()
    assert catalog.verify_store(ctx).problems == []
    (ctx.layers.root / RECORD_FILE).write_text("{not json")
    r = catalog.verify_store(ctx, since_last=True)
    assert (r.files_checked, r.files_skipped, r.since) == (20, 0, None)


def test_a_file_changed_just_before_the_verify_is_checked_again(ctx, fleet):
    names = sorted(fleet)
    settle()
    ctx.qemu.write_pattern(fleet[names[0]]["data0"], 0, 4096, 0x44)  # within the racy window
    assert catalog.verify_store(ctx).problems == []
    r = catalog.verify_store(ctx, since_last=True)
    assert (r.files_checked, r.files_skipped) == (1, 19)
