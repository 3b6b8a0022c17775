"""Rollout policies through a real server over HTTP, with scripted users on the sim driver.

Users log into running clones (``POST /sim/sessions``); a new version v2 is made; a recreate
runs under a policy. What is checked is what an admin sees: the operation's counts, status,
waiting clones and reasons; each clone's version, status, power and error; the sessions and
messages of the simulated world; bytes read back through qemu.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from goldfleet.cli.client import ClientError

MiB = 1 << 20
FINISHED = ("done", "failed", "cancelled")
SETTLED = (*FINISHED, "paused")


# --- helpers ------------------------------------------------------------------------------


def until(check: Callable[[], Any], what: str, timeout: float = 30, every: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy; that value is returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


def op_of(fleet, op_id: int) -> dict:
    return fleet.client.get(f"/operations/{op_id}")


def settle(fleet, op_id: int, states: tuple[str, ...] = FINISHED, timeout: float = 60) -> dict:
    """The operation once its status is one of ``states``."""

    def check() -> dict | None:
        op = op_of(fleet, op_id)
        return op if op["status"] in states else None

    return until(check, f"operation {op_id} to be {'/'.join(states)}", timeout)


def recreate(fleet, **rollout: Any) -> dict:
    """Recreate every linked clone of ``base`` under ``rollout``; the operation, at once."""
    return fleet.client.post("/clones/recreate", {"template": "base", "rollout": rollout or None})


def login(fleet, vm: str, user: str) -> None:
    fleet.client.post("/sim/sessions", {"vm": vm, "user": user})


def logout(fleet, vm: str, user: str) -> None:
    fleet.client.delete(f"/sim/sessions/{vm}/{user}")


def users_on(fleet, vm: str) -> list[str]:
    return [s["user"] for s in fleet.client.get("/sim/sessions", params={"vm": vm})]


def messages_to(fleet, vm: str) -> list[str]:
    return [m["text"] for m in fleet.client.get("/sim/messages", params={"vm": vm})]


def versions(fleet) -> dict[str, int]:
    return {c["name"]: c["version"] for c in fleet.client.get("/clones")}


def items(fleet, op_id: int) -> list[tuple]:
    """(clone, state, reason, started_at, finished_at, notified_at) of every item, in order."""
    return fleet.rows(
        "SELECT clone_name, state, reason, started_at, finished_at, notified_at"
        " FROM operation_items WHERE operation_id = ? ORDER BY id",
        op_id,
    )


def at(text: str | None) -> datetime:
    return datetime.fromisoformat(text)  # type: ignore[arg-type]


def utc_in(seconds: float) -> str:
    """An ISO date-time (naive, UTC) ``seconds`` from now, as an admin would type it."""
    return (datetime.now(UTC) + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S")


def assert_untouched(fleet, name: str, *, power: str | None = None) -> None:
    """Still on v1, consistent: ready, no error, its system volume showing v1's bytes."""
    c = fleet.show(name)
    assert (c["version"], c["status"], c["error"], c["action"]) == (1, "ready", None, None), c
    assert fleet.shows(fleet.volumes(name)["system"], MiB, 0x11), name
    if power is not None:
        assert c["power"] == power, c


def assert_moved(fleet, name: str, *, power: str | None = None) -> None:
    """On v2, ready, its system volume showing v2's bytes."""
    c = fleet.show(name)
    assert (c["version"], c["status"], c["error"], c["action"]) == (2, "ready", None, None), c
    assert fleet.shows(fleet.volumes(name)["system"], MiB, 0x22), name
    if power is not None:
        assert c["power"] == power, c


@pytest.fixture
def desks(fleet, template) -> Callable[..., list[str]]:
    """``desks(n, start=True, env=None)``: n clones of ``base`` on v1 (started unless told),
    then v2 made current without recreating them; the server restarted with ``env`` if given
    (a sim plan applies from then on, so the clones themselves were made without faults)."""

    def make(n: int, *, start: bool = True, env: dict[str, str] | None = None) -> list[str]:
        names = fleet.create(count=n)
        for name in names if start else ():
            assert fleet.client.post(f"/clones/{name}/start")["power"] == "running"
        fleet.update(byte=0x22)
        if env:
            fleet.server.env.update(env)
            fleet.server.restart()
        assert set(versions(fleet).values()) == {1}
        return names

    return make


def plan(**fields: Any) -> dict[str, str]:
    return {"GOLDFLEET_SIM_PLAN": json.dumps(fields)}


