"""Restore, rebase and recreate replace the system volume, empty temp, and keep data byte for byte.

"Byte for byte" is checked three ways: the guest-visible bytes read back through qemu-io, the
sha256 of the data volume *file*, and its inode and mtime (so it was never copied, moved,
recreated or opened for writing).
"""

from __future__ import annotations

from typing import Any

MiB = 1 << 20
DATA_OFFSETS = (0, 5 * MiB, 63 * MiB)


def _mark_byte(name: str) -> int:
    return 0x40 + sum(name.encode()) % 0x3F


def use(fleet, name: str) -> Any:
    """Give a clone distinct data, scribble on its system and temp volumes; return the data's
    file state."""
    vols = fleet.volumes(name)
    for offset in DATA_OFFSETS:
        fleet.pattern(vols["data0"], offset, _mark_byte(name))
    fleet.write(vols["data0"], 7 * MiB, f"user data of {name}".encode())
    fleet.pattern(vols["system"], MiB, 0x99)
    fleet.pattern(vols["system"], 6 * MiB, 0x98)
    fleet.pattern(vols["temp0"], 0, 0x77)
    return fleet.state(vols["data0"])


def assert_rebuilt(fleet, name: str, data_before: Any, *, system_byte: int) -> None:
    """System shows its version's content, temp is empty, data is the very same file."""
    vols = fleet.volumes(name)
    assert fleet.shows(vols["system"], 0, 0x11)
    assert fleet.shows(vols["system"], MiB, system_byte)
    assert fleet.shows(vols["system"], 6 * MiB, 0x00)  # the scribble is gone
    assert fleet.shows(vols["temp0"], 0, 0x00)
    assert_data_kept(fleet, name, data_before)


def assert_data_kept(fleet, name: str, data_before: Any) -> None:
    vols = fleet.volumes(name)
    assert fleet.state(vols["data0"]) == data_before
    for offset in DATA_OFFSETS:
        assert fleet.shows(vols["data0"], offset, _mark_byte(name))
    text = f"user data of {name}".encode()
    assert fleet.read(vols["data0"], 7 * MiB, len(text)) == text
    assert fleet.check_image(vols["data0"])["exit_code"] == 0


def test_restore_puts_system_back_empties_temp_and_keeps_data(fleet, template):
    (name,) = fleet.create(count=1)
    folder = fleet.volumes(name)["system"].parent
    data = use(fleet, name)
    c = fleet.client.post(f"/clones/{name}/restore")
    assert (c["status"], c["version"], c["power"]) == ("ready", 1, "stopped")
    assert_rebuilt(fleet, name, data, system_byte=0x11)
    assert fleet.volumes(name)["system"].parent == folder
    assert fleet.work_files() == []


def test_restore_of_a_full_clone(fleet, template):
    (name,) = fleet.create(name="solo", full=True)
    data = use(fleet, name)
    fleet.client.post(f"/clones/{name}/restore")
    assert_rebuilt(fleet, name, data, system_byte=0x11)
    assert "backing-filename" not in fleet.image_info(fleet.volumes(name)["system"])


def test_restore_of_a_running_clone_stops_and_starts_it(fleet, template):
    (name,) = fleet.create(count=1)
    data = use(fleet, name)
    fleet.client.post(f"/clones/{name}/start")
    c = fleet.client.post(f"/clones/{name}/restore")
    assert (c["status"], c["power"]) == ("ready", "running")
    assert fleet.show(name)["power"] == "running"
    assert fleet.rows("SELECT state FROM sim_domains WHERE name = ?", name) == [("running",)]
    assert_rebuilt(fleet, name, data, system_byte=0x11)


