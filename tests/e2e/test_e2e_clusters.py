"""Clusters and their update sync, end to end: a real server, the CLI as a subprocess, a real apt
repository on loopback (``.deb``s from dpkg-deb, InRelease clearsigned by a GnuPG key made here),
host roots whose packages the real dpkg installed, and a real proxy asking for a password."""

from __future__ import annotations

import hashlib
import json
import time

import pytest
from aptkit import UPDATED, World, build_deb, host_root, installed, material, proxy, world

from goldfleet.cli.client import ClientError

__all__ = ["material", "world"]  # the fixtures (tests/e2e/aptkit.py)

pytestmark = pytest.mark.slow


def test_cluster_channel_sync_and_updates(world: World) -> None:
    w = world
    # clusters: hosts of the driver, a coordinator among them
    assert "not a host of this server's driver" in w.refused(
        "cluster", "create", "pve", "--hosts", "h1,h9", "--coordinator", "h1"
    )
    assert "coordinator 'h4' is not one of its hosts" in w.refused(
        "cluster", "create", "pve", "--hosts", "h1,h2", "--coordinator", "h4"
    )
    c = w.ok_json(
        "cluster", "create", "pve", "--hosts", "h1,h2,h3", "--coordinator", "h1",
        "--memory-mib", "65536", "--vcpus", "32",
    )  # fmt: skip
    assert [h["name"] for h in c["hosts"]] == ["h1", "h2", "h3"]
    assert {h["state"] for h in c["hosts"]} == {"enabled"}
    assert c["hosts"][0]["memory_mib"] == 65536
    assert "already in cluster pve" in w.refused(
        "cluster", "create", "other", "--hosts", "h3,h4", "--coordinator", "h4"
    )
    assert "no update channel" in w.refused("cluster", "sync", "pve")

    # one channel at a time, with the rule in the message
    assert "channel early-access enabled" in w.channel("early-access")
    proc = w.cli(
        "cluster", "channel", "pve", "normal", "--url", w.url, "--suite", "bookworm",
        "--components", "main", "--key", str(w.key.public),
    )  # fmt: skip
    assert proc.returncode == 1
    assert "disable early-access before enabling normal" in " ".join(proc.stderr.split())
    assert w.client.get("/clusters/pve")["channel"]["kind"] == "early-access"
    w.ok("cluster", "channel", "pve", "--disable")
    assert w.client.get("/clusters/pve")["channel"] is None
    w.channel("normal")
    shown = w.client.get("/clusters/pve")["channel"]
    assert shown["fingerprint"] == w.key.fingerprint
    assert "keyring" not in shown

    # the sync: signed index verified, what the hosts lack downloaded and checked
    r = w.ok_json("cluster", "sync", "pve")
    assert r["hash"] == w.expected_hash()
    assert r["packages"] == len(UPDATED) and r["downloaded"] == len(UPDATED)
    expected_files = {
        w.new[p].name: hashlib.sha256(w.new[p].read_bytes()).hexdigest() for p in UPDATED
    }
    assert w.cache("h1") == expected_files  # exactly the updates, bytes as the repository's
    text = w.ok("cluster", "sync", "pve")  # again: the cache holds them, the hash is the same
    assert f"update hash: {r['hash']}" in text and "0 downloaded" in text

    # what each host has installed is dpkg's own record
    c = w.client.get("/clusters/pve")
    for h in c["hosts"]:
        assert h["installed_packages"] == len(installed(w.roots / h["name"]))
    assert c["last_update_sync"] is not None and c["last_sync_valid"]
    assert c["channel"]["hash"] == r["hash"]
    applied = {h["name"]: h["latest_synced_updates_applied"] for h in c["hosts"]}
    assert applied == {"h1": False, "h2": False, "h3": True}

    # /updates as XenServer's: hosts, updates, hash; guidance by category
    u = w.client.get("/clusters/pve/updates")
    assert set(u) >= {"hosts", "updates", "hash"} and u["hash"] == r["hash"]
    updates = {x["id"]: x for x in u["updates"]}
    assert set(updates) == {"libvirt", "linux-signed-amd64", "qemu", "livepatch-6.1.0-18-amd64"}
    assert {p["package"] for p in updates["libvirt"]["packages"]} == {
        "libvirt-daemon",
        "libvirt-clients",
    }
    assert updates["libvirt"]["guidance"]["mandatory"] == ["restart-toolstack"]
    assert updates["linux-signed-amd64"]["guidance"]["recommended"] == ["reboot-host"]
    assert updates["qemu"]["guidance"]["recommended"] == ["restart-device-model"]
    assert updates["livepatch-6.1.0-18-amd64"]["guidance"]["livepatch"] == ["apply-livepatch"]
    hosts = {h["host"]: h for h in u["hosts"]}
    assert {p["package"] for p in hosts["h1"]["packages"]} == set(UPDATED)
    # h1 booted the kernel the live patch fixes: no reboot recommended, the live patch instead
    assert hosts["h1"]["guidance"] == {
        "mandatory": ["restart-toolstack"],
        "recommended": ["restart-device-model"],
        "full": [],
        "livepatch": ["apply-livepatch"],
    }
    # h2 booted an older kernel: the live patch does not apply, the reboot stands
    assert hosts["h2"]["guidance"]["recommended"] == ["reboot-host"]
    assert hosts["h2"]["guidance"]["livepatch"] == []
    assert hosts["h3"]["packages"] == [] and hosts["h3"]["updates"] == []
    assert w.ok_json("cluster", "updates", "pve") == u
    table = w.ok("cluster", "updates", "pve")
    assert "libvirt-daemon 9.0.0-4→9.0.0-4+deb12u1" in table

    # the cluster's own guidance rules come first; bad ones change nothing; reset
    rules_file = w.tmp / "rules.json"
    rules_file.write_text(
        json.dumps([{"packages": "linux-image-*", "category": "full", "task": "reboot-host"}])
    )
    g = w.ok_json("cluster", "guidance-rules", "pve", "--rules", str(rules_file))
    assert g[0] == {
        "packages": "linux-image-*",
        "category": "full",
        "task": "reboot-host",
        "why": "this cluster's rule",
        "source": "cluster",
    }
    assert {x["source"] for x in g[1:]} == {"default"}
    ours = w.client.get("/clusters/pve/updates")
    assert {x["id"]: x for x in ours["updates"]}["linux-signed-amd64"]["guidance"]["full"] == [
        "reboot-host"
    ]
    assert {h["host"]: h for h in ours["hosts"]}["h2"]["guidance"]["recommended"] == []
    rules_file.write_text(
        json.dumps([{"packages": "x", "category": "soon", "task": "reboot-host"}])
    )
    w.refused("cluster", "guidance-rules", "pve", "--rules", str(rules_file))
    assert w.ok_json("cluster", "guidance-rules", "pve")[0]["source"] == "cluster"
    assert w.ok_json("cluster", "guidance-rules", "pve", "--reset")[0]["source"] == "default"
    assert w.client.get("/clusters/pve/updates") == u

    # host show: its update state in its cluster
    h1 = w.ok_json("host", "show", "h1")
    assert h1["cluster"] == "pve" and h1["state"]["coordinator"]
    assert h1["state"]["latest_synced_updates_applied"] is False
    assert h1["state"]["pending"] == {
        "mandatory": ["restart-toolstack"],
        "recommended": ["restart-device-model"],
        "livepatch": ["apply-livepatch"],
    }
    assert h1["state"]["last_software_update"] is None
    text = w.ok("host", "show", "h3")
    assert "latest_synced_updates_applied: yes" in text and "pending guidance: none" in text
    assert "in no cluster" in w.ok("host", "show", "h4")
    assert "not a host of this server's driver" in w.refused("host", "show", "h9")

    # the plan of a rolling update (a plan only), coordinator first, prechecks by name
    plan = w.ok_json("cluster", "update-plan", "pve", "--hash", r["hash"], "--level", "mandatory")
    assert plan["ready"] and [h["host"] for h in plan["hosts"]] == ["h1", "h2", "h3"]
    h1, h2, h3 = plan["hosts"]
    assert h1["coordinator"] and h1["tasks"] == ["restart-toolstack", "apply-livepatch"]
    assert h1["steps"] == [
        "disable",
        "apply-packages",
        "restart-toolstack",
        "apply-livepatch",
        "enable",
    ]
    assert h1["deferred"] == {"recommended": ["restart-device-model"]}
    assert h2["deferred"] == {"recommended": ["reboot-host"]}
    assert h3["steps"] == []
    plan = w.ok_json("cluster", "update-plan", "pve", "--hash", r["hash"], "--level", "full")
    assert "reboot-host" in plan["hosts"][1]["steps"] and plan["hosts"][1]["deferred"] == {}
    other = "sha256:" + "0" * 64
    proc = w.cli("cluster", "update-plan", "pve", "--hash", other)
    assert proc.returncode == 1 and "FAIL hash-is-latest-sync" in proc.stdout
    assert "checked when the update starts" in proc.stdout

    # a new coordinator: the last sync no longer counts until it syncs
    c = w.ok_json("cluster", "coordinator", "pve", "h2")
    assert c["coordinator"] == "h2" and not c["last_sync_valid"]
    assert any("not the coordinator h2" in x for x in c["warnings"])
    assert w.client.get("/clusters/pve/updates")["sync"]["valid"] is False
    plan = w.cli("cluster", "update-plan", "pve", "--hash", r["hash"], "--json")
    assert plan.returncode == 1
    failed = {p["name"] for p in json.loads(plan.stdout)["prechecks"] if not p["ok"]}
    assert failed == {"synced-by-coordinator"}
    r2 = w.ok_json("cluster", "sync", "pve")
    assert r2["coordinator"] == "h2" and r2["hash"] == r["hash"]
    assert w.cache("h2") == expected_files
    assert w.client.get("/clusters/pve")["last_sync_valid"]

    # the schedule
    c = w.ok_json("cluster", "sync-schedule", "pve", "weekly", "--day", "3", "--at", "04:30")
    assert c["sync_cron"] == "30 4 * * 3" and c["next_sync_at"] is not None
    assert "weekly on wednesday (day 3) at 04:30 UTC" in w.ok("cluster", "show", "pve")
    assert "--day 0-6" in w.refused("cluster", "sync-schedule", "pve", "weekly")
    c = w.ok_json("cluster", "sync-schedule", "pve", "off")
    assert c["sync_cron"] is None and c["next_sync_at"] is None


