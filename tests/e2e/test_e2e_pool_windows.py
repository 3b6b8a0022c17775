"""A pool's maintenance window takes assigned clones back from their users (issue 14 point 6),
against a real server on the sim driver: as Parallels RAS disables an RDSH group on schedule,
the pool assigns nothing while the window is open, its users are told, given the grace and
logged off, their clones stopped, unassigned and recreated; after the window, assignments
start afresh."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from goldfleet.cli.client import ClientError


def until(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def audit(fleet, action: str) -> list[dict]:
    return [e for e in fleet.client.get("/audit", params={"limit": 1000}) if e["action"] == action]


def test_a_window_takes_clones_back_from_their_users_then_assigns_afresh(fleet, template):
    fleet.server.env["GOLDFLEET_RECONCILE_SECONDS"] = "0.3"
    fleet.server.restart()
    c = fleet.client
    c.post("/pools", {"name": "desks", "template": template, "max": 3, "buffer": 3})
    until(lambda: c.get("/pools/desks")["ready"] == 3, "three idle clones")
    mine = {
        u: c.post("/pools/desks/assign", {"user": u})["clone"]["name"]
        for u in ("alice", "bob", "carol")
    }
    for user in ("alice", "bob"):
        c.post("/sim/sessions", {"vm": mine[user], "user": user})
    fleet.update(byte=0x22)  # v2: the window is when clones move to it

    # a window open from now on (every minute, one minute long: one long window), whose users
    # are told, given 3 s and logged off
    shown = fleet.cli_json(
        "pool",
        "window",
        "desks",
        "--cron",
        "* * * * *",
        "--minutes",
        "1",
        "--logoff",
        "notify-force",
        "--grace",
        "3s",
        "--message",
        "Maintenance now",
    )
    assert (shown["window_open"], shown["window_logoff"], shown["window_grace_seconds"]) == (
        True,
        "notify-force",
        3.0,
    )
    assert shown["state"] == "maintenance"
    refused = fleet.cli("pool", "assign", "desks", "dave")
    assert refused.returncode == 1 and "in its maintenance window until" in refused.stderr

    # carol was not logged on: taken back at once; alice and bob are told, not yet logged off
    until(lambda: audit(fleet, "pool.unassign"), "carol's clone to be taken back")
    first = audit(fleet, "pool.unassign")
    assert [(e["detail"]["user"], e["detail"]["clone"]) for e in first] == [
        ("carol", mine["carol"])
    ]
    for user in ("alice", "bob"):
        texts = until(
            lambda u=user: [m["text"] for m in c.get("/sim/messages", params={"vm": mine[u]})],
            f"the message to {user}",
        )
        assert texts == ["Maintenance now"]
    assert {s["user"] for s in c.get("/sim/sessions")} == {"alice", "bob"}

    # after the grace they are logged off and every clone comes back idle, on v2
    until(lambda: c.get("/sim/sessions") == [], "the logoff after the grace")
    until(
        lambda: (
            (p := c.get("/pools/desks"))["assigned"] == 0
            and p["behind"] == 0
            and p["ready"] == 3
            and not p["operations"]
        ),
        "the clones taken back and recreated",
    )
    assert {x["version"] for x in c.get("/clones")} == {2}
    assert all(x["power"] == "stopped" for x in c.get("/clones"))
    taken = {e["detail"]["user"]: e for e in audit(fleet, "pool.unassign")}
    assert set(taken) == {"alice", "bob", "carol"}
    assert taken["alice"]["actor"] == "pool-window"
    assert taken["alice"]["detail"]["logged_off"] == ["alice"]
    logoffs = {(e["actor"], e["detail"]["user"]) for e in audit(fleet, "session.logoff")}
    assert logoffs == {("pool-window", "alice"), ("pool-window", "bob")}
    assert len(audit(fleet, "session.message")) == 2  # told once each
    try:
        c.post("/pools/desks/assign", {"user": "alice"})
    except ClientError as exc:
        assert exc.status == 409 and "maintenance window" in exc.message
    else:
        raise AssertionError("the pool assigned a clone inside its window")

    # the window is over (removed here): the pool assigns again, afresh, clones on v2
    after = fleet.cli_json("pool", "window", "desks", "--none")
    assert (after["state"], after["window_cron"], after["assigned"]) == ("enabled", None, 0)
    got = fleet.cli_json("pool", "assign", "desks", "bob")
    assert (got["clone"]["version"], got["clone"]["power"]) == (2, "running")
    assert len(audit(fleet, "pool.window")) == 2
