"""The durable rolling update of a cluster, end to end (docs/host-updates.md): a real server, the
CLI as a subprocess, the real apt repository of aptkit on loopback, host roots whose packages
the real ``dpkg --root`` installs and upgrades (its own log counts every upgrade), sim hosts
with capacity, live migration and reboots, and HA/balancing commands that are real processes
writing to a file."""

from __future__ import annotations

import json
import secrets
import shutil
import tarfile
import time
from pathlib import Path

import pytest
from aptkit import NEW, UPDATED, World, host_root, installed, material, world
from sitekit import make_raw

__all__ = ["material", "world"]  # the fixtures (tests/e2e/aptkit.py)

pytestmark = pytest.mark.slow


def upgrades(root: Path) -> dict[str, int]:
    """How many times dpkg upgraded each package in this host root (dpkg's own log)."""
    log = root / "var" / "log" / "dpkg.log"
    counts: dict[str, int] = {}
    if log.exists():
        for line in log.read_text().splitlines():
            parts = line.split()
            if len(parts) > 3 and parts[2] == "upgrade":
                name = parts[3].split(":")[0]
                counts[name] = counts.get(name, 0) + 1
    return counts


def vms(w: World) -> dict[str, tuple[str, str]]:
    """The sim's VMs: name → (host, state)."""
    return {n: (h, s) for n, h, s in w.server.rows("SELECT name, host, state FROM sim_domains")}


def sim_hosts(w: World) -> dict[str, tuple[int, int]]:
    rows = w.server.rows("SELECT name, reboots, toolstack_restarts FROM sim_hosts")
    return {n: (r, t) for n, r, t in rows}


def setup_cluster(w: World, *, clones: int = 8, ha: bool = True) -> str:
    """Cluster pve of h1..h4 (4 VMs of 2 GiB fit on a host), synced, ``clones`` VMs running
    spread over the hosts; returns the update hash."""
    (w.roots / "h4" / "var" / "lib" / "dpkg").mkdir(parents=True, exist_ok=True)
    host_root(w.roots, "h4", [w.old["hello"]])
    w.ok(
        "cluster", "create", "pve", "--hosts", "h1,h2,h3,h4", "--coordinator", "h1",
        "--memory-mib", "8192", "--vcpus", "64",
    )  # fmt: skip
    w.channel("normal")
    h = w.ok_json("cluster", "sync", "pve")["hash"]
    image = make_raw(w.tmp / f"image-{secrets.token_hex(4)}.raw", {0: b"base"})
    w.client.upload(
        "/templates/import", image, {"name": "base", "format": "raw", "temp": [], "data": []}
    )
    r = w.client.post("/clones", {"template": "base", "count": clones, "wait": True})
    for name in r["clones"]:
        w.client.post(f"/clones/{name}/start")
    if ha:
        w.ok(
            "cluster", "ha", "pve",
            "--disable-cmd", f"sh -c 'echo off >> {w.tmp / 'ha.log'}'",
            "--enable-cmd", f"sh -c 'echo on >> {w.tmp / 'ha.log'}'",
        )  # fmt: skip
    return h


def wait_status(w: World, *statuses: str, timeout: float = 60, unlike: str = "") -> dict:
    """The update once its status is one of ``statuses`` (with a reason without ``unlike``)."""
    deadline = time.monotonic() + timeout
    while True:
        r = w.client.get("/clusters/pve/update")
        if r["status"] in statuses and not (unlike and unlike in (r["reason"] or "")):
            return r
        assert time.monotonic() < deadline, r
        time.sleep(0.1)


