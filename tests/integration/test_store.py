"""The layer and volume stores on real files with real qemu-img and qemu-io."""

from __future__ import annotations

import contextlib
import hashlib
import stat
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from conftest import MiB, make_raw
from goldfleet.domain.model import CloneKind, Outline
from goldfleet.domain.names import layer_filename
from goldfleet.errors import BadImage, StoreError
from goldfleet.store import LayerInfo, LayerStore, QemuImg, VolumeStore
from goldfleet.store.files import work_owner
from goldfleet.store.qemu import FORMATS, Limits

SIZE = 16 * MiB
BASE_FILL = {0: b"\x11" * 4096, MiB: b"\x12" * 4096}
OUTLINE = Outline(temp=(32 * MiB,), data=(48 * MiB, 24 * MiB))
ZERO = b"\0" * 4096
# seal refuses a work file as a store error or as a bad image; either is a clean refusal
SEAL_REFUSED = (StoreError, BadImage)


def qemu_img(*args: object, cwd: Path | None = None) -> str:
    proc = subprocess.run(
        ["qemu-img", *map(str, args)], check=True, capture_output=True, text=True, cwd=cwd
    )
    return proc.stdout


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


class Stores:
    def __init__(self, root: Path, qemu: QemuImg) -> None:
        self.root = root
        self.qemu = qemu
        self.layers = LayerStore(root, qemu)
        self.layers.ensure()
        self.volumes = VolumeStore(root, qemu, self.layers)
        self.volumes.ensure()


@pytest.fixture
def stores(tmp_path: Path, qemu: QemuImg) -> Stores:
    return Stores(tmp_path / "store", qemu)


@pytest.fixture
def base(stores: Stores, tmp_path: Path) -> LayerInfo:
    """A base layer imported from a 16 MiB raw image with 0x11 at 0 and 0x12 at 1 MiB."""
    image = make_raw(tmp_path / "base.raw", SIZE, BASE_FILL)
    return stores.layers.import_image(image, "raw", max_virtual_size=1 << 40)


def assert_sealed(layers: LayerStore, info: LayerInfo) -> Path:
    path = layers.path(info.digest)
    assert path.name == f"sha256-{info.digest.removeprefix('sha256:')}.qcow2"
    assert path.is_file()
    assert "sha256:" + sha256(path) == info.digest
    assert mode(path) == 0o444
    assert info.size == path.stat().st_size
    return path


def no_work_files(layers: LayerStore) -> bool:
    return all(name.startswith("sha256-") for name in files(layers.dir))


# --- sealing ------------------------------------------------------------------------------


def test_import_seals_a_read_only_content_addressed_layer(stores: Stores, base: LayerInfo) -> None:
    path = assert_sealed(stores.layers, base)
    assert base.parent is None
    assert base.virtual_size == SIZE
    assert files(stores.layers.dir) == [path.name]
    info = stores.qemu.info(path, "qcow2")
    assert info["format"] == "qcow2"
    assert "backing-filename" not in info
    assert stores.qemu.read(path, 0, 4096) == b"\x11" * 4096
    assert stores.qemu.read(path, MiB, 4096) == b"\x12" * 4096
    assert stores.qemu.read(path, 2 * MiB, 4096) == ZERO
    assert stores.qemu.check(path)["exit_code"] == 0


def test_import_of_a_clean_qcow2(stores: Stores, tmp_path: Path) -> None:
    image = tmp_path / "src.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", image, "8M")
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 64k 8k", str(image)],
        check=True,
        capture_output=True,
    )
    info = stores.layers.import_image(image, "qcow2", max_virtual_size=1 << 40)
    path = assert_sealed(stores.layers, info)
    assert info.virtual_size == 8 * MiB
    assert stores.qemu.read(path, 64 * 1024, 8192) == b"\x5a" * 8192
    assert no_work_files(stores.layers)


def test_importing_identical_bytes_twice_keeps_one_file(
    stores: Stores, base: LayerInfo, tmp_path: Path
) -> None:
    again = make_raw(tmp_path / "elsewhere.raw", SIZE, BASE_FILL)
    second = stores.layers.import_image(again, "raw", max_virtual_size=1 << 40)
    assert second == base
    assert files(stores.layers.dir) == [layer_filename(base.digest)]
    assert_sealed(stores.layers, second)


