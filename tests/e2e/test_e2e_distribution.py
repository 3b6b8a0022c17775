"""Distribution between real servers: HQ and two sites (three homes, three ports).

What each site receives (--versions), when a version goes live there (--publish-at,
--activate when-all-verified), scheduled syncs and their retry while HQ is down, locally
patched versions published upstream, a full disk at a site, and a hostile upstream.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from sitekit import MiB, cli, layer_path, make_raw, new_version, start_servers

from goldfleet.cli.client import ClientError

pytestmark = pytest.mark.slow


@pytest.fixture
def trio(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any, Any]]:
    """HQ and sites a and b; a failed sync is retried after one second."""
    monkeypatch.setenv("GOLDFLEET_HOME", str(tmp_path / "unused"))
    made = start_servers(
        tmp_path,
        {"hq": "hq", "a": "site", "b": "site"},
        env={"GOLDFLEET_SYNC_RETRY_SECONDS": "1"},
    )
    yield made[0], made[1], made[2]
    for srv in made:
        srv.stop()


def import_base(hq: Any, tmp_path: Path) -> None:
    image = make_raw(tmp_path / "base.raw", fill={0: os.urandom(2 * MiB)})
    hq.client().upload(
        "/templates/import", image, {"name": "base", "format": "raw", "temp": [], "data": []}
    )


def join(hq: Any, site: Any, name: str, **options: Any) -> None:
    token = hq.client().post("/sites", {"name": name, **options})["token"]
    site.client().post("/site/join", {"url": hq.url, "token": token})


def numbers(srv: Any) -> list[int]:
    return [v["number"] for v in srv.client().get("/templates/base/versions")]


def current(srv: Any) -> int | None:
    return srv.client().get("/templates/base")["current_version"]


def states(hq: Any, site: str) -> dict[str, dict]:
    return next(x for x in hq.client().get("/sites") if x["name"] == site)["states"]


def wait_for(check: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"not reached within {timeout} s")


def test_versions_activation_and_publish_times(trio, qemu, tmp_path):
    hq, a, b = trio
    import_base(hq, tmp_path)
    new_version(hq, qemu, MiB, os.urandom(64 * 1024))
    join(hq, a, "a")
    join(hq, b, "b")
    # through the CLI: a receives only the current version, b all of them
    r = cli(hq.home, "site", "assign", "a", "base", "--versions", "current")
    assert r.returncode == 0 and "versions current" in r.stdout, r.stderr
    assert cli(hq.home, "site", "assign", "b", "base").returncode == 0
    bad = cli(hq.home, "site", "assign", "a", "base", "--versions", "latest")
    assert bad.returncode != 0 and "--versions 'latest' is not valid" in bad.stderr

    assert a.client().post("/site/sync", {})["versions_added"] == {"base": [2]}
    assert b.client().post("/site/sync", {})["versions_added"] == {"base": [1, 2]}
    assert numbers(a) == [2] and current(a) == 2 and current(b) == 2
    assert states(hq, "a")["base:v2"] == {
        "state": "verified",
        "done": states(hq, "a")["base:v2"]["done"],
        "total": states(hq, "a")["base:v2"]["total"],
        "reason": "",
        "current": True,
    }

    # when-all-verified: v3 goes live at a site only once every site of base verified it
    hq.client().post(
        "/sites/a/templates",
        {"template": "base", "versions": "current", "activate": "when-all-verified"},
    )
    new_version(hq, qemu, 2 * MiB, os.urandom(64 * 1024))
    r = a.client().post("/site/sync", {})
    assert r["versions_added"] == {"base": [3]} and r["activated"] == {}
    assert numbers(a) == [2, 3] and current(a) == 2
    assert states(hq, "a")["base:v3"]["state"] == "verified"
    assert not states(hq, "a")["base:v3"]["current"]
    listed = cli(hq.home, "site", "list")
    assert listed.returncode == 0 and "when-all-verified" in listed.stdout
    r = b.client().post("/site/sync", {})  # the last site to verify: live at once
    assert r["versions_added"] == {"base": [3]} and r["activated"] == {"base": 3}
    assert current(b) == 3
    r = a.client().post("/site/sync", {})
    assert r["bytes_downloaded"] == 0 and r["activated"] == {"base": 3} and current(a) == 3

    # a publish time: v4 arrives at a now and goes live there at that time, not before
    at = (datetime.now(UTC) + timedelta(seconds=12)).replace(tzinfo=None, microsecond=0)
    hq.client().post(
        "/sites/a/templates",
        {
            "template": "base",
            "versions": "all",
            "publish_at": at.isoformat(),
            "activate": "on-verify",
        },
    )
    new_version(hq, qemu, 3 * MiB, os.urandom(64 * 1024))
    r = a.client().post("/site/sync", {})
    assert r["versions_added"] == {"base": [1, 4]}
    assert r["pending"] == {"base": {"version": 4, "at": at.isoformat()}}
    assert current(a) == 3
    shown = a.client().get("/site")
    assert shown["pending"] == {"base": {"version": 4, "at": at.isoformat()}}
    status = cli(a.home, "site", "status")
    assert status.returncode == 0 and "base v4" in status.stdout
    wait_for(lambda: current(a) == 4, timeout=30)
    assert datetime.now(UTC).replace(tzinfo=None) >= at
    assert a.client().get("/site")["pending"] == {}
    assert current(b) == 3  # b has no publish time but has not synced since


def _set_link(site: Any, **values: Any) -> None:
    """Change the site's link row (its schedule, or as a crash left it)."""
    db = sqlite3.connect(site.home / "goldfleet.db")
    sets = ", ".join(f"{k} = ?" for k in values)
    db.execute(f"UPDATE upstream SET {sets}", tuple(values.values()))
    db.commit()
    db.close()


