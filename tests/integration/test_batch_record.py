"""A batch of clone outcomes is recorded in the same few statements however many clones it
holds (issue 10: the runner records 25 clones at a time, 400 times for a fleet of 10,000), and
the folders of a batch's new clones are made durable by one fsync of their parent."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from sqlalchemy import event, select

from goldfleet.db.tables import Clone, Version
from goldfleet.domain.model import CloneAction, CloneStatus, Power
from goldfleet.services import catalog, fleet
from goldfleet.services.fleet import _clones

MiB = 1 << 20


@pytest.fixture
def five_clones(ctx, tmp_path: Path) -> list[int]:
    image = tmp_path / "base.raw"
    with image.open("wb") as f:
        f.truncate(8 * MiB)
        f.write(b"\x11" * 4096)
    catalog.import_template(
        ctx, name="base", image=image, fmt="raw", temp=["16M"], data=["16M"], actor="t"
    )
    fleet.create_clones(ctx, template="base", count=5, actor="t", wait=True)
    with ctx.session() as s:
        return list(s.scalars(select(Clone.id).order_by(Clone.id)))


def record_marked(ctx, clone_ids: list[int]) -> list[str]:  # type: ignore[no-untyped-def]
    """Mark the clones for a restore onto their version, as a claim does, then record them
    done as the runner does; the statements the recording ran."""
    with ctx.session() as s:
        for c in s.scalars(select(Clone).where(Clone.id.in_(clone_ids))):
            _clones._mark(c, CloneAction.RESTORE, s.get(Version, c.version_id), None)
        s.commit()
    seen: list[str] = []
    caller = threading.get_ident()

    def count(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        if threading.get_ident() == caller:
            seen.append(statement)

    outcomes = [_clones.Outcome(i, None, Power.STOPPED) for i in clone_ids]
    event.listen(ctx.engine, "before_cursor_execute", count)
    try:
        with ctx.session() as s:
            assert fleet.CloneWork(ctx).record(s, outcomes) == (len(clone_ids), 0)
            s.commit()
    finally:
        event.remove(ctx.engine, "before_cursor_execute", count)
    with ctx.session() as s:
        rows = s.execute(select(Clone.status, Clone.action).where(Clone.id.in_(clone_ids)))
        assert set(rows) == {(CloneStatus.READY, None)}
    return seen


def test_a_batch_is_recorded_in_the_same_statements_for_one_clone_or_five(ctx, five_clones):
    one = record_marked(ctx, five_clones[:1])
    five = record_marked(ctx, five_clones)
    # before: one more SELECT of the target version per clone (7 statements for 5 clones)
    assert len(five) == len(one), (one, five)


def test_the_folders_of_a_batch_are_synced_once_before_it_is_recorded(
    ctx, five_clones, monkeypatch
):
    synced: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    store = ctx.volumes
    with ctx.session() as s:
        plans = fleet.CloneWork(ctx).load(s, five_clones)
    for plan in plans:
        store.build_clone(plan.uid, plan.kind, plan.top, plan.virtual_size, plan.outline)
    parent = str(store.dir)
    assert parent not in synced  # each clone's own folder only, so far
    assert all(str(store.clone_dir(p.uid)) in synced for p in plans)
    store.sync_folders()
    assert synced.count(parent) == 1
    store.sync_folders()  # nothing new since: no second fsync
    assert synced.count(parent) == 1
    # the runner's recording does it before the rows say ready
    store.build_clone(
        plans[0].uid, plans[0].kind, plans[0].top, plans[0].virtual_size, plans[0].outline
    )
    record_marked(ctx, five_clones[:1])
    assert synced.count(parent) == 2