# --- logged-in users ----------------------------------------------------------------------


def test_wait_never_touches_a_clone_in_use_and_proceeds_after_logout(fleet, desks):
    busy, *free = desks(3)
    login(fleet, busy, "alice")
    op = recreate(fleet, logoff="wait")
    assert op["policy"]["logoff"] == "wait"

    op = until(
        lambda: (o := op_of(fleet, op["id"]))["done"] == 2 and o["waiting"] and o,
        "the free clones to be done while alice's waits",
    )
    assert op["status"] == "running"
    assert (op["queued"], op["running"]) == (1, 0)
    assert op["waiting"] == [{"clone": busy, "reason": "waiting for users to log off: alice"}]
    for name in free:
        assert_moved(fleet, name, power="running")
    time.sleep(1.0)  # several runner passes: the clone in use is still not touched
    assert op_of(fleet, op["id"])["done"] == 2
    assert_untouched(fleet, busy, power="running")
    assert users_on(fleet, busy) == ["alice"]
    assert messages_to(fleet, busy) == []  # wait never messages anyone

    proc = fleet.cli("op", "show", str(op["id"]))
    assert proc.returncode == 0, proc.stderr
    assert busy in proc.stdout and "alice" in proc.stdout

    logout(fleet, busy, "alice")
    op = settle(fleet, op["id"])
    assert (op["status"], op["done"], op["failed"], op["skipped"]) == ("done", 3, 0, 0)
    assert op["waiting"] == [] and op["error"] is None
    assert_moved(fleet, busy, power="running")  # rebuilt and started again


def test_wait_with_a_deadline_skips_a_clone_still_in_use(fleet, desks):
    busy, *free = desks(3)
    login(fleet, busy, "alice")
    op = recreate(fleet, logoff="wait", deadline=utc_in(3))
    waiting = until(lambda: op_of(fleet, op["id"])["waiting"], "alice's clone to wait")
    assert waiting == [{"clone": busy, "reason": "waiting for users to log off: alice"}]

    op = settle(fleet, op["id"])
    assert (op["status"], op["done"], op["failed"], op["skipped"]) == ("done", 2, 0, 1)
    assert op["error"] == "1 left on their version (skipped)"
    states = {name: (state, reason) for name, state, reason, *_ in items(fleet, op["id"])}
    assert states[busy] == ("skipped", "deadline passed with users still logged on: alice")
    assert_untouched(fleet, busy, power="running")
    assert users_on(fleet, busy) == ["alice"]  # never thrown out
    for name in free:
        assert_moved(fleet, name)


def test_notify_force_messages_waits_the_grace_then_logs_off(fleet, desks):
    busy, free = desks(2)
    login(fleet, busy, "alice")
    login(fleet, busy, "bob")
    text = "Desktop update in 2 seconds: save your work"
    op = recreate(fleet, logoff="notify-force", grace="2s", message=text)
    assert op["policy"]["grace_seconds"] == 2.0 and op["policy"]["message"] == text

    assert until(lambda: messages_to(fleet, busy), "the message to alice and bob") == [text]
    assert op_of(fleet, op["id"])["waiting"][0]["clone"] == busy
    # the first reason names the users being told; the next pass, when the logoff is due
    waiting = until(
        lambda: [w for w in op_of(fleet, op["id"])["waiting"] if "logoff at" in w["reason"]],
        "the logoff time to be shown",
    )
    assert [w["clone"] for w in waiting] == [busy]
    assert waiting[0]["reason"].startswith("users notified: alice, bob; logoff at ")
    assert users_on(fleet, busy) == ["alice", "bob"]  # not yet: the grace period runs
    assert fleet.show(busy)["version"] == 1

    op = settle(fleet, op["id"])
    assert (op["status"], op["done"], op["failed"]) == ("done", 2, 0)
    assert users_on(fleet, busy) == []  # logged off
    assert messages_to(fleet, busy) == [text]  # told once
    assert messages_to(fleet, free) == []  # nobody was on it
    assert_moved(fleet, busy, power="running")
    assert_moved(fleet, free, power="running")
    ((_, state, reason, started, _, notified),) = [
        row for row in items(fleet, op["id"]) if row[0] == busy
    ]
    assert (state, reason) == ("done", None)
    assert at(started) - at(notified) >= timedelta(seconds=2)  # the grace was waited