def _setup(w: World) -> dict:
    w.ok("cluster", "create", "pve", "--hosts", "h1,h2,h3", "--coordinator", "h1")
    w.channel("normal")
    return w.ok_json("cluster", "sync", "pve")


def test_a_repository_not_signed_by_the_channel_key_is_refused(world: World) -> None:
    w = world
    first = _setup(w)
    before = w.cache("h1")
    # a new package version appears, published unsigned, then signed by another key, then
    # with its signed text altered: each refused, the last good sync kept, nothing downloaded
    (w.tmp / "debs").mkdir()
    w.repo.add(
        build_deb(w.tmp / "debs", "libvirt-daemon", "9.0.0-4+deb12u2", extra="Source: libvirt\n")
    )
    w.repo.publish(signed=False)
    assert "it is not signed" in w.refused("cluster", "sync", "pve")
    w.repo.publish(sign_with=w.other)
    assert "signed by a key that is not the channel's" in w.refused("cluster", "sync", "pve")
    w.repo.publish()
    inrelease = w.repo.dists / "InRelease"
    inrelease.write_text(inrelease.read_text().replace("Suite: bookworm", "Suite: bookwarm"))
    assert "does not match its text" in w.refused("cluster", "sync", "pve")
    c = w.client.get("/clusters/pve")
    assert c["last_sync_hash"] == first["hash"] and "refused" in c["last_error"]
    assert w.cache("h1") == before
    # the Packages index must be the one the signed Release names
    w.repo.publish()
    packages = w.repo.dists / "main" / "binary-amd64" / "Packages"
    packages.write_bytes(packages.read_bytes() + b"\n")
    (w.repo.dists / "main" / "binary-amd64" / "Packages.gz").unlink()
    assert "differs from the signed Release" in w.refused("cluster", "sync", "pve")
    # published properly, it is taken
    w.repo.publish()
    events = list(w.client.stream_lines("POST", "/clusters/pve/sync", json={"progress": True}))
    assert events[0] == {"event": "start", "cluster": "pve", "total": 0}
    size = (
        (w.repo.root / "pool" / "main" / "libvirt-daemon_9.0.0-4+deb12u2_amd64.deb").stat().st_size
    )
    assert {"event": "progress", "done": 0, "total": size} in events[1:-1]
    assert events[-1]["event"] == "done"
    r = events[-1]["result"]
    assert r["hash"] != first["hash"] and r["downloaded"] == 1 and r["bytes_downloaded"] == size
    assert w.client.get("/clusters/pve")["last_error"] is None