def test_different_bytes_make_different_layers(
    stores: Stores, base: LayerInfo, tmp_path: Path
) -> None:
    other = make_raw(tmp_path / "other.raw", SIZE, {0: b"\x77" * 512})
    second = stores.layers.import_image(other, "raw", max_virtual_size=1 << 40)
    assert second.digest != base.digest
    assert files(stores.layers.dir) == sorted(
        [layer_filename(base.digest), layer_filename(second.digest)]
    )


def test_import_refuses_above_the_callers_limit(stores: Stores, tmp_path: Path) -> None:
    image = make_raw(tmp_path / "big.raw", SIZE)
    with pytest.raises(BadImage, match="above the limit of 8M"):
        stores.layers.import_image(image, "raw", max_virtual_size=8 * MiB)
    assert files(stores.layers.dir) == []


def overlay_with_update(stores: Stores, parent: LayerInfo, name: str = ".overlay-test.qcow2"):
    work = stores.layers.create_overlay(parent.digest, name)
    stores.qemu.write_pattern(work, MiB, 4096, 0x33)
    return work


def test_seal_an_overlay_makes_a_layer_on_its_parent(stores: Stores, base: LayerInfo) -> None:
    work = overlay_with_update(stores, base)
    assert work.parent == stores.layers.dir
    assert mode(work) & 0o200  # writable while in maintenance
    sealed = stores.layers.seal(work, parent=base.digest)
    path = assert_sealed(stores.layers, sealed)
    assert not work.exists()
    assert sealed.parent == base.digest
    info = stores.qemu.info(path, "qcow2")
    assert info["backing-filename"] == layer_filename(base.digest)
    assert info["backing-filename-format"] == "qcow2"
    assert stores.qemu.read(path, 0, 4096) == b"\x11" * 4096  # from the parent
    assert stores.qemu.read(path, MiB, 4096) == b"\x33" * 4096  # the update
    assert_sealed(stores.layers, base)  # the parent is untouched
    assert no_work_files(stores.layers)


def test_sealing_the_same_overlay_bytes_twice_dedups(stores: Stores, base: LayerInfo) -> None:
    first = stores.layers.seal(
        overlay_with_update(stores, base, ".overlay-a.qcow2"), parent=base.digest
    )
    second = stores.layers.seal(
        overlay_with_update(stores, base, ".overlay-b.qcow2"), parent=base.digest
    )
    assert first == second
    assert files(stores.layers.dir) == sorted(
        [layer_filename(base.digest), layer_filename(first.digest)]
    )


def test_seal_refuses_a_changed_backing_reference(
    stores: Stores, base: LayerInfo, tmp_path: Path
) -> None:
    work = overlay_with_update(stores, base)
    qemu_img("create", "-q", "-f", "qcow2", tmp_path / "other.qcow2", "16M")
    qemu_img("rebase", "-q", "-u", "-f", "qcow2", "-F", "qcow2", "-b", "../../other.qcow2", work)
    bytes_before = work.read_bytes()
    with pytest.raises(SEAL_REFUSED) as info:
        stores.layers.seal(work, parent=base.digest)
    assert info.value.message == (
        f"cannot seal {work.name}: its backing reference is '../../other.qcow2', expected"
        f" {layer_filename(base.digest)!r}; undo the change of backing file and try again"
    )
    assert work.read_bytes() == bytes_before  # left in place, unchanged
    assert stores.layers.sealed_digests() == {base.digest}
    # once the admin undoes the change, the same overlay seals
    qemu_img(
        "rebase", "-q", "-u", "-f", "qcow2", "-F", "qcow2", "-b", layer_filename(base.digest), work
    )
    sealed = stores.layers.seal(work, parent=base.digest)
    assert stores.qemu.read(stores.layers.path(sealed.digest), MiB, 4096) == b"\x33" * 4096


