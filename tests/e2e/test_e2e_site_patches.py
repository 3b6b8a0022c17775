"""Sites as an admin of Dell Wyse WSM expects them (issue 14, points 1-4), between real
servers: a patch sealed at a site for a template HQ manages waits for HQ's validation; a
version that becomes current at a site is fed to its hosts' edge stores; layer files placed
beforehand are checksummed, not trusted; site status keeps the last successful sync."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sitekit import MiB, cli, layer_path, make_raw, new_version, start_servers

from goldfleet.cli.client import ClientError

pytestmark = pytest.mark.slow


@pytest.fixture
def trio(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any, Any]]:
    """HQ and sites a and b."""
    monkeypatch.setenv("GOLDFLEET_HOME", str(tmp_path / "unused"))
    made = start_servers(tmp_path, {"hq": "hq", "a": "site", "b": "site"})
    yield made[0], made[1], made[2]
    for srv in made:
        srv.stop()


def import_base(hq: Any, tmp_path: Path, size: int = 2 * MiB) -> None:
    image = make_raw(tmp_path / "base.raw", fill={0: os.urandom(size)})
    hq.client().upload(
        "/templates/import", image, {"name": "base", "format": "raw", "temp": [], "data": []}
    )


def join(hq: Any, site: Any, name: str, **options: Any) -> None:
    token = hq.client().post("/sites", {"name": name, **options})["token"]
    site.client().post("/site/join", {"url": hq.url, "token": token})
    hq.client().post(f"/sites/{name}/templates", {"template": "base"})


def versions(srv: Any) -> dict[int, dict]:
    return {v["number"]: v for v in srv.client().get("/templates/base/versions")}


def current(srv: Any) -> int | None:
    return srv.client().get("/templates/base")["current_version"]


def wait_for(check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"not reached within {timeout} s")


# --- 4. the last successful sync beside the last attempt ------------------------------------


def test_site_status_keeps_the_last_successful_sync(trio, tmp_path):
    hq, a, _ = trio
    import_base(hq, tmp_path)
    join(hq, a, "a")
    before = a.client().get("/site")
    assert before["last_success_at"] is None and before["last_sync_at"] is None
    assert a.client().post("/site/sync", {})["versions_added"] == {"base": [1]}
    ok = a.client().get("/site")
    assert ok["last_error"] is None and ok["last_success_at"] == ok["last_sync_at"]

    hq.stop()
    time.sleep(1.1)  # a later second: the attempt's time differs from the success's
    with pytest.raises(ClientError) as info:
        a.client().post("/site/sync", {})
    assert info.value.status == 502
    failed = a.client().get("/site")
    assert "cannot be reached" in failed["last_error"]
    assert failed["last_sync_at"] > ok["last_sync_at"]
    assert failed["last_success_at"] == ok["last_success_at"]
    shown = cli(a.home, "site", "status")
    assert shown.returncode == 0, shown.stderr
    line = next(x for x in shown.stdout.splitlines() if "last successful sync" in x)
    assert ok["last_success_at"][:19].replace("T", " ") in line.replace("T", " ")
    as_json = json.loads(cli(a.home, "site", "status", "--json").stdout)
    assert as_json["last_success_at"] == ok["last_success_at"]
    hq.start()


# --- 1. a patch of an HQ-managed template waits for HQ --------------------------------------


def test_a_site_patch_waits_for_hq_validation(trio, qemu, tmp_path):
    hq, a, b = trio
    import_base(hq, tmp_path)
    join(hq, a, "a", local_patches=True)
    join(hq, b, "b")
    for site in (a, b):
        assert site.client().post("/site/sync", {})["versions_added"] == {"base": [1]}
    made = a.client().post("/clones", {"template": "base", "name": "c1", "wait": True})
    assert made["operation"]["status"] == "done"

    # a recreate cannot be asked of an exit whose version will wait: refused before sealing
    t = a.client().post("/templates/base/maintenance/enter")
    with pytest.raises(ClientError) as info:
        a.client().post("/templates/base/maintenance/exit", {"recreate": "all"})
    assert info.value.status == 409 and "wait for validation" in info.value.message
    assert a.client().get("/templates/base")["status"] == "maintenance"
    qemu.write(Path(t["overlay_path"]), MiB, os.urandom(256 * 1024), scratch=tmp_path / "s1")
    a.client().post("/templates/base/maintenance/exit", {"recreate": "none"})

    # sealed at a: pending-validation, not current
    held = versions(a)
    assert held[2]["status"] == "pending-validation" and not held[2]["current"]
    assert current(a) == 1
    assert a.client().get("/site")["awaiting_validation"] == {"base": [2]}
    assert "base v2" in cli(a.home, "site", "status").stdout
    shown = cli(a.home, "template", "versions", "base")
    assert "pending-validation" in shown.stdout
    # no clone is moved onto it
    with pytest.raises(ClientError) as info:
        a.client().post("/clones/c1/rebase", {"to": "base:v2"})
    assert info.value.status == 409 and "waits for HQ's validation" in info.value.message
    assert a.client().get("/clones/c1")["version"] == 1

    # published: HQ holds it pending too, not current, and sends it to no site
    r = cli(a.home, "template", "publish", "base", "--json")
    assert r.returncode == 0, r.stderr
    sent = json.loads(r.stdout)
    assert sent["version"] == 2 and sent["layers_sent"] == 1
    at_hq = versions(hq)
    assert at_hq[2]["status"] == "pending-validation"
    assert at_hq[2]["top_layer"] == held[2]["top_layer"]
    assert current(hq) == 1
    for site in (a, b):
        r = site.client().post("/site/sync", {})
        assert r["versions_added"] == {"base": []} and r["activated"] == {}
        assert r["bytes_downloaded"] == 0
    assert 2 not in versions(b) and current(a) == 1
    assert versions(a)[2]["status"] == "pending-validation"
    # the layer is not served to b's token either
    token_b = (b.home / "site.token").read_text().strip()
    with pytest.raises(ClientError) as info:
        hq.client(token_b).get(f"/sync/layers/{held[2]['top_layer']}")
    assert info.value.status == 404

    # validation is HQ's: refused at the site, and for a version that does not wait
    r = cli(a.home, "template", "validate", "base", "v2")
    assert r.returncode == 1 and "at HQ" in r.stderr
    r = cli(hq.home, "template", "validate", "base", "v1")
    assert r.returncode == 1 and "does not wait for validation" in r.stderr

    # HQ validates it (CLI), audited; it becomes current at HQ
    r = cli(hq.home, "template", "validate", "base", "v2")
    assert r.returncode == 0, r.stderr
    assert "validated base v2" in r.stdout
    assert versions(hq)[2]["status"] == "enabled" and current(hq) == 2
    audit = hq.client().get("/audit")
    assert any(e["action"] == "template.validate" and e["target"] == "base" for e in audit)

    # every assigned site takes it on its next sync; a recognises its own layers: no bytes
    r = b.client().post("/site/sync", {})
    assert r["versions_added"] == {"base": [2]} and r["activated"] == {"base": 2}
    assert r["bytes_downloaded"] == sent["bytes_sent"]
    r = a.client().post("/site/sync", {})
    assert r["bytes_downloaded"] == 0 and r["versions_added"] == {"base": []}
    assert r["validated"] == {"base": [2]} and r["activated"] == {"base": 2}
    assert versions(a)[2]["status"] == "enabled" and current(a) == 2
    assert a.client().get("/site")["awaiting_validation"] == {}


def test_a_template_local_to_the_site_is_current_at_once(trio, qemu, tmp_path):
    hq, a, _ = trio
    import_base(hq, tmp_path)
    join(hq, a, "a", local_patches=True)
    image = make_raw(tmp_path / "own.raw", fill={0: os.urandom(MiB)})
    a.client().upload(
        "/templates/import", image, {"name": "own", "format": "raw", "temp": [], "data": []}
    )
    t = a.client().post("/templates/own/maintenance/enter")
    qemu.write(Path(t["overlay_path"]), MiB, os.urandom(4096), scratch=tmp_path / "s")
    a.client().post("/templates/own/maintenance/exit", {"recreate": "all"})
    own = {v["number"]: v for v in a.client().get("/templates/own/versions")}
    assert own[2]["status"] == "enabled" and own[2]["current"]


# --- 3. layer files placed beforehand are checksummed, not trusted --------------------------


def tamper(path: Path) -> None:
    os.chmod(path, 0o644)
    with path.open("r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))
    os.chmod(path, 0o444)


def sha(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_site_checks_seeded_and_held_layer_files(trio, qemu, tmp_path):
    hq, a, _ = trio
    import_base(hq, tmp_path)
    join(hq, a, "a")
    assert a.client().post("/site/sync", {})["versions_added"] == {"base": [1]}
    v1 = versions(a)[1]["top_layer"]
    seed = a.home / "store" / "seed"
    seed.mkdir()
    rejected = a.home / "store" / "rejected"

    # a layer seeded by hand (a USB disk) is checked and taken: not a byte from HQ
    new_version(hq, qemu, MiB, os.urandom(256 * 1024))
    top2 = versions(hq)[2]["top_layer"]
    shutil.copyfile(layer_path(hq, top2), seed / layer_path(hq, top2).name)
    r = a.client().post("/site/sync", {})
    assert r["versions_added"] == {"base": [2]} and r["bytes_downloaded"] == 0
    assert r["seeded"] == [top2] and r["rejected"] == []
    assert sha(layer_path(a, top2)) == top2 and not (seed / layer_path(hq, top2).name).exists()

    # a seeded file whose bytes do not match its name is moved aside and fetched
    new_version(hq, qemu, 2 * MiB, os.urandom(256 * 1024))
    top3 = versions(hq)[3]["top_layer"]
    placed = seed / layer_path(hq, top3).name
    shutil.copyfile(layer_path(hq, top3), placed)
    tamper(placed)
    r = a.client().post("/site/sync", {})
    assert r["versions_added"] == {"base": [3]} and r["rejected"] == [top3]
    assert r["bytes_downloaded"] == layer_path(hq, top3).stat().st_size
    assert sha(layer_path(a, top3)) == top3 and not placed.exists()
    assert [p.name.split(".qcow2.")[0] + ".qcow2" for p in rejected.iterdir()] == [placed.name]

    # a layer this site holds (a row and a file) whose file was changed: not trusted, moved
    # aside and fetched again, though its version is already here
    tamper(layer_path(a, v1))
    new_version(hq, qemu, 3 * MiB, os.urandom(64 * 1024))
    r = a.client().post("/site/sync", {})
    assert r["versions_added"] == {"base": [4]} and v1 in r["rejected"]
    top4 = versions(hq)[4]["top_layer"]
    fetched = layer_path(hq, v1).stat().st_size + layer_path(hq, top4).stat().st_size
    assert r["bytes_downloaded"] == fetched
    assert sha(layer_path(a, v1)) == v1 and len(list(rejected.iterdir())) == 2
    # nothing changed since: the next sync hashes nothing new and fetches nothing
    r = a.client().post("/site/sync", {})
    assert r["bytes_downloaded"] == 0 and r["rejected"] == []
    assert cli(a.home, "store", "verify").returncode == 0


@pytest.fixture
def edge_root(fleet, tmp_path: Path) -> Path:
    """The (HQ) server restarted with edge stores on, each sim host's disk at edge_root/HOST."""
    root = tmp_path / "edge"
    for host in (H1, H2):
        (root / host / "layers").mkdir(parents=True)
    fleet.server.env["GOLDFLEET_EDGE_ROOT"] = str(root)
    fleet.server.restart()
    return root