def test_rebase_moves_to_current_then_back_to_v1(fleet, template):
    (name,) = fleet.create(count=1)
    data = use(fleet, name)
    fleet.update(byte=0x22)

    c = fleet.client.post(f"/clones/{name}/rebase")
    assert (c["version"], c["status"], c["template"]) == (2, "ready", "base")
    assert [v["version"] for v in c["volumes"]] == ["v2", None, None]
    assert_rebuilt(fleet, name, data, system_byte=0x22)
    _, v2 = fleet.versions()
    backing = fleet.image_info(fleet.volumes(name)["system"])["backing-filename"]
    assert backing == f"../../layers/{fleet.layer_file(v2['top_layer']).name}"

    fleet.pattern(fleet.volumes(name)["system"], 6 * MiB, 0x98)
    fleet.pattern(fleet.volumes(name)["temp0"], 0, 0x77)
    c = fleet.client.post(f"/clones/{name}/rebase", {"to": "base:v1"})
    assert (c["version"], c["status"]) == (1, "ready")
    assert_rebuilt(fleet, name, data, system_byte=0x11)
    assert fleet.client.get("/templates/base")["clones_behind"] == 1
    assert "v9" in fleet.error(404, fleet.client.post, f"/clones/{name}/rebase", {"to": "base:v9"})


def test_rebase_onto_a_template_with_another_outline_is_refused(fleet, template):
    fleet.import_template("other", {MiB: b"\x44" * 4096}, temp=["64M"], data=["32M"])
    (name,) = fleet.create(count=1)
    data = use(fleet, name)
    message = fleet.error(409, fleet.client.post, f"/clones/{name}/rebase", {"to": "other"})
    assert name in message and "other" in message and "outline" in message
    c = fleet.show(name)
    assert (c["template"], c["version"], c["status"]) == ("base", 1, "ready")
    vols = fleet.volumes(name)
    assert fleet.shows(vols["system"], MiB, 0x99)  # nothing was rebuilt
    assert fleet.shows(vols["temp0"], 0, 0x77)
    assert fleet.state(vols["data0"]) == data


def test_rebase_onto_a_template_with_the_same_outline_moves_the_clone(fleet, template):
    fleet.import_template("twin", {0: b"\x11" * 4096, MiB: b"\x44" * 4096})
    (name,) = fleet.create(count=1)
    data = use(fleet, name)
    c = fleet.client.post(f"/clones/{name}/rebase", {"to": "twin"})
    assert (c["template"], c["version"], c["status"]) == ("twin", 1, "ready")
    assert_rebuilt(fleet, name, data, system_byte=0x44)
    assert [x["name"] for x in fleet.client.get("/clones", params={"template": "twin"})] == [name]
    assert fleet.client.get("/clones", params={"template": "base"}) == []
    assert fleet.client.get("/templates/base")["clones"] == 0
    # base has no clones left, so it can go; the clone keeps working on twin
    fleet.client.delete("/templates/base")
    assert fleet.shows(fleet.volumes(name)["system"], MiB, 0x44)
    assert "twin" in fleet.error(409, fleet.client.delete, "/templates/twin")


def test_recreate_template_rebuilds_linked_clones_and_full_ones_only_when_asked(fleet, template):
    linked = fleet.create(count=2)
    (full,) = fleet.create(name="solo", full=True)
    data = {name: use(fleet, name) for name in [*linked, full]}
    fleet.update(byte=0x22)

    op = fleet.client.post("/clones/recreate", {"template": "base", "wait": True})
    assert (op["kind"], op["status"], op["total"], op["done"]) == ("clone.recreate", "done", 2, 2)
    for name in linked:
        assert (fleet.show(name)["version"], fleet.show(name)["status"]) == (2, "ready")
        assert_rebuilt(fleet, name, data[name], system_byte=0x22)
    # the full clone was left alone, scribbles and all
    assert fleet.show(full)["version"] == 1
    vols = fleet.volumes(full)
    assert fleet.shows(vols["system"], MiB, 0x99) and fleet.shows(vols["temp0"], 0, 0x77)
    assert_data_kept(fleet, full, data[full])

    # linked clones already on v2 are not rebuilt again
    again = fleet.client.post("/clones/recreate", {"template": "base", "wait": True})
    assert again["total"] == 0 and again["status"] == "done"

    op = fleet.client.post(
        "/clones/recreate", {"template": "base", "include_full": True, "wait": True}
    )
    assert (op["status"], op["total"], op["done"]) == ("done", 1, 1)
    c = fleet.show(full)
    assert (c["version"], c["kind"], c["status"]) == (2, "full", "ready")
    assert_rebuilt(fleet, full, data[full], system_byte=0x22)
    assert "backing-filename" not in fleet.image_info(fleet.volumes(full)["system"])
    assert fleet.client.get("/templates/base")["clones_behind"] == 0


