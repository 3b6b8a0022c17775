"""``fleet.list_clones`` reads a fleet in one query however many clones and versions there
are (no query per clone for its template, version or target version)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import event

from goldfleet.errors import InvalidInput
from goldfleet.services import catalog, fleet

MiB = 1 << 20


@pytest.fixture
def six_clones(ctx, tmp_path: Path) -> None:
    image = tmp_path / "base.raw"
    with image.open("wb") as f:
        f.truncate(8 * MiB)
        f.write(b"\x11" * 4096)
    catalog.import_template(
        ctx, name="base", image=image, fmt="raw", temp=["16M"], data=["16M"], actor="t"
    )
    fleet.create_clones(ctx, template="base", count=3, actor="t", wait=True)
    view = catalog.enter_maintenance(ctx, "base", actor="t")
    ctx.qemu.write_pattern(Path(view.overlay_path), 0, 4096, 0x22)
    catalog.exit_maintenance(ctx, "base", actor="t")
    fleet.create_clones(ctx, template="base", count=3, actor="t", wait=True)


def statements(ctx, fn):  # type: ignore[no-untyped-def]
    """``fn()`` and the SQL statements it ran (not those of the runner's threads meanwhile)."""
    seen: list[str] = []
    caller = threading.get_ident()

    def record(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        if threading.get_ident() == caller:
            seen.append(statement)

    event.listen(ctx.engine, "before_cursor_execute", record)
    try:
        return fn(), seen
    finally:
        event.remove(ctx.engine, "before_cursor_execute", record)


def test_one_query_for_the_whole_fleet(ctx, six_clones):
    listed, seen = statements(ctx, lambda: fleet.list_clones(ctx))
    assert [(c.name, c.version) for c in listed] == [
        ("base-001", 1),
        ("base-002", 1),
        ("base-003", 1),
        ("base-004", 2),
        ("base-005", 2),
        ("base-006", 2),
    ]
    assert len(seen) == 1, seen
    # a template filter adds its lookup (a 404 names an unknown one), nothing per clone
    listed, seen = statements(ctx, lambda: fleet.list_clones(ctx, template="base", version=2))
    assert [c.name for c in listed] == ["base-004", "base-005", "base-006"]
    assert len(seen) == 2, seen


def test_a_page_is_the_clones_after_a_name(ctx, six_clones):
    page = fleet.list_clones(ctx, after="base-002", limit=3)
    assert [c.name for c in page] == ["base-003", "base-004", "base-005"]
    with pytest.raises(InvalidInput, match="limit"):
        fleet.list_clones(ctx, limit=0)
    with pytest.raises(InvalidInput, match="not a clone state"):
        fleet.list_clones(ctx, state="Ready")