def test_seal_refuses_a_backing_reference_to_another_layer(
    stores: Stores, base: LayerInfo, tmp_path: Path
) -> None:
    other = stores.layers.import_image(
        make_raw(tmp_path / "other.raw", SIZE, {0: b"\x99" * 512}),
        "raw",
        max_virtual_size=1 << 40,
    )
    work = overlay_with_update(stores, base)
    qemu_img(
        "rebase", "-q", "-u", "-f", "qcow2", "-F", "qcow2", "-b", layer_filename(other.digest), work
    )
    with pytest.raises(SEAL_REFUSED, match="backing reference is 'sha256-"):
        stores.layers.seal(work, parent=base.digest)
    assert work.exists()
    assert stores.layers.sealed_digests() == {base.digest, other.digest}


def test_seal_refuses_a_backing_format_other_than_qcow2(stores: Stores, base: LayerInfo) -> None:
    work = overlay_with_update(stores, base)
    qemu_img(
        "rebase", "-q", "-u", "-f", "qcow2", "-F", "raw", "-b", layer_filename(base.digest), work
    )
    with pytest.raises(SEAL_REFUSED, match="cannot seal"):
        stores.layers.seal(work, parent=base.digest)
    assert work.exists()
    assert stores.layers.sealed_digests() == {base.digest}


def test_seal_refuses_a_base_with_a_backing_file(stores: Stores, base: LayerInfo) -> None:
    work = overlay_with_update(stores, base)
    with pytest.raises(SEAL_REFUSED, match=r"expected None"):
        stores.layers.seal(work, parent=None)
    assert work.exists()


def test_seal_refuses_an_external_data_file(stores: Stores) -> None:
    work = stores.layers.dir / ".import-df.qcow2"
    data = stores.root / "elsewhere.raw"
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={data}", work, "8M")
    with pytest.raises(SEAL_REFUSED, match="uses an external data file"):
        stores.layers.seal(work, parent=None)
    assert work.exists()
    assert stores.layers.sealed_digests() == set()


def test_seal_refuses_what_is_not_qcow2(stores: Stores) -> None:
    work = make_raw(stores.layers.dir / ".import-raw.qcow2", MiB)
    with pytest.raises(SEAL_REFUSED, match=r"cannot seal \.import-raw\.qcow2: "):
        stores.layers.seal(work, parent=None)
    assert work.exists()
    assert stores.layers.sealed_digests() == set()


def test_seal_never_makes_a_layer_that_points_outside_the_store(
    stores: Stores, base: LayerInfo, tmp_path: Path
) -> None:
    """An admin replaces the maintenance overlay with a symlink to an image of their own."""
    work = stores.layers.create_overlay(base.digest, ".overlay-test.qcow2")
    outside = tmp_path / "admin" / "edited.qcow2"
    outside.parent.mkdir()
    outside.write_bytes(work.read_bytes())  # same backing reference, by name
    outside.chmod(0o644)
    work.unlink()
    work.symlink_to(outside)
    stores.qemu.write_pattern(work, 0, 512, 0x66)
    with contextlib.suppress(SEAL_REFUSED):  # refusing is one right answer
        stores.layers.seal(work, parent=base.digest)
    sealed = [p for p in stores.layers.dir.iterdir() if p.name.startswith("sha256-")]
    assert not [p.name for p in sealed if p.is_symlink() or p.stat().st_nlink != 1]
    assert mode(outside) == 0o644


@pytest.mark.parametrize(
    "name", ["x.qcow2", "../.overlay-x.qcow2", ".overlay-/../../x.qcow2", "sha256-x.qcow2"]
)
def test_create_overlay_refuses_other_names(stores: Stores, base: LayerInfo, name: str) -> None:
    before = sorted(p.name for p in stores.root.rglob("*"))
    with pytest.raises(StoreError, match="is not an overlay name"):
        stores.layers.create_overlay(base.digest, name)
    assert sorted(p.name for p in stores.root.rglob("*")) == before


