"""Maintenance, flattening, version deletion and crash recovery, through the service layer."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from goldfleet.db.tables import AuditEntry, Layer, OperationItem, Template
from goldfleet.domain.model import RecreateScope, TemplateStatus
from goldfleet.domain.rollout import Policy
from goldfleet.errors import BadImage, Conflict, HasDependents
from goldfleet.home import recover
from goldfleet.services import catalog, fleet

MiB = 1 << 20


@pytest.fixture
def base(ctx, tmp_path: Path) -> str:
    image = tmp_path / "base.raw"
    with image.open("wb") as f:
        f.truncate(8 * MiB)
        f.write(b"\x11" * 4096)
    catalog.import_template(
        ctx, name="base", image=image, fmt="raw", temp=["16M"], data=["16M"], actor="t"
    )
    return "base"


def patch(ctx, name: str, byte: int, offset: int = 0) -> int:
    view = catalog.enter_maintenance(ctx, name, actor="t")
    ctx.qemu.write_pattern(Path(view.overlay_path), offset, 4096, byte)
    return catalog.exit_maintenance(ctx, name, actor="t").version


def depth_of_current(ctx, name: str) -> int:
    with ctx.session() as s:
        t = s.scalar(select(Template).where(Template.name == name))
        return s.get(Layer, t.current_version.top_layer).depth


def test_versions_are_ordered_and_each_patch_is_a_layer(ctx, base):
    assert patch(ctx, base, 0x21) == 2
    assert patch(ctx, base, 0x22, 4096) == 3
    versions = catalog.list_versions(ctx, base)
    assert [v.number for v in versions] == [1, 2, 3]
    assert [len(v.chain) for v in versions] == [1, 2, 3]
    assert versions[2].chain[1:] == versions[1].chain  # v3 stands on v2's layers
    assert [v.current for v in versions] == [False, False, True]


def test_chain_past_max_depth_is_flattened_with_content_kept(ctx, base):
    ctx.settings.max_chain_depth = 2
    patch(ctx, base, 0x21)
    assert depth_of_current(ctx, base) == 2
    patch(ctx, base, 0x22, 4096)  # depth 3 > 2: flattened
    assert depth_of_current(ctx, base) == 1
    v = catalog.list_versions(ctx, base)[-1]
    assert "flattened" in v.note
    top = ctx.layers.path(v.top_layer)
    assert ctx.qemu.read(top, 0, 4) == b"\x21" * 4
    assert ctx.qemu.read(top, 4096, 4) == b"\x22" * 4


def test_flatten_on_demand_makes_a_new_single_layer_version(ctx, base):
    patch(ctx, base, 0x21)
    v = catalog.flatten_template(ctx, base, actor="t")
    assert v.number == 3 and len(v.chain) == 1 and v.current
    assert ctx.qemu.read(ctx.layers.path(v.top_layer), 0, 4) == b"\x21" * 4
    with pytest.raises(Conflict, match="single base layer"):
        catalog.flatten_template(ctx, base, actor="t")


def test_clones_on_an_old_chain_keep_working_after_flatten(ctx, base):
    patch(ctx, base, 0x21)
    fleet.create_clones(ctx, template=base, name="c1", actor="t", wait=True)
    catalog.flatten_template(ctx, base, actor="t")
    system = Path(fleet.show_clone(ctx, "c1").volumes[0].path)
    assert ctx.qemu.read(system, 0, 4) == b"\x21" * 4


def test_delete_version_refused_while_used_and_frees_unused_layers(ctx, base):
    fleet.create_clones(ctx, template=base, name="c1", actor="t", wait=True)
    patch(ctx, base, 0x21)
    with pytest.raises(HasDependents, match="clone c1"):
        catalog.delete_version(ctx, base, 1, actor="t")
    with pytest.raises(Conflict, match="current version"):
        catalog.delete_version(ctx, base, 2, actor="t")
    fleet.rebase_clone(ctx, "c1", actor="t")
    v1_layer = catalog.list_versions(ctx, base)[0].top_layer
    catalog.delete_version(ctx, base, 1, actor="t")
    # v1's layer is still v2's parent: kept
    assert ctx.layers.has(v1_layer)
    assert [v.number for v in catalog.list_versions(ctx, base)] == [2]


def test_exit_with_a_tampered_backing_reference_keeps_maintenance(ctx, base, tmp_path):
    view = catalog.enter_maintenance(ctx, base, actor="t")
    overlay = Path(view.overlay_path)
    other = tmp_path / "other.qcow2"
    ctx.qemu.create(other, size=8 * MiB)
    ctx.qemu.rebase_unsafe(overlay, str(other))
    with pytest.raises(BadImage, match="backing reference"):
        catalog.exit_maintenance(ctx, base, actor="t")
    shown = catalog.show_template(ctx, base)
    assert shown.status == TemplateStatus.MAINTENANCE
    assert "backing reference" in shown.error
    assert overlay.exists()
    catalog.abort_maintenance(ctx, base, actor="t")
    assert not overlay.exists()
    assert catalog.show_template(ctx, base).current_version == 1


def test_recovery_finishes_an_exit_interrupted_after_the_rename(ctx, base):
    view = catalog.enter_maintenance(ctx, base, actor="t")
    overlay = Path(view.overlay_path)
    ctx.qemu.write_pattern(overlay, 0, 4096, 0x33)
    parent = catalog.list_versions(ctx, base)[0].top_layer
    # what exit does, up to the crash: status, hash, recorded digest, rename
    info = ctx.layers.check_and_hash(overlay, parent=parent)
    with ctx.session() as s:
        t = s.scalar(select(Template).where(Template.name == base))
        t.status, t.sealing = TemplateStatus.EXITING_MAINTENANCE, info.digest
        s.commit()
    ctx.layers.commit_work(overlay, info)
    recover(ctx)
    shown = catalog.show_template(ctx, base)
    assert shown.status == TemplateStatus.READY and shown.current_version == 2
    assert catalog.list_versions(ctx, base)[1].top_layer == info.digest


def test_recovery_returns_an_interrupted_exit_to_maintenance(ctx, base):
    view = catalog.enter_maintenance(ctx, base, actor="t")
    with ctx.session() as s:
        t = s.scalar(select(Template).where(Template.name == base))
        t.status = TemplateStatus.EXITING_MAINTENANCE
        s.commit()
    recover(ctx)
    shown = catalog.show_template(ctx, base)
    assert shown.status == TemplateStatus.MAINTENANCE
    assert shown.overlay_path == view.overlay_path and Path(view.overlay_path).exists()


def test_an_exit_past_its_seal_leaves_out_clones_taken_meanwhile_instead_of_failing(
    ctx, base, monkeypatch
):
    """Once the overlay is sealed the exit cannot be refused any more: a clone another
    operation took after the exit's checks stays out of the rollout (on its version, said in
    the audit log), and a canary larger than the clones left is cut to them."""
    _, names = fleet.create_clones(ctx, template=base, count=2, actor="t", wait=True)
    view = catalog.enter_maintenance(ctx, base, actor="t")
    ctx.qemu.write_pattern(Path(view.overlay_path), 0, 4096, 0x44)
    seal = ctx.layers.commit_work
    later = ctx.clock.now() + timedelta(hours=1)

    def seal_while_another_request_takes_a_clone(work, info):
        fleet.recreate(ctx, name=names[0], actor="someone", start_at=later)  # stays queued
        seal(work, info)

    monkeypatch.setattr(ctx.layers, "commit_work", seal_while_another_request_takes_a_clone)
    done = catalog.exit_maintenance(
        ctx,
        base,
        recreate=RecreateScope.LINKED,
        actor="t",
        policy=Policy(canary=2, canary_auto=True),
    )
    assert done.version == 2 and done.template.status == TemplateStatus.READY
    assert done.operation is not None and done.operation.total == 1
    assert done.operation.policy["canary"] == 1
    with ctx.session() as s:
        entry = s.scalar(
            select(AuditEntry)
            .where(AuditEntry.action == "clone.recreate", AuditEntry.actor == "t")
            .order_by(AuditEntry.id.desc())
        )
        assert entry.detail["left_out_busy"] == [names[0]]
        items = s.scalars(
            select(OperationItem.clone_name).where(OperationItem.operation_id == done.operation.id)
        )
        assert list(items) == [names[1]]
