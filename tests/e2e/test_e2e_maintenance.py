"""Maintenance mode through the real API: enter, change the overlay, exit or abort."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from goldfleet.cli.client import ClientError

MiB = 1 << 20


def test_enter_gives_an_overlay_and_refuses_clones_delete_and_a_second_enter(fleet, template):
    entered = fleet.client.post("/templates/base/maintenance/enter")
    assert entered["status"] == "maintenance"
    overlay = Path(entered["overlay_path"])
    assert overlay.parent == fleet.layers_dir and overlay.is_file()
    assert overlay.name.startswith(".overlay-")
    (v1,) = fleet.versions()
    # the overlay sits on the current version's top layer, by file name
    assert fleet.image_info(overlay)["backing-filename"] == fleet.layer_file(v1["top_layer"]).name
    assert fleet.shows(overlay, MiB, 0x11)
    shown = fleet.client.get("/templates/base")
    assert shown["status"] == "maintenance" and shown["overlay_path"] == str(overlay)

    message = fleet.error(409, fleet.client.post, "/clones", {"template": "base", "count": 2})
    assert "base" in message and "maintenance" in message
    assert "maintenance" in fleet.error(
        409, fleet.client.post, "/clones", {"template": "base", "name": "one", "wait": True}
    )
    assert "maintenance" in fleet.error(409, fleet.client.post, "/templates/base/maintenance/enter")
    assert "maintenance" in fleet.error(409, fleet.client.delete, "/templates/base")
    assert "maintenance" in fleet.error(409, fleet.client.post, "/templates/base/flatten")

    assert fleet.client.get("/clones") == []
    assert fleet.client.get("/templates/base")["overlay_path"] == str(overlay)
    assert [v["name"] for v in fleet.versions()] == ["v1"]
    assert list(fleet.clones_dir.iterdir()) == []


def test_exit_seals_the_overlay_as_a_read_only_v2(fleet, template):
    (old,) = fleet.create(count=1)
    entered = fleet.client.post("/templates/base/maintenance/enter")
    overlay = Path(entered["overlay_path"])
    fleet.pattern(overlay, MiB, 0x22)

    r = fleet.client.post("/templates/base/maintenance/exit")
    assert r["version"] == 2
    assert r["clones_behind"] == 1
    assert r["operation"] is None
    assert r["template"]["status"] == "ready" and r["template"]["current_version"] == 2
    assert not overlay.exists()
    assert fleet.client.get("/templates/base")["overlay_path"] is None

    v1, v2 = fleet.versions()
    assert (v1["current"], v2["current"]) == (False, True)
    assert v2["chain"] == [v2["top_layer"], v1["top_layer"]]
    sealed = fleet.layer_file(v2["top_layer"])
    assert stat.S_IMODE(sealed.stat().st_mode) == 0o444
    assert fleet.image_info(sealed)["backing-filename"] == fleet.layer_file(v1["top_layer"]).name
    assert fleet.shows(sealed, MiB, 0x22) and fleet.shows(sealed, 0, 0x11)
    assert fleet.work_files() == []

    # new clones get v2; the old clone stays on v1 until it is recreated
    (new,) = fleet.create(count=1)
    assert fleet.show(new)["version"] == 2
    assert fleet.shows(fleet.volumes(new)["system"], MiB, 0x22)
    assert fleet.shows(fleet.volumes(new)["system"], 0, 0x11)
    assert fleet.show(old)["version"] == 1
    assert fleet.shows(fleet.volumes(old)["system"], MiB, 0x11)


def test_abort_discards_the_overlay_and_makes_no_version(fleet, template):
    before = sorted(p.name for p in fleet.layers_dir.iterdir())
    overlay = Path(fleet.client.post("/templates/base/maintenance/enter")["overlay_path"])
    fleet.pattern(overlay, MiB, 0x66)
    aborted = fleet.client.post("/templates/base/maintenance/abort")
    assert aborted["status"] == "ready" and aborted["current_version"] == 1
    assert not overlay.exists()
    assert sorted(p.name for p in fleet.layers_dir.iterdir()) == before
    assert [v["name"] for v in fleet.versions()] == ["v1"]
    (clone,) = fleet.create(count=1)
    assert fleet.shows(fleet.volumes(clone)["system"], MiB, 0x11)
    # exit and abort need maintenance; it can be entered again
    assert "not in maintenance" in fleet.error(
        409, fleet.client.post, "/templates/base/maintenance/abort"
    )
    assert "not in maintenance" in fleet.error(
        409, fleet.client.post, "/templates/base/maintenance/exit"
    )
    assert fleet.client.post("/templates/base/maintenance/enter")["status"] == "maintenance"


def test_exit_with_recreate_none_reports_the_clones_behind(fleet, template):
    names = fleet.create(count=3)
    r = fleet.update(byte=0x22, recreate="none")
    assert r["version"] == 2
    assert r["clones_behind"] == 3
    assert r["operation"] is None
    for name in names:
        assert fleet.show(name)["version"] == 1
        assert fleet.shows(fleet.volumes(name)["system"], MiB, 0x11)
    assert fleet.client.get("/templates/base")["clones_behind"] == 3


def test_exit_with_recreate_linked_moves_linked_clones_and_leaves_full_ones(fleet, template):
    linked = fleet.create(count=2)
    (full,) = fleet.create(name="full-1", full=True)
    data = {}
    for i, name in enumerate([*linked, full]):
        vol = fleet.volumes(name)
        fleet.pattern(vol["data0"], 3 * MiB, 0x30 + i)
        data[name] = vol["data0"].read_bytes()

    r = fleet.update(byte=0x22, recreate="linked")
    assert r["version"] == 2
    op = fleet.wait(r["operation"]["id"])
    assert op["status"] == "done" and op["total"] == 2 and op["done"] == 2 and op["failed"] == 0
    for i, name in enumerate(linked):
        c = fleet.show(name)
        assert (c["version"], c["status"], c["kind"]) == (2, "ready", "linked")
        vol = fleet.volumes(name)
        assert fleet.shows(vol["system"], MiB, 0x22)
        assert fleet.shows(vol["data0"], 3 * MiB, 0x30 + i)
        assert vol["data0"].read_bytes() == data[name]
    c = fleet.show(full)
    assert (c["version"], c["status"], c["kind"]) == (1, "ready", "full")
    assert fleet.shows(fleet.volumes(full)["system"], MiB, 0x11)
    assert fleet.client.get("/templates/base")["clones_behind"] == 1


def test_exit_with_recreate_all_moves_full_clones_too(fleet, template):
    (linked,) = fleet.create(count=1)
    (full,) = fleet.create(name="full-1", full=True)
    r = fleet.update(byte=0x22, recreate="all")
    op = fleet.wait(r["operation"]["id"])
    assert op["status"] == "done" and op["total"] == 2
    for name in (linked, full):
        assert fleet.show(name)["version"] == 2
        assert fleet.shows(fleet.volumes(name)["system"], MiB, 0x22)
    assert fleet.image_info(fleet.volumes(full)["system"]).get("backing-filename") is None
    assert fleet.client.get("/templates/base")["clones_behind"] == 0


def test_exit_refuses_an_overlay_whose_backing_file_was_changed(fleet, template, tmp_path):
    overlay = Path(fleet.client.post("/templates/base/maintenance/enter")["overlay_path"])
    outside = tmp_path / "outside.qcow2"
    fleet.qemu.create(outside, size=16 * MiB)
    fleet.qemu.rebase_unsafe(overlay, str(outside))
    with pytest.raises(ClientError) as refused:
        fleet.client.post("/templates/base/maintenance/exit")
    assert refused.value.status in (409, 422, 500)
    assert "backing" in refused.value.message
    t = fleet.client.get("/templates/base")
    assert t["status"] == "maintenance" and t["current_version"] == 1
    assert [v["name"] for v in fleet.versions()] == ["v1"]
    assert overlay.exists()
    assert fleet.client.post("/templates/base/maintenance/abort")["status"] == "ready"