def test_seal_copy_of_a_linked_clone(stores: Stores, base: LayerInfo) -> None:
    stores.volumes.build_clone("c1", CloneKind.LINKED, base.digest, SIZE, OUTLINE)
    system = stores.volumes.path("c1", "system.qcow2")
    stores.qemu.write_pattern(system, 2 * MiB, 4096, 0x44)
    sealed = stores.layers.seal_copy(system, parent=base.digest)
    path = assert_sealed(stores.layers, sealed)
    assert stores.qemu.info(path, "qcow2")["backing-filename"] == layer_filename(base.digest)
    assert stores.qemu.read(path, 0, 4096) == b"\x11" * 4096
    assert stores.qemu.read(path, 2 * MiB, 4096) == b"\x44" * 4096
    # the clone keeps its own reference
    assert stores.qemu.info(system, "qcow2")["backing-filename"].startswith("../../layers/")
    assert no_work_files(stores.layers)


def test_flatten_merges_a_chain_into_a_base(stores: Stores, base: LayerInfo) -> None:
    top = stores.layers.seal(overlay_with_update(stores, base), parent=base.digest)
    flat = stores.layers.flatten(top.digest)
    path = assert_sealed(stores.layers, flat)
    assert flat.parent is None
    assert "backing-filename" not in stores.qemu.info(path, "qcow2")
    assert stores.qemu.read(path, 0, 4096) == b"\x11" * 4096
    assert stores.qemu.read(path, MiB, 4096) == b"\x33" * 4096
    assert stores.layers.sealed_digests() == {base.digest, top.digest, flat.digest}


# --- verify and clean-up ------------------------------------------------------------------


def test_verify_a_clean_layer(stores: Stores, base: LayerInfo) -> None:
    assert stores.layers.verify(base.digest, None) == []
    top = stores.layers.seal(overlay_with_update(stores, base), parent=base.digest)
    assert stores.layers.verify(top.digest, base.digest) == []


def test_verify_reports_a_flipped_byte(stores: Stores, base: LayerInfo) -> None:
    path = stores.layers.path(base.digest)
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # inside the last data cluster
    path.write_bytes(bytes(data))
    problems = stores.layers.verify(base.digest, None)
    assert f"{path.name}: content does not match its digest" in problems
    assert f"{path.name}: writable (sealed layers must be 0444)" in problems


def test_verify_reports_a_missing_layer(stores: Stores, base: LayerInfo) -> None:
    path = stores.layers.path(base.digest)
    path.unlink()
    assert stores.layers.verify(base.digest, None) == [f"{path.name}: missing"]


def test_verify_reports_an_unexpected_parent(stores: Stores, base: LayerInfo) -> None:
    top = stores.layers.seal(overlay_with_update(stores, base), parent=base.digest)
    problems = stores.layers.verify(top.digest, None)
    assert problems == [
        f"{layer_filename(top.digest)}: backing reference {layer_filename(base.digest)!r},"
        " expected None"
    ]


def test_remove_work_files_keeps_sealed_layers_named_overlays_and_live_servers_work(
    stores: Stores, base: LayerInfo
) -> None:
    live, dead = str(uuid.uuid4()), str(uuid.uuid4())
    made = [
        ".import-1.qcow2",  # names no server: its work is abandoned if no other server lives
        f".copy-{dead}-2.qcow2",
        f".flat-{dead}-3.qcow2",
        f".import-sync-{dead}-4.qcow2",
        f".import-{live}-5.qcow2",
        f".import-bundle-{live}-6.qcow2",
        ".overlay-gone.qcow2",
        ".overlay-keep.qcow2",
    ]
    for name in made:
        (stores.layers.dir / name).write_bytes(b"x")
    for name in ["upload-1", f"upload-{dead}-2", f"import-{live}-3"]:
        (stores.layers.incoming / name).write_bytes(b"x")

    removed = stores.layers.remove_work_files(
        lambda: {".overlay-keep.qcow2"}, lambda owner: owner != live
    )
    assert sorted(removed) == sorted(
        [
            ".import-1.qcow2",
            f".copy-{dead}-2.qcow2",
            f".flat-{dead}-3.qcow2",
            f".import-sync-{dead}-4.qcow2",
            ".overlay-gone.qcow2",
            "incoming/upload-1",
            f"incoming/upload-{dead}-2",
        ]
    )
    assert files(stores.layers.dir) == sorted(
        [
            f".import-{live}-5.qcow2",
            f".import-bundle-{live}-6.qcow2",
            ".overlay-keep.qcow2",
            layer_filename(base.digest),
        ]
    )
    assert files(stores.layers.incoming) == [f"import-{live}-3"]
    assert_sealed(stores.layers, base)