def test_force_logs_off_at_once_without_a_message(fleet, desks):
    busy, free = desks(2)
    login(fleet, busy, "alice")
    login(fleet, busy, "bob")
    op = settle(fleet, recreate(fleet, logoff="force")["id"], timeout=15)
    assert (op["status"], op["done"], op["failed"]) == ("done", 2, 0)
    assert users_on(fleet, busy) == []
    assert messages_to(fleet, busy) == []
    assert_moved(fleet, busy, power="running")
    assert_moved(fleet, free, power="running")
    assert fleet.shows(fleet.volumes(busy)["temp0"], 0, 0x00)


# --- parallelism and canaries -------------------------------------------------------------


def test_max_parallel_1_rebuilds_one_clone_at_a_time(fleet, desks):
    names = desks(4, start=False, env=plan(latency_ms={"define": 300}))
    op = recreate(fleet, max_parallel=1)
    seen = []
    while (o := op_of(fleet, op["id"]))["status"] not in FINISHED:
        seen.append(o["running"])
        assert o["running"] <= 1 and len(o["current"]) <= 1, o
        time.sleep(0.03)
    assert (o["status"], o["done"]) == ("done", 4)
    assert 1 in seen  # the work was seen under way
    rows = items(fleet, op["id"])
    spans = sorted((at(started), at(finished)) for _, _, _, started, finished, _ in rows)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start, spans  # no two clones were rebuilt at the same time
    for name in names:
        assert_moved(fleet, name, power="stopped")


def test_per_host_limit_rebuilds_one_clone_per_host_at_a_time(fleet, desks):
    desks(6, start=False, env=plan(latency_ms={"define": 300}))
    hosts = dict(fleet.rows("SELECT name, host FROM clones"))
    assert set(hosts.values()) == {"sim-host-1", "sim-host-2"}  # the sim spreads them
    op = recreate(fleet, per_host=1)
    assert op["policy"]["per_host"] == 1
    peak = 0
    while (o := op_of(fleet, op["id"]))["status"] not in FINISHED:
        on = [hosts[name] for name in o["current"]]
        assert len(on) == len(set(on)), o  # never two on one host
        peak = max(peak, len(on))
        time.sleep(0.03)
    assert (o["status"], o["done"]) == ("done", 6)
    assert peak == 2  # both hosts worked at once: the limit is per host, not global
    spans: dict[str, list] = {}
    for name, _, _, started, finished, _ in items(fleet, op["id"]):
        spans.setdefault(hosts[name], []).append((at(started), at(finished)))
    for host_spans in spans.values():
        for (_, end), (start, _) in itertools.pairwise(sorted(host_spans)):
            assert end <= start, host_spans


def test_canary_pauses_after_k_clones_until_resumed(fleet, desks):
    names = desks(5, start=False)
    op = recreate(fleet, canary=2)
    op = settle(fleet, op["id"], SETTLED)
    assert op["status"] == "paused", op
    assert op["paused_reason"] == (
        f"canary of 2 clones done; check them, then: goldfleet op resume {op['id']}"
    )
    assert (op["done"], op["queued"], op["running"]) == (2, 3, 0)
    moved = [n for n, v in versions(fleet).items() if v == 2]
    assert moved == names[:2]
    time.sleep(1.0)  # it stays paused: nothing more starts
    assert op_of(fleet, op["id"])["done"] == 2
    for name in names[2:]:
        assert_untouched(fleet, name)

    resumed = fleet.cli_json("op", "resume", str(op["id"]))
    assert resumed["status"] == "running" and resumed["paused_reason"] is None
    op = settle(fleet, op["id"])
    assert (op["status"], op["done"]) == ("done", 5)
    for name in names:
        assert_moved(fleet, name)


def test_canary_auto_goes_on_by_itself(fleet, desks):
    names = desks(4, start=False)
    op = settle(fleet, recreate(fleet, canary=2, canary_auto=True)["id"], SETTLED)
    assert (op["status"], op["done"], op["paused_reason"]) == ("done", 4, None)
    for name in names:
        assert_moved(fleet, name)


def test_canary_auto_does_not_go_on_after_a_failed_canary(fleet, desks):
    names = desks(4, start=False, env=plan(fail_vms=["base-001"]))
    op = recreate(fleet, canary=2, canary_auto=True, max_failures="50%")
    op = settle(fleet, op["id"], SETTLED)
    assert fleet.show("base-001")["status"] == "failed"
    for name in names[2:]:  # the canary did not all succeed: the rest is not started
        assert_untouched(fleet, name)


