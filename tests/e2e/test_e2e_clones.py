"""Clones through the real API: create, volumes on disk, start and stop, delete."""

from __future__ import annotations

import threading
from pathlib import Path

from goldfleet.cli.client import ClientError

MiB = 1 << 20


def test_create_numbered_and_named_clones(fleet, template):
    r = fleet.client.post("/clones", {"template": "base", "count": 3, "wait": True})
    assert r["clones"] == ["base-001", "base-002", "base-003"]
    op = r["operation"]
    assert (op["kind"], op["status"], op["total"], op["done"], op["failed"]) == (
        "clone.create",
        "done",
        3,
        3,
        0,
    )
    assert fleet.create(name="desk-a") == ["desk-a"]
    assert fleet.create(count=2) == ["base-004", "base-005"]
    clones = fleet.client.get("/clones")
    assert [c["name"] for c in clones] == [
        "base-001",
        "base-002",
        "base-003",
        "base-004",
        "base-005",
        "desk-a",
    ]
    for c in clones:
        assert (c["status"], c["template"], c["version"], c["kind"], c["power"]) == (
            "ready",
            "base",
            1,
            "linked",
            "stopped",
        )
    assert len(fleet.client.get("/clones", params={"template": "base"})) == 6
    assert fleet.client.get("/templates/base")["clones"] == 6
    assert len(fleet.clone_folders()) == 6
    # a taken name, and a name together with a count, are refused without a new clone
    assert "desk-a" in fleet.error(
        409, fleet.client.post, "/clones", {"template": "base", "name": "desk-a"}
    )
    assert fleet.error(
        422, fleet.client.post, "/clones", {"template": "base", "name": "x", "count": 2}
    )
    assert fleet.error(422, fleet.client.post, "/clones", {"template": "base", "count": 0})
    assert len(fleet.client.get("/clones")) == 6
    assert "ghost" in fleet.error(404, fleet.client.get, "/clones/ghost")


def test_clone_show_lists_system_temp_and_data_volumes(fleet, template):
    (name,) = fleet.create(count=1)
    c = fleet.show(name)
    vols = c["volumes"]
    assert [(v["role"], v["index"]) for v in vols] == [("system", 0), ("temp", 0), ("data", 0)]
    assert [v["size"] for v in vols] == [16 * MiB, 64 * MiB, 64 * MiB]
    assert [v["version"] for v in vols] == ["v1", None, None]
    folders = {str(Path(v["path"]).parent) for v in vols}
    (folder,) = folders
    assert folder.startswith(str(fleet.clones_dir))
    for v in vols:
        path = Path(v["path"])
        assert path.is_file()
        info = fleet.image_info(path)
        assert info["format"] == "qcow2" and info["virtual-size"] == v["size"]
    # temp and data volumes are standalone and empty
    for role in ("temp0", "data0"):
        path = fleet.volumes(name)[role]
        assert fleet.image_info(path).get("backing-filename") is None
        assert fleet.shows(path, 0, 0x00) and fleet.shows(path, 32 * MiB, 0x00)


def test_linked_clone_is_an_overlay_and_full_clone_is_standalone(fleet, template):
    (linked,) = fleet.create(count=1)
    (full,) = fleet.create(name="solo", full=True)
    (v1,) = fleet.versions()
    hexdigest = v1["top_layer"].removeprefix("sha256:")

    system = fleet.volumes(linked)["system"]
    info = fleet.image_info(system)
    assert info["backing-filename"] == f"../../layers/sha256-{hexdigest}.qcow2"
    assert info["backing-filename-format"] == "qcow2"
    assert (system.parent / info["backing-filename"]).resolve() == fleet.layer_file(v1["top_layer"])
    assert system.stat().st_size < MiB  # only the overlay's own clusters
    assert fleet.shows(system, MiB, 0x11)

    c = fleet.show(full)
    assert c["kind"] == "full"
    system = fleet.volumes(full)["system"]
    info = fleet.image_info(system)
    assert "backing-filename" not in info
    assert fleet.shows(system, 0, 0x11) and fleet.shows(system, MiB, 0x11)
    # writing into a clone never reaches the layer it came from
    fleet.pattern(system, MiB, 0x55)
    fleet.pattern(fleet.volumes(linked)["system"], MiB, 0x56)
    assert fleet.shows(fleet.layer_file(v1["top_layer"]), MiB, 0x11)
    (fresh,) = fleet.create(count=1)
    assert fleet.shows(fleet.volumes(fresh)["system"], MiB, 0x11)


def test_start_and_stop_change_power_and_stop_empties_temp(fleet, template):
    (name,) = fleet.create(count=1)
    vols = fleet.volumes(name)
    started = fleet.client.post(f"/clones/{name}/start")
    assert started["power"] == "running"
    assert fleet.show(name)["power"] == "running"
    assert fleet.rows("SELECT state FROM sim_domains WHERE name = ?", name) == [("running",)]

    fleet.pattern(vols["temp0"], 0, 0x33)
    fleet.pattern(vols["system"], 2 * MiB, 0x44)
    fleet.pattern(vols["data0"], 0, 0x55)
    assert fleet.shows(vols["temp0"], 0, 0x33)
    data_before = vols["data0"].read_bytes()

    stopped = fleet.client.post(f"/clones/{name}/stop")
    assert stopped["power"] == "stopped"
    assert fleet.show(name)["power"] == "stopped"
    assert fleet.rows("SELECT state FROM sim_domains WHERE name = ?", name) == [("stopped",)]
    assert fleet.shows(vols["temp0"], 0, 0x00)  # temp emptied on shutdown
    assert fleet.shows(vols["system"], 2 * MiB, 0x44)  # the system volume keeps its changes
    assert vols["data0"].read_bytes() == data_before  # data untouched
    assert fleet.work_files() == []


def test_delete_clone_removes_its_volumes(fleet, template):
    keep, gone = fleet.create(count=2)
    folder = fleet.volumes(gone)["system"].parent
    fleet.client.post(f"/clones/{gone}/start")
    assert fleet.client.delete(f"/clones/{gone}") is None
    assert not folder.exists()
    assert fleet.error(404, fleet.client.get, f"/clones/{gone}")
    assert fleet.rows("SELECT name FROM sim_domains") == [(keep,)]
    assert [c["name"] for c in fleet.client.get("/clones")] == [keep]
    assert fleet.shows(fleet.volumes(keep)["system"], MiB, 0x11)


def test_concurrent_bulk_creates_never_fail_with_500(fleet, template):
    for _round in range(5):
        barrier = threading.Barrier(6)
        outcomes: list[tuple[int, str]] = []

        def create(barrier: threading.Barrier = barrier, out: list = outcomes) -> None:
            client = fleet.server.client()
            barrier.wait()
            try:
                client.post("/clones", {"template": "base", "count": 5, "wait": True})
                out.append((202, ""))
            except ClientError as exc:
                out.append((exc.status, exc.message))

        threads = [threading.Thread(target=create) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # each request either made its clones or was refused with a clear conflict
        assert all(status in (202, 409) for status, _ in outcomes), outcomes
    names = [c["name"] for c in fleet.client.get("/clones")]
    assert len(names) == len(set(names))