def test_work_files_are_named_with_the_server_that_makes_them(tmp_path: Path, qemu: QemuImg):
    server = str(uuid.uuid4())
    layers = LayerStore(tmp_path / "store", qemu, owner=server)
    for path in (
        layers.work_path(".import-"),
        layers.work_path(".import-bundle-"),
        layers.incoming_path("upload"),
    ):
        assert work_owner(path.name) == server, path.name
    assert layers.work_path(".copy-").name.startswith(f".copy-{server}-")
    assert layers.incoming_path("upload").parent == layers.incoming
    # a store outside a server (tests, tools) names none
    assert work_owner(LayerStore(tmp_path / "other", qemu).work_path(".import-").name) is None


# --- volumes ------------------------------------------------------------------------------


def test_linked_system_volume_is_an_overlay_on_the_layer(stores: Stores, base: LayerInfo) -> None:
    layer = stores.layers.path(base.digest)
    stores.volumes.build_clone("c1", CloneKind.LINKED, base.digest, SIZE, OUTLINE)
    system = stores.volumes.path("c1", "system.qcow2")
    info = stores.qemu.info(system, "qcow2")
    assert info["backing-filename"] == f"../../layers/{layer.name}"
    assert info["backing-filename-format"] == "qcow2"
    assert info["virtual-size"] == SIZE
    assert (system.parent / info["backing-filename"]).resolve() == layer.resolve()
    chain = stores.qemu.chain_info(system)
    assert [Path(c["filename"]).name for c in chain] == ["system.qcow2", layer.name]
    assert stores.qemu.read(system, 0, 4096) == b"\x11" * 4096
    assert stores.qemu.read(system, MiB, 4096) == b"\x12" * 4096
    # writes land in the clone, never in the layer
    stores.qemu.write_pattern(system, 0, 4096, 0x55)
    assert stores.qemu.read(system, 0, 4096) == b"\x55" * 4096
    assert stores.qemu.read(layer, 0, 4096) == b"\x11" * 4096
    assert_sealed(stores.layers, base)
    assert system.stat().st_size < MiB  # an overlay, not a copy


def test_volumes_hold_the_prototypes_bytes_written_sparsely(
    stores: Stores, base: LayerInfo
) -> None:
    """A volume made from a small prototype holds exactly its bytes (read back, holes as
    zeroes) but only its non-zero pages are written; a prototype made again is read again."""
    stores.volumes.build_clone("c1", CloneKind.LINKED, base.digest, SIZE, OUTLINE)
    stores.volumes.build_clone("c2", CloneKind.LINKED, base.digest, SIZE, OUTLINE)
    protos = {p.name: p for p in stores.volumes.cache.iterdir()}
    overlay = next(p for name, p in protos.items() if name.startswith("overlay-"))
    blank = protos[f"blank-{32 * MiB}.qcow2"]
    for uid in ("c1", "c2"):
        for name, proto in (("system.qcow2", overlay), ("temp0.qcow2", blank)):
            made = stores.volumes.path(uid, name)
            assert made.read_bytes() == proto.read_bytes()
            assert made.stat().st_blocks * 512 < proto.stat().st_size // 4  # holes
        assert stores.qemu.check(stores.volumes.path(uid, "data1.qcow2"))["exit_code"] == 0
    assert not [p for p in stores.volumes.clone_dir("c1").iterdir() if p.suffix == ".new"]
    # the prototype dropped and made again (other bytes here): the next volume has the new ones
    stores.volumes.drop_prototypes(base.digest)
    proto = stores.volumes.cache / overlay.name
    backing = f"../../layers/{layer_filename(base.digest)}"
    stores.qemu.create(proto, size=2 * SIZE, backing=backing, unsafe=True)
    stores.volumes.build_system("c3", CloneKind.LINKED, base.digest, SIZE)
    assert stores.volumes.path("c3", "system.qcow2").read_bytes() == proto.read_bytes()
    info = stores.qemu.info(stores.volumes.path("c3", "system.qcow2"), "qcow2")
    assert info["virtual-size"] == 2 * SIZE