def _past(seconds: float) -> str:
    """A time ``seconds`` ago, as the database stores it."""
    return (datetime.now(UTC) - timedelta(seconds=seconds)).replace(tzinfo=None).isoformat(" ")


def test_scheduled_sync_retries_while_hq_is_down(trio, qemu, tmp_path):
    hq, a, _ = trio
    import_base(hq, tmp_path)
    join(hq, a, "a")
    hq.client().post("/sites/a/templates", {"template": "base"})
    assert a.client().post("/site/sync", {})["versions_added"] == {"base": [1]}
    made = a.client().post("/clones", {"template": "base", "name": "c1", "wait": True})
    assert made["operation"]["status"] == "done"

    r = cli(a.home, "site", "schedule", "weekly sun 03:30")
    assert r.returncode == 0, r.stderr
    shown = a.client().get("/site")
    assert shown["schedule"] == "30 3 * * 0"
    due = datetime.fromisoformat(shown["next_sync_at"])
    assert due.weekday() == 6 and (due.hour, due.minute) == (3, 30)
    assert cli(a.home, "site", "schedule", "every tuesday").returncode != 0

    # the schedule comes due while HQ is down: the sync fails, is retried, and succeeds
    # once HQ is back; meanwhile the site serves what it holds
    new_version(hq, qemu, MiB, os.urandom(64 * 1024))
    hq.stop()
    _set_link(a, next_sync_at=_past(1))
    failed = wait_for(lambda: (s := a.client().get("/site"))["last_error"] and s)
    assert "cannot be reached" in failed["last_error"]
    made = a.client().post("/clones", {"template": "base", "name": "c2", "wait": True})
    assert made["operation"]["status"] == "done"
    with pytest.raises(ClientError) as info:
        a.client().post("/site/sync", {})
    assert info.value.status == 502 and "cannot be reached" in info.value.message
    hq.start()
    wait_for(lambda: numbers(a) == [1, 2], timeout=30)
    after = wait_for(lambda: (s := a.client().get("/site"))["last_error"] is None and s)
    assert current(a) == 2
    # back on the schedule: the next sync is the next Sunday 03:30
    nxt = datetime.fromisoformat(after["next_sync_at"])
    assert nxt.weekday() == 6 and (nxt.hour, nxt.minute) == (3, 30)


