"""Crash injection: a 50-clone recreate with users logged in on some clones, the server killed
with SIGKILL at 20 random moments and restarted each time.

The run is slowed a little (sim latency, batches of 5) so that the kills land inside it, and
the users log out in groups part-way, so the operation has work left across the kills. One
group never logs out: with ``--logoff wait`` and a deadline, their clones are deliberately
left on the old version (``skipped``). The final state is checked the way an admin would: the
operation ends ``done``; every linked clone is on the new version, or skipped and consistent on
the old one with its users still logged in; nothing half-made (no clone creating or
rebuilding, no ``*.new`` file, no orphan folder, no extra or missing VM); every data volume
byte-identical (sha256, inode, mtime); every volume passes ``qemu-img check``; system volumes
show the version their clone is on.

Set ``GOLDFLEET_CRASH_SEED`` to replay one run (the seed is printed).

Then kills at chosen instants rather than random ones: every commit boundary of every durable
multi-step action is a named crash point (goldfleet.crashpoints); a test per point kills a
server exactly there and checks the rule of docs/architecture.md ("Durable multi-step actions:
the rule").
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aptkit
import httpx
import pytest
from sitekit import cli as sitekit_cli
from sitekit import make_raw, new_version, running

from goldfleet import crashpoints
from goldfleet.cli.client import ClientError

pytestmark = pytest.mark.slow

MiB = 1 << 20
KILLS = 20
DEADLINE_S = 30  # clones still in use then are left on v1
LINKED = 50
VOLUME_FILES = ("data0.qcow2", "system.qcow2", "temp0.qcow2")


def _login(fleet, vm: str, user: str) -> None:
    fleet.client.post("/sim/sessions", {"vm": vm, "user": user})


def _logout(fleet, vm: str, user: str) -> None:
    fleet.client.delete(f"/sim/sessions/{vm}/{user}")


def test_kill9_twenty_times_during_a_recreate_with_users(fleet, template):
    seed = int(os.environ.get("GOLDFLEET_CRASH_SEED") or time.time_ns() % 10**9)
    print(f"crash-injection seed: {seed}")
    rng = random.Random(seed)

    # --- the fleet: 50 linked clones (20 running), one full clone, data in every one -------
    names = fleet.create(count=LINKED)
    fleet.create(name="solo", full=True)
    everyone = [*names, "solo"]
    running = names[::5] + names[1::5]  # 20 clones, spread over the numbering
    for name in running:
        fleet.client.post(f"/clones/{name}/start")

    def give_data(name: str) -> tuple[str, object]:
        data0 = fleet.volumes(name)["data0"]
        fleet.pattern(data0, 2 * MiB, 1 + everyone.index(name) % 250)
        fleet.write(data0, 9 * MiB, f"owned by {name}".encode())
        return name, fleet.state(data0)

    data_before = dict(fleet.parallel(give_data, everyone))

    # users on 18 of the running clones: 8 pairs of clones whose users log out part-way (after
    # kill 1, 3, 5 … 15), and 2 clones whose users never do
    in_use = rng.sample(running, 18)
    stubborn = in_use[16:]
    logout_after = {kill: in_use[2 * k : 2 * k + 2] for k, kill in enumerate(range(1, 16, 2))}
    users: dict[str, list[str]] = {}
    for i, vm in enumerate(in_use):
        users[vm] = [f"user{i}"] + ([f"second{i}"] if i % 3 == 0 else [])
        for user in users[vm]:
            _login(fleet, vm, user)
    logged_out: set[str] = set()

    # v2, then the slow server the recreate runs on
    fleet.update(byte=0x22)
    fleet.server.env.update(
        {
            "GOLDFLEET_SIM_PLAN": json.dumps({"latency_ms": {"*": 10}}),
            "GOLDFLEET_BATCH_SIZE": "5",
        }
    )
    fleet.server.restart()
    started = time.monotonic()
    deadline = datetime.now(UTC) + timedelta(seconds=DEADLINE_S)
    op = fleet.client.post(
        "/clones/recreate",
        {
            "template": "base",
            "rollout": {"logoff": "wait", "deadline": deadline.strftime("%Y-%m-%dT%H:%M:%S")},
        },
    )
    op_id = op["id"]
    assert op["total"] == LINKED

    # --- 20 kills --------------------------------------------------------------------------
    under_way = []
    for kill in range(1, KILLS + 1):
        if kill > 1:
            fleet.server.start()
        for vm in logout_after.get(kill - 1, []):  # a group of users leaves
            for user in users[vm]:
                _logout(fleet, vm, user)
            logged_out.add(vm)
        time.sleep(rng.uniform(0, 0.3))
        fleet.server.kill9()
        ((n,),) = fleet.rows(
            "SELECT COUNT(*) FROM clones WHERE status IN ('creating', 'rebuilding')"
        )
        under_way.append(n)
    print(f"clones under way at each kill: {under_way}; {time.monotonic() - started:.1f} s")
    assert any(under_way), f"no kill landed inside the work (seed {seed})"

    fleet.server.start()
    op = _finished(fleet, op_id, timeout=60)

    # --- the operation ---------------------------------------------------------------------
    items = {
        name: (state, reason)
        for name, state, reason in fleet.rows(
            "SELECT clone_name, state, reason FROM operation_items WHERE operation_id = ?",
            op_id,
        )
    }
    skipped = {n for n, (state, _) in items.items() if state == "skipped"}
    assert (op["status"], op["failed"], op["total"]) == ("done", 0, LINKED), (seed, op)
    assert op["done"] + op["skipped"] == LINKED and op["skipped"] == len(skipped)
    assert set(items) == set(names) and {s for s, _ in items.values()} <= {"done", "skipped"}
    assert set(stubborn) <= skipped <= set(users), (seed, skipped)  # only clones in use
    for name in skipped:
        assert items[name][1].startswith("deadline passed with users still logged on: ")

    # --- every clone: on v2, or deliberately left on v1, consistent ------------------------
    clones = {c["name"]: c for c in fleet.client.get("/clones")}
    assert set(clones) == set(everyone)  # none lost, none duplicated
    for name, c in clones.items():
        assert (c["status"], c["action"], c["error"]) == ("ready", None, None), (seed, c)
        left = name in skipped or name == "solo"
        assert c["version"] == (1 if left else 2), (seed, c)
        assert c["power"] == ("running" if name in running else "stopped"), (seed, c)
    vms = {v["name"]: v for v in fleet.client.get("/sim/vms")}
    assert set(vms) == set(everyone)
    for name in everyone:
        assert vms[name]["state"] == clones[name]["power"], (seed, vms[name])
        expected_users = sorted(users[name]) if name in skipped - logged_out else []
        assert sorted(vms[name]["users"]) == expected_users, (seed, vms[name])

    # --- nothing half-made, no orphan files ------------------------------------------------
    uids = fleet.clone_uids()
    assert fleet.work_files() == []
    assert fleet.clone_folders() == set(uids)
    for uid, name in uids.items():
        assert sorted(p.name for p in (fleet.clones_dir / uid).iterdir()) == list(VOLUME_FILES), (
            name
        )
    assert fleet.rows("SELECT COUNT(*) FROM clones WHERE status != 'ready'") == [(0,)]

    # --- data volumes byte-identical; every volume clean; system volumes as their version ---
    def verify(name: str) -> tuple[str, bool, bool, bool, list]:
        vols = fleet.volumes(name)
        text = f"owned by {name}".encode()
        data_same = fleet.state(vols["data0"]) == data_before[name]
        data_reads = fleet.read(vols["data0"], 9 * MiB, len(text)) == text
        system_byte = 0x11 if clones[name]["version"] == 1 else 0x22
        system_ok = fleet.shows(vols["system"], MiB, system_byte) and fleet.shows(
            vols["temp0"], 2 * MiB, 0x00
        )
        unclean = [
            (p.name, r) for p in vols.values() if (r := fleet.check_image(p))["exit_code"] != 0
        ]
        return name, data_same, data_reads, system_ok, unclean

    for name, data_same, data_reads, system_ok, unclean in fleet.parallel(verify, everyone):
        assert data_same and data_reads, (seed, name)
        assert system_ok, (seed, name)
        assert unclean == [], (seed, name, unclean)
    assert fleet.client.post("/store/verify")["problems"] == []


def _finished(fleet, op_id: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        op = fleet.client.get(f"/operations/{op_id}")
        if op["status"] in ("done", "failed", "cancelled"):
            return op
        assert time.monotonic() < deadline, f"operation {op_id} did not finish: {op}"
        time.sleep(0.1)


def test_recovery_removes_a_prototype_half_made_by_a_killed_server(fleet, template):
    fleet.create(count=1)
    cache = fleet.store / "cache"
    assert cache.is_dir()
    fleet.server.kill9()
    # what a kill inside VolumeStore._prototype leaves: the work file, never renamed
    leftover = cache / ".blank-67108864.qcow2.0badf00d"
    leftover.write_bytes(b"QFI\xfb" + b"\0" * 508)
    fleet.server.start()
    fleet.create(count=1)
    assert [p.name for p in Path(cache).iterdir() if p.name.startswith(".")] == []


# --- crash points: kill -9 at each commit boundary of each durable multi-step action ------
#
# goldfleet.crashpoints names every boundary (docs/architecture.md, "Durable multi-step
# actions: the rule"); a server started with GOLDFLEET_CRASH_AT=NAME kills itself with SIGKILL
# when it reaches NAME. Each test below arms one point, does the action, lets the server die
# there, starts it again (recovery runs as after any kill -9) and checks the rule: the action
# either left the previous state, which a retry completes, or it is carried out in full.

ROLLOUT = {  # every field of a rollout policy, none at its default
    "logoff": "notify-force",
    "grace": "1s",
    "message": "patched tonight",
    "max_parallel": 2,
    "per_host": 1,
    "canary": 1,
    "canary_auto": True,
    "max_failures": "1",
}
TESTED: dict[str, list[str]] = {}  # crash point -> the tests below that kill a server there


def kills_at(*points: str):
    """Declare the crash points a test kills a server at (checked against the full list)."""

    def mark(test):
        for point in points:
            TESTED.setdefault(point, []).append(test.__name__)
        return test

    return mark


def crash_at(server, point: str, action=None, timeout: float = 60) -> None:
    """Arm ``server`` to die at ``point``, do ``action`` (its answer dies with the server), wait
    for the kill, start the server again."""
    assert point in crashpoints.POINTS, point
    server.env[crashpoints.ENV] = point
    server.restart()
    try:
        if action is not None:
            with contextlib.suppress(ClientError, httpx.HTTPError):
                action()
        try:
            code = server.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the server did not reach crash point {point}") from None
        assert code == -signal.SIGKILL, f"the server ended with {code}, not at {point}"
    finally:
        server.env.pop(crashpoints.ENV)
    server.start()


def wait_until(check, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.1)
    return result


def _ops(fleet, kind: str) -> list[dict]:
    return [op for op in fleet.client.get("/operations") if op["kind"] == kind]


def _layer_files(fleet) -> set[str]:
    return {p.name for p in fleet.layers_dir.glob("sha256-*.qcow2")}


def _catalog_layers(fleet) -> set[str]:
    return {fleet.layer_file(d).name for (d,) in fleet.rows("SELECT digest FROM layers")}


def _store_clean(fleet) -> None:
    """No leftover of the interrupted step: no work file, no layer file the catalog does not
    know, ``store verify`` finds nothing."""
    assert fleet.work_files() == []
    assert _layer_files(fleet) == _catalog_layers(fleet)
    assert fleet.client.post("/store/verify")["problems"] == []


EXIT_POINTS = [p for p in crashpoints.POINTS if p.startswith("maintenance-exit.")]
BEFORE_SEALED = ("maintenance-exit.requested", "maintenance-exit.hashed")


@kills_at(*EXIT_POINTS)
@pytest.mark.parametrize("point", EXIT_POINTS)
def test_maintenance_exit_with_recreate_killed_at_each_boundary(fleet, template, point):
    """The issue's case: after a kill at any instant of ``maintenance exit --recreate``, either
    the template is still in maintenance with its overlay (and the exit can be run again), or
    the new version exists and so does its rollout, with the whole policy asked for."""
    names = fleet.create(count=4)
    fleet.create(name="solo", full=True)
    entered = fleet.client.post("/templates/base/maintenance/enter")
    overlay = Path(entered["overlay_path"])
    fleet.pattern(overlay, MiB, 0x22)
    at = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S")
    body = {"recreate": "linked", "rollout": {**ROLLOUT, "at": at}}

    crash_at(
        fleet.server,
        point,
        lambda: fleet.client.post("/templates/base/maintenance/exit", body),
    )

    t = fleet.client.get("/templates/base")
    if point in BEFORE_SEALED:
        # the previous state: in maintenance, the overlay and its bytes kept, no v2, no rollout
        assert (t["status"], t["overlay_path"], t["error"]) == ("maintenance", str(overlay), None)
        assert fleet.shows(overlay, MiB, 0x22)
        assert [v["number"] for v in fleet.versions()] == [1]
        assert _ops(fleet, "clone.recreate") == []
        # … which the same exit, run again, completes
        again = fleet.client.post("/templates/base/maintenance/exit", body)
        assert again["version"] == 2 and again["operation"] is not None
    else:
        assert (t["status"], t["overlay_path"], t["error"]) == ("ready", None, None)
        assert not overlay.exists()
    assert [v["number"] for v in fleet.versions()] == [1, 2]
    assert fleet.client.get("/templates/base")["current_version"] == 2

    (op,) = _ops(fleet, "clone.recreate")
    assert (op["target"], op["total"], op["actor"]) == ("base", 4, "admin")
    assert op["start_at"].startswith(at)
    policy = op["policy"]
    assert (policy["logoff"], policy["grace_seconds"], policy["message"]) == (
        "notify-force",
        1.0,
        "patched tonight",
    )
    assert (policy["max_parallel"], policy["per_host"]) == (2, 1)
    assert (policy["canary"], policy["canary_auto"]) == (1, True)
    assert (policy["stop_on_error"], policy["max_failures"]) == (False, 1)

    assert fleet.wait(op["id"])["status"] == "done"
    for name in names:
        assert fleet.show(name)["version"] == 2
        assert fleet.shows(fleet.volumes(name)["system"], MiB, 0x22)
    assert fleet.show("solo")["version"] == 1  # --recreate linked leaves the full clone
    _store_clean(fleet)


@kills_at("maintenance-enter.requested")
def test_maintenance_enter_killed_before_the_overlay_is_made(fleet, template):
    crash_at(
        fleet.server,
        "maintenance-enter.requested",
        lambda: fleet.client.post("/templates/base/maintenance/enter"),
    )
    t = fleet.client.get("/templates/base")
    assert (t["status"], t["overlay_path"]) == ("ready", None)
    _store_clean(fleet)
    assert fleet.client.post("/templates/base/maintenance/enter")["status"] == "maintenance"


@kills_at("maintenance-enter.overlay-made")
def test_maintenance_enter_killed_after_the_overlay_is_made(fleet, template):
    crash_at(
        fleet.server,
        "maintenance-enter.overlay-made",
        lambda: fleet.client.post("/templates/base/maintenance/enter"),
    )
    t = fleet.client.get("/templates/base")
    assert t["status"] == "maintenance" and Path(t["overlay_path"]).is_file()
    fleet.pattern(Path(t["overlay_path"]), MiB, 0x33)
    assert fleet.client.post("/templates/base/maintenance/exit", {})["version"] == 2
    _store_clean(fleet)


@kills_at("maintenance-abort.committed")
def test_maintenance_abort_killed_before_the_overlay_is_removed(fleet, template):
    fleet.client.post("/templates/base/maintenance/enter")
    crash_at(
        fleet.server,
        "maintenance-abort.committed",
        lambda: fleet.client.post("/templates/base/maintenance/abort"),
    )
    t = fleet.client.get("/templates/base")
    assert (t["status"], t["overlay_path"]) == ("ready", None)
    assert [v["number"] for v in fleet.versions()] == [1]
    _store_clean(fleet)  # the overlay file went with the recovery


@kills_at("template-import.sealed")
def test_template_import_killed_before_its_rows(fleet, template):
    before = _layer_files(fleet)
    crash_at(
        fleet.server,
        "template-import.sealed",
        lambda: fleet.import_template("other", {0: b"\x44" * 4096}),
    )
    assert [t["name"] for t in fleet.client.get("/templates")] == ["base"]
    assert _layer_files(fleet) == before
    _store_clean(fleet)
    fleet.import_template("other", {0: b"\x44" * 4096})
    assert [v["number"] for v in fleet.versions("other")] == [1]


@kills_at("template-from-clone.sealed")
def test_template_from_clone_killed_before_its_rows(fleet, template):
    (name,) = fleet.create(count=1)
    fleet.pattern(fleet.volumes(name)["system"], 2 * MiB, 0x55)
    body = {"name": "derived", "clone": name}
    crash_at(
        fleet.server,
        "template-from-clone.sealed",
        lambda: fleet.client.post("/templates/from-clone", body),
    )
    assert [t["name"] for t in fleet.client.get("/templates")] == ["base"]
    assert fleet.show(name)["status"] == "ready"
    _store_clean(fleet)
    assert fleet.client.post("/templates/from-clone", body)["name"] == "derived"


@kills_at("template-flatten.flattened")
def test_template_flatten_killed_before_its_version(fleet, template):
    fleet.update(byte=0x22)
    crash_at(
        fleet.server,
        "template-flatten.flattened",
        lambda: fleet.client.post("/templates/base/flatten"),
    )
    assert [v["number"] for v in fleet.versions()] == [1, 2]
    _store_clean(fleet)
    assert fleet.client.post("/templates/base/flatten")["number"] == 3


@kills_at("version-delete.committed")
def test_version_delete_killed_before_its_files_go(fleet, template):
    fleet.update(byte=0x22)
    v2_top = fleet.versions()[1]["top_layer"]
    fleet.client.post("/templates/base/flatten")  # v3: one base layer, v2's top only in v2
    crash_at(
        fleet.server,
        "version-delete.committed",
        lambda: fleet.client.delete("/templates/base/versions/2"),
    )
    assert [v["number"] for v in fleet.versions()] == [1, 3]
    assert not fleet.layer_file(v2_top).exists()
    _store_clean(fleet)


@kills_at("template-delete.committed")
def test_template_delete_killed_before_its_files_go(fleet, template):
    fleet.import_template("other", {0: b"\x44" * 4096})
    (top,) = [v["top_layer"] for v in fleet.versions("other")]
    crash_at(
        fleet.server, "template-delete.committed", lambda: fleet.client.delete("/templates/other")
    )
    assert [t["name"] for t in fleet.client.get("/templates")] == ["base"]
    assert not fleet.layer_file(top).exists()
    _store_clean(fleet)


@kills_at("clone-create.committed")
def test_clone_create_killed_before_the_runner_is_woken(fleet, template):
    crash_at(
        fleet.server,
        "clone-create.committed",
        lambda: fleet.client.post("/clones", {"template": "base", "count": 3}),
    )
    (op,) = _ops(fleet, "clone.create")
    assert (op["total"], fleet.wait(op["id"])["status"]) == (3, "done")
    clones = fleet.client.get("/clones")
    assert len(clones) == 3 and {c["status"] for c in clones} == {"ready"}
    _store_clean(fleet)


def _pool_ready(fleet, pool: str, total: int) -> dict:
    def ready():
        p = fleet.client.get(f"/pools/{pool}")
        return p if p["total"] == total and p["ready"] + p["assigned"] == total else None

    return wait_until(ready, f"pool {pool} has {total} clones ready")


@kills_at("pool-create.committed")
def test_pool_create_killed_before_provisioning(fleet, template):
    body = {"name": "desks", "template": "base", "min": 2, "max": 4, "buffer": 2}
    crash_at(fleet.server, "pool-create.committed", lambda: fleet.client.post("/pools", body))
    _pool_ready(fleet, "desks", 2)  # the pool row is the request: the next pass provisions it
    assert len(_ops(fleet, "clone.create")) == 1
    _store_clean(fleet)


@kills_at("pool-assign.committed")
def test_pool_assign_killed_before_the_clone_starts(fleet, template):
    fleet.client.post("/pools", {"name": "desks", "template": "base", "max": 2, "buffer": 1})
    _pool_ready(fleet, "desks", 1)
    crash_at(
        fleet.server,
        "pool-assign.committed",
        lambda: fleet.client.post("/pools/desks/assign", {"user": "alice"}),
    )
    ((assigned,),) = fleet.rows("SELECT name FROM clones WHERE assigned_user = 'alice'")
    again = fleet.client.post("/pools/desks/assign", {"user": "alice"})
    assert again["clone"]["name"] == assigned
    assert (again["clone"]["status"], again["clone"]["power"]) == ("ready", "running")
    _pool_ready(fleet, "desks", 2)  # and the buffer is refilled


@kills_at("pool-window.committed")
def test_pool_window_recreate_killed_before_the_runner_is_woken(fleet, template):
    body = {
        "name": "desks",
        "template": "base",
        "max": 2,
        "buffer": 2,
        "window_cron": "* * * * *",  # always open
        "window_minutes": 5,
    }
    fleet.client.post("/pools", body)
    _pool_ready(fleet, "desks", 2)
    # the next pass after v2 starts the window's operation: the server dies right after
    crash_at(fleet.server, "pool-window.committed", lambda: fleet.update(byte=0x22))
    (op,) = _ops(fleet, "pool.recreate")
    assert (op["total"], fleet.wait(op["id"])["status"]) == (2, "done")
    pool = _pool_ready(fleet, "desks", 2)
    assert pool["behind"] == 0
    for c in fleet.client.get("/clones"):
        assert fleet.shows(fleet.volumes(c["name"])["system"], MiB, 0x22)
    _store_clean(fleet)


def _window_now(fleet, **policy: str) -> None:
    """Give pool desks a window open from now on (every minute, for 5: one long window)."""
    body = {"cron": "* * * * *", "minutes": 5, **policy}
    fleet.client.request("PUT", "/pools/desks/window", json=body)


@kills_at("pool-window.told")
def test_pool_window_killed_after_telling_users_tells_them_again(fleet, template):
    fleet.client.post("/pools", {"name": "desks", "template": "base", "max": 1, "buffer": 1})
    _pool_ready(fleet, "desks", 1)
    clone = fleet.client.post("/pools/desks/assign", {"user": "alice"})["clone"]["name"]
    fleet.client.post("/sim/sessions", {"vm": clone, "user": "alice"})
    text = "Maintenance now"
    crash_at(
        fleet.server,
        "pool-window.told",
        lambda: _window_now(fleet, logoff="notify-force", grace="1s", message=text),
    )
    # the message was out, its time not stored: sent again (never skipped), then the grace
    # counts from the second one, alice is logged off and the clone taken back
    wait_until(lambda: fleet.client.get("/pools/desks")["assigned"] == 0, "the take-back")
    told = [m["text"] for m in fleet.client.get("/sim/messages", params={"vm": clone})]
    assert told == [text, text]
    assert fleet.client.get("/sim/sessions") == []
    assert fleet.show(clone)["power"] == "stopped"


@kills_at("pool-window.stopped")
def test_pool_window_killed_after_stopping_a_clone_unassigns_it_after(fleet, template):
    fleet.client.post("/pools", {"name": "desks", "template": "base", "max": 1, "buffer": 1})
    _pool_ready(fleet, "desks", 1)
    clone = fleet.client.post("/pools/desks/assign", {"user": "alice"})["clone"]["name"]
    crash_at(fleet.server, "pool-window.stopped", lambda: _window_now(fleet))
    # stopped and still assigned after the crash; the next pass finds nobody on it
    wait_until(lambda: fleet.client.get("/pools/desks")["assigned"] == 0, "the unassignment")
    assert (fleet.show(clone)["power"], fleet.show(clone)["status"]) == ("stopped", "ready")
    taken = [e for e in fleet.client.get("/audit") if e["action"] == "pool.unassign"]
    assert [(e["detail"]["user"], e["detail"]["clone"]) for e in taken] == [("alice", clone)]


# --- distribution: two real servers ------------------------------------------------------


@pytest.fixture
def hq_and_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """HQ and a site with the local-patches right, joined, base v1 synced to the site."""
    monkeypatch.setenv("GOLDFLEET_HOME", str(tmp_path / "unused"))
    with running(tmp_path, {"hq": "hq", "site": "site"}) as (hq, site):
        image = make_raw(tmp_path / "base.raw", fill={0: os.urandom(2 * MiB)})
        hq.client().upload(
            "/templates/import", image, {"name": "base", "format": "raw", "temp": [], "data": []}
        )
        token = hq.client().post("/sites", {"name": "branch", "local_patches": True})["token"]
        hq.client().post("/sites/branch/templates", {"template": "base"})
        site.client().post("/site/join", {"url": hq.url, "token": token})
        assert site.client().post("/site/sync", {})["versions_added"] == {"base": [1]}
        yield hq, site


def _server_store_clean(srv) -> None:
    layers = srv.home / "store" / "layers"
    files = {p.name for p in layers.glob("sha256-*.qcow2")}
    known = {
        f"sha256-{d.removeprefix('sha256:')}.qcow2"
        for (d,) in srv.rows("SELECT digest FROM layers")
    }
    assert files == known
    assert list(layers.glob(".*")) == []
    assert srv.client().post("/store/verify")["problems"] == []


def _current(srv) -> int | None:
    return srv.client().get("/templates/base")["current_version"]


@kills_at("bundle-import.sealed")
def test_bundle_import_killed_between_its_layers_and_its_versions(tmp_path, monkeypatch, qemu):
    monkeypatch.setenv("GOLDFLEET_HOME", str(tmp_path / "unused"))
    with running(tmp_path, {"a": "hq", "b": "hq"}) as (a, b):
        image = make_raw(tmp_path / "base.raw", fill={0: os.urandom(2 * MiB)})
        a.client().upload("/templates/import", image, {"name": "base", "format": "raw"})
        new_version(a, qemu, MiB, os.urandom(64 * 1024))
        bundle = tmp_path / "base.bundle"
        assert sitekit_cli(a.home, "bundle", "export", "base", "-o", str(bundle)).returncode == 0
        key = json.loads(sitekit_cli(a.home, "keys", "show", "--json").stdout)["own"]
        b.client().post("/keys/trust", {"name": "a", "public_key": key["public_key"]})

        crash_at(
            b, "bundle-import.sealed", lambda: b.client().upload("/bundles/import", bundle, {})
        )
        assert b.client().get("/templates") == []  # the previous state …
        _server_store_clean(b)
        done = b.client().upload("/bundles/import", bundle, {})  # … which a retry completes
        assert done["versions_added"] == [1, 2] and _current(b) == 2
        _server_store_clean(b)


@kills_at("bundle-import.sealed")
def test_site_publish_killed_at_hq_between_its_layers_and_its_version(hq_and_site, qemu):
    """A site's publish is a bundle import at HQ: HQ killed inside it keeps its previous
    state, and the site's next publish completes it."""
    hq, site = hq_and_site
    new_version(site, qemu, MiB, os.urandom(256 * 1024))
    crash_at(hq, "bundle-import.sealed", lambda: site.client().post("/templates/base/publish", {}))
    assert [v["number"] for v in hq.client().get("/templates/base/versions")] == [1]
    _server_store_clean(hq)
    sent = site.client().post("/templates/base/publish", {})
    assert (sent["version"], sent["already_at_hq"]) == (2, False)
    v2 = hq.client().get("/templates/base/versions")[-1]
    assert v2["status"] == "pending-validation" and _current(hq) == 1  # until HQ validates it
    _server_store_clean(hq)