# --- driver failures and hangs ------------------------------------------------------------


def test_a_driver_failure_fails_that_clone_and_stop_on_error_skips_the_rest(fleet, desks):
    bad, *rest = desks(4, start=False, env=plan(fail_vms=["base-001"]))
    op = settle(fleet, recreate(fleet, max_parallel=1)["id"])
    assert (op["status"], op["done"], op["failed"], op["skipped"]) == ("failed", 0, 1, 3)
    assert op["error"] == (
        "1 failed (see: goldfleet clone list); 3 left on their version (skipped)"
    )
    c = fleet.show(bad)
    assert (c["status"], c["version"], c["action"]) == ("failed", 1, "recreate")
    assert c["error"] == (
        "recreate failed: sim: define of VM base-001 failed (injected by the sim plan 'fail_vms')"
    )
    reasons = {n: (s, r) for n, s, r, *_ in items(fleet, op["id"])}
    assert reasons[bad] == ("failed", c["error"])
    for name in rest:
        assert reasons[name] == ("skipped", "not started: the failure policy stopped the operation")
        assert_untouched(fleet, name)
        vols = fleet.volumes(name)
        assert all(fleet.check_image(p)["exit_code"] == 0 for p in vols.values())


def test_max_failures_percent_continues_past_a_failure(fleet, desks):
    bad, *rest = desks(4, start=False, env=plan(fail_vms=["base-001"]))
    op = settle(fleet, recreate(fleet, max_parallel=1, max_failures="50%")["id"])
    assert op["policy"]["max_failures_pct"] == 50.0 and op["policy"]["stop_on_error"] is False
    # a failed clone makes the operation failed (a retry completes it); the rest went on
    assert (op["status"], op["done"], op["failed"], op["skipped"]) == ("failed", 3, 1, 0)
    assert fleet.show(bad)["status"] == "failed"
    for name in rest:
        assert_moved(fleet, name)


def test_max_failures_count_stops_once_exceeded(fleet, desks):
    desks(4, start=False, env=plan(fail_vms=["base-001", "base-002"]))
    op = settle(fleet, recreate(fleet, max_parallel=1, max_failures="1")["id"])
    assert (op["status"], op["done"], op["failed"], op["skipped"]) == ("failed", 0, 2, 2)
    assert_untouched(fleet, "base-003")
    assert_untouched(fleet, "base-004")


def test_a_hung_driver_call_fails_only_that_clone(fleet, desks):
    env = {
        **plan(hang={"define": ["base-002"]}, hang_seconds=60),
        "GOLDFLEET_DRIVER_TIMEOUT": "2",
    }
    names = desks(4, start=False, env=env)
    started = time.monotonic()
    op = settle(fleet, recreate(fleet, max_failures="1")["id"], timeout=30)
    assert time.monotonic() - started < 20
    assert (op["status"], op["done"], op["failed"]) == ("failed", 3, 1)
    c = fleet.show("base-002")
    assert c["status"] == "failed"
    assert c["error"] == "recreate failed: the sim driver did not answer define within 2 s"
    for name in names:
        if name != "base-002":
            assert_moved(fleet, name)


def test_a_driver_failure_on_a_running_clone_fails_only_that_clone(fleet, desks):
    names = desks(3, env=plan(fail_vms=["base-001"]))
    op = settle(fleet, recreate(fleet, max_failures="1")["id"], timeout=15)
    assert (op["done"], op["failed"]) == (2, 1)
    assert fleet.show("base-001")["status"] == "failed"
    for name in names[1:]:
        assert_moved(fleet, name)


def test_one_broken_operation_does_not_stall_the_others(fleet, desks):
    busy, _ = desks(2)
    login(fleet, busy, "alice")
    try:
        broken = recreate(fleet, logoff="notify-force", grace="4000000d")
    except ClientError as exc:  # refusing the grace up front is a fine answer too
        assert exc.status == 422
        broken = None
    r = fleet.client.post("/clones", {"template": "base", "count": 2})
    assert settle(fleet, r["operation"]["id"], timeout=8)["status"] == "done"
    if broken is not None:
        assert op_of(fleet, broken["id"])["waiting"], "the broken operation shows no progress"


# --- pause, resume, cancel ----------------------------------------------------------------


