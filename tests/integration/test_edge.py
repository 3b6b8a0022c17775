"""Edge stores through the service layer, with real qemu-img, a real SQLite database and the sim
driver: prefetch, its checks, and clones placed on and rebuilt against their host's copies.

Every refusal is checked by what it leaves behind: which layer files the host's edge store holds
(no work file, nothing half-made) and, for clones, their system volume and recorded version."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from goldfleet.bootstrap import bootstrap
from goldfleet.config import Settings
from goldfleet.context import Context
from goldfleet.db.tables import AuditEntry, Clone, Lease, SimDomain
from goldfleet.domain.names import layer_filename
from goldfleet.errors import BadImage, Conflict, InvalidInput, NotFound, StoreError
from goldfleet.home import init_home
from goldfleet.services import catalog, fleet, hosts
from goldfleet.services.common import AuditView, audit, leases
from goldfleet.services.hosts import PruneView
from goldfleet.store.edge import EdgeStores
from goldfleet.store.layers import file_digest

MiB = 1 << 20
H1, H2 = "sim-host-1", "sim-host-2"


@pytest.fixture
def edge_root(tmp_path: Path) -> Path:
    root = tmp_path / "edge"
    for host in (H1, H2):
        (root / host).mkdir(parents=True)  # each host's disk, "mounted" here
    return root


@pytest.fixture
def ectx(home: Path, edge_root: Path) -> Iterator[Context]:
    """The service layer with edge stores on, two sim hosts."""
    init_home(home)
    c = bootstrap(Settings(home=home, edge_root=edge_root))
    yield c
    c.runner.shutdown()  # type: ignore[union-attr]
    c.engine.dispose()


@pytest.fixture
def base(ectx: Context, tmp_path: Path) -> str:
    image = tmp_path / "base.raw"
    with image.open("wb") as f:
        f.truncate(8 * MiB)
        f.write(b"\x11" * 4096)
    catalog.import_template(
        ectx, name="base", image=image, fmt="raw", temp=["16M"], data=["16M"], actor="t"
    )
    return "base"


def patch(ctx: Context, byte: int, offset: int = MiB) -> list[str]:
    """One maintenance round on base; returns the new version's chain, top first."""
    view = catalog.enter_maintenance(ctx, "base", actor="t")
    ctx.qemu.write_pattern(Path(view.overlay_path), offset, 4096, byte)
    catalog.exit_maintenance(ctx, "base", actor="t")
    return catalog.list_versions(ctx, "base")[-1].chain


def chain_of(ctx: Context, number: int) -> list[str]:
    return catalog.list_versions(ctx, "base")[number - 1].chain


def edge_files(root: Path, host: str) -> set[str]:
    """Everything in the host's layer folder, work files included."""
    folder = root / host / "layers"
    return set(os.listdir(folder)) if folder.is_dir() else set()


def names(*digests: str) -> set[str]:
    return {layer_filename(d) for d in digests}


def audit_of(ctx: Context, action: str) -> list[AuditView]:
    """The audit entries of one action, oldest first."""
    return [e for e in reversed(audit.list_audit(ctx)) if e.action == action]