H1, H2 = "sim-host-1", "sim-host-2"


def test_an_edge_store_checks_files_placed_beforehand(fleet, edge_root):
    fleet.import_template("base", {0: b"\x11" * 4096})
    (v1,) = fleet.versions()[0]["chain"]
    name = fleet.layer_file(v1).name
    good, bad = edge_root / H1 / "layers" / name, edge_root / H2 / "layers" / name
    for path in (good, bad):
        shutil.copyfile(fleet.layer_file(v1), path)  # seeded by hand: 0644
    tamper(bad)

    # the right bytes are checked, made read-only and kept: nothing copied
    r = fleet.cli_json("host", "prefetch", H1, "base")
    assert r["copied"] == [] and r["complete"]
    assert stat.S_IMODE(good.stat().st_mode) == 0o444 and sha(good) == v1
    # the wrong ones are moved aside and the layer copied again
    r = fleet.cli_json("host", "prefetch", H2, "base")
    assert r["copied"] == [v1] and r["complete"]
    assert sha(bad) == v1
    aside = list((edge_root / H2 / "rejected").iterdir())
    assert len(aside) == 1 and aside[0].name.startswith(name) and sha(aside[0]) != v1
    # a clone created on each host runs on the checked copy
    fleet.create(count=2)


# --- 2. edge stores fed when a version becomes current at a site ----------------------------


