"""Session control by hand (issue 14 point 5) against a real server on the sim driver: the
users logged into clones listed by template, pool and host, messaged and logged off outside
any rollout, over HTTP and through the CLI, each action audited, refusals in the driver's
words."""

from __future__ import annotations

import json
import time

from goldfleet.cli.client import ClientError


def login(fleet, vm: str, user: str) -> None:
    fleet.client.post("/sim/sessions", {"vm": vm, "user": user})


def users_on(fleet, vm: str) -> list[str]:
    return [s["user"] for s in fleet.client.get("/sim/sessions", params={"vm": vm})]


def messages_to(fleet, vm: str) -> list[str]:
    return [m["text"] for m in fleet.client.get("/sim/messages", params={"vm": vm})]


def audit(fleet, action: str) -> list[dict]:
    return [e for e in fleet.client.get("/audit") if e["action"] == action]


def wait_pool(fleet, pool: str, ready: int) -> None:
    deadline = time.monotonic() + 60
    while fleet.client.get(f"/pools/{pool}")["ready"] < ready:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_sessions_listed_messaged_and_logged_off_by_hand(fleet, template):
    one, two, idle = fleet.create(count=3)
    for name in (one, two):
        assert fleet.client.post(f"/clones/{name}/start")["power"] == "running"
    fleet.client.post("/pools", {"name": "desks", "template": template, "max": 1, "buffer": 1})
    wait_pool(fleet, "desks", 1)
    pooled = fleet.client.post("/pools/desks/assign", {"user": "carol"})["clone"]["name"]
    login(fleet, one, "alice")
    login(fleet, one, "bob")
    login(fleet, two, "dave")
    login(fleet, pooled, "carol")

    answer = fleet.cli_json("session", "list")
    listed = answer["sessions"]
    assert answer["errors"] == []
    assert sorted((s["clone"], s["user"]) for s in listed) == sorted(
        [(one, "alice"), (one, "bob"), (two, "dave"), (pooled, "carol")]
    )
    first = next(s for s in listed if s["user"] == "alice")
    assert first["since"] is not None and first["idle_seconds"] is None  # the sim has no idle
    assert (first["template"], first["pool"]) == (template, None)
    in_pool = fleet.cli_json("session", "list", "--pool", "desks")["sessions"]
    assert [s["user"] for s in in_pool] == ["carol"]
    [(host,)] = fleet.rows("SELECT host FROM clones WHERE name = ?", two)
    on_host = fleet.cli_json("session", "list", "--host", host)["sessions"]
    assert ("dave", host) in {(s["user"], s["host"]) for s in on_host}
    assert all(s["host"] == host for s in on_host)
    assert fleet.cli_json("session", "list", "--host", "no-such-host")["sessions"] == []
    assert len(fleet.client.get("/sessions", params={"template": template})["sessions"]) == 4
    table = fleet.cli("session", "list")
    assert table.returncode == 0 and "alice" in table.stdout and "desks" in table.stdout

    # a message to one clone's users, then to every clone of the template with users on it
    sent = fleet.cli_json("session", "message", one, "Please save your work")
    assert (sent["sent"], sent["failed"]) == (1, 0)
    assert messages_to(fleet, one) == ["Please save your work"]
    assert messages_to(fleet, two) == []
    every = fleet.cli_json("session", "message", "--all-of", template, "Back at 14:00")
    assert sorted(o["clone"] for o in every["clones"]) == sorted([one, two, pooled])
    assert messages_to(fleet, two) == ["Back at 14:00"] and messages_to(fleet, idle) == []

    # a logoff by hand: the user is gone, the clone keeps running, the others stay
    assert fleet.cli_json("session", "logoff", one, "bob") == {
        "clone": one,
        "user": "bob",
        "logged_off": True,
    }
    assert users_on(fleet, one) == ["alice"]
    assert fleet.show(one)["power"] == "running"

    # refusals: the driver's words, exit 1, and still audited
    proc = fleet.cli("session", "logoff", one, "bob")
    assert proc.returncode == 1
    assert "sim: cannot log bob off VM" in proc.stderr and "not logged in" in proc.stderr
    try:
        fleet.client.post("/sessions/message", {"clone": idle, "text": "hello"})
    except ClientError as exc:
        assert exc.status == 409 and "stopped" in exc.message
    else:
        raise AssertionError("a message to a stopped clone was accepted")
    assert fleet.cli("session", "message", one).returncode == 1  # no text
    assert fleet.cli("session", "list", "--pool", "nope").returncode == 1

    logoffs = audit(fleet, "session.logoff")
    assert [(e["target"], e["detail"]["user"], e["detail"]["error"] is None) for e in logoffs] == [
        (one, "bob", False),
        (one, "bob", True),
    ]
    messages = audit(fleet, "session.message")
    assert len(messages) == 4 and all(e["detail"]["sent"] for e in messages)
    assert audit(fleet, "session.message-all")[0]["target"] == template

    # readers list, only admins act
    token = fleet.client.post("/tokens", {"name": "desk", "role": "reader"})["token"]
    reader = fleet.server.client(token)
    assert len(reader.get("/sessions")["sessions"]) == 3
    try:
        reader.delete(f"/sessions/{one}/alice")
    except ClientError as exc:
        assert exc.status == 403
    else:
        raise AssertionError("a reader logged a user off")
    assert users_on(fleet, one) == ["alice"]
    json.dumps(listed)  # plain JSON for scripts


def test_a_vm_the_driver_cannot_answer_for_is_reported_and_hides_nothing(fleet, template):
    good, bad = fleet.create(count=2)
    for name in (good, bad):
        fleet.client.post(f"/clones/{name}/start")
        login(fleet, name, "erin" if name == good else "frank")
    fleet.server.env["GOLDFLEET_SIM_PLAN"] = json.dumps({"fail_vms": [bad]})
    fleet.server.restart()

    proc = fleet.cli("session", "list", "--json")
    assert proc.returncode == 1  # not every clone could be asked
    answer = json.loads(proc.stdout)
    assert [(s["clone"], s["user"]) for s in answer["sessions"]] == [(good, "erin")]
    [error] = answer["errors"]
    assert error["clone"] == bad and "injected by the sim plan" in error["error"]
    table = fleet.cli("session", "list")
    assert table.returncode == 1 and "erin" in table.stdout
    assert f"{bad}: sessions not listed: sim:" in table.stderr

    proc = fleet.cli("session", "message", "--all-of", template, "Hello", "--json")
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    outcomes = {o["clone"]: o for o in report["clones"]}
    assert outcomes[good]["sent"] and outcomes[good]["users"] == ["erin"]
    assert not outcomes[bad]["sent"] and "sim: send_message of VM" in outcomes[bad]["error"]
    assert messages_to(fleet, good) == ["Hello"]
    proc = fleet.cli("session", "logoff", bad, "frank")
    assert proc.returncode == 1 and "failed (injected by the sim plan" in proc.stderr
