"""Store health through the real API and CLI: verify rehashes layers and checks every volume,
on every core, with progress; ``--since last`` re-reads only what changed; admins only."""

from __future__ import annotations

import json
import os
import struct
import time

import httpx

MiB = 1 << 20


def zero_refcount(path) -> None:
    """Set the refcount of the header cluster to 0: qemu-img check counts a corruption."""
    head = path.read_bytes()[: 1 << 20]
    table = struct.unpack(">Q", head[48:56])[0]
    block = struct.unpack(">Q", head[table : table + 8])[0]
    with path.open("r+b") as f:
        f.seek(block)
        f.write(b"\0\0")


def test_verify_finds_nothing_on_a_clean_store_then_names_a_changed_layer(fleet, template):
    linked, _ = fleet.create(count=2)
    fleet.create(name="solo", full=True)
    fleet.update(byte=0x22)
    clean = fleet.client.post("/store/verify")
    assert (clean["layers"], clean["clones_checked"], clean["problems"]) == (2, 3, [])
    assert (clean["files_checked"], clean["files_skipped"], clean["since"]) == (11, 0, None)

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
    """A full rehash keeps every core busy: a reader token may not start one (issue 15)."""
    fleet.create(count=1)
    made = fleet.client.post("/tokens", {"name": "monitor", "role": "reader"})
    reader = fleet.server.client(made["token"])
    for body in (None, {"since": "last"}, {"progress": True}):
        message = fleet.error(403, reader.post, "/store/verify", body)
        assert "monitor" in message and "reader" in message
    assert not (fleet.store / "verified.json").exists()  # nothing ran
    with httpx.Client(base_url=fleet.server.url, timeout=60) as http:
        refused = http.post(
            "/store/verify", headers={"Authorization": f"Bearer {made['token']}"}, json={}
        )
        assert refused.status_code == 403
        ok = http.post(
            "/store/verify", headers={"Authorization": f"Bearer {fleet.server.token}"}, json={}
        )
    assert ok.status_code == 200 and ok.json()["problems"] == []


def test_verify_streams_its_progress_in_files(fleet, template):
    fleet.create(count=3)
    lines = list(fleet.client.stream_lines("POST", "/store/verify", json={"progress": True}))
    assert lines[0] == {"event": "start", "action": "store verify", "since": None}
    progress = [e for e in lines if e["event"] == "progress"]
    assert progress and all(e["total"] == 1 + 3 * 3 for e in progress)
    assert lines[-1]["event"] == "done"
    assert lines[-1]["result"]["files_checked"] == 10 and lines[-1]["result"]["problems"] == []


def test_since_last_skips_what_is_unchanged_and_finds_what_changed(fleet, template):
    names = fleet.create(count=4)
    time.sleep(1.1)  # past the racy window: files this new are not vouched for
    full = fleet.client.post("/store/verify")
    assert full["problems"] == [] and full["files_checked"] == 13

    again = fleet.client.post("/store/verify", {"since": "last"})
    assert (again["files_checked"], again["files_skipped"]) == (0, 13)
    assert again["since"] is not None and again["problems"] == []

    # a VM writes one data volume (checked again, clean); another system volume is corrupted
    fleet.pattern(fleet.volumes(names[0])["data0"], 0, 0x55)
    victim = fleet.volumes(names[2])["system"]
    zero_refcount(victim)
    report = fleet.client.post("/store/verify", {"since": "last"})
    assert (report["files_checked"], report["files_skipped"]) == (2, 11)
    (problem,) = report["problems"]
    assert victim.parent.name in problem["file"] and names[2] in problem["file"]
    assert "corruptions" in problem["problem"]


def test_cli_verify_shows_progress_then_the_report_and_exits_1_on_a_problem(fleet, template):
    names = fleet.create(count=2)
    time.sleep(1.1)
    proc = fleet.cli("store", "verify")
    assert proc.returncode == 0, proc.stderr
    assert "verifying the store" in proc.stderr and "7/7" in proc.stderr  # the bar's last state
    assert "1 layers, 2 clones: 7 of 7 files checked" in proc.stdout
    assert "no problems found" in proc.stdout

    proc = fleet.cli("store", "verify", "--since", "last")
    assert proc.returncode == 0, proc.stderr
    assert "0 of 7 files checked" in proc.stdout
    assert "7 files skipped: unchanged since the clean verify at" in proc.stdout

    report = fleet.cli_json("store", "verify", "--since", "last")  # --json: the report only
    assert (report["files_checked"], report["files_skipped"], report["problems"]) == (0, 7, [])

    temp = fleet.volumes(names[1])["temp0"]
    temp.write_bytes(b"garbage, not a qcow2 image")
    proc = fleet.cli("store", "verify", "--since", "last", "--json")
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert [p["file"].split(" ")[0] for p in report["problems"]] == [
        f"clones/{temp.parent.name}/temp0.qcow2"
    ]
    proc = fleet.cli("store", "verify", "--since", "last")
    assert proc.returncode == 1 and "temp0.qcow2" in proc.stdout

    proc = fleet.cli("store", "verify", "--since", "yesterday")
    assert proc.returncode == 1 and "the only choice is 'last'" in proc.stderr