def feeds(site: Any) -> dict[str, dict]:
    """Each host's feed of template base."""
    return {
        h["name"]: next((f for f in h["feeds"] if f["template"] == "base"), {})
        for h in site.client().get("/hosts")["hosts"]
    }


def test_a_current_version_is_fed_to_the_sites_edge_stores(tmp_path, monkeypatch, qemu):
    monkeypatch.setenv("GOLDFLEET_HOME", str(tmp_path / "unused"))
    root = tmp_path / "edge"
    for host in (H1, H2):
        (root / host).mkdir(parents=True)
    limit = MiB // 2  # bytes a second: about 6 s a host for this layer
    env = {"GOLDFLEET_EDGE_ROOT": str(root), "GOLDFLEET_EDGE_FEED_LIMIT": str(limit)}
    hq, a = start_servers(tmp_path, {"hq": "hq", "a": "site"}, env=env)
    try:
        import_base(hq, tmp_path, size=3 * MiB)
        join(hq, a, "a")
        assert a.client().post("/site/sync", {})["activated"] == {"base": 1}
        (v1,) = versions(a)[1]["chain"]
        size = layer_path(a, v1).stat().st_size
        assert size > 3 * MiB

        # v1 is current at a: its chain goes out to both hosts, no clone asked for it; shown
        # per host while it is copied, at the limit's pace
        copying = wait_for(
            lambda: (f := feeds(a)[H1]).get("state") == "copying" and f["done"] > 0 and f
        )
        assert copying["version"] == 1 and copying["done"] < copying["total"] == size
        shown = cli(a.home, "host", "list")
        assert "base:v1 copying" in shown.stdout
        # the server is killed in the middle of the copy into H1: the partial copy stays
        a.kill9()
        partial = [p for p in (root / H1 / "layers").iterdir() if p.name.startswith(".edge-feed")]
        assert len(partial) == 1 and 0 < partial[0].stat().st_size < size
        held = partial[0].stat().st_size
        a.start()
        started = time.monotonic()
        wait_for(lambda: all(f.get("state") == "done" for f in feeds(a).values()), timeout=60)
        took = time.monotonic() - started
        assert took >= 0.8 * (2 * size - held) / limit  # the limit held
        for host in (H1, H2):
            copy = root / host / "layers" / layer_path(a, v1).name
            assert sha(copy) == v1 and stat.S_IMODE(copy.stat().st_mode) == 0o444
            assert [p.name for p in (root / host / "layers").iterdir()] == [copy.name]
        audit = {
            e["target"]: e["detail"] for e in a.client().get("/audit") if e["action"] == "host.feed"
        }
        assert (
            audit[H1]["resumed_from"] >= held
            and audit[H1]["bytes_copied"] == size - audit[H1]["resumed_from"]
        )
        assert audit[H2]["resumed_from"] == 0 and audit[H2]["bytes_copied"] == size
        assert a.client().get("/clones") == []

        # HQ's v2 becomes current at a: its new layer is fed too
        new_version(hq, qemu, MiB, os.urandom(64 * 1024))
        assert a.client().post("/site/sync", {})["activated"] == {"base": 2}
        top = versions(a)[2]["top_layer"]
        wait_for(
            lambda: all(f.get("version") == 2 and f["state"] == "done" for f in feeds(a).values())
        )
        for host in (H1, H2):
            assert sha(root / host / "layers" / layer_path(a, top).name) == top
    finally:
        for srv in (hq, a):
            srv.stop()
