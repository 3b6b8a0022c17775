"""kill -9 of the server in the middle of bulk work: the next server finishes it.

After the restart the operation resumes by itself and ends ``done``: every clone ``ready`` (none
lost, duplicated or half-made), no work file or orphan folder left, volumes that pass
``qemu-img check``, data volumes byte-identical.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

MiB = 1 << 20
VOLUME_FILES = ("system.qcow2", "temp0.qcow2", "data0.qcow2")

pytestmark = pytest.mark.slow


def _kill_midway(fleet, op_id: int, total: int) -> dict:
    """Kill -9 the server once some (but far from all) clones of ``op_id`` are recorded."""
    low, high = max(1, total // 10), total * 3 // 4
    deadline = time.monotonic() + 60
    while True:
        op = fleet.client.get(f"/operations/{op_id}")
        assert op["status"] == "running", f"finished before the kill: {op}"
        assert op["done"] <= high, f"too far before the kill: {op}"
        if op["done"] >= low:
            break
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(random.uniform(0, 0.03))  # land anywhere inside the next batch
    fleet.server.kill9()
    # the database, read while no server runs, shows work left to do
    ((left,),) = fleet.rows(
        f"SELECT COUNT(*) FROM operation_items WHERE operation_id = {int(op_id)}"
        " AND state IN ('queued', 'running')"
    )
    assert left > 0
    return op


def _assert_resumed(fleet, op_id: int, total: int, expected: int) -> None:
    """The interrupted operation finishes on its own after the restart."""
    op = fleet.wait(op_id)
    assert (op["status"], op["done"], op["failed"], op["total"]) == (
        "done",
        expected,
        0,
        expected,
    ), op
    clones = fleet.client.get("/clones")
    assert len(clones) == total
    assert {c["status"] for c in clones} == {"ready"}
    assert all(c["error"] is None and c["action"] is None for c in clones)
    rows = dict(fleet.rows("SELECT state, COUNT(*) FROM operation_items GROUP BY state"))
    assert set(rows) == {"done"}, rows
    assert fleet.work_files() == []
    assert fleet.clone_folders() <= set(fleet.clone_uids())


def _assert_store_consistent(fleet) -> None:
    uids = fleet.clone_uids()
    assert fleet.clone_folders() == set(uids)  # no orphan, none missing
    assert fleet.work_files() == []
    for uid in uids:
        names = sorted(p.name for p in (fleet.clones_dir / uid).iterdir())
        assert names == sorted(VOLUME_FILES), (uids[uid], names)

    def check(path):
        return path, fleet.check_image(path)

    paths = [fleet.clones_dir / uid / f for uid in uids for f in VOLUME_FILES]
    for path, report in fleet.parallel(check, paths):
        assert report["exit_code"] == 0, (path, report)


def test_kill9_during_bulk_create_resumes_and_completes_every_clone(fleet, template):
    total = 200
    r = fleet.client.post("/clones", {"template": "base", "count": total})
    op_id = r["operation"]["id"]
    _kill_midway(fleet, op_id, total)
    fleet.server.start()

    _assert_resumed(fleet, op_id, total, total)
    _assert_store_consistent(fleet)

    def reads(name):
        vols = fleet.volumes(name)
        return (
            fleet.shows(vols["system"], MiB, 0x11)
            and fleet.shows(vols["temp0"], 0, 0x00)
            and fleet.shows(vols["data0"], 0, 0x00)
        )

    sample = random.sample(sorted(r["clones"]), 10)
    assert all(fleet.parallel(reads, sample))
    assert fleet.client.post("/store/verify")["problems"] == []


def test_kill9_during_recreate_resumes_moves_all_and_keeps_data(fleet, template, small_batches):
    total = 100
    names = fleet.create(count=total)
    fleet.create(name="solo", full=True)

    def give_data(name):
        data0 = fleet.volumes(name)["data0"]
        fleet.pattern(data0, 2 * MiB, 1 + names.index(name) % 250 if name in names else 0xFE)
        fleet.write(data0, 9 * MiB, f"owned by {name}".encode())
        return name, fleet.state(data0)

    before = dict(fleet.parallel(give_data, [*names, "solo"]))
    r = fleet.update(byte=0x22, recreate="linked")
    op_id = r["operation"]["id"]
    assert r["operation"]["total"] == total
    _kill_midway(fleet, op_id, total)
    fleet.server.start()

    _assert_resumed(fleet, op_id, total + 1, total)
    _assert_store_consistent(fleet)

    def verify(name):
        c = fleet.show(name)
        vols = {v["role"]: v for v in c["volumes"]}
        data0 = fleet.volumes(name)["data0"]
        text = f"owned by {name}".encode()
        return (
            name,
            c["version"],
            vols["system"]["version"],
            fleet.shows(fleet.volumes(name)["system"], MiB, 0x22 if name != "solo" else 0x11),
            fleet.shows(fleet.volumes(name)["temp0"], 0, 0x00),
            fleet.state(data0) == before[name],
            fleet.read(data0, 9 * MiB, len(text)) == text,
        )

    for name, version, shown, system_ok, temp_ok, data_same, data_ok in fleet.parallel(
        verify, [*names, "solo"]
    ):
        expected = 1 if name == "solo" else 2
        assert (version, shown) == (expected, f"v{expected}"), name
        assert system_ok and temp_ok, name
        assert data_same and data_ok, name
    assert fleet.client.get("/templates/base")["clones_behind"] == 1  # only the full clone


@pytest.mark.parametrize("stop", ["restart", "kill9"])
def test_maintenance_survives_a_server_restart(fleet, template, stop):
    (name,) = fleet.create(count=1)
    overlay = Path(fleet.client.post("/templates/base/maintenance/enter")["overlay_path"])
    fleet.pattern(overlay, MiB, 0x22)
    if stop == "kill9":
        fleet.server.kill9()
        fleet.server.start()
    else:
        fleet.server.restart()
    t = fleet.client.get("/templates/base")
    assert (t["status"], t["overlay_path"]) == ("maintenance", str(overlay))
    assert fleet.shows(overlay, MiB, 0x22)
    assert fleet.show(name)["status"] == "ready"
    r = fleet.client.post("/templates/base/maintenance/exit", {"recreate": "linked"})
    assert fleet.wait(r["operation"]["id"])["status"] == "done"
    assert fleet.shows(fleet.volumes(name)["system"], MiB, 0x22)
    assert fleet.work_files() == []