def test_full_system_volume_is_an_independent_copy(stores: Stores, base: LayerInfo) -> None:
    stores.volumes.build_clone("c1", CloneKind.FULL, base.digest, SIZE, OUTLINE)
    system = stores.volumes.path("c1", "system.qcow2")
    info = stores.qemu.info(system, "qcow2")
    assert "backing-filename" not in info
    assert info["virtual-size"] == SIZE
    assert stores.qemu.read(system, 0, 4096) == b"\x11" * 4096
    assert stores.qemu.read(system, MiB, 4096) == b"\x12" * 4096
    assert stores.qemu.read(system, 4 * MiB, 4096) == ZERO
    stores.qemu.write_pattern(system, 0, 4096, 0x55)
    assert stores.qemu.read(stores.layers.path(base.digest), 0, 4096) == b"\x11" * 4096
    assert_sealed(stores.layers, base)
    # still readable with the layer gone: nothing refers to it
    stores.layers.remove(base.digest)
    assert stores.qemu.read(system, MiB, 4096) == b"\x12" * 4096


def test_full_system_volume_of_a_chain_is_flattened(stores: Stores, base: LayerInfo) -> None:
    top = stores.layers.seal(overlay_with_update(stores, base), parent=base.digest)
    stores.volumes.build_clone("c1", CloneKind.FULL, top.digest, SIZE, OUTLINE)
    system = stores.volumes.path("c1", "system.qcow2")
    assert "backing-filename" not in stores.qemu.info(system, "qcow2")
    assert stores.qemu.read(system, 0, 4096) == b"\x11" * 4096
    assert stores.qemu.read(system, MiB, 4096) == b"\x33" * 4096


def test_temp_and_data_volumes_are_standalone_of_the_outline_sizes(
    stores: Stores, base: LayerInfo
) -> None:
    stores.volumes.build_clone("c1", CloneKind.LINKED, base.digest, SIZE, OUTLINE)
    assert files(stores.volumes.clone_dir("c1")) == [
        "data0.qcow2",
        "data1.qcow2",
        "system.qcow2",
        "temp0.qcow2",
    ]
    expected = {"temp0.qcow2": 32 * MiB, "data0.qcow2": 48 * MiB, "data1.qcow2": 24 * MiB}
    for name, size in expected.items():
        path = stores.volumes.path("c1", name)
        info = stores.qemu.info(path, "qcow2")
        assert info["virtual-size"] == size, name
        assert "backing-filename" not in info, name
        assert "data-file" not in info["format-specific"]["data"], name
        assert stores.qemu.check(path)["exit_code"] == 0, name
        assert stores.qemu.read(path, 0, 4096) == ZERO, name
        assert stores.qemu.read(path, size - 4096, 4096) == ZERO, name
    # the volumes of two clones are separate files
    stores.volumes.build_clone("c2", CloneKind.LINKED, base.digest, SIZE, OUTLINE)
    stores.qemu.write_pattern(stores.volumes.path("c1", "data0.qcow2"), 0, 4096, 0x66)
    assert stores.qemu.read(stores.volumes.path("c2", "data0.qcow2"), 0, 4096) == ZERO
    paths = {(role, i): p for role, i, p in stores.volumes.volume_paths("c1", OUTLINE)}
    assert all(p.exists() for p in paths.values())
    assert len(paths) == 4


def test_reset_temp_empties_temp_and_leaves_data(stores: Stores, base: LayerInfo) -> None:
    stores.volumes.build_clone("c1", CloneKind.LINKED, base.digest, SIZE, OUTLINE)
    temp = stores.volumes.path("c1", "temp0.qcow2")
    data = stores.volumes.path("c1", "data0.qcow2")
    stores.qemu.write_pattern(temp, MiB, 8192, 0x77)
    stores.qemu.write_pattern(data, MiB, 8192, 0x78)
    assert stores.qemu.read(temp, MiB, 8192) == b"\x77" * 8192
    stores.volumes.reset_temp("c1", OUTLINE)
    assert stores.qemu.read(temp, MiB, 8192) == b"\0" * 8192
    assert stores.qemu.info(temp, "qcow2")["virtual-size"] == 32 * MiB
    assert stores.qemu.read(data, MiB, 8192) == b"\x78" * 8192
    assert not list(stores.volumes.clone_dir("c1").glob("*.new"))