def test_a_sync_claim_left_behind_does_not_stop_the_schedule(trio, qemu, tmp_path):
    """A server killed mid-sync, or a sync that could not release its claim, leaves the claim
    set; the scheduled sync takes it over (the dead server's, or this server's own)."""
    hq, a, _ = trio
    import_base(hq, tmp_path)
    join(hq, a, "a")
    hq.client().post("/sites/a/templates", {"template": "base"})
    assert cli(a.home, "site", "schedule", "daily 03:00").returncode == 0
    past = _past(5)
    ((own,),) = a.rows("SELECT id FROM servers")

    def held() -> list[int]:
        try:
            return numbers(a)
        except ClientError:  # not there yet
            return []

    for owner, version in (("0" * 8 + "-dead-server", 1), (own, 2)):
        if version == 2:
            new_version(hq, qemu, MiB, os.urandom(64 * 1024))
        _set_link(a, sync_owner=owner, sync_started_at=past, next_sync_at=past)
        wait_for(lambda v=version: held() == list(range(1, v + 1)), timeout=30)
        done = wait_for(lambda: (s := a.client().get("/site"))["syncing_since"] is None and s)
        assert done["last_error"] is None and current(a) == version
        assert datetime.fromisoformat(done["next_sync_at"]).hour == 3


def test_two_syncs_at_once_one_runs(trio, tmp_path):
    hq, a, _ = trio
    import_base(hq, tmp_path)
    join(hq, a, "a")
    hq.client().post("/sites/a/templates", {"template": "base"})
    answers: list[Any] = []

    def run() -> None:
        try:
            answers.append(a.client().post("/site/sync", {"limit": MiB}))
        except ClientError as exc:
            answers.append(exc)

    both = [threading.Thread(target=run) for _ in range(2)]
    for t in both:
        t.start()
    for t in both:
        t.join(60)
    refused = [x for x in answers if isinstance(x, ClientError)]
    ran = [x for x in answers if not isinstance(x, ClientError)]
    assert len(refused) == 1 and len(ran) == 1
    assert refused[0].status == 409 and "already running" in refused[0].message
    assert ran[0]["versions_added"] == {"base": [1]}

    # revoked at HQ: the site's sync is refused, and says so
    r = cli(hq.home, "site", "revoke", "a")
    assert r.returncode == 0 and "token site-a revoked" in r.stdout
    r = cli(a.home, "site", "sync")
    assert r.returncode == 1 and "refused this site's token" in r.stderr
    assert json.loads(cli(hq.home, "site", "list", "--json").stdout)[0]["token_revoked"]


