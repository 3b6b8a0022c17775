"""What the web console asks of the services, on a real database and store: the template list
in a few queries (the same views as one by one), a bulk action over named clones as one
operation (refused whole, nothing started, when one clone is unknown or busy), an operation's
items, clone counts and the list's pool and user filters."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from goldfleet.db.tables import Template
from goldfleet.domain.rollout import Policy
from goldfleet.errors import Conflict, InvalidInput, NotFound
from goldfleet.services import catalog, fleet, rollouts
from goldfleet.services.common import OperationView, template_view

MiB = 1 << 20


@pytest.fixture
def fleet_of_two_versions(ctx, tmp_path: Path) -> None:
    """``base``: base-001..003 on v1, base-004..006 on v2 (current); ``other`` in maintenance."""
    image = tmp_path / "base.raw"
    with image.open("wb") as f:
        f.truncate(8 * MiB)
        f.write(b"\x11" * 4096)
    for name in ("base", "other"):
        catalog.import_template(ctx, name=name, image=image, fmt="raw", actor="t")
    fleet.create_clones(ctx, template="base", count=3, actor="t", wait=True)
    view = catalog.enter_maintenance(ctx, "base", actor="t")
    ctx.qemu.write_pattern(Path(view.overlay_path), 0, 4096, 0x22)
    catalog.exit_maintenance(ctx, "base", actor="t")
    fleet.create_clones(ctx, template="base", count=3, actor="t", wait=True)
    catalog.enter_maintenance(ctx, "other", actor="t")


def finished(ctx, op_id: int) -> OperationView:
    deadline = time.monotonic() + 60
    while (op := rollouts.show_operation(ctx, op_id)).finished_at is None:
        assert time.monotonic() < deadline, op
        time.sleep(0.05)
    return op


def test_the_template_list_is_the_views_one_by_one(ctx, fleet_of_two_versions) -> None:
    listed = catalog.list_templates(ctx)
    with ctx.session() as s:
        one_by_one = [
            template_view(s, t) for t in s.scalars(select(Template).order_by(Template.name))
        ]
    assert listed == one_by_one
    base, other = listed
    assert (base.clones, base.clones_behind, base.versions, base.current_version) == (6, 3, 2, 2)
    assert (other.status, other.clones, other.clones_behind) == ("maintenance", 0, 0)


def test_a_bulk_rebase_of_named_clones_is_one_operation(ctx, fleet_of_two_versions) -> None:
    op = fleet.bulk_action(
        ctx, names=["base-002", "base-001", "base-001"], action="rebase", actor="user:hd"
    )
    assert (op.kind, op.total, op.actor) == ("clone.rebase", 2, "user:hd")
    done = finished(ctx, op.id)
    assert (done.status, done.done, done.failed) == ("done", 2, 0)
    items = rollouts.list_items(ctx, op.id)
    assert [(i.clone, i.action, i.state) for i in items] == [
        ("base-001", "rebase", "done"),
        ("base-002", "rebase", "done"),
    ]
    versions = {c.name: c.version for c in fleet.list_clones(ctx, template="base")}
    assert versions["base-001"] == versions["base-002"] == 2 and versions["base-003"] == 1


def test_a_bulk_action_is_refused_whole(ctx, fleet_of_two_versions) -> None:
    before = len(rollouts.list_operations(ctx))
    with pytest.raises(NotFound, match="nope"):
        fleet.bulk_action(ctx, names=["base-004", "nope"], action="restore", actor="t")
    with pytest.raises(InvalidInput, match="not one of"):
        fleet.bulk_action(ctx, names=["base-004"], action="delete", actor="t")
    with pytest.raises(InvalidInput, match="no clone"):
        fleet.bulk_action(ctx, names=[], action="restore", actor="t")
    # base-005 held by a scheduled operation: a restore of it and base-006 starts nothing
    later = ctx.clock.now() + timedelta(hours=1)
    held = fleet.bulk_action(
        ctx, names=["base-005"], action="restore", actor="t", policy=Policy(), start_at=later
    )
    assert held.status == "scheduled"
    with pytest.raises(Conflict, match="base-005"):
        fleet.bulk_action(ctx, names=["base-005", "base-006"], action="restore", actor="t")
    assert len(rollouts.list_operations(ctx)) == before + 1
    rollouts.cancel_operation(ctx, held.id, actor="t")


def test_counts_and_the_lists_pool_and_user_filters(ctx, fleet_of_two_versions) -> None:
    counts = fleet.count_clones(ctx)
    assert counts["status"] == {"ready": 6}
    assert sum(counts["power"].values()) == 6
    assert fleet.clone_rows(ctx, user="nobody") == []
    assert fleet.clone_rows(ctx, pool="nopool") == []
    assert len(fleet.clone_rows(ctx, template="base")) == 6
