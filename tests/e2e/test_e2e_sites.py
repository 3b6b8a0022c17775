"""HQ and a site as two real servers (two homes, two ports): the site pulls only what it lacks.

The faults come from a small TCP proxy in the test process between the site and HQ: it cuts a
connection after N bytes once, or flips one byte once; the sync must resume (not restart from
zero) and must never use flipped bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sitekit import MiB, cli, layer_path, new_version, setup_site, start_servers

from goldfleet.cli.client import Client, ClientError


class Proxy:
    """A TCP proxy on loopback; ``fault`` ("cut" or "flip") hits the first connection whose
    answer passes ``at`` bytes, once."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.fault: str | None = None
        self.at = 0
        self.fired = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def arm(self, fault: str, at: int) -> None:
        with self.lock:
            self.fault, self.at = fault, at

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, answers: bool) -> None:
        passed = 0
        try:
            while data := src.recv(65536):
                if answers:
                    with self.lock:
                        fault, at = self.fault, self.at
                        hit = fault is not None and passed <= at < passed + len(data)
                        if hit:
                            self.fault = None
                            self.fired += 1
                    if hit and fault == "cut":
                        dst.sendall(data[: at - passed])
                        break
                    if hit and fault == "flip":
                        i = at - passed
                        data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
                passed += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any]]:
    """HQ and a site (role site), each a real server on its own home and port."""
    monkeypatch.setenv("GOLDFLEET_HOME", str(tmp_path / "unused"))
    made = start_servers(tmp_path, {"hq": "hq", "site": "site"})
    yield made[0], made[1]
    for srv in made:
        srv.stop()


def test_site_pulls_only_what_it_lacks(pair, qemu, tmp_path):
    hq, site = pair
    token = setup_site(hq, site, hq.url, tmp_path)
    token_file = site.home / "site.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token not in (site.home.parent / f"server-{site.port}.log").read_text()

    # the site token reads the sync endpoints only
    as_site = Client(hq.url, token)
    with pytest.raises(ClientError) as info:
        as_site.get("/templates")
    assert info.value.status == 403

    # the first sync, slowed down: a second one meanwhile is told so
    results: list[Any] = []
    first = threading.Thread(
        target=lambda: results.append(site.client().post("/site/sync", {"limit": MiB}))
    )
    first.start()
    time.sleep(0.5)
    with pytest.raises(ClientError) as info:
        site.client().post("/site/sync", {})
    assert info.value.status == 409 and "already running" in info.value.message
    first.join(60)
    r = results[0]
    v1 = hq.client().get("/templates/base/versions")[0]
    size1 = layer_path(hq, v1["top_layer"]).stat().st_size
    assert r["versions_added"] == {"base": [1]} and r["failed"] == {}
    assert r["bytes_downloaded"] == size1 and r["layers_downloaded"] == 1

    # the site holds v1, sealed, and its clones read HQ's bytes
    ours = site.client().get("/templates/base/versions")
    assert [v["top_layer"] for v in ours] == [v1["top_layer"]]
    assert (
        layer_path(site, v1["top_layer"]).read_bytes()
        == layer_path(hq, v1["top_layer"]).read_bytes()
    )
    assert stat.S_IMODE(layer_path(site, v1["top_layer"]).stat().st_mode) == 0o444
    made = site.client().post("/clones", {"template": "base", "name": "c1", "wait": True})
    assert made["operation"]["status"] == "done"
    system = next(
        Path(v["path"]) for v in site.client().get("/clones/c1")["volumes"] if v["role"] == "system"
    )
    for offset in (0, MiB, 4 * MiB - 4096):
        assert qemu.read(system, offset, 4096) == qemu.read(
            layer_path(hq, v1["top_layer"]), offset, 4096
        )

    # HQ sees the state the site reported
    listed = hq.client().get("/sites")[0]
    assert listed["name"] == "branch" and listed["last_contact"]
    assert listed["states"]["base:v1"]["state"] == "verified"

    # nothing new: no layer bytes
    again = site.client().post("/site/sync", {})
    assert again["bytes_downloaded"] == 0 and again["versions_added"] == {"base": []}

    # a new version costs exactly its new layer
    new_version(hq, qemu, MiB, os.urandom(256 * 1024))
    v2 = hq.client().get("/templates/base/versions")[-1]
    size2 = layer_path(hq, v2["top_layer"]).stat().st_size
    delta = site.client().post("/site/sync", {})
    assert delta["versions_added"] == {"base": [2]}
    assert delta["bytes_downloaded"] == size2 < size1
    shown = site.client().get("/templates/base")
    assert shown["current_version"] == 2
    assert qemu.read(layer_path(site, v2["top_layer"]), MiB, 4096) == qemu.read(
        layer_path(hq, v2["top_layer"]), MiB, 4096
    )
    assert hq.client().get("/sites")[0]["states"]["base:v2"]["state"] == "verified"

    # a revoked site token: 401, nothing served, and the sync says why
    hq.client().delete("/tokens/site-branch")
    for path in ("/sync/catalog", f"/sync/layers/{v1['top_layer']}"):
        with pytest.raises(ClientError) as info:
            as_site.get(path)
        assert info.value.status == 401
    with pytest.raises(ClientError) as info:
        site.client().post("/site/sync", {})
    assert info.value.status == 502 and "refused this site's token" in info.value.message


