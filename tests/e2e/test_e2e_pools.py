"""Pools against a real server process: over HTTP (create, assign, drain, enable, release,
delete; reader tokens read only) and through the CLI with ``--json``."""

from __future__ import annotations

import time
from typing import Any

from goldfleet.cli.client import Client, ClientError


def wait_ready(client: Client, pool: str, idle: int, total: int, timeout: float = 60) -> dict:
    """Until the pool holds ``total`` clones of which ``idle`` are ready and unassigned."""
    deadline = time.monotonic() + timeout
    while True:
        p = client.get(f"/pools/{pool}")
        if p["ready"] == idle and p["total"] == total and not p["operations"]:
            return p
        assert time.monotonic() < deadline, f"pool {pool} did not settle: {p}"
        time.sleep(0.1)


def refused(fn: Any, *args: Any) -> tuple[int, str]:
    try:
        fn(*args)
    except ClientError as exc:
        return exc.status, exc.message
    raise AssertionError("the request was not refused")


def test_pool_over_http(server, client: Client, template: str) -> None:
    made = client.post(
        "/pools", {"name": "desks", "template": template, "min": 1, "max": 3, "buffer": 2}
    )
    assert (made["name"], made["state"], made["max"], made["buffer"]) == ("desks", "enabled", 3, 2)
    wait_ready(client, "desks", idle=2, total=2)

    got = client.post("/pools/desks/assign", {"user": "alice"})
    assert (got["pool"], got["user"]) == ("desks", "alice")
    assert (got["clone"]["status"], got["clone"]["power"]) == ("ready", "running")
    alice = got["clone"]["name"]
    assert client.post("/pools/desks/assign", {"user": "alice"})["clone"]["name"] == alice
    p = wait_ready(client, "desks", idle=2, total=3)  # the buffer refilled
    assert p["assigned"] == 1

    drained = client.post("/pools/desks/drain")
    assert (drained["state"], drained["enabled"]) == ("draining", False)
    status, message = refused(client.post, "/pools/desks/assign", {"user": "bob"})
    assert status == 409 and "drained" in message and "goldfleet pool enable desks" in message

    assert client.post("/pools/desks/enable")["state"] == "enabled"
    bob = client.post("/pools/desks/assign", {"user": "bob"})["clone"]["name"]
    assert bob != alice
    assert sorted(c["name"] for c in client.get("/clones")) == sorted(
        n for (n,) in _pool_clone_names(server, "desks")
    )

    # never above max: the third user takes the last one, the fourth is refused
    client.post("/pools/desks/assign", {"user": "carol"})
    status, message = refused(client.post, "/pools/desks/assign", {"user": "dave"})
    assert status == 409 and "all 3 of its at most 3 clones are taken" in message
    assert client.get("/pools/desks")["total"] == 3

    # bad input and unknown pools
    assert (
        refused(client.post, "/pools", {"name": "p2", "template": template, "max": 2, "buffer": 3})[
            0
        ]
        == 422
    )
    assert refused(client.post, "/pools/nope/assign", {"user": "x"})[0] == 404
    assert refused(client.post, "/pools/desks/assign", {"user": "no body"})[0] == 422

    # readers read, only admins change
    token = client.post("/tokens", {"name": "dashboard", "role": "reader"})["token"]
    reader = server.client(token)
    assert [p["name"] for p in reader.get("/pools")] == ["desks"]
    assert reader.get("/pools/desks")["assigned"] == 3
    assert refused(reader.post, "/pools/desks/drain")[0] == 403
    assert refused(reader.post, "/pools/desks/assign", {"user": "eve"})[0] == 403
    assert refused(Client(server.url, None).get, "/pools")[0] == 401

    # delete: refused while users hold clones, then the clones go with the pool
    status, message = refused(client.delete, "/pools/desks")
    assert status == 409 and "assigned to users" in message
    for user in ("alice", "bob", "carol"):
        released = client.post("/pools/desks/release", {"user": user})
        assert released["power"] == "stopped"
    gone = client.delete("/pools/desks")
    assert gone["pool"] == "desks" and gone["operation"]["total"] == 3
    deadline = time.monotonic() + 60
    while client.get(f"/operations/{gone['operation']['id']}")["status"] != "done":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert client.get("/clones") == [] and client.get("/pools") == []
    actions = {a["action"] for a in client.get("/audit")}
    assert {"pool.create", "pool.assign", "pool.drain", "pool.enable", "pool.release"} <= actions
    assert "pool.delete" in actions