def test_rolling_update_then_pending_guidance(world: World) -> None:
    w = world
    w.server.env["GOLDFLEET_SIM_PLAN"] = json.dumps({"reboot_seconds": 0.5})
    w.server.restart()
    h = setup_cluster(w, ha=False)
    before = vms(w)
    assert {s for _, s in before.values()} == {"running"}

    # prechecks, each by name: a wrong hash; no HA commands and not said to be off
    refused = w.refused("cluster", "update", "pve", "--hash", "sha256:" + "0" * 64, "--level",
                        "mandatory")  # fmt: skip
    assert "hash-is-latest-sync" in refused and "ha-and-balancing-disabled" in refused
    assert "hosts-online" not in refused
    w.ok(
        "cluster", "ha", "pve",
        "--disable-cmd", f"sh -c 'echo off >> {w.tmp / 'ha.log'}'",
        "--enable-cmd", f"sh -c 'echo on >> {w.tmp / 'ha.log'}'",
    )  # fmt: skip
    assert "--max-hosts 9 is not valid" in w.refused(
        "cluster", "update", "pve", "--hash", h, "--level", "mandatory", "--max-hosts", "9"
    )
    assert not w.server.rows("SELECT id FROM cluster_updates")  # refusals changed nothing

    # the update at level mandatory: packages and mandatory tasks; the rest left pending
    # two hosts at once (the others hold every VM): h2 starts alongside the coordinator
    r = w.ok_json(
        "cluster", "update", "pve", "--hash", h, "--level", "mandatory", "--max-hosts", "2",
        "--wait",
    )  # fmt: skip
    assert r["status"] == "done" and r["ha"] == "enabled", r
    hosts = {x["host"]: x for x in r["hosts"]}
    assert [x["host"] for x in r["hosts"]] == ["h1", "h2", "h3", "h4"]  # coordinator first
    assert hosts["h1"]["done_steps"] == [
        "disable", "apply-packages", "restart-toolstack", "apply-livepatch", "enable",
    ]  # fmt: skip
    assert hosts["h2"]["done_steps"] == [
        "disable", "apply-packages", "restart-toolstack", "enable",
    ]  # fmt: skip
    assert hosts["h3"]["steps"] == [] and hosts["h3"]["state"] == "done"
    assert (w.tmp / "ha.log").read_text() == "off\non\n"
    for host in ("h1", "h2"):  # exactly the packages of the hash, each upgraded once
        got = installed(w.roots / host)
        lacked = hosts[host]["applied"]
        assert lacked and all(got[p] == NEW[p][0] == v for p, v in lacked.items())
        assert upgrades(w.roots / host) == dict.fromkeys(lacked, 1)
    assert sim_hosts(w) == {"h1": (0, 1), "h2": (0, 1)}  # toolstacks restarted, no reboot
    log = Path("var/log/dpkg.log")  # the coordinator's packages went in first
    assert (w.roots / "h1" / log).stat().st_mtime_ns < (w.roots / "h2" / log).stat().st_mtime_ns
    assert vms(w) == before  # nothing moved at this level
    h1 = w.ok_json("host", "show", "h1")["state"]
    assert h1["last_update_hash"] == h and h1["last_software_update"]
    assert h1["latest_synced_updates_applied"] is True
    assert h1["pending"] == {}  # its VM task (device model) is pending on its VMs
    h2 = w.ok_json("host", "show", "h2")["state"]
    assert h2["pending"] == {"recommended": ["reboot-host"]}
    pend = w.ok_json("cluster", "pending", "pve")["hosts"]
    assert pend["h2"]["host"] == {"recommended": ["reboot-host"]}
    on_h1 = sorted(n for n, (host, _) in before.items() if host == "h1")
    assert sorted(pend["h1"]["vms"]) == on_h1
    assert {json.dumps(g) for g in pend["h1"]["vms"].values()} == {
        json.dumps({"recommended": ["restart-device-model"]})
    }

    # the pending guidance carried out: h1's device models restarted, h2 evacuated and rebooted
    r = w.ok_json("cluster", "pending", "pve", "--run", "--wait")
    assert r["status"] == "done", r
    hosts = {x["host"]: x for x in r["hosts"]}
    assert hosts["h2"]["done_steps"] == [
        "disable", "evacuate", "reboot-host", "enable", "migrate-back",
    ]  # fmt: skip
    on_h2 = sorted(n for n, (host, _) in before.items() if host == "h2")
    assert sorted(hosts["h2"]["evacuated"]) == on_h2
    assert all(dest not in (None, "h2") for dest in hosts["h2"]["evacuated"].values())
    assert sim_hosts(w)["h2"] == (1, 1)
    assert vms(w) == before  # every VM back on its host, running
    dm = dict(w.server.rows("SELECT name, json_extract(disks, '$.dm_restarts') FROM sim_domains"))
    assert {n for n, c in dm.items() if c} == set(on_h1)
    assert w.ok_json("cluster", "pending", "pve")["hosts"] == {}
    assert w.ok_json("host", "show", "h2")["state"]["pending"] == {}
    assert (w.tmp / "ha.log").read_text() == "off\non\noff\non\n"
    states = {x["name"]: x["state"] for x in w.client.get("/clusters/pve")["hosts"]}
    assert set(states.values()) == {"enabled"}