def test_local_patches_are_published_upstream(trio, qemu, tmp_path):
    hq, a, b = trio
    import_base(hq, tmp_path)
    join(hq, a, "a", local_patches=True)
    join(hq, b, "b")
    for name in ("a", "b"):
        hq.client().post(f"/sites/{name}/templates", {"template": "base"})
    for site in (a, b):
        assert site.client().post("/site/sync", {})["versions_added"] == {"base": [1]}

    # b has no right: it may not patch base, nor publish it
    with pytest.raises(ClientError) as info:
        b.client().post("/templates/base/maintenance/enter")
    assert info.value.status == 403 and "no local-patches right" in info.value.message
    with pytest.raises(ClientError) as info:
        b.client().post("/templates/base/publish", {})
    assert info.value.status == 403 and "no local-patches right" in info.value.message

    # a patches base, seals v2 (it waits for HQ's validation there) and publishes it: HQ
    # checks it and holds the same v2, waiting too until an admin at HQ validates it
    new_version(a, qemu, MiB, os.urandom(256 * 1024))
    v2 = a.client().get("/templates/base/versions")[-1]
    assert v2["status"] == "pending-validation" and current(a) == 1
    r = cli(a.home, "template", "publish", "base", "--json")
    assert r.returncode == 0, r.stderr
    sent = json.loads(r.stdout)
    assert sent["version"] == 2 and sent["layers_sent"] == 1
    assert sent["bytes_sent"] == layer_path(a, v2["top_layer"]).stat().st_size
    at_hq = hq.client().get("/templates/base/versions")[-1]
    assert (at_hq["number"], at_hq["top_layer"]) == (2, v2["top_layer"])
    assert at_hq["status"] == "pending-validation" and current(hq) == 1
    assert cli(hq.home, "template", "validate", "base", "v2").returncode == 0
    assert current(hq) == 2
    again = a.client().post("/templates/base/publish", {})
    assert again["already_at_hq"] and again["bytes_sent"] == 0
    audit = hq.client().get("/audit")
    assert any(e["action"] == "site.publish" and e["actor"] == "site-a" for e in audit)

    # HQ distributes it to b; a recognises the digest and downloads nothing
    r = b.client().post("/site/sync", {})
    assert r["versions_added"] == {"base": [2]} and current(b) == 2
    assert r["bytes_downloaded"] == sent["bytes_sent"]
    r = a.client().post("/site/sync", {})
    assert r["bytes_downloaded"] == 0 and r["versions_added"] == {"base": []}
    assert r["validated"] == {"base": [2]} and current(a) == 2

    # HQ and a both seal a v3: a's is refused, HQ's stays
    new_version(hq, qemu, 2 * MiB, os.urandom(64 * 1024))
    new_version(a, qemu, 3 * MiB, os.urandom(64 * 1024))
    with pytest.raises(ClientError) as info:
        a.client().post("/templates/base/publish", {})
    assert info.value.status == 409 and "different v3" in info.value.message
    assert len(hq.client().get("/templates/base/versions")) == 3

    # the right taken back: HQ refuses a's next publish
    r = cli(hq.home, "site", "rights", "a", "--no-local-patches")
    assert r.returncode == 0 and "may not" in r.stdout
    with pytest.raises(ClientError) as info:
        a.client().post("/templates/base/publish", {"version": 3})
    assert info.value.status == 403

    # HQ seals v4: a still receives it, though its own v3 is not HQ's (that one is reported)
    hq_v3 = hq.client().get("/templates/base/versions")[-1]["top_layer"]
    own_v3 = a.client().get("/templates/base/versions")[-1]["top_layer"]
    new_version(hq, qemu, 4 * MiB, os.urandom(64 * 1024))
    r = a.client().post("/site/sync", {})
    assert r["versions_added"] == {"base": [4]} and r["activated"] == {"base": 4}
    assert "v3 here is this site's own" in r["failed"]["base"]
    tops = {v["number"]: v["top_layer"] for v in a.client().get("/templates/base/versions")}
    assert tops[3] == own_v3 and current(a) == 4
    shown = states(hq, "a")
    assert shown["base:v3"]["state"] == "failed" and "own" in shown["base:v3"]["reason"]
    assert shown["base:v4"]["state"] == "verified" and shown["base:v4"]["current"]
    # its own v3 deleted, a takes HQ's (whose layer it already holds: no bytes); the sync
    # that takes it is the retry of the one that failed (a second later), or the next
    assert cli(a.home, "template", "delete-version", "base", "v3").returncode == 0

    def took_hq_v3() -> bool:
        tops = {v["number"]: v["top_layer"] for v in a.client().get("/templates/base/versions")}
        return tops.get(3) == hq_v3

    wait_for(took_hq_v3, timeout=30)

    def the_sync_that_took_it() -> dict | None:
        syncs = [e["detail"] for e in a.client().get("/audit") if e["action"] == "site.sync"]
        return next((d for d in syncs if d["added"] == {"base": [3]} and "bytes" in d), None)

    took = wait_for(the_sync_that_took_it, timeout=10)  # its summary ends the sync
    assert took["failed"] == {} and took["bytes"] == 0


