"""Layer files placed beforehand are checksummed, not trusted (issue 14 pt 3), with real files
and qemu-img: the site store's held layers and its seed folder, and an edge store's files."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from goldfleet.errors import BadImage
from goldfleet.store.edge import EdgeStores
from goldfleet.store.layers import LayerStore, file_digest

MiB = 1 << 20


@pytest.fixture
def store(tmp_path: Path, qemu) -> LayerStore:
    s = LayerStore(tmp_path / "store", qemu)
    s.ensure()
    return s


@pytest.fixture
def layer(store: LayerStore, tmp_path: Path, qemu) -> str:
    raw = tmp_path / "img.raw"
    raw.write_bytes(os.urandom(MiB))
    return store.import_image(raw, "raw", max_virtual_size=1 << 30).digest


def flip_last_byte(path: Path) -> None:
    os.chmod(path, 0o644)
    with path.open("r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))


def test_a_held_layer_is_hashed_once_then_known_by_its_signature(store, layer):
    fresh = LayerStore(store.root, store.qemu)  # another process: nothing checked yet
    assert fresh.check_file(layer) == "ok"
    assert fresh.check_file(layer) == "ok"  # the cache: same size, time, inode
    flip_last_byte(fresh.path(layer))
    assert fresh.check_file(layer) == "rejected"
    assert not fresh.path(layer).exists()
    (aside,) = fresh.rejected.iterdir()
    assert aside.name.startswith(fresh.path(layer).name) and file_digest(aside) != layer
    assert fresh.check_file(layer) == "missing"


def test_a_seeded_layer_is_taken_only_when_it_matches(store, layer, tmp_path):
    src = store.path(layer)
    store.seed.mkdir()
    shutil.copyfile(src, store.seed_path(layer))
    work = store.take_seed(layer)
    assert work is not None and work.parent == store.dir
    assert stat.S_IMODE(work.stat().st_mode) == 0o600 and file_digest(work) == layer
    assert not store.seed_path(layer).exists()
    work.unlink()

    shutil.copyfile(src, store.seed_path(layer))
    flip_last_byte(store.seed_path(layer))
    assert store.take_seed(layer) is None
    assert not store.seed_path(layer).exists() and len(list(store.rejected.iterdir())) == 1
    assert [p for p in store.dir.iterdir() if p.name.startswith(".")] == []  # no work file left
    assert store.take_seed(layer) is None  # nothing seeded


def test_an_edge_file_placed_by_hand_is_checked(store, layer, tmp_path, qemu):
    edges = EdgeStores(tmp_path / "edge", qemu)
    (tmp_path / "edge" / "h1" / "layers").mkdir(parents=True)
    placed = edges.path("h1", layer)
    shutil.copyfile(store.path(layer), placed)
    assert edges.missing("h1", [layer]) == []
    assert stat.S_IMODE(placed.stat().st_mode) == 0o444  # made read-only once checked
    assert edges.is_complete("h1", [layer]) and edges.unchanged("h1", layer)
    flip_last_byte(placed)
    assert not edges.unchanged("h1", layer)
    assert not edges.is_complete("h1", [layer])  # looked at again, moved aside
    assert not placed.exists() and edges.rejected == [("h1", layer)]
    assert [info.digest for info in edges.ensure("h1", [layer], store)] == [layer]
    assert file_digest(placed) == layer


def test_an_interrupted_feed_goes_on_from_its_partial_file(store, layer, tmp_path, qemu):
    edges = EdgeStores(tmp_path / "edge", qemu)
    folder = tmp_path / "edge" / "h1" / "layers"
    folder.mkdir(parents=True)
    src = store.path(layer)
    size = src.stat().st_size
    partial = folder / f".edge-feed-{layer.removeprefix('sha256:')}.qcow2"
    partial.write_bytes(src.read_bytes()[: size // 2])  # what a killed feed left
    moved: list[int] = []
    info = edges.feed_layer("h1", src, layer, None, moved.append)
    assert info is not None and info.digest == layer
    assert sum(moved) == size - size // 2 and edges.resumed[("h1", layer)] == size // 2
    assert not partial.exists() and file_digest(edges.path("h1", layer)) == layer
    assert edges.feed_layer("h1", src, layer, None) is None  # held now: nothing copied

    # a partial file with wrong bytes is not used: the copy is refused and the file removed
    other = tmp_path / "edge" / "h2" / "layers"
    other.mkdir(parents=True)
    bad = other / partial.name
    bad.write_bytes(b"\0" * (size // 2))
    with pytest.raises(BadImage, match="hashes to"):
        edges.feed_layer("h2", src, layer, None)
    assert not bad.exists() and not edges.path("h2", layer).exists()
    assert edges.feed_layer("h2", src, layer, None) is not None