def test_a_deb_whose_sha256_differs_is_not_kept(world: World) -> None:
    w = world
    w.ok("cluster", "create", "pve", "--hosts", "h1,h2,h3", "--coordinator", "h1")
    w.channel("normal")
    pool = w.repo.root / "pool" / "main" / w.new["qemu-system-x86"].name
    good = pool.read_bytes()
    pool.write_bytes(good[:-1] + bytes([good[-1] ^ 0xFF]))  # same size, other bytes
    message = w.refused("cluster", "sync", "pve")
    assert "sha256" in message and "differs from the signed index" in message
    assert w.new["qemu-system-x86"].name not in w.cache("h1")
    assert not list((w.home / "store" / "host-updates").rglob(".*.part"))
    c = w.client.get("/clusters/pve")
    assert c["last_sync_hash"] is None and c["last_update_sync"] is None
    pool.write_bytes(good)
    assert w.ok_json("cluster", "sync", "pve")["hash"] == w.expected_hash()


def test_sync_through_a_proxy_and_the_password_is_never_shown(world: World) -> None:
    w = world
    secret = "s3cret-Proxy-Pw-7f1e"
    pw = w.tmp / "proxy.pw"
    pw.write_text(secret + "\n")
    wrong = w.tmp / "wrong.pw"
    wrong.write_text("not-it\n")
    w.ok("cluster", "create", "pve", "--hosts", "h1,h2,h3", "--coordinator", "h1")
    w.channel("normal")
    outputs = []
    with proxy("fleet", secret) as px:
        outputs.append(
            w.ok(
                "cluster",
                "proxy",
                "pve",
                "--url",
                px.url,
                "--username",
                "fleet",
                "--password-file",
                str(wrong),
            )
        )
        message = w.refused("cluster", "sync", "pve")
        assert "407" in message and "password" in message
        assert px.refused and not px.requests
        outputs.append(
            w.ok(
                "cluster",
                "proxy",
                "pve",
                "--url",
                px.url,
                "--username",
                "fleet",
                "--password-file",
                str(pw),
            )
        )
        r = w.ok_json("cluster", "sync", "pve")
        assert r["hash"] == w.expected_hash()
        assert any(u.endswith("/InRelease") for u in px.requests)
        assert sum(u.endswith(".deb") for u in px.requests) == len(UPDATED)
    shown = w.ok_json("cluster", "show", "pve")
    assert shown["proxy"] == {"url": px.url, "username": "fleet", "password_set": True}
    outputs += [json.dumps(shown), w.ok("cluster", "show", "pve"), w.ok("cluster", "list")]
    outputs.append(json.dumps(w.client.get("/clusters")))
    outputs.append(json.dumps(w.server.rows("SELECT detail FROM audit")))  # type: ignore[attr-defined]
    w.server.stop()  # type: ignore[attr-defined]
    outputs += [p.read_text(errors="replace") for p in w.home.parent.glob("server-*.log")]
    assert all(secret not in text for text in outputs)
    w.server.start()  # type: ignore[attr-defined]
    assert w.ok_json("cluster", "proxy", "pve", "--disable")["proxy"] is None