@pytest.mark.parametrize("kind", [CloneKind.LINKED, CloneKind.FULL])
def test_build_clone_again_never_overwrites_data(
    stores: Stores, base: LayerInfo, kind: CloneKind
) -> None:
    stores.volumes.build_clone("c1", CloneKind.LINKED, base.digest, SIZE, OUTLINE)
    system = stores.volumes.path("c1", "system.qcow2")
    temp = stores.volumes.path("c1", "temp0.qcow2")
    data0 = stores.volumes.path("c1", "data0.qcow2")
    data1 = stores.volumes.path("c1", "data1.qcow2")
    stores.qemu.write_pattern(data0, 0, 4096, 0x10)
    stores.qemu.write_pattern(data1, 20 * MiB, 4096, 0x20)
    stores.qemu.write_pattern(system, 0, 4096, 0x30)
    stores.qemu.write_pattern(temp, 0, 4096, 0x40)
    inodes = (data0.stat().st_ino, data1.stat().st_ino)
    digests = (sha256(data0), sha256(data1))

    stores.volumes.build_clone("c1", kind, base.digest, SIZE, OUTLINE)

    assert stores.qemu.read(data0, 0, 4096) == b"\x10" * 4096
    assert stores.qemu.read(data1, 20 * MiB, 4096) == b"\x20" * 4096
    assert (data0.stat().st_ino, data1.stat().st_ino) == inodes
    assert (sha256(data0), sha256(data1)) == digests
    assert stores.qemu.read(system, 0, 4096) == b"\x11" * 4096  # system rebuilt
    assert stores.qemu.read(temp, 0, 4096) == ZERO  # temp emptied


def test_build_clone_onto_a_newer_version_keeps_data(stores: Stores, base: LayerInfo) -> None:
    stores.volumes.build_clone("c1", CloneKind.LINKED, base.digest, SIZE, OUTLINE)
    data0 = stores.volumes.path("c1", "data0.qcow2")
    stores.qemu.write_pattern(data0, 0, 4096, 0x10)
    top = stores.layers.seal(overlay_with_update(stores, base), parent=base.digest)
    stores.volumes.build_clone("c1", CloneKind.LINKED, top.digest, SIZE, OUTLINE)
    system = stores.volumes.path("c1", "system.qcow2")
    assert stores.qemu.info(system, "qcow2")["backing-filename"] == (
        f"../../layers/{layer_filename(top.digest)}"
    )
    assert stores.qemu.read(system, MiB, 4096) == b"\x33" * 4096
    assert stores.qemu.read(data0, 0, 4096) == b"\x10" * 4096


def test_remove_data_and_remove_clone(stores: Stores, base: LayerInfo) -> None:
    stores.volumes.build_clone("c1", CloneKind.LINKED, base.digest, SIZE, OUTLINE)
    stores.volumes.build_clone("c2", CloneKind.LINKED, base.digest, SIZE, OUTLINE)
    stores.volumes.remove_data("c1", OUTLINE)
    assert files(stores.volumes.clone_dir("c1")) == ["system.qcow2", "temp0.qcow2"]
    stores.volumes.create_data("c1", OUTLINE)  # fresh, empty data volumes
    assert stores.qemu.read(stores.volumes.path("c1", "data0.qcow2"), 0, 4096) == ZERO
    stores.volumes.remove_clone("c1")
    assert stores.volumes.clone_uids() == {"c2"}
    assert_sealed(stores.layers, base)


# --- every argv names the format ----------------------------------------------------------