def test_pause_lets_in_flight_clones_finish_and_starts_nothing_new(fleet, desks):
    names = desks(6, start=False, env=plan(latency_ms={"define": 500}))
    op = recreate(fleet, max_parallel=2)
    until(lambda: op_of(fleet, op["id"])["running"] > 0, "a clone under way")
    paused = fleet.client.post(f"/operations/{op['id']}/pause")
    assert paused["status"] == "paused" and paused["paused_reason"] == "paused by admin"
    in_flight = set(paused["current"])
    assert in_flight, paused

    op = until(
        lambda: (o := op_of(fleet, op["id"]))["running"] == 0 and o, "in-flight clones to finish"
    )
    assert op["status"] == "paused"
    assert op["done"] == paused["done"] + len(in_flight)
    time.sleep(1.5)  # paused: nothing more starts
    again = op_of(fleet, op["id"])
    assert (again["status"], again["done"], again["running"]) == ("paused", op["done"], 0)
    assert again["queued"] == 6 - op["done"] > 0
    now = versions(fleet)
    assert in_flight <= {n for n, v in now.items() if v == 2}
    for name in names:
        (assert_moved if now[name] == 2 else assert_untouched)(fleet, name)

    fleet.client.post(f"/operations/{op['id']}/resume")
    op = settle(fleet, op["id"])
    assert (op["status"], op["done"]) == ("done", 6)


def test_cancel_leaves_unstarted_clones_on_their_old_version(fleet, desks):
    names = desks(6, start=False, env=plan(latency_ms={"define": 500}))
    op = recreate(fleet, max_parallel=2)
    until(lambda: op_of(fleet, op["id"])["running"] > 0, "a clone under way")
    cancelling = fleet.client.post(f"/operations/{op['id']}/cancel")
    assert cancelling["status"] in ("cancelling", "cancelled")
    op = settle(fleet, op["id"])
    assert op["status"] == "cancelled"
    assert op["done"] >= 1 and op["done"] + op["cancelled"] == 6 and op["failed"] == 0
    assert op["error"] == f"{op['cancelled']} cancelled before they started"
    now = versions(fleet)
    assert sum(v == 2 for v in now.values()) == op["done"]
    for name in names:
        (assert_moved if now[name] == 2 else assert_untouched)(fleet, name)
    assert fleet.work_files() == []
    # the fleet is consistent: the cancelled clones can be recreated by a new operation
    op = settle(fleet, recreate(fleet)["id"])
    assert (op["status"], op["done"]) == ("done", op["total"])
    assert set(versions(fleet).values()) == {2}


def test_cancel_of_a_bulk_create_leaves_no_clone_that_never_started(fleet, template):
    fleet.server.env.update(plan(latency_ms={"define": 400}))
    fleet.server.restart()
    r = fleet.client.post(
        "/clones", {"template": "base", "count": 6, "rollout": {"max_parallel": 1}}
    )
    op_id = r["operation"]["id"]
    until(lambda: op_of(fleet, op_id)["running"] > 0, "a clone under way")
    fleet.client.post(f"/operations/{op_id}/cancel")
    op = settle(fleet, op_id)
    assert op["status"] == "cancelled" and op["failed"] == 0
    assert op["done"] >= 1 and op["done"] + op["cancelled"] == 6
    clones = fleet.client.get("/clones")
    assert len(clones) == op["done"]
    assert {c["status"] for c in clones} == {"ready"}
    assert fleet.clone_folders() == set(fleet.clone_uids())  # no orphan folder
    assert {v["name"] for v in fleet.client.get("/sim/vms")} == {c["name"] for c in clones}
    assert fleet.work_files() == []


def test_cancel_of_a_scheduled_operation_touches_nothing(fleet, desks):
    names = desks(3, start=False)
    op = recreate(fleet, at=utc_in(3600))
    assert op["status"] == "scheduled"
    fleet.client.post(f"/operations/{op['id']}/cancel")
    op = settle(fleet, op["id"], timeout=10)
    assert (op["status"], op["done"], op["cancelled"]) == ("cancelled", 0, 3)
    for name in names:
        assert_untouched(fleet, name)


@pytest.mark.parametrize("verb", ["pause", "cancel"])
def test_pause_or_cancel_during_a_claim_starts_nothing(fleet, desks, verb):
    names = desks(3, env=plan(latency_ms={"sessions": 1500}))
    op = recreate(fleet, max_parallel=1)
    time.sleep(0.5)  # the runner is inside its first claim, asking for the sessions
    stopped = fleet.client.post(f"/operations/{op['id']}/{verb}")
    assert stopped["done"] == 0 and stopped["current"] == []
    time.sleep(3)
    op = op_of(fleet, op["id"])
    assert op["done"] == 0 and op["running"] == 0, op
    for name in names:
        assert_untouched(fleet, name)