def _mounted_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    return done.returncode == 0


def _fill(path: Path) -> Path:
    """Write ``path`` until its disk is full."""
    with path.open("wb") as f:
        try:
            while True:
                f.write(b"\xa5" * (256 << 10))
                f.flush()
        except OSError:
            pass
    return path


def test_disk_full_at_a_site(tmp_path, monkeypatch, qemu):
    """The site's store is a 24 MiB tmpfs. A layer of 32 MiB is refused before a byte of it is
    fetched, with the space needed and free. A layer of 12 MiB that fits when its sync starts
    meets a disk that fills during its download: nothing of it is activated, the partial
    download is released."""
    store = tmp_path / "a-store"
    if not _mounted_tmpfs(store, "24m"):
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    monkeypatch.setenv("GOLDFLEET_HOME", str(tmp_path / "unused"))
    try:
        hq, a = start_servers(
            tmp_path, {"hq": "hq", "a": "site"}, env={"GOLDFLEET_STORE_DIR": str(store)}
        )
        try:
            image = make_raw(tmp_path / "big.raw", fill={0: os.urandom(32 * MiB)})
            hq.client().upload(
                "/templates/import",
                image,
                {"name": "base", "format": "raw", "temp": [], "data": []},
            )
            join(hq, a, "a")
            hq.client().post("/sites/a/templates", {"template": "base"})
            free = os.statvfs(store).f_bfree
            r = cli(a.home, "site", "sync")
            assert r.returncode == 1, r.stdout + r.stderr
            said = " ".join(r.stdout.split())  # the table may fold long lines
            assert f"base: failed: not enough space for the layer of base from HQ at {store}:" in (
                said
            ), said
            assert "it needs 3" in said and "MiB and a margin), 2" in said, said
            assert "0 layers, 0B downloaded" in said
            shown = json.loads(cli(a.home, "site", "status", "--json").stdout)
            assert "not enough space for the layer of base" in shown["last_error"]
            assert a.client().get("/templates") == []
            layers = store / "layers"
            assert not [p for p in layers.iterdir() if p.name.startswith(".")]
            assert os.statvfs(store).f_bfree == free  # not a byte was fetched
            assert states(hq, "a")["base:v1"]["state"] == "failed"

            # fits at the start, not once the disk fills during the (slowed) download
            image = make_raw(tmp_path / "small.raw", fill={0: os.urandom(12 * MiB)})
            hq.client().upload(
                "/templates/import",
                image,
                {"name": "small", "format": "raw", "temp": [], "data": []},
            )
            hq.client().post("/sites/a/templates", {"template": "small"})
            env = {k: v for k, v in os.environ.items() if not k.startswith("GOLDFLEET_")}
            sync = subprocess.Popen(
                [sys.executable, "-m", "goldfleet", "site", "sync", "--limit", "2MB/s"],
                env={**env, "GOLDFLEET_HOME": str(a.home), "COLUMNS": "400"},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            wait_for(lambda: [p for p in layers.iterdir() if p.name.startswith(".")])
            ballast = _fill(store / "ballast")
            out, err = sync.communicate(timeout=60)
            said = " ".join(out.split())
            assert sync.returncode == 1, out + err
            assert "small: failed: the disk of this site's store is full" in said, said
            shown = json.loads(cli(a.home, "site", "status", "--json").stdout)
            assert "nothing of them was activated" in shown["last_error"]
            assert a.client().get("/templates") == []
            assert not [p for p in layers.iterdir() if p.name.startswith(".")]
            ballast.unlink()
            assert os.statvfs(store).f_bfree == free  # the partial download was released
            assert states(hq, "a")["small:v1"]["state"] == "failed"
        finally:
            hq.stop()
            a.stop()
    finally:
        subprocess.run(["umount", "-l", str(store)], check=False)


class _HostileHQ(BaseHTTPRequestHandler):
    """An upstream that says and sends what a test sets: ``catalog`` (or ``raw`` bytes in its
    place) and layer ``files``; ``asked`` records the layers requested."""

    files: ClassVar[dict[str, bytes]] = {}
    catalog: ClassVar[dict[str, Any]] = {}
    raw: ClassVar[bytes | None] = None
    asked: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        if self.path == "/sync/catalog":
            body = self.raw if self.raw is not None else json.dumps(self.catalog).encode()
        elif self.path.startswith("/sync/layers/"):
            self.asked.append(self.path.rsplit("/", 1)[1])
            body = self.files[self.path.rsplit("/", 1)[1]]
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hostile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Site a, joined to a hostile upstream (which first sent an empty catalog)."""
    _HostileHQ.files, _HostileHQ.raw, _HostileHQ.asked = {}, None, []
    _HostileHQ.catalog = {"site": "a", "rights": {}, "templates": []}
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _HostileHQ)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    monkeypatch.setenv("GOLDFLEET_HOME", str(tmp_path / "unused"))
    (a,) = start_servers(tmp_path, {"a": "site"})
    try:
        url = f"http://127.0.0.1:{upstream.server_address[1]}"
        a.client().post("/site/join", {"url": url, "token": "gf_whatever"})
        yield a
    finally:
        a.stop()
        upstream.shutdown()


def _entry(versions: list[tuple[int, str]], layers: list[tuple[str, str | None, int, int]]):
    return {
        "template": "base",
        "kind": "linked",
        "outline": {"temp": [], "data": []},
        "current": versions[-1][0],
        "hq_current": versions[-1][0],
        "activate": "on-verify",
        "publish_at": None,
        "versions": [{"number": n, "top_layer": d, "note": ""} for n, d in versions],
        "layers": [
            {"digest": d, "parent": p, "size": size, "virtual_size": vsize}
            for d, p, size, vsize in layers
        ],
    }


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_a_hostile_upstream_layer_is_refused(hostile, qemu, tmp_path):
    a = hostile
    base = tmp_path / "base.qcow2"
    qemu.create(base, size=16 * MiB)
    evil = tmp_path / "evil.qcow2"
    qemu.create(evil, size=16 * MiB, backing="/etc/passwd", unsafe=True)
    base_bytes, evil_bytes = base.read_bytes(), evil.read_bytes()
    d_base, d_evil = _digest(base_bytes), _digest(evil_bytes)
    _HostileHQ.files = {d_base: base_bytes, d_evil: evil_bytes}
    entry = _entry(
        [(1, d_base), (2, d_evil)],
        [(d_base, None, len(base_bytes), 16 * MiB), (d_evil, d_base, len(evil_bytes), 16 * MiB)],
    )
    _HostileHQ.catalog = {"site": "a", "rights": {}, "templates": [entry]}
    r = a.client().post("/site/sync", {})
    assert "backing reference is '/etc/passwd'" in r["failed"]["base"]
    # v1, clean, is kept (whole and verified); v2 never becomes visible, nor current
    assert r["versions_added"] == {"base": [1]} and r["activated"] == {}
    assert [v["number"] for v in a.client().get("/templates/base/versions")] == [1]
    assert a.client().get("/templates/base")["current_version"] is None
    layers = a.home / "store" / "layers"
    assert [p.name for p in layers.iterdir()] == [f"sha256-{d_base[7:]}.qcow2"]


GOOD = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("catalog", "says"),
    [
        (  # a name that is no template name
            {"site": "a", "templates": [{**_entry([(1, GOOD)], []), "template": "../../x"}]},
            "cannot read (templates.0.template",
        ),
        (  # a digest that is a path
            {"site": "a", "templates": [_entry([(1, "../" + GOOD)], [])]},
            "cannot read (templates.0.versions.0.top_layer",
        ),
        (  # a layer far larger than this site takes (max_virtual_size is 2 TiB by default)
            {"site": "a", "templates": [_entry([(1, GOOD)], [(GOOD, None, 1 << 20, 1 << 50)])]},
            "above this site's limit",
        ),
        (  # a file far larger than its virtual size
            {"site": "a", "templates": [_entry([(1, GOOD)], [(GOOD, None, 1 << 40, 1 << 20)])]},
            "impossible for a qcow2 layer",
        ),
        (b'{"site": "a", "pad": "' + b"x" * (65 << 20) + b'"}', "larger than 64 MiB"),
        (b"[1, 2", "cannot read"),
    ],
    ids=["name", "digest", "virtual-size", "file-size", "huge", "not-json"],
)
def test_a_hostile_catalog_is_refused_before_any_layer_is_fetched(hostile, catalog, says):
    a = hostile
    if isinstance(catalog, bytes):
        _HostileHQ.raw = catalog
    else:
        _HostileHQ.catalog = catalog
    try:
        r = a.client().post("/site/sync", {})
        problem = r["failed"].get("base", "")
    except ClientError as exc:
        problem = exc.message
    assert says in problem
    assert _HostileHQ.asked == []
    assert a.client().get("/templates") == []
    assert says in a.client().get("/site")["last_error"]


def test_a_publish_time_with_an_offset_is_taken_as_utc(hostile, qemu, tmp_path):
    a = hostile
    base = tmp_path / "base.qcow2"
    qemu.create(base, size=16 * MiB)
    data = base.read_bytes()
    entry = _entry([(1, _digest(data))], [(_digest(data), None, len(data), 16 * MiB)])
    entry["publish_at"] = "2099-01-01T01:30:00+02:00"
    _HostileHQ.files = {_digest(data): data}
    _HostileHQ.catalog = {"site": "a", "rights": {}, "templates": [entry]}
    r = a.client().post("/site/sync", {})
    assert r["versions_added"] == {"base": [1]}
    assert r["pending"] == {"base": {"version": 1, "at": "2098-12-31T23:30:00"}}


def test_no_sync_while_the_site_applies_the_template(trio, qemu, tmp_path):
    hq, a, _ = trio
    import_base(hq, tmp_path)
    new_version(hq, qemu, MiB, os.urandom(64 * 1024))
    join(hq, a, "a")
    hq.client().post("/sites/a/templates", {"template": "base"})
    a.client().post("/site/sync", {})
    a.client().post("/clones", {"template": "base", "name": "c1", "wait": True})
    a.client().post("/clones/c1/start")
    a.client().post("/sim/sessions", {"vm": "c1", "user": "alice"})
    # the site rolls its clone back to v1, waiting for alice to log off
    op = a.client().post(
        "/clones/rebase", {"template": "base", "to": "base:1", "rollout": {"logoff": "wait"}}
    )
    assert op["status"] == "running"

    new_version(hq, qemu, 2 * MiB, os.urandom(64 * 1024))
    r = a.client().post("/site/sync", {})
    assert r["versions_added"] == {} and r["bytes_downloaded"] == 0
    assert r["skipped"] == {
        "base": f"operation {op['id']} is applying template base here; it syncs after that"
    }
    assert numbers(a) == [1, 2]
    assert "operation" in a.client().get("/site")["last_error"]

    # alice logs off, the rebase ends, and the retry a second later brings v3
    a.client().delete("/sim/sessions/c1/alice")
    wait_for(lambda: a.client().get(f"/operations/{op['id']}")["status"] == "done", timeout=30)
    wait_for(lambda: numbers(a) == [1, 2, 3], timeout=30)
    wait_for(lambda: current(a) == 3, timeout=10)  # made current at the end of that sync