@kills_at("site-sync.added")
def test_site_sync_killed_between_a_version_and_its_activation(hq_and_site, qemu):
    """The sync's claim is the stored request: the site finishes the sync by itself after
    the kill, and HQ's version becomes current there without anyone asking again."""
    hq, site = hq_and_site
    new_version(hq, qemu, MiB, os.urandom(256 * 1024))
    crash_at(site, "site-sync.added", lambda: site.client().post("/site/sync", {}))
    wait_until(lambda: _current(site) == 2, "the site made HQ's v2 current")

    def ended() -> bool:
        status = site.client().get("/site")
        return status["syncing_since"] is None and status["last_error"] is None

    wait_until(ended, "the site's sync ended without an error")
    _server_store_clean(site)


AGENT_POINTS = [p for p in crashpoints.POINTS if p.startswith("agent-update.")]


@kills_at(*AGENT_POINTS)
@pytest.mark.parametrize("point", AGENT_POINTS)
def test_agent_update_killed_at_each_step(fleet, template, point):
    """kill -9 at each step of an agent update: the next server carries the stored request
    on from where it stopped; the template ends on a version holding the packaged tool, with
    its linked clones recreated and its running full clone updated, nothing done twice."""
    import test_e2e_guests as guests_e2e

    linked = fleet.create(count=2)
    full = fleet.create(count=1, full=True)
    for vm in (*linked, *full):
        fleet.client.post(f"/clones/{vm}/start")
    crash_at(fleet.server, point, lambda: fleet.client.post("/agents/update", {}))
    guests_e2e.check_updated(fleet, "base", linked, full)
    assert len(fleet.client.get("/templates/base/versions")) == 2  # one exit, not two
    assert len(_ops(fleet, "clone.recreate")) == 1
    _store_clean(fleet)