def test_faults_pause_with_the_reason_and_lose_nothing(world: World) -> None:
    """A host going offline mid-update (its root taken away by the HA command, the moment the
    update starts): the update pauses on it naming it, a sync is refused meanwhile, and it
    resumes by itself when the host answers again. A migration that fails: paused naming the VM,
    which stays running where it was; the host is not rebooted; resumed by hand. A reboot that
    never comes back: paused after the timeout, the host offline and disabled, its VMs running
    elsewhere; skipped by hand, the update finishes without it."""
    w = world
    plan = {"reboot_seconds": 0.3, "fail_nth": {"migrate": [1]}, "reboot_never_up": ["h2"]}
    w.server.env["GOLDFLEET_SIM_PLAN"] = json.dumps(plan)
    w.server.env["GOLDFLEET_HOST_REBOOT_TIMEOUT"] = "1"
    w.server.restart()
    h = setup_cluster(w, clones=6, ha=False)
    away = w.roots / "h1.away"
    w.ok(
        "cluster", "ha", "pve",
        "--disable-cmd", f"mv {w.roots / 'h1'} {away}",
        "--enable-cmd", f"sh -c 'echo on >> {w.tmp / 'ha.log'}'",
    )  # fmt: skip
    before = vms(w)
    proc = w.cli("cluster", "update", "pve", "--hash", h, "--level", "full", "--wait")
    assert proc.returncode == 1, proc.stderr
    r = w.client.get("/clusters/pve/update")
    assert (
        r["status"] == "paused" and "host h1 is unreachable at step apply-packages" in r["reason"]
    ), r
    assert "update-resume pve --skip h1" in r["reason"]
    assert {x["name"]: x["state"] for x in w.client.get("/clusters/pve")["hosts"]}["h1"] == (
        "offline"
    )
    assert "rolling update of cluster pve is not finished" in w.refused("cluster", "sync", "pve")
    assert vms(w) == before
    away.rename(w.roots / "h1")  # the host is back: the update resumes by itself
    r = wait_status(w, "paused", "done", "failed", unlike="host h1")
    # h2's evacuation: the first live migration fails; the VM stays, h2 is not rebooted
    assert r["status"] == "paused" and "host h2, step evacuate" in r["reason"], r
    assert "failed on call 1" in r["reason"]
    assert "h2" not in sim_hosts(w)  # never rebooted
    assert {s for _, s in vms(w).values()} == {"running"}
    h2 = {x["host"]: x for x in r["hosts"]}["h2"]
    assert h2["done_steps"] == ["disable"]
    failed_vm = next(vm for vm, (host, _) in vms(w).items() if host == "h2")
    assert failed_vm in h2["evacuated"]
    # resumed by hand: evacuated, rebooted, and never back
    r = w.ok_json("cluster", "update-resume", "pve")
    r = wait_status(w, "paused", "done", "failed", unlike="step evacuate")
    assert r["status"] == "paused" and "did not come back within 1 s" in r["reason"], r
    on_h2 = [vm for vm, (host, _) in before.items() if host == "h2"]
    now = vms(w)
    assert all(now[vm][0] != "h2" and now[vm][1] == "running" for vm in on_h2)
    states = {x["name"]: x["state"] for x in w.client.get("/clusters/pve")["hosts"]}
    assert states["h2"] == "offline"
    # told to skip it: the others are updated, h2 left offline, its VMs running elsewhere
    r = w.ok_json("cluster", "update-resume", "pve", "--skip", "h2", "--wait")
    assert r["status"] == "done", r
    assert {x["host"]: x["state"] for x in r["hosts"]}["h2"] == "skipped"
    states = {x["name"]: x["state"] for x in w.client.get("/clusters/pve")["hosts"]}
    assert states == {"h1": "enabled", "h2": "offline", "h3": "enabled", "h4": "enabled"}
    now = vms(w)
    assert set(now) == set(before) and {s for _, s in now.values()} == {"running"}
    assert (w.tmp / "ha.log").read_text() == "on\n"
    assert upgrades(w.roots / "h1") == dict.fromkeys(
        {x["host"]: x for x in r["hosts"]}["h1"]["applied"], 1
    )


def test_offline_bundle_is_verified_like_a_sync(world: World) -> None:
    """The offline channel: a bundle (a tar of the signed repository) gives the same hash and
    the same .debs in the coordinator's cache as a sync of that repository; a bundle whose
    Packages was altered after signing, or signed by another key, is refused and keeps
    nothing."""
    w = world
    w.ok("cluster", "create", "pve", "--hosts", "h1,h2,h3", "--coordinator", "h1")
    w.ok("cluster", "channel", "pve", "offline", "--key", str(w.key.public))
    assert "bundle upload pve" in w.refused("cluster", "sync", "pve")

    def tar(root: Path, name: str) -> Path:
        out = w.tmp / name
        with tarfile.open(out, "w") as t:
            for sub in ("dists", "pool"):
                t.add(root / sub, arcname=sub)
        return out

    good = tar(w.repo.root, "good.tar")
    bad_root = w.tmp / "bad"
    shutil.copytree(w.repo.root, bad_root)
    packages = next(bad_root.rglob("Packages"))
    packages.write_text(packages.read_text().replace("Version: 6.1.90-1", "Version: 6.1.99-1"))
    bad = tar(bad_root, "bad.tar")
    assert "Packages" in w.refused("cluster", "bundle", "upload", "pve", str(bad))
    assert w.cache("h1") == {} and w.client.get("/clusters/pve")["last_sync_hash"] is None
    w.repo.publish(sign_with=w.other)
    other = tar(w.repo.root, "other.tar")
    assert "InRelease" in w.refused("cluster", "bundle", "upload", "pve", str(other))
    r = w.ok_json("cluster", "bundle", "upload", "pve", str(good))
    assert r["hash"] == w.expected_hash()
    assert set(w.cache("h1")) == {w.new[p].name for p in UPDATED}
    assert w.client.get("/clusters/pve")["channel"]["hash"] == r["hash"]
    assert "not a tar file" in w.refused("cluster", "bundle", "upload", "pve", str(w.key.public))