# --- scheduled start ----------------------------------------------------------------------


def test_at_a_time_ahead_is_scheduled_then_runs(fleet, desks):
    names = desks(3, start=False)
    start_at = utc_in(6)  # seconds are cut: 5 to 6 s ahead, room for a loaded machine
    op = recreate(fleet, at=start_at)
    assert op["status"] == "scheduled"
    assert at(op["start_at"]) == datetime.fromisoformat(start_at)
    time.sleep(1.0)
    early = op_of(fleet, op["id"])
    assert (early["status"], early["done"], early["queued"]) == ("scheduled", 0, 3)
    for name in names:
        assert_untouched(fleet, name)
    proc = fleet.cli("op", "show", str(op["id"]))
    assert proc.returncode == 0 and "scheduled" in proc.stdout and "starts at" in proc.stdout

    op = settle(fleet, op["id"])
    assert (op["status"], op["done"]) == ("done", 3)
    for _, _, _, started, _, _ in items(fleet, op["id"]):
        assert at(started) >= datetime.fromisoformat(start_at)
    for name in names:
        assert_moved(fleet, name)


def test_pause_and_resume_of_a_scheduled_operation_keeps_its_start_time(fleet, desks):
    names = desks(2, start=False)
    op = recreate(fleet, at=utc_in(3600))
    assert fleet.client.post(f"/operations/{op['id']}/pause")["status"] == "paused"
    resumed = fleet.client.post(f"/operations/{op['id']}/resume")
    time.sleep(1.5)
    op = op_of(fleet, op["id"])
    assert (resumed["status"], op["status"], op["done"]) == ("scheduled", "scheduled", 0)
    for name in names:
        assert_untouched(fleet, name)


# --- refusals -----------------------------------------------------------------------------


REFUSED = [
    ({"max_parallel": 0}, "rollout.max_parallel: Input should be greater than or equal to 1"),
    ({"canary": 4}, "--canary 4 is larger than the 3 clones this operation touches"),
    ({"logoff": "later"}, "--logoff 'later' is not valid: use wait, notify-force or force"),
    ({"logoff": "force", "deadline": "23:00"}, "--deadline goes with --logoff wait"),
    ({"logoff": "notify-force", "grace": "-1s"}, "duration '-1s' is not valid: write e.g. 90s,"
     " 10m, 2h or 1d"),
    ({"stop_on_error": False}, "without --stop-on-error, give --max-failures N or N%"),
    ({"max_failures": "lots"}, "--max-failures 'lots' is not valid: a count like 3 or a share"
     " like 10%"),
    ({"max_failures": "150%"}, "--max-failures '150%' is not valid: a count like 3 or a share"
     " like 10%"),
    ({"grace": "soon"}, "duration 'soon' is not valid: write e.g. 90s, 10m, 2h or 1d"),
    ({"at": "someday"}, "--at 'someday' is not valid: write HH:MM or an ISO date-time like"
     " 2026-12-01T22:00"),
    ({"message": "x" * 1001}, "--message is longer than 1000 characters"),
]  # fmt: skip


def test_a_policy_that_cannot_be_met_is_refused_and_creates_nothing(fleet, desks):
    desks(3, start=False)
    before = fleet.client.get("/operations")
    for rollout, message in REFUSED:
        assert fleet.error(422, recreate, fleet, **rollout) == message, rollout
        assert fleet.error(422, fleet.client.post, "/clones/rebase", {
            "template": "base", "rollout": rollout
        }) == message, rollout  # fmt: skip
    assert fleet.client.get("/operations") == before
    assert set(versions(fleet).values()) == {1}
    # the same fleet takes a good policy at once: nothing was left half-made
    assert settle(fleet, recreate(fleet, max_parallel=3)["id"])["status"] == "done"


def test_a_per_host_limit_of_0_is_refused(fleet, desks):
    desks(2, start=False)
    msg = fleet.error(422, recreate, fleet, per_host=0)
    assert msg == "rollout.per_host: Input should be greater than or equal to 1"