material = aptkit.material  # the cluster tests' repository, hosts and server (fixtures)
world = aptkit.world


@kills_at("cluster-sync.claimed", "cluster-sync.downloaded")
@pytest.mark.parametrize("point", ["cluster-sync.claimed", "cluster-sync.downloaded"])
def test_cluster_sync_killed_before_its_result(world, point):
    """A cluster's sync commits its result once, at its end: killed before it, the last sync
    stands (here: none), the claim of the dead server is taken over, and the next sync
    completes, reusing the verified .debs the killed one left in the cache."""
    w = world
    w.ok("cluster", "create", "pve", "--hosts", "h1,h2,h3", "--coordinator", "h1")
    w.channel("normal")
    crash_at(w.server, point, lambda: w.client.post("/clusters/pve/sync"))
    c = w.client.get("/clusters/pve")
    assert c["last_sync_hash"] is None and c["last_update_sync"] is None and not c["syncing"]
    assert {h["installed_packages"] for h in c["hosts"]} == {0}  # nothing read was stored
    held = w.cache("h1")
    assert len(held) == (len(aptkit.UPDATED) if point == "cluster-sync.downloaded" else 0)
    r = w.ok_json("cluster", "sync", "pve")
    assert r["hash"] == w.expected_hash()
    assert r["downloaded"] == len(aptkit.UPDATED) - len(held)
    assert not list((w.home / "store" / "host-updates").rglob(".*.part"))