def test_recreate_one_full_clone_needs_include_full(fleet, template):
    (full,) = fleet.create(name="solo", full=True)
    data = use(fleet, full)
    fleet.update(byte=0x22)
    message = fleet.error(409, fleet.client.post, "/clones/recreate", {"name": full})
    assert full in message and "include-full" in message
    assert fleet.show(full)["version"] == 1
    op = fleet.client.post("/clones/recreate", {"name": full, "include_full": True, "wait": True})
    assert op["status"] == "done"
    assert_rebuilt(fleet, full, data, system_byte=0x22)


def test_recreate_with_discard_data_gives_an_empty_data_volume(fleet, template):
    keep, discard = fleet.create(count=2)
    kept = use(fleet, keep)
    use(fleet, discard)
    fleet.update(byte=0x22)

    op = fleet.client.post(
        "/clones/recreate", {"name": discard, "discard_data": True, "wait": True}
    )
    assert op["status"] == "done" and op["total"] == 1
    vols = fleet.volumes(discard)
    assert fleet.show(discard)["version"] == 2
    assert fleet.shows(vols["system"], MiB, 0x22)
    assert fleet.shows(vols["temp0"], 0, 0x00)
    for offset in DATA_OFFSETS:
        assert fleet.shows(vols["data0"], offset, 0x00)
    assert fleet.image_info(vols["data0"])["virtual-size"] == 64 * MiB
    # the other clone was not part of it
    assert fleet.show(keep)["version"] == 1
    assert_data_kept(fleet, keep, kept)


def test_recreate_of_a_running_clone_leaves_it_running(fleet, template):
    (name,) = fleet.create(count=1)
    data = use(fleet, name)
    fleet.client.post(f"/clones/{name}/start")
    fleet.update(byte=0x22)
    op = fleet.client.post("/clones/recreate", {"template": "base", "wait": True})
    assert op["status"] == "done" and op["done"] == 1
    c = fleet.show(name)
    assert (c["version"], c["power"], c["status"]) == (2, "running", "ready")
    assert fleet.rows("SELECT state FROM sim_domains WHERE name = ?", name) == [("running",)]
    assert_rebuilt(fleet, name, data, system_byte=0x22)


def test_rebase_of_a_running_clone_leaves_it_running(fleet, template):
    (name,) = fleet.create(count=1)
    data = use(fleet, name)
    fleet.update(byte=0x22)
    fleet.client.post(f"/clones/{name}/start")
    c = fleet.client.post(f"/clones/{name}/rebase")
    assert (c["version"], c["power"]) == (2, "running")
    assert_rebuilt(fleet, name, data, system_byte=0x22)


def test_restore_after_a_new_version_keeps_the_clone_on_its_own_version(fleet, template):
    (name,) = fleet.create(count=1)
    data = use(fleet, name)
    fleet.update(byte=0x22)
    c = fleet.client.post(f"/clones/{name}/restore")
    assert c["version"] == 1
    assert_rebuilt(fleet, name, data, system_byte=0x11)


def test_failed_clones_refuse_actions_until_retried(fleet, template):
    (name,) = fleet.create(count=1)
    assert "not failed" in fleet.error(409, fleet.client.post, "/clones/retry", {"name": name})
    assert fleet.error(422, fleet.client.post, "/clones/retry", {})
    op = fleet.client.post("/clones/retry", {"all": True, "wait": True})
    assert (op["status"], op["total"]) == ("done", 0)