def test_a_bulk_create_with_a_bad_policy_creates_no_clone(fleet, template):
    body = {"template": "base", "count": 3, "rollout": {"max_parallel": 0}}
    msg = fleet.error(422, fleet.client.post, "/clones", body)
    assert msg == "rollout.max_parallel: Input should be greater than or equal to 1"
    body = {"template": "base", "count": 3, "rollout": {"canary": 4}}
    fleet.error(422, fleet.client.post, "/clones", body)
    assert fleet.client.get("/clones") == []
    assert fleet.client.get("/operations") == []
    assert fleet.clone_folders() == set()


def test_maintenance_exit_with_a_bad_policy_changes_nothing(fleet, template):
    fleet.create(count=2)
    t = fleet.client.post("/templates/base/maintenance/enter")
    fleet.pattern(Path(t["overlay_path"]), MiB, 0x22)
    body = {"recreate": "linked", "rollout": {"max_parallel": 0}}
    msg = fleet.error(422, fleet.client.post, "/templates/base/maintenance/exit", body)
    assert msg == "rollout.max_parallel: Input should be greater than or equal to 1"
    t = fleet.client.get("/templates/base")
    assert (t["status"], t["current_version"]) == ("maintenance", 1)


def test_unknown_operation_is_404_and_a_finished_one_cannot_be_steered(fleet, desks):
    desks(2, start=False)
    for verb in ("pause", "resume", "cancel"):
        msg = fleet.error(404, fleet.client.post, f"/operations/999/{verb}")
        assert msg == "operation 999 does not exist; see: goldfleet op list"
    fleet.error(404, fleet.client.get, "/operations/999")

    op = settle(fleet, recreate(fleet)["id"])
    assert op["status"] == "done"
    i = op["id"]
    assert fleet.error(409, fleet.client.post, f"/operations/{i}/pause") == (
        f"operation {i} is done; only a running one can be paused"
    )
    assert fleet.error(409, fleet.client.post, f"/operations/{i}/resume") == (
        f"operation {i} is done, not paused"
    )
    assert fleet.error(409, fleet.client.post, f"/operations/{i}/cancel") == (
        f"operation {i} is already done"
    )
    assert op_of(fleet, i) == op  # nothing changed


def test_resume_of_a_running_operation_and_a_second_pause_are_409(fleet, desks):
    desks(3, start=False, env=plan(latency_ms={"define": 300}))
    op = recreate(fleet, max_parallel=1)
    i = op["id"]
    msg = fleet.error(409, fleet.client.post, f"/operations/{i}/resume")
    assert msg == f"operation {i} is running, not paused"
    fleet.client.post(f"/operations/{i}/pause")
    msg = fleet.error(409, fleet.client.post, f"/operations/{i}/pause")
    assert msg == f"operation {i} is paused; only a running one can be paused"
    fleet.client.post(f"/operations/{i}/cancel")  # a paused operation can be cancelled
    assert settle(fleet, i)["status"] == "cancelled"


# --- temp volumes on a shutdown the guest made --------------------------------------------


def test_a_guest_shutdown_empties_the_temp_volume(fleet, template):
    fleet.server.env["GOLDFLEET_RECONCILE_SECONDS"] = "0.5"
    fleet.server.restart()
    (name,) = fleet.create(count=1)
    fleet.client.post(f"/clones/{name}/start")
    vols = fleet.volumes(name)
    fleet.pattern(vols["temp0"], MiB, 0x5A)
    fleet.pattern(vols["data0"], MiB, 0xA5)
    assert fleet.shows(vols["temp0"], MiB, 0x5A)
    data_before = fleet.state(vols["data0"])
    login(fleet, name, "alice")

    down = fleet.client.post(f"/sim/vms/{name}/guest-shutdown")
    assert (down["state"], down["users"]) == ("stopped", [])
    until(lambda: fleet.show(name)["power"] == "stopped", "goldfleet to notice", timeout=10)
    c = fleet.show(name)
    assert (c["status"], c["version"]) == ("ready", 1)
    assert fleet.shows(vols["temp0"], MiB, 0x00)  # emptied
    assert fleet.check_image(vols["temp0"])["exit_code"] == 0
    assert fleet.state(vols["data0"]) == data_before  # data untouched
    assert fleet.shows(vols["data0"], MiB, 0xA5)
    assert fleet.shows(vols["system"], MiB, 0x11)
    assert "clone.shutdown-reported" in [a["action"] for a in fleet.client.get("/audit")]


# --- the CLI on a finished operation ------------------------------------------------------