ROLLING_POINTS = [  # in the order one update at level full reaches them
    "host-update.ha-disabled",
    "host-update.step",  # the coordinator disabled
    "host-update.applied",  # the coordinator's packages
    "host-update.migrated",  # h2 evacuated for its reboot
    "host-update.rebooted",
    "host-update.ha-enabled",
]


@kills_at(*ROLLING_POINTS)
def test_rolling_update_killed_at_every_step(world):
    """One rolling update (level full: h2 is evacuated and rebooted), its server killed at each
    of its crash points in turn, started again each time: it resumes at the step it was at, and
    after each kill no VM is stopped or lost; at its end every host is enabled, each package was
    upgraded exactly once (dpkg's own log in each host root), every VM is back on its host,
    running, and HA/balancing are on again."""
    import test_e2e_host_rollouts as rolling

    w = world
    w.server.env["GOLDFLEET_SIM_PLAN"] = json.dumps({"reboot_seconds": 0.3})
    w.server.env["GOLDFLEET_LEASE_SECONDS"] = "2"
    w.server.restart()
    h = rolling.setup_cluster(w, clones=6)
    before = rolling.vms(w)
    body = {"hash": h, "level": "full"}
    for i, point in enumerate(ROLLING_POINTS):
        # armed before it starts again: an unarmed server in between would run past the point
        w.server.env[crashpoints.ENV] = point
        if i == 0:
            w.server.restart()
            with contextlib.suppress(ClientError, httpx.HTTPError):
                w.client.post("/clusters/pve/update", body)
        else:
            w.server.start()
        try:
            code = w.server.proc.wait(60)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the server did not reach crash point {point}") from None
        assert code == -signal.SIGKILL, (point, code)
        assert {s for _, s in rolling.vms(w).values()} == {"running"}, point
        assert set(rolling.vms(w)) == set(before), point
    w.server.env.pop(crashpoints.ENV)
    w.server.start()
    r = rolling.wait_status(w, "done", "paused", "failed")
    assert r["status"] == "done", r
    assert rolling.vms(w) == before
    hosts = {x["name"]: x for x in w.client.get("/clusters/pve")["hosts"]}
    assert {x["state"] for x in hosts.values()} == {"enabled"}
    for host in ("h1", "h2"):
        applied = {x["host"]: x for x in r["hosts"]}[host]["applied"]
        assert applied and rolling.upgrades(w.roots / host) == dict.fromkeys(applied, 1)
        assert hosts[host]["last_update_hash"] == h
    assert rolling.sim_hosts(w)["h2"][0] >= 1  # rebooted (again after the kill: harmless)
    ha = (w.tmp / "ha.log").read_text().split()
    assert ha[-1] == "on" and set(ha) == {"off", "on"}


def test_every_crash_point_has_a_test():
    """Every point goldfleet.crashpoints lists (and the source marks) has a test above."""
    assert sorted(TESTED) == sorted(crashpoints.POINTS)