def test_sync_resumes_after_a_cut_and_never_uses_flipped_bytes(pair, qemu, tmp_path):
    hq, site = pair
    proxy = Proxy(hq.port)
    try:
        setup_site(hq, site, proxy.url, tmp_path)
        v1 = hq.client().get("/templates/base/versions")[0]
        size1 = layer_path(hq, v1["top_layer"]).stat().st_size
        proxy.arm("cut", 2 * MiB)
        r = site.client().post("/site/sync", {})
        assert proxy.fired == 1 and r["failed"] == {}
        assert r["versions_added"] == {"base": [1]}
        assert size1 <= r["bytes_downloaded"] < 2 * size1  # resumed, not restarted from zero
        held = layer_path(site, v1["top_layer"])
        assert "sha256:" + hashlib.sha256(held.read_bytes()).hexdigest() == v1["top_layer"]

        new_version(hq, qemu, MiB, os.urandom(2 * MiB))
        v2 = hq.client().get("/templates/base/versions")[-1]
        size2 = layer_path(hq, v2["top_layer"]).stat().st_size
        proxy.arm("flip", MiB)
        r = site.client().post("/site/sync", {})
        assert proxy.fired == 2 and r["failed"] == {}
        assert r["versions_added"] == {"base": [2]}
        assert r["bytes_downloaded"] == 2 * size2  # fetched again after the bad hash
        held = layer_path(site, v2["top_layer"])
        assert held.read_bytes() == layer_path(hq, v2["top_layer"]).read_bytes()
        layers = site.home / "store" / "layers"
        assert not [p for p in layers.iterdir() if p.name.startswith(".")]
    finally:
        proxy.close()


