"""Which layer files HQ serves to a site token (services.sites.layer_file), through the service
layer on a real database and store: exactly the layers in the chains of the versions of the
templates assigned to the site, found with a fixed number of queries however many versions and
templates there are (a layer request, Range resumes included, does not walk the chains)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import event

from goldfleet.context import Context
from goldfleet.errors import InvalidInput, NotFound
from goldfleet.services import catalog, distribution

MiB = 1 << 20


def _import(ctx: Context, name: str, tmp_path: Path, byte: int) -> None:
    image = tmp_path / f"{name}.raw"
    with image.open("wb") as f:
        f.truncate(8 * MiB)
        f.write(bytes([byte]) * 4096)
    catalog.import_template(ctx, name=name, image=image, fmt="raw", temp=[], data=[], actor="t")


def _patch(ctx: Context, name: str, byte: int) -> None:
    view = catalog.enter_maintenance(ctx, name, actor="t")
    ctx.qemu.write_pattern(Path(view.overlay_path), MiB, 4096, byte)
    catalog.exit_maintenance(ctx, name, actor="t")


def _layers(ctx: Context, name: str) -> set[str]:
    """Every layer of every version of template ``name``."""
    out: set[str] = set()
    for v in catalog.list_versions(ctx, name):
        out.update(v.chain)
    return out


@contextmanager
def _statements(ctx: Context) -> Iterator[list[str]]:
    """The SQL statements run on ``ctx``'s database inside the block."""
    seen: list[str] = []

    def count(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        seen.append(statement)

    event.listen(ctx.engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(ctx.engine, "before_cursor_execute", count)


@pytest.fixture
def hq(ctx: Context, tmp_path: Path) -> Context:
    """HQ with base (v1, v2) and other (v1, v2); site branch is assigned base only."""
    _import(ctx, "base", tmp_path, 0x11)
    _patch(ctx, "base", 0x12)
    _import(ctx, "other", tmp_path, 0x21)
    _patch(ctx, "other", 0x22)
    distribution.create_site(ctx, "branch", actor="t")
    distribution.assign_template(ctx, "branch", "base", actor="t")
    return ctx


def test_a_site_gets_exactly_the_layers_of_its_templates(hq: Context):
    base, other = _layers(hq, "base"), _layers(hq, "other")
    assert len(base) == 2 and len(other) == 2 and not base & other
    for digest in base:
        assert distribution.layer_file(hq, "site-branch", digest) == hq.layers.path(digest)
    for digest in [*other, "sha256:" + "0" * 64]:
        with pytest.raises(NotFound, match="not in a template assigned to this site"):
            distribution.layer_file(hq, "site-branch", digest)
    with pytest.raises(InvalidInput, match="is not a layer digest"):
        distribution.layer_file(hq, "site-branch", "sha256:../../etc/passwd")
    with pytest.raises(NotFound, match="belongs to no site"):
        distribution.layer_file(hq, "admin", next(iter(base)))

    # another site, assigned other: each sees its own templates' layers, not the other's
    distribution.create_site(hq, "annex", actor="t")
    distribution.assign_template(hq, "annex", "other", actor="t")
    for digest in other:
        assert distribution.layer_file(hq, "site-annex", digest) == hq.layers.path(digest)
    for digest in base:
        with pytest.raises(NotFound):
            distribution.layer_file(hq, "site-annex", digest)

    # a new version is served at once; an unassigned template's layers no longer are
    _patch(hq, "base", 0x13)
    (new,) = _layers(hq, "base") - base
    assert distribution.layer_file(hq, "site-branch", new) == hq.layers.path(new)
    distribution.unassign_template(hq, "branch", "base", actor="t")
    for digest in [*base, new]:
        with pytest.raises(NotFound):
            distribution.layer_file(hq, "site-branch", digest)


def test_a_layer_request_costs_the_same_few_queries_however_long_the_chains(hq: Context):
    def statements(digest: str) -> int:
        with _statements(hq) as seen:
            distribution.layer_file(hq, "site-branch", digest)
        return len(seen)

    before = {statements(d) for d in _layers(hq, "base")}
    assert len(before) == 1, before
    (first,) = before
    for byte in (0x13, 0x14, 0x15, 0x16):
        _patch(hq, "base", byte)
    distribution.assign_template(hq, "branch", "other", actor="t")
    counts = {statements(d) for d in _layers(hq, "base") | _layers(hq, "other")}
    assert counts == {first}, counts
    assert first <= 2  # the site, then one query for the layer's place in its chains