def test_a_scheduled_sync_runs_when_due(world: World) -> None:
    w = world
    w.ok("cluster", "create", "pve", "--hosts", "h1,h2,h3", "--coordinator", "h1")
    w.channel("normal")
    w.ok("cluster", "sync-schedule", "pve", "daily", "--at", "03:15")
    # the schedule's time comes (the row's next time moved to the past, as the clock would)
    import sqlite3

    conn = sqlite3.connect(w.home / "goldfleet.db", timeout=30)
    conn.execute("UPDATE clusters SET next_sync_at = '2000-01-01 00:00:00' WHERE name = 'pve'")
    conn.commit()
    conn.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        c = w.client.get("/clusters/pve")
        if c["last_update_sync"] is not None:
            break
        time.sleep(0.2)
    assert c["last_sync_hash"] == w.expected_hash()
    assert c["next_sync_at"] > "2026-01-01" and c["next_sync_at"].endswith("03:15:00")
    actors = w.server.rows("SELECT actor FROM audit WHERE action = 'cluster.sync'")  # type: ignore[attr-defined]
    assert actors == [("schedule",)]


def test_bad_input_changes_nothing(world: World) -> None:
    w = world
    w.ok("cluster", "create", "pve", "--hosts", "h1,h2", "--coordinator", "h1")
    assert "not a time" in w.refused("cluster", "sync-schedule", "pve", "daily", "--at", "25:00")
    assert "not an OpenPGP public key" in w.refused(
        "cluster", "channel", "pve", "normal", "--url", w.url, "--suite", "bookworm",
        "--components", "main", "--key", str(w.old["hello"]),
    )  # fmt: skip
    assert "needs the key" in w.refused(
        "cluster", "channel", "pve", "normal", "--url", w.url, "--suite", "bookworm",
        "--components", "main",
    )  # fmt: skip
    assert "not valid" in w.refused(
        "cluster", "channel", "pve", "normal", "--url", "file:///etc", "--suite", "bookworm",
        "--components", "main", "--key", str(w.key.public),
    )  # fmt: skip
    assert "not in its URL" in w.refused(
        "cluster", "proxy", "pve", "--url", "http://u:p@127.0.0.1:1"
    )
    assert "does not exist" in w.refused("cluster", "show", "nope")
    c = w.client.get("/clusters/pve")
    assert c["channel"] is None and c["proxy"] is None and c["sync_cron"] is None
    with pytest.raises(ClientError) as info:
        w.client.post("/clusters/pve/channel", {"kind": "normal", "key": "@@@"})
    assert info.value.status == 422
    for kind in ("normal", "offline"):  # a key that is not even ASCII: 422 too, not a 500
        with pytest.raises(ClientError) as info:
            w.client.post("/clusters/pve/channel", {"kind": kind, "key": "clé"})
        assert info.value.status == 422 and "not base64" in info.value.message
    w.ok("cluster", "channel", "pve", "offline")
    assert "bundle upload pve" in w.refused("cluster", "sync", "pve")
    assert "has no key to verify a bundle" in w.refused(
        "cluster", "bundle", "upload", "pve", str(w.key.public)
    )