def test_a_failed_layer_keeps_the_versions_before_it(pair, qemu, tmp_path):
    """v3's layer is damaged at HQ: the new site still gets v1 and v2, each whole and verified;
    v3 is reported failed and, once HQ's file is good again, costs only its own layer."""
    hq, site = pair
    setup_site(hq, site, hq.url, tmp_path)
    new_version(hq, qemu, MiB, os.urandom(MiB))
    new_version(hq, qemu, 2 * MiB, os.urandom(MiB))
    v3 = hq.client().get("/templates/base/versions")[-1]
    damaged = layer_path(hq, v3["top_layer"])
    good = damaged.read_bytes()
    os.chmod(damaged, 0o644)
    with damaged.open("r+b") as f:
        f.seek(len(good) // 2)
        f.write(bytes([good[len(good) // 2] ^ 0xFF]))

    r = cli(site.home, "site", "sync")
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"base: added v1, v2; then failed: layer {v3['top_layer']}" in r.stdout
    assert [v["number"] for v in site.client().get("/templates/base/versions")] == [1, 2]
    assert site.client().get("/templates/base")["current_version"] is None  # v3 is HQ's
    shown = next(x for x in hq.client().get("/sites") if x["name"] == "branch")["states"]
    assert shown["base:v1"]["state"] == shown["base:v2"]["state"] == "verified"
    assert shown["base:v3"]["state"] == "failed" and v3["top_layer"] in shown["base:v3"]["reason"]
    layers = site.home / "store" / "layers"
    assert not [p for p in layers.iterdir() if p.name.startswith(".")]
    assert not layer_path(site, v3["top_layer"]).exists()

    damaged.write_bytes(good)
    os.chmod(damaged, 0o444)
    r = site.client().post("/site/sync", {})
    assert r["failed"] == {} and r["versions_added"] == {"base": [3]}
    assert r["layers_downloaded"] == 1 and r["activated"] == {"base": 3}
    assert layer_path(site, v3["top_layer"]).read_bytes() == good


def test_the_sites_bandwidth_limit_holds_for_every_sync(pair, qemu, tmp_path):
    """`site schedule --limit` caps every sync (scheduled or not) that names no limit itself."""
    hq, site = pair
    setup_site(hq, site, hq.url, tmp_path)

    r = cli(site.home, "site", "schedule", "--limit", "2MB/s")
    assert r.returncode == 0 and "syncs only on demand; bandwidth limit 2M/s" in r.stdout
    for bad, says in (([], "say what to change"), (["--limit", "fast"], "'fast' is not valid")):
        r = cli(site.home, "site", "schedule", *bad)
        assert r.returncode != 0 and says in r.stdout + r.stderr
    shown = site.client().get("/site")
    assert shown["limit"] == 2 * MiB and shown["schedule"] is None

    v1 = hq.client().get("/templates/base/versions")[0]
    size1 = layer_path(hq, v1["top_layer"]).stat().st_size
    started = time.monotonic()
    events = list(site.client().stream_lines("POST", "/site/sync", json={"progress": True}))
    took = time.monotonic() - started
    r = events[-1]["result"]
    assert r["limit"] == 2 * MiB and r["versions_added"] == {"base": [1]}
    assert took >= (size1 - MiB) / (2 * MiB)  # at most a one-MiB burst beyond the rate
    # the streamed answer: start, the bytes received of those to fetch, then the result
    assert events[0] == {"event": "start", "action": "site sync"}
    assert events[-1]["event"] == "done"
    moved = [e for e in events[1:-1] if e["event"] == "progress"]
    assert len(moved) >= 2 and len(moved) == len(events) - 2
    assert all(e["total"] == size1 for e in moved)
    assert [e["done"] for e in moved] == sorted(e["done"] for e in moved)
    assert 0 < moved[0]["done"] < size1

    # a streamed refusal still ends with exit code 1 and the reason
    r = cli(hq.home, "site", "sync")
    assert r.returncode == 1 and "this server runs as hq" in r.stderr

    new_version(hq, qemu, MiB, os.urandom(MiB))
    r = site.client().post("/site/sync", {"limit": None})  # this sync: no limit
    assert r["limit"] is None and r["versions_added"] == {"base": [2]}

    # the schedule and the limit change one at a time
    assert cli(site.home, "site", "schedule", "daily 02:00").returncode == 0
    shown = site.client().get("/site")
    assert shown["limit"] == 2 * MiB and shown["schedule"] == "0 2 * * *"
    r = cli(site.home, "site", "schedule", "--limit", "off")
    assert r.returncode == 0 and "bandwidth limit none" in r.stdout
    shown = site.client().get("/site")
    assert shown["limit"] is None and shown["schedule"] == "0 2 * * *"
    r = cli(site.home, "site", "status")
    assert "bandwidth limit" in r.stdout and "none" in r.stdout