def test_cli_op_show_json_and_watch_of_a_finished_operation(fleet, desks):
    desks(3, start=False)
    op = settle(fleet, recreate(fleet)["id"])
    i = str(op["id"])

    assert fleet.cli_json("op", "show", i) == op_of(fleet, op["id"])
    listed = fleet.cli_json("op", "list")
    assert [o["id"] for o in listed][:1] == [op["id"]]
    assert listed[0]["status"] == "done"

    proc = fleet.cli("op", "show", i)
    assert proc.returncode == 0, proc.stderr
    assert "queued 0, running 0, done 3, failed 0, skipped 0, cancelled 0" in proc.stdout

    watched = fleet.cli_json("op", "watch", i)
    assert watched == {"operation": op_of(fleet, op["id"])}
    proc = fleet.cli("op", "watch", i)
    assert proc.returncode == 0, proc.stderr
    assert f"operation {i} done: 3 done, 0 failed of 3" in proc.stdout
    assert "3/3" in proc.stderr  # the progress bar, full

    proc = fleet.cli("op", "show", "999")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip() == "error: operation 999 does not exist; see: goldfleet op list"


def test_cli_recreate_with_policy_flags(fleet, desks):
    busy, _ = desks(2)
    login(fleet, busy, "alice")
    r = fleet.cli_json(
        "clone",
        "recreate",
        "--template",
        "base",
        "--logoff",
        "notify-force",
        "--grace",
        "1s",
        "--message",
        "bye",
        "--max-parallel",
        "1",
        "--max-failures",
        "1",
    )
    op = r["operation"]
    assert (op["status"], op["done"]) == ("done", 2)
    policy = op["policy"]
    assert (policy["logoff"], policy["grace_seconds"], policy["message"]) == (
        "notify-force",
        1.0,
        "bye",
    )
    assert (policy["max_parallel"], policy["max_failures"], policy["stop_on_error"]) == (
        1,
        1,
        False,
    )
    assert messages_to(fleet, busy) == ["bye"] and users_on(fleet, busy) == []
    proc = fleet.cli("clone", "recreate", "--template", "base", "--max-parallel", "0")
    assert proc.returncode == 1
    expected = "error: rollout.max_parallel: Input should be greater than or equal to 1"
    assert proc.stderr.strip() == expected


def test_cli_maintenance_exit_recreate_under_a_policy(fleet, template):
    names = fleet.create(count=3)
    for name in names:
        fleet.client.post(f"/clones/{name}/start")
    login(fleet, names[1], "alice")
    t = fleet.client.post("/templates/base/maintenance/enter")
    fleet.pattern(Path(t["overlay_path"]), MiB, 0x22)
    r = fleet.cli_json(
        "template", "maintenance", "exit", "base", "--recreate", "linked",
        "--logoff", "force", "--canary", "1", "--canary-auto", "--max-parallel", "2",
    )  # fmt: skip
    assert (r["version"], r["clones_behind"]) == (2, 0)
    op = r["operation"]
    assert (op["status"], op["done"], op["kind"]) == ("done", 3, "clone.recreate")
    assert (op["policy"]["logoff"], op["policy"]["canary"], op["policy"]["max_parallel"]) == (
        "force",
        1,
        2,
    )
    assert users_on(fleet, names[1]) == []
    for name in names:
        assert_moved(fleet, name, power="running")


def test_rebase_of_a_template_under_a_policy(fleet, desks):
    busy, free = desks(2)
    login(fleet, busy, "alice")
    body = {"template": "base", "to": "base:v2", "rollout": {"logoff": "wait"}}
    op = fleet.client.post("/clones/rebase", body)
    assert op["kind"] == "clone.rebase" and op["total"] == 2
    until(lambda: op_of(fleet, op["id"])["done"] == 1, "the free clone to be rebased")
    assert_moved(fleet, free)
    waiting = until(lambda: op_of(fleet, op["id"])["waiting"], "alice's clone to wait")
    assert waiting == [{"clone": busy, "reason": "waiting for users to log off: alice"}]
    assert_untouched(fleet, busy, power="running")
    logout(fleet, busy, "alice")
    assert settle(fleet, op["id"])["status"] == "done"
    assert_moved(fleet, busy, power="running")


def test_rollout_fields_are_strict(fleet, desks):
    desks(1, start=False)
    with pytest.raises(ClientError) as info:
        recreate(fleet, max_paralel=2)
    assert info.value.status == 422 and "max_paralel" in info.value.message