def tamper(path: Path) -> None:
    """Flip the last byte of a sealed layer file in place (as a disk error or an intruder)."""
    os.chmod(path, 0o644)
    with path.open("r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))
    os.chmod(path, 0o444)


# --- prefetch -------------------------------------------------------------------------------


def test_prefetch_copies_the_chain_parents_first_checked_and_sealed(ectx, base, edge_root):
    top, parent = patch(ectx, 0x22)
    view = hosts.prefetch(ectx, H1, "base", 2, actor="alice")
    assert view.copied == [parent, top]  # parents first
    assert view.layers == 2 and view.complete
    assert view.bytes_copied == sum(ectx.layers.path(d).stat().st_size for d in (top, parent))
    assert edge_files(edge_root, H1) == names(top, parent)
    assert edge_files(edge_root, H2) == set()  # only the host asked for
    for digest in (top, parent):
        copy = edge_root / H1 / "layers" / layer_filename(digest)
        assert file_digest(copy) == digest
        assert stat.S_IMODE(copy.stat().st_mode) == 0o444
    # the copy is a chain of its own: the top's reference is its parent's name, beside it
    top_copy = edge_root / H1 / "layers" / layer_filename(top)
    assert ectx.qemu.info(top_copy, "qcow2")["backing-filename"] == layer_filename(parent)
    assert ectx.qemu.read(top_copy, 0, 4096) == b"\x11" * 4096  # from the parent's copy
    assert ectx.qemu.read(top_copy, MiB, 4096) == b"\x22" * 4096  # the patch
    with ectx.session() as s:
        entry = s.scalar(select(AuditEntry).where(AuditEntry.action == "host.prefetch"))
        assert entry.actor == "alice" and entry.target == H1
        assert entry.detail["version"] == "base:v2" and entry.detail["layers_copied"] == 2


def test_a_layer_already_on_the_host_costs_nothing(ectx, base, edge_root):
    (v1,) = chain_of(ectx, 1)
    assert hosts.prefetch(ectx, H1, "base", actor="t").copied == [v1]  # current: v1
    first = (edge_root / H1 / "layers" / layer_filename(v1)).stat()
    top, _ = patch(ectx, 0x22)
    again = hosts.prefetch(ectx, H1, "base", 1, actor="t")
    assert again.copied == [] and again.bytes_copied == 0 and again.complete
    v2 = hosts.prefetch(ectx, H1, "base", actor="t")  # current is v2 now: only its new layer
    assert v2.copied == [top]
    assert hosts.prefetch(ectx, H1, "base", 2, actor="t").copied == []
    after = (edge_root / H1 / "layers" / layer_filename(v1)).stat()
    assert (after.st_ino, after.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
    listing = hosts.list_hosts(ectx)
    h1, h2 = listing.hosts
    assert listing.edge_stores and h1.reachable and h1.layers == 2
    assert h1.bytes == sum(ectx.layers.path(d).stat().st_size for d in (v1, top))
    assert [(v.version, v.complete, v.missing_layers) for v in h1.versions] == [
        (1, True, 0),
        (2, True, 0),
    ]
    assert [(v.version, v.complete, v.missing_layers) for v in h2.versions] == [
        (1, False, 1),
        (2, False, 2),
    ]
    assert h2.versions[1].missing_bytes == h1.bytes


@pytest.mark.parametrize("which", ["base", "top"])
def test_a_tampered_site_store_layer_is_refused_and_not_committed(ectx, base, edge_root, which):
    top, parent = patch(ectx, 0x22)
    bad = parent if which == "base" else top
    tamper(ectx.layers.path(bad))
    with pytest.raises(BadImage) as info:
        hosts.prefetch(ectx, H1, "base", 2, actor="t")
    assert H1 in info.value.message and bad in info.value.message
    assert "does not match" in info.value.message or "not its digest" in info.value.message
    # nothing half-made: no work file, the refused layer absent; a parent copied before it
    # is whole and verified, and stays
    expected = set() if which == "base" else names(parent)
    assert edge_files(edge_root, H1) == expected
    with ectx.session() as s:
        assert s.scalar(select(AuditEntry).where(AuditEntry.action == "host.prefetch")) is None


def _foreign_layer(ctx: Context, tmp: Path, backing: list[str]) -> str:
    """A layer file in the site store, named by its digest, made with ``qemu-img create``."""
    work = tmp / "foreign.qcow2"
    work.unlink(missing_ok=True)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-u", *backing, str(work), "8M"],
        check=True,
        cwd=ctx.layers.dir,
    )
    digest = file_digest(work)
    os.replace(work, ctx.layers.path(digest))
    return digest


@pytest.mark.parametrize(
    "reference",
    [
        "../layers/{parent}",  # the same file, by another path: not exactly its name
        "/etc/hostname",  # outside every store
        None,  # standalone, though it claims a parent
    ],
)
def test_a_wrong_backing_reference_is_refused(ectx, base, edge_root, tmp_path, reference):
    (parent,) = chain_of(ectx, 1)
    if reference is None:
        backing = []
    else:
        fmt = "raw" if reference.startswith("/") else "qcow2"
        backing = ["-b", reference.format(parent=layer_filename(parent)), "-F", fmt]
    foreign = _foreign_layer(ectx, tmp_path, backing)
    with pytest.raises(BadImage) as info:
        ectx.edges.ensure(H1, (foreign, parent), ectx.layers)
    assert "backing reference" in info.value.message
    assert H1 in info.value.message and foreign in info.value.message
    assert edge_files(edge_root, H1) == names(parent)  # the parent, and nothing else
    assert not ectx.edges.is_complete(H1, (foreign, parent))


def test_a_layer_is_not_copied_before_its_parent(ectx, base, edge_root):
    top, parent = patch(ectx, 0x22)
    with pytest.raises(Conflict, match="needs its parent"):
        ectx.edges.copy_layer(H1, ectx.layers.path(top), top, parent)
    assert edge_files(edge_root, H1) == set()


def test_a_parent_missing_from_the_site_store_stops_the_prefetch(ectx, base, edge_root):
    _, parent = patch(ectx, 0x22)
    ectx.layers.path(parent).unlink()
    with pytest.raises(StoreError) as info:
        hosts.prefetch(ectx, H1, "base", 2, actor="t")
    assert "site store lacks" in info.value.message and parent in info.value.message
    assert edge_files(edge_root, H1) == set()


def test_refusals_come_before_any_copy(ectx, base, edge_root, home):
    with pytest.raises(NotFound, match="not one of the driver's hosts"):
        hosts.prefetch(ectx, "sim-host-9", "base", actor="t")
    with pytest.raises(NotFound, match="no version v7"):
        hosts.prefetch(ectx, H1, "base", 7, actor="t")
    with pytest.raises(InvalidInput):
        hosts.prefetch(ectx, H1, "../base", actor="t")
    # a host whose disk is not mounted: refused, and nothing created in its place
    os.rmdir(edge_root / H2)
    with pytest.raises(Conflict, match=f"edge store of host {H2} is not reachable"):
        hosts.prefetch(ectx, H2, "base", actor="t")
    assert not (edge_root / H2).exists()
    assert hosts.list_hosts(ectx).hosts[1].reachable is False
    # edge stores off (the default): refused, saying how to turn them on
    ctx_off = bootstrap(Settings(home=home))
    try:
        with pytest.raises(Conflict, match="edge stores are off"):
            hosts.prefetch(ctx_off, H1, "base", actor="t")
        listing = hosts.list_hosts(ctx_off)
        assert not listing.edge_stores and [h.name for h in listing.hosts] == [H1, H2]
    finally:
        ctx_off.engine.dispose()


def test_edge_root_empty_is_off_and_relative_is_refused(home):
    init_home(home)
    assert Settings(home=home, edge_root="").edge_root is None
    with pytest.raises(InvalidInput, match="not an absolute path"):
        bootstrap(Settings(home=home, edge_root="edge"))


# --- clones on their hosts' copies ----------------------------------------------------------


def vm(ctx: Context, name: str) -> tuple[str, tuple[str, ...]]:
    """Where the simulated VM is and the backing chain its system disk declares."""
    with ctx.session() as s:
        dom = s.get(SimDomain, name)
        system = next(d for d in dom.disks["disks"] if d["role"] == "system")
        return dom.host, tuple(system["backing"])


def host_of(ctx: Context, name: str) -> str | None:
    with ctx.session() as s:
        return s.scalar(select(Clone.host).where(Clone.name == name))


def test_new_clones_spread_over_hosts_and_read_their_hosts_copies(ectx, base, edge_root):
    (v1,) = chain_of(ectx, 1)
    _, names_ = fleet.create_clones(ectx, template="base", count=4, actor="t", wait=True)
    placed = {}
    for name in names_:
        host, backing = vm(ectx, name)
        assert host_of(ectx, name) == host
        assert backing == (str(edge_root / host / "layers" / layer_filename(v1)),)
        placed[host] = placed.get(host, 0) + 1
    assert placed == {H1: 2, H2: 2}
    for host in (H1, H2):  # prefetched automatically, checked like any copy
        assert edge_files(edge_root, host) == names(v1)
    fleet.start_clone(ectx, names_[0], actor="t")  # the sim starts only if those files exist


def test_a_rollout_prefetches_the_new_chain_to_each_host_first(ectx, base, edge_root):
    fleet.create_clones(ectx, template="base", count=2, actor="t", wait=True)
    top, parent = patch(ectx, 0x22)
    op = fleet.recreate(ectx, template="base", actor="t", wait=True)
    assert op.status == "done" and op.done == 2
    for name in ("base-001", "base-002"):
        host, backing = vm(ectx, name)
        layers = edge_root / host / "layers"
        assert backing == (str(layers / layer_filename(top)), str(layers / layer_filename(parent)))
        assert fleet.show_clone(ectx, name).version == 2
    for host in (H1, H2):
        assert edge_files(edge_root, host) == names(top, parent)
    # the copies the rollout made are in the audit log, by the operation
    by_op = [e for e in audit_of(ectx, "host.prefetch") if e.actor == f"op:{op.id}"]
    assert {e.target for e in by_op} == {H1, H2}
    assert all(e.detail["version"] == "base:v2" for e in by_op)
    assert sum(e.detail["layers_copied"] for e in by_op) == 2  # the new top, once per host


def test_a_rollout_that_cannot_complete_the_chain_on_a_host_changes_nothing(ectx, base, edge_root):
    fleet.create_clones(ectx, template="base", name="desk", actor="t", wait=True)
    host = host_of(ectx, "desk")
    system = Path(fleet.show_clone(ectx, "desk").volumes[0].path)
    before = (system.stat().st_ino, hashlib.sha256(system.read_bytes()).hexdigest())
    vm_before = vm(ectx, "desk")
    top, _ = patch(ectx, 0x22)
    tamper(ectx.layers.path(top))
    op = fleet.recreate(ectx, template="base", actor="t", wait=True)
    assert op.status == "failed" and op.failed == 1
    c = fleet.show_clone(ectx, "desk")
    assert c.status == "failed" and c.version == 1
    assert host in c.error and top in c.error  # names the host and the layer
    assert (system.stat().st_ino, hashlib.sha256(system.read_bytes()).hexdigest()) == before
    assert vm(ectx, "desk") == vm_before  # still defined on the old chain, same host
    assert layer_filename(top) not in edge_files(edge_root, host)


def test_a_new_clone_is_never_defined_on_a_host_that_cannot_take_its_chain(ectx, base, edge_root):
    # host 2 is mounted, but its edge store cannot take layers ("layers" is not a folder)
    (edge_root / H2 / "layers").write_bytes(b"")
    op, _ = fleet.create_clones(ectx, template="base", count=4, actor="t", wait=True)
    assert op.done == 2 and op.failed == 2
    with ectx.session() as s:
        doms = {d.name: d.host for d in s.scalars(select(SimDomain))}
    assert set(doms.values()) == {H1}  # nothing defined on host 2
    failed = [c for c in fleet.list_clones(ectx) if c.status == "failed"]
    assert len(failed) == 2
    for c in failed:
        assert f"the edge store of host {H2} cannot take layers" in c.error
    # host 2 fixed: the retry makes them there, reading host 2's copies
    (edge_root / H2 / "layers").unlink()
    retry = fleet.retry(ectx, all_failed=True, actor="t", wait=True)
    assert retry.status == "done"
    for c in failed:
        assert vm(ectx, c.name)[0] == H2
    assert edge_files(edge_root, H2) == names(*chain_of(ectx, 1))


def test_new_clones_skip_a_host_whose_edge_store_is_not_reachable(ectx, base, edge_root):
    def defined(name: str) -> bool:
        with ectx.session() as s:
            return s.get(SimDomain, name) is not None

    def error_of(name: str) -> str:
        return next(c.error for c in fleet.list_clones(ectx) if c.name == name) or ""

    os.rmdir(edge_root / H2)  # host 2's disk is not mounted
    op, _ = fleet.create_clones(ectx, template="base", count=4, actor="t", wait=True)
    assert op.done == 4 and op.failed == 0
    assert {vm(ectx, f"base-{i:03d}")[0] for i in range(1, 5)} == {H1}

    # host 1's edge store breaks: the next clone is placed there and fails, nothing defined
    os.rename(edge_root / H1 / "layers", edge_root / "h1-layers")
    (edge_root / H1 / "layers").write_bytes(b"")
    op, _ = fleet.create_clones(ectx, template="base", name="late", actor="t", wait=True)
    assert op.failed == 1 and host_of(ectx, "late") == H1 and not defined("late")
    assert f"the edge store of host {H1} cannot take layers" in error_of("late")

    # host 1 goes away, host 2 comes: the retry places the clone again, on host 2
    os.rename(edge_root / H1, edge_root / "h1-away")
    (edge_root / H2).mkdir()
    retry = fleet.retry(ectx, name="late", actor="t", wait=True)
    assert retry.status == "done" and vm(ectx, "late")[0] == H2

    # no host reachable: refused with the reason, nothing defined
    os.rename(edge_root / H2, edge_root / "h2-away")
    op, _ = fleet.create_clones(ectx, template="base", name="none", actor="t", wait=True)
    assert op.failed == 1 and not defined("none")
    assert "no host can take the clone" in error_of("none")
    assert "not reachable" in error_of("none")


def test_full_clones_read_no_layer_and_need_no_copy(ectx, base, edge_root):
    fleet.create_clones(ectx, template="base", name="full", full=True, actor="t", wait=True)
    host, backing = vm(ectx, "full")
    assert backing == () and host in (H1, H2)
    assert edge_files(edge_root, H1) == edge_files(edge_root, H2) == set()


# --- prune ----------------------------------------------------------------------------------


def test_a_prune_after_a_rollout_removes_the_old_top_and_keeps_shared_parents(
    ectx, base, edge_root
):
    """base:v2 = (t2, b) and alt:v1 = (a1, b) share b. One host's clone moves from base:v2 to
    alt:v1 while base's current becomes a flattened v3: t2 goes from that host, b stays; the
    other host keeps t2 for its clone still on base:v2."""
    (b,) = chain_of(ectx, 1)
    fleet.create_clones(ectx, template="base", name="seed", actor="t", wait=True)
    t2, _ = patch(ectx, 0x22)
    catalog.create_from_clone(ectx, name="alt", clone="seed", actor="t")
    a1, _ = catalog.list_versions(ectx, "alt")[0].chain
    fleet.delete_clone(ectx, "seed", actor="t")
    _, made = fleet.create_clones(ectx, template="base", count=2, actor="t", wait=True)
    moved, stays = sorted(made, key=lambda n: host_of(ectx, n))
    assert (host_of(ectx, moved), host_of(ectx, stays)) == (H1, H2)
    catalog.flatten_template(ectx, "base", actor="t")  # current: v3, one new base layer
    fleet.rebase_clone(ectx, moved, to="alt:v1", actor="t")
    assert names(t2, b, a1) <= edge_files(edge_root, H1)

    view = hosts.prune(ectx, None, actor="alice")
    h1, h2 = view.hosts
    assert (h1.host, h1.removed, h1.kept) == (H1, [t2], len(edge_files(edge_root, H1)))
    assert h1.bytes_freed == ectx.layers.path(t2).stat().st_size
    assert edge_files(edge_root, H1) == names(a1, b)  # the shared parent stays
    assert (h2.removed, h2.bytes_freed) == ([], 0)  # its clone is still on base:v2
    assert names(t2, b) <= edge_files(edge_root, H2)
    for name in made:  # both VMs still start on their hosts' copies
        fleet.start_clone(ectx, name, actor="t")
    entries = {e.target: e for e in audit_of(ectx, "host.prune")}
    assert entries[H1].actor == "alice"
    assert (entries[H1].detail["layers"], entries[H1].detail["bytes"]) == (1, h1.bytes_freed)
    assert entries[H2].detail["layers"] == 0


def test_a_dry_run_removes_nothing_and_is_not_audited(ectx, base, edge_root):
    (b,) = chain_of(ectx, 1)
    hosts.prefetch(ectx, H1, "base", actor="t")
    view = hosts.prune(ectx, H1, keep_current=False, dry_run=True, actor="t")
    assert view.dry_run and [h.removed for h in view.hosts] == [[b]]
    assert view.hosts[0].kept == 0
    assert edge_files(edge_root, H1) == names(b)
    assert audit_of(ectx, "host.prune") == []


def test_without_keep_current_a_host_with_no_clones_loses_the_current_version(
    ectx, base, edge_root
):
    top, parent = patch(ectx, 0x22)
    for host in (H1, H2):
        hosts.prefetch(ectx, host, "base", actor="t")
    fleet.create_clones(ectx, template="base", name="desk", actor="t", wait=True)
    busy = host_of(ectx, "desk")
    idle = H2 if busy == H1 else H1
    assert hosts.prune(ectx, idle, actor="t").hosts[0].removed == []  # current kept
    gone = hosts.prune(ectx, idle, keep_current=False, actor="t").hosts[0]
    assert gone.removed == [top, parent]  # children before parents
    assert edge_files(edge_root, idle) == set()
    # the host with a clone keeps what it reads
    assert hosts.prune(ectx, busy, keep_current=False, actor="t").hosts[0].removed == []
    assert edge_files(edge_root, busy) == names(top, parent)
    # nothing remembers the removed chain: a prefetch copies it again
    assert not ectx.edges.is_complete(idle, (top, parent))
    assert hosts.prefetch(ectx, idle, "base", actor="t").copied == [parent, top]


def test_a_prune_keeps_live_work_files_and_is_never_taken_for_a_complete_chain(
    ectx, base, edge_root
):
    """Work files of a live copy stay, stale ones go. While a prune runs, a clone action
    asking whether its chain is complete hears "no" (and so waits for the lock in ensure);
    after it, the chains it removed are not remembered as complete."""
    (b,) = chain_of(ectx, 1)
    hosts.prefetch(ectx, H1, "base", actor="t")
    assert ectx.edges.is_complete(H1, (b,))
    layers = edge_root / H1 / "layers"
    live, stale = layers / ".edge-live.qcow2", layers / ".edge-stale.qcow2"
    live.write_bytes(b"x")
    stale.write_bytes(b"x")
    os.utime(stale, (1, 1))
    asked = []

    def keep():
        asked.append(ectx.edges.is_complete(H1, (b,)))
        return hosts.keep_on(ectx, H1, keep_current=False)

    assert ectx.edges.prune(H1, keep) == [(b, ectx.layers.path(b).stat().st_size)]
    assert asked == [False]
    assert edge_files(edge_root, H1) == {live.name}
    assert not ectx.edges.is_complete(H1, (b,))
    assert [info.digest for info in ectx.edges.ensure(H1, (b,), ectx.layers)] == [b]


def test_a_chain_pruned_by_another_server_is_copied_back(ectx, base, edge_root):
    """Each server remembers complete chains; another server's prune (its own EdgeStores on
    the same folders) removes the top layer first, and that is noticed by one stat."""
    (b,) = chain_of(ectx, 1)
    hosts.prefetch(ectx, H1, "base", actor="t")
    assert ectx.edges.is_complete(H1, (b,))
    other = EdgeStores(edge_root, ectx.qemu)
    nothing = hosts.keep_on(ectx, H2, keep_current=False)  # no clone anywhere: keeps none
    assert [d for d, _ in other.prune(H1, lambda: nothing)] == [b]
    assert not ectx.edges.is_complete(H1, (b,))
    assert [info.digest for info in ectx.edges.ensure(H1, (b,), ectx.layers)] == [b]
    assert edge_files(edge_root, H1) == names(b)


def test_prune_refusals_come_before_any_removal(ectx, base, edge_root, home):
    (b,) = chain_of(ectx, 1)
    for host in (H1, H2):
        hosts.prefetch(ectx, host, "base", actor="t")
    with pytest.raises(NotFound, match="not one of the driver's hosts"):
        hosts.prune(ectx, "sim-host-9", keep_current=False, actor="t")
    # one host not reachable: refused; with every host, reported and skipped
    (edge_root / H2).rename(edge_root / "unmounted")
    with pytest.raises(Conflict, match=f"edge store of host {H2} is not reachable"):
        hosts.prune(ectx, H2, keep_current=False, actor="t")
    view = hosts.prune(ectx, None, keep_current=False, actor="t")
    assert [(h.host, h.removed) for h in view.hosts] == [(H1, [b]), (H2, [])]
    assert "not reachable" in view.hosts[1].note
    assert not (edge_root / H2).exists()
    assert [e.target for e in audit_of(ectx, "host.prune")] == [H1]
    ctx_off = bootstrap(Settings(home=home))
    try:
        with pytest.raises(Conflict, match="edge stores are off"):
            hosts.prune(ctx_off, None, actor="t")
    finally:
        ctx_off.engine.dispose()


@pytest.fixture
def second_server(home: Path, edge_root: Path) -> Iterator[Context]:
    """Another server on the same database and the same hosts (its own EdgeStores, so its own
    in-process locks), as two servers sharing a PostgreSQL database are."""
    c = bootstrap(Settings(home=home, edge_root=edge_root))
    yield c
    c.engine.dispose()


def test_two_servers_never_prune_or_copy_into_one_host_at_once(
    ectx, base, edge_root, second_server
):
    """The host's lease is in the database: while one server holds it, another's prune waits
    (it used to run at once, on its own process lock); then it runs."""
    ectx.runner.start_background()  # a live server: its heartbeat row keeps its lease
    hosts.prefetch(ectx, H1, "base", actor="t")
    inside, leave = threading.Event(), threading.Event()

    def hold_host() -> None:
        with leases.hold(ectx, f"host:{H1}", wait=5, what="test"):
            inside.set()
            leave.wait(10)

    holder = threading.Thread(target=hold_host)
    holder.start()
    assert inside.wait(5)
    pruned: list[PruneView] = []
    other = threading.Thread(
        target=lambda: pruned.append(hosts.prune(second_server, H1, keep_current=False, actor="t"))
    )
    other.start()
    other.join(1.0)
    assert other.is_alive() and not pruned, "the second server pruned while the first held it"
    leave.set()
    holder.join(5)
    other.join(10)
    assert [h.removed for h in pruned[0].hosts] == [chain_of(ectx, 1)]


def test_a_lease_of_a_dead_server_is_taken_over_and_a_live_one_refuses_in_time(
    ectx, base, second_server
):
    ectx.runner.start_background()
    with second_server.session() as s:  # left by a server that died while pruning
        s.add(Lease(name=f"host:{H1}", owner="dead-server", taken_at=datetime(2000, 1, 1)))
        s.commit()
    with leases.hold(second_server, f"host:{H1}", wait=0, what="the edge store of host x"):
        pass  # taken over at once
    what = "the edge store of host x"
    with leases.hold(ectx, f"host:{H1}", wait=1, what=what):
        busy = rf"{what} is busy: server .* \(pid {os.getpid()}\) is working on it"
        with (
            pytest.raises(Conflict, match=busy),
            leases.hold(second_server, f"host:{H1}", wait=0.3, what=what),
        ):
            pass
        # re-entrant within one server: its threads share the lease
        with leases.hold(ectx, f"host:{H1}", wait=0, what="x"):
            pass
    with second_server.session() as s:
        assert s.scalars(select(Lease)).all() == []  # given back by the last one out