def _pool_clone_names(server, pool: str) -> list[tuple[str]]:
    return server.rows(
        "SELECT c.name FROM clones c JOIN pools p ON p.id = c.pool_id WHERE p.name = ?", pool
    )


def test_pool_cli_json(fleet, template: str) -> None:
    made = fleet.cli_json(
        "pool",
        "create",
        "labs",
        "--template",
        template,
        "--min",
        "0",
        "--max",
        "2",
        "--buffer",
        "1",
        "--window-cron",
        "0 22 * * 6",
        "--window-minutes",
        "120",
    )
    assert (made["name"], made["window_cron"], made["window_minutes"]) == (
        "labs",
        "0 22 * * 6",
        120,
    )
    assert made["next_window"] is not None
    wait_ready(fleet.client, "labs", idle=1, total=1)

    got = fleet.cli_json("pool", "assign", "labs", "alice")
    assert got["user"] == "alice" and got["clone"]["power"] == "running"
    [listed] = fleet.cli_json("pool", "list")
    assert (listed["name"], listed["assigned"]) == ("labs", 1)
    assert fleet.cli_json("pool", "drain", "labs")["state"] == "draining"

    proc = fleet.cli("pool", "assign", "labs", "bob")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().startswith("error: pool labs is drained")

    assert fleet.cli_json("pool", "enable", "labs")["state"] == "enabled"
    wait_ready(fleet.client, "labs", idle=1, total=2)
    bob = fleet.cli_json("pool", "assign", "labs", "bob")["clone"]["name"]
    assert bob != got["clone"]["name"]
    shown = fleet.cli_json("pool", "show", "labs")
    assert (shown["total"], shown["assigned"], shown["idle"]) == (2, 2, 0)

    table = fleet.cli("pool", "list")
    assert table.returncode == 0 and "labs" in table.stdout and "0 22 * * 6" in table.stdout

    proc = fleet.cli("pool", "create", "bad", "--template", template, "--max", "1", "--buffer", "2")
    assert proc.returncode == 1 and "--buffer 2 is larger than --max 1" in proc.stderr

    assert fleet.cli_json("pool", "release", "labs", "alice")["power"] == "stopped"
    assert fleet.cli_json("pool", "release", "labs", "bob")["power"] == "stopped"
    kept = fleet.cli_json("pool", "delete", "labs", "--keep-clones")
    assert kept == {"pool": "labs", "operation": None}
    assert len(fleet.client.get("/clones")) == 2  # plain clones now
    assert fleet.cli_json("pool", "list") == []


def test_pool_resized_over_http_and_the_cli(fleet, client: Client, template: str) -> None:
    client.post("/pools", {"name": "desks", "template": template, "min": 0, "max": 2, "buffer": 2})
    wait_ready(client, "desks", idle=2, total=2)
    grown = client.put("/pools/desks/size", {"min": 0, "max": 4, "buffer": 3})
    assert (grown["max"], grown["buffer"]) == (4, 3)
    wait_ready(client, "desks", idle=3, total=3)  # provisioned to the new buffer
    # a maximum below the pool's clones is refused, and nothing changes
    status, message = refused(client.put, "/pools/desks/size", {"min": 0, "max": 2, "buffer": 1})
    assert status == 409 and "has 3 clones" in message
    status, message = refused(client.put, "/pools/desks/size", {"min": 5, "max": 4})
    assert status == 422
    assert client.get("/pools/desks")["max"] == 4
    shown = fleet.cli_json("pool", "resize", "desks", "--max", "5", "--buffer", "3")
    assert (shown["min"], shown["max"], shown["buffer"]) == (0, 5, 3)
    entry = next(e for e in client.get("/audit") if e["action"] == "pool.resize")
    assert entry["detail"]["was"] == {"min": 0, "max": 4, "buffer": 3}
