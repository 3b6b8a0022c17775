"""Edge stores through a real server process with two sim hosts, over HTTP and the CLI.

Each host's edge store is a folder under ``edge_root`` (its disk "mounted" there). What is
checked is what an admin could see: the CLI's output and exit code, HTTP answers, the files in
each host's edge store (digests, modes, no work files), the backing chain each simulated VM
declares (rows of ``sim_domains``), and the clones' versions and errors.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

MiB = 1 << 20
H1, H2 = "sim-host-1", "sim-host-2"


@pytest.fixture
def edge_root(fleet, tmp_path: Path) -> Path:
    """The server restarted with edge stores on, each sim host's disk at edge_root/HOST."""
    root = tmp_path / "edge"
    for host in (H1, H2):
        (root / host).mkdir(parents=True)
    fleet.server.env["GOLDFLEET_EDGE_ROOT"] = str(root)
    fleet.server.restart()
    return root


@pytest.fixture
def base(fleet, edge_root) -> str:
    fleet.import_template("base", {0: b"\x11" * 4096})
    return "base"


def layer_name(digest: str) -> str:
    return f"sha256-{digest.removeprefix('sha256:')}.qcow2"


def held(root: Path, host: str) -> set[str]:
    """Every file in the host's layer folder, work files included."""
    folder = root / host / "layers"
    return set(os.listdir(folder)) if folder.is_dir() else set()


def chain(fleet, number: int) -> list[str]:
    return fleet.versions()[number - 1]["chain"]


def vms(fleet) -> dict[str, tuple[str, list[str]]]:
    """Every simulated VM: its host and the backing chain its system disk declares."""
    found = {}
    for name, host, disks in fleet.rows("SELECT name, host, disks FROM sim_domains"):
        system = next(d for d in json.loads(disks)["disks"] if d["role"] == "system")
        found[name] = (host, system["backing"])
    return found


def on_edge(root: Path, host: str, digests: list[str]) -> list[str]:
    return [str(root / host / "layers" / layer_name(d)) for d in digests]