class RecordingQemu(QemuImg):
    """The real wrapper, recording each argv it builds before running it for real."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[list[str], Limits | None]] = []

    def _run(self, argv: list[str], **kwargs: Any):  # type: ignore[override]
        self.calls.append((list(argv), kwargs.get("limits")))
        return super()._run(argv, **kwargs)


def test_every_qemu_call_passes_the_format(tmp_path: Path) -> None:
    qemu = RecordingQemu()
    stores = Stores(tmp_path / "store", qemu)
    raw = make_raw(tmp_path / "base.raw", SIZE, BASE_FILL)
    src = tmp_path / "src.qcow2"
    qemu_img("convert", "-q", "-f", "raw", "-O", "qcow2", raw, src)

    base = stores.layers.import_image(raw, "raw", max_virtual_size=1 << 40)
    base2 = stores.layers.import_image(src, "qcow2", max_virtual_size=1 << 40)
    top = stores.layers.seal(overlay_with_update(stores, base), parent=base.digest)
    stores.volumes.build_clone("l1", CloneKind.LINKED, top.digest, SIZE, OUTLINE)
    stores.volumes.build_clone("f1", CloneKind.FULL, top.digest, SIZE, OUTLINE)
    system = stores.volumes.path("l1", "system.qcow2")
    stores.qemu.write(system, 3 * MiB, b"\xab" * 512, scratch=tmp_path / "scratch")
    copied = stores.layers.seal_copy(system, parent=top.digest)
    flat = stores.layers.flatten(copied.digest)
    problems = stores.layers.verify(base.digest, None) + stores.layers.verify(
        top.digest, base.digest
    )
    chain = stores.qemu.chain_info(system)

    # real outcomes
    assert problems == []
    assert len(chain) == 3
    assert base2.virtual_size == SIZE
    assert stores.qemu.read(stores.layers.path(flat.digest), 3 * MiB, 512) == b"\xab" * 512
    assert stores.qemu.read(stores.layers.path(flat.digest), MiB, 4096) == b"\x33" * 4096
    full = stores.volumes.path("f1", "system.qcow2")
    assert stores.qemu.read(full, 0, 4096) == b"\x11" * 4096
    assert stores.qemu.read(raw, MiB, 4096, fmt="raw") == b"\x12" * 4096

    # every argv
    assert qemu.calls
    seen: set[str] = set()
    for argv, _ in qemu.calls:
        tool = Path(argv[0]).name
        assert tool in ("qemu-img", "qemu-io"), argv
        if tool == "qemu-img":
            seen.add(argv[1])
        else:
            seen.add("qemu-io")
        assert "-f" in argv, argv
        assert argv[argv.index("-f") + 1] in FORMATS, argv
        if "-b" in argv:
            assert "-F" in argv, argv
            assert argv[argv.index("-F") + 1] == "qcow2", argv
        if tool == "qemu-img" and argv[1] == "convert":
            assert argv[argv.index("-O") + 1] == "qcow2", argv
    assert {"info", "check", "create", "convert", "rebase", "qemu-io"} <= seen
    # the outside images were only ever opened under resource limits
    for outside in (str(raw), str(src)):
        calls = [(argv, limits) for argv, limits in qemu.calls if outside in argv]
        inspections = [c for c in calls if c[0][1] in ("info", "check", "convert")]
        assert inspections
        assert all(limits is not None for _, limits in inspections)


# --- reading and writing guest-visible bytes through qemu-io ------------------------------


def test_write_then_read_arbitrary_bytes(qemu: QemuImg, tmp_path: Path) -> None:
    volume = tmp_path / "v.qcow2"
    qemu.create(volume, size=8 * MiB)
    data = bytes(range(256)) * 3 + b"tail"
    qemu.write(volume, 3 * MiB + 5, data, scratch=tmp_path / "scratch")
    assert qemu.read(volume, 3 * MiB + 5, len(data)) == data
    assert qemu.read(volume, 3 * MiB, 5) == b"\0" * 5
    assert not (tmp_path / "scratch").exists()


def test_read_past_4_gib(qemu: QemuImg, tmp_path: Path) -> None:
    volume = tmp_path / "big.qcow2"
    qemu.create(volume, size=8 << 30)
    qemu.write_pattern(volume, 5 << 30, 512, 0x42)
    assert qemu.read(volume, 5 << 30, 512) == b"\x42" * 512


def test_write_with_a_scratch_path_containing_a_space(qemu: QemuImg, tmp_path: Path) -> None:
    folder = tmp_path / "my disks"
    folder.mkdir()
    volume = folder / "v.qcow2"
    qemu.create(volume, size=MiB)
    qemu.write(volume, 0, b"\x42" * 512, scratch=folder / "scratch")
    assert qemu.read(volume, 0, 512) == b"\x42" * 512
