"""Store health through the real API: verify rehashes layers and checks every volume."""

from __future__ import annotations

import os

MiB = 1 << 20


def test_verify_finds_nothing_on_a_clean_store_then_names_a_changed_layer(fleet, template):
    linked, _ = fleet.create(count=2)
    fleet.create(name="solo", full=True)
    fleet.update(byte=0x22)
    clean = fleet.client.post("/store/verify")
    assert clean == {"layers": 2, "clones_checked": 3, "problems": []}

    v1, v2 = fleet.versions()
    victim = fleet.layer_file(v2["top_layer"])
    untouched = fleet.layer_file(v1["top_layer"])
    blob = victim.read_bytes()
    offset = blob.index(b"\x22" * 4096) + 100  # inside the data cluster, header intact
    os.chmod(victim, 0o644)
    with victim.open("r+b") as f:
        f.seek(offset)
        f.write(b"\x23")
    os.chmod(victim, 0o444)

    report = fleet.client.post("/store/verify")
    files = {p["file"] for p in report["problems"]}
    assert files == {f"layers/{victim.name}"}, report
    (problem,) = report["problems"]
    assert "digest" in problem["problem"]
    assert untouched.name not in str(report)
    # a sealed layer that became writable is reported too
    os.chmod(untouched, 0o644)
    report = fleet.client.post("/store/verify")
    by_file = {p["file"]: p["problem"] for p in report["problems"]}
    assert "writable" in by_file[f"layers/{untouched.name}"]
    os.chmod(untouched, 0o444)
    # the linked clone still reads its version's bytes (verify changes nothing)
    assert fleet.shows(fleet.volumes(linked)["system"], MiB, 0x11)


def test_verify_names_a_missing_clone_volume(fleet, template):
    (name,) = fleet.create(count=1)
    temp = fleet.volumes(name)["temp0"]
    temp.unlink()
    report = fleet.client.post("/store/verify")
    (problem,) = report["problems"]
    assert temp.name in problem["file"] and name in problem["file"]
    assert problem["problem"] == "missing"


def test_verify_is_an_admin_action(fleet, template):
    """A full rehash keeps the server busy: a reader token may not start one (issue 15)."""
    made = fleet.client.post("/tokens", {"name": "monitor", "role": "reader"})
    message = fleet.error(403, fleet.server.client(made["token"]).post, "/store/verify")
    assert "monitor" in message and "reader" in message
    report = fleet.client.post("/store/verify")
    assert report["problems"] == [] and report["layers"] == 1