def tamper(path: Path) -> None:
    os.chmod(path, 0o644)
    with path.open("r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))
    os.chmod(path, 0o444)


def test_host_prefetch_by_cli_and_api(fleet, base, edge_root):
    (v1,) = chain(fleet, 1)
    fleet.update(byte=0x22)
    top, parent = chain(fleet, 2)
    assert parent == v1

    # the CLI, as a person runs it: a progress bar on stderr, one line of result
    proc = fleet.cli("host", "prefetch", H1, "base:v1")
    assert proc.returncode == 0, proc.stderr
    assert f"host {H1}: base:v1 complete; copied 1 of 1 layers" in proc.stdout
    assert held(edge_root, H1) == {layer_name(v1)}
    # the current version (v2) needs only its new layer
    r = fleet.cli_json("host", "prefetch", H1, "base")
    assert (r["version"], r["copied"], r["layers"]) == (2, [top], 2)
    assert r["bytes_copied"] == fleet.layer_file(top).stat().st_size
    proc = fleet.cli("host", "prefetch", H1, "base")
    assert proc.returncode == 0 and "already complete; nothing copied" in proc.stdout
    for digest in (top, v1):
        copy = edge_root / H1 / "layers" / layer_name(digest)
        assert stat.S_IMODE(copy.stat().st_mode) == 0o444
        assert hashlib.sha256(copy.read_bytes()).hexdigest() == digest.removeprefix("sha256:")

    # the API: a plain answer, or JSON lines with progress
    r = fleet.client.post(f"/hosts/{H2}/prefetch", {"template": "base", "version": 2})
    assert r["copied"] == [v1, top] and r["complete"]
    assert fleet.client.post(f"/hosts/{H2}/prefetch", {"template": "base"})["copied"] == []
    events = list(
        fleet.client.stream_lines(
            "POST", f"/hosts/{H2}/prefetch", json={"template": "base", "progress": True}
        )
    )
    assert events[0]["event"] == "start" and events[0]["missing_layers"] == 0
    assert events[-1]["event"] == "done" and events[-1]["result"]["copied"] == []

    # host list: what each host holds, per version
    listing = fleet.cli_json("host", "list")
    assert listing["edge_stores"] and listing["edge_root"] == str(edge_root)
    for h in listing["hosts"]:
        assert [(v["version"], v["complete"]) for v in h["versions"]] == [(1, True), (2, True)]
        assert h["layers"] == 2 and h["reachable"]
    table = fleet.cli("host", "list")
    assert table.returncode == 0 and "base:v2 complete" in table.stdout

    # refusals: unknown host, unknown version, a reader token
    proc = fleet.cli("host", "prefetch", "sim-host-9", "base")
    assert proc.returncode == 1 and "not one of the driver's hosts" in proc.stderr
    proc = fleet.cli("host", "prefetch", H1, "base:v9")
    assert proc.returncode == 1 and "no version v9" in proc.stderr
    assert "Traceback" not in proc.stderr
    made = fleet.client.post("/tokens", {"name": "dashboard", "role": "reader"})
    reader = fleet.server.client(made["token"])
    assert [h["name"] for h in reader.get("/hosts")["hosts"]] == [H1, H2]
    fleet.error(403, reader.post, f"/hosts/{H1}/prefetch", {"template": "base"})
    audit = [e for e in fleet.client.get("/audit") if e["action"] == "host.prefetch"]
    assert len(audit) >= 5 and {e["target"] for e in audit} == {H1, H2}


def test_a_tampered_layer_is_refused_by_the_cli_and_nothing_is_committed(fleet, base, edge_root):
    (v1,) = chain(fleet, 1)
    tamper(fleet.layer_file(v1))
    proc = fleet.cli("host", "prefetch", H1, "base")
    assert proc.returncode == 1
    assert H1 in proc.stderr and v1 in proc.stderr and "not its digest" in proc.stderr
    assert held(edge_root, H1) == set()  # not the layer, not a work file
    r = fleet.client.get("/hosts")["hosts"][0]
    assert r["versions"][0]["complete"] is False and r["layers"] == 0


def test_a_rollout_prefetches_to_each_host_before_it_touches_its_clones(fleet, base, edge_root):
    (v1,) = chain(fleet, 1)
    names = fleet.create(count=4)
    placed = vms(fleet)
    assert sorted(host for host, _ in placed.values()) == [H1, H1, H2, H2]
    for host, backing in placed.values():
        assert backing == on_edge(edge_root, host, [v1])  # the host's own copy, made for it
    fleet.client.post(f"/clones/{names[0]}/start")

    fleet.update(byte=0x22)
    top, parent = chain(fleet, 2)
    op = fleet.client.post("/clones/recreate", {"template": "base", "wait": True})
    assert op["status"] == "done" and op["done"] == 4, op
    after = vms(fleet)
    for name in names:
        host, backing = after[name]
        assert host == placed[name][0]  # a rebuilt clone stays on its host
        assert backing == on_edge(edge_root, host, [top, parent])
        assert fleet.show(name)["version"] == 2
    for host in (H1, H2):
        assert held(edge_root, host) == {layer_name(top), layer_name(parent)}
    assert fleet.show(names[0])["power"] == "running"  # restarted on the new chain
    # bytes read through the clone's overlay are the new version's
    assert fleet.shows(fleet.volumes(names[0])["system"], MiB, 0x22)


def test_a_clone_is_never_placed_on_a_host_whose_chain_is_incomplete(fleet, base, edge_root):
    # host 2's disk is mounted but takes no layers ("layers" is a file): its copy fails
    (edge_root / H2 / "layers").write_bytes(b"")
    r = fleet.client.post("/clones", {"template": "base", "count": 4, "wait": True})
    op = r["operation"]
    assert (op["status"], op["done"], op["failed"]) == ("failed", 2, 2)
    assert {host for host, _ in vms(fleet).values()} == {H1}  # nothing defined on host 2
    failed = [c for c in fleet.client.get("/clones") if c["status"] == "failed"]
    assert len(failed) == 2
    for c in failed:
        assert f"the edge store of host {H2} cannot take layers" in c["error"]
    hosts = {h["name"]: h for h in fleet.cli_json("host", "list")["hosts"]}
    assert hosts[H1]["clones"] == 2

    # a rollout onto v2 whose new layer is damaged in the site store: refused on every host,
    # the clones stay on v1 with their system volumes untouched
    fleet.update(byte=0x22)
    top, _ = chain(fleet, 2)
    ready = [c["name"] for c in fleet.client.get("/clones") if c["status"] == "ready"]
    before = {n: fleet.state(fleet.volumes(n)["system"]) for n in ready}
    declared = {n: vms(fleet)[n] for n in ready}
    tamper(fleet.layer_file(top))
    op = fleet.client.post("/clones/recreate", {"template": "base", "wait": True})
    assert op["failed"] == 4 and op["done"] == 0  # the 2 failed ones too: host 2 still down
    for n in ready:
        c = fleet.show(n)
        assert c["version"] == 1 and H1 in c["error"] and top in c["error"]
        assert fleet.state(fleet.volumes(n)["system"]) == before[n]
        assert vms(fleet)[n] == declared[n]
    assert layer_name(top) not in held(edge_root, H1)


def test_host_prune_by_cli_and_api(fleet, base, edge_root):
    (b,) = chain(fleet, 1)
    (desk,) = fleet.create(count=1)  # on v1, host 1
    assert vms(fleet)[desk][0] == H1
    fleet.update(byte=0x22)
    top, _ = chain(fleet, 2)
    for host in (H1, H2):
        assert fleet.cli("host", "prefetch", host, "base").returncode == 0
        assert held(edge_root, host) == {layer_name(top), layer_name(b)}
    before = {h["name"]: h for h in fleet.cli_json("host", "list")["hosts"]}

    # a dry run, and the default (the current version kept), remove nothing
    proc = fleet.cli("host", "prune", H2, "--dry-run", "--no-keep-current")
    assert proc.returncode == 0, proc.stderr
    assert "dry run: nothing was removed" in proc.stdout
    r = fleet.cli_json("host", "prune", H2)
    assert r["hosts"] == [{"host": H2, "removed": [], "bytes_freed": 0, "kept": 2, "note": None}]
    assert held(edge_root, H2) == {layer_name(top), layer_name(b)}

    # without the current version: host 2 (no clone) loses everything, host 1 keeps what its
    # clone on v1 reads
    proc = fleet.cli("host", "prune", "--all", "--no-keep-current")
    assert proc.returncode == 0, proc.stderr
    freed = fleet.layer_file(top).stat().st_size + fleet.layer_file(b).stat().st_size
    assert "freed" in proc.stdout and H1 in proc.stdout and H2 in proc.stdout
    assert held(edge_root, H2) == set()
    assert held(edge_root, H1) == {layer_name(b)}
    after = {h["name"]: h for h in fleet.cli_json("host", "list")["hosts"]}
    assert (after[H2]["layers"], after[H2]["bytes"]) == (0, 0)
    assert before[H2]["bytes"] == freed
    assert after[H1]["bytes"] == before[H1]["bytes"] - fleet.layer_file(top).stat().st_size
    assert after[H1]["versions"][1]["complete"] is False  # v2 must be copied again

    # a prefetch copies it again; the clone rebuilt onto v2 reads its host's new copies
    r = fleet.cli_json("host", "prefetch", H2, "base")
    assert r["copied"] == [b, top]
    op = fleet.client.post("/clones/recreate", {"template": "base", "wait": True})
    assert op["status"] == "done", op
    assert vms(fleet)[desk] == (H1, on_edge(edge_root, H1, [top, b]))
    fleet.client.post(f"/clones/{desk}/start")
    assert fleet.show(desk)["power"] == "running"

    # the API: one host or all, admin tokens only; refusals
    r = fleet.client.post(f"/hosts/{H2}/prune", {"keep_current": False, "dry_run": True})
    assert r["dry_run"] and r["hosts"][0]["removed"] == [top, b]
    assert [h["host"] for h in fleet.client.post("/hosts/prune")["hosts"]] == [H1, H2]
    made = fleet.client.post("/tokens", {"name": "dashboard", "role": "reader"})
    reader = fleet.server.client(made["token"])
    fleet.error(403, reader.post, "/hosts/prune", {})
    fleet.error(403, reader.post, f"/hosts/{H1}/prune", {"dry_run": True})
    assert "not one of the driver's hosts" in fleet.error(
        404, fleet.client.post, "/hosts/sim-host-9/prune", {}
    )
    fleet.error(422, fleet.client.post, f"/hosts/{H1}/prune", {"keep": False})
    for args in ((), (H1, "--all")):
        proc = fleet.cli("host", "prune", *args)
        assert proc.returncode == 1 and "give a HOST or --all" in proc.stderr
    assert held(edge_root, H2) == {layer_name(top), layer_name(b)}  # refusals removed nothing

    # the audit log: every prune but the dry runs; the rollout's copy into host 1, by its
    # operation
    audit = fleet.client.get("/audit")
    prunes = [e for e in audit if e["action"] == "host.prune"]
    assert sorted(e["target"] for e in prunes) == [H1, H1, H2, H2, H2]
    removed = [(e["target"], e["detail"]["layers"], e["detail"]["bytes"]) for e in prunes]
    assert (H2, 2, freed) in removed and all(e["actor"] == "admin" for e in prunes)
    copies = [e for e in audit if e["action"] == "host.prefetch" and e["actor"] == f"op:{op['id']}"]
    assert [(e["target"], e["detail"]["layers_copied"]) for e in copies] == [(H1, 1)]


def test_host_prune_is_refused_with_edge_stores_off(fleet):
    assert "edge stores are off" in fleet.error(409, fleet.client.post, "/hosts/prune", {})
    proc = fleet.cli("host", "prune", H1)
    assert proc.returncode == 1 and "edge stores are off" in proc.stderr