def test_an_unreadable_host_is_offline_and_the_coordinator_must_be_readable(world: World) -> None:
    w = world
    w.ok("cluster", "create", "pve", "--hosts", "h1,h2,h3,h4", "--coordinator", "h1")
    w.channel("normal")
    # a download a killed sync left half way is removed by the next sync of the cluster
    leftover = w.home / "store" / "host-updates" / "pve" / "h1" / ".x_1.0_amd64.deb.99.part"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half")
    r = w.ok_json("cluster", "sync", "pve")  # h4 has no root folder: it cannot be read
    assert r["offline_hosts"] == ["h4"] and r["hash"] == w.expected_hash()
    assert not leftover.exists()
    states = {h["name"]: h["state"] for h in w.client.get("/clusters/pve")["hosts"]}
    assert states == {"h1": "enabled", "h2": "enabled", "h3": "enabled", "h4": "offline"}
    assert w.client.get("/clusters/pve/updates")["sync"]["offline_hosts"] == ["h4"]
    plan = w.cli("cluster", "update-plan", "pve", "--hash", r["hash"])
    assert plan.returncode == 1 and "FAIL hosts-online: not online and enabled: h4" in plan.stdout
    # it comes back
    host_root(w.roots, "h4", [w.old["hello"]])
    assert w.ok_json("cluster", "sync", "pve")["offline_hosts"] == []
    h4 = w.client.get("/clusters/pve")["hosts"][3]
    assert h4["state"] == "enabled" and h4["latest_synced_updates_applied"] is True
    # a sync is the coordinator's: one that cannot be read refuses it, the last sync kept
    w.ok("cluster", "coordinator", "pve", "h4")
    (w.roots / "h4" / "var" / "lib" / "dpkg" / "status").unlink()
    assert "the coordinator h4 cannot be read" in w.refused("cluster", "sync", "pve")
    assert w.client.get("/clusters/pve")["last_sync_coordinator"] == "h1"
