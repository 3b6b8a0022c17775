"""Start, stop, message and log off of many clones as ONE durable operation (issue 12's bulk
actions), over real HTTP against a real server on the sim driver: by name list and by
template, users treated as the operation's policy says, RBAC on every clone named."""

from __future__ import annotations

import time

import pytest

from goldfleet.cli.client import ClientError


def users_on(fleet, vm: str) -> list[str]:
    return [s["user"] for s in fleet.client.get("/sim/sessions", params={"vm": vm})]


def power(fleet, names: list[str]) -> set[str]:
    return {fleet.show(n)["power"] for n in names}


def test_start_message_logoff_stop_as_one_operation_each(fleet, template):
    names = fleet.create(count=4)
    c = fleet.client
    op = c.post("/clones/start", {"template": template, "wait": True})
    assert (op["kind"], op["total"], op["done"], op["status"]) == ("clone.start", 4, 4, "done")
    assert power(fleet, names) == {"running"}
    # starting running clones again does nothing, and is done
    again = c.post("/clones/start", {"names": names[:2], "wait": True})
    assert (again["done"], again["failed"]) == (2, 0)

    c.post("/sim/sessions", {"vm": names[0], "user": "alice"})
    c.post("/sim/sessions", {"vm": names[1], "user": "bob"})
    # a message leaves users be, even under a rollout that says "wait"
    op = c.post(
        "/clones/message",
        {"names": names[:2], "text": "Back at two", "wait": True, "rollout": {"logoff": "wait"}},
    )
    assert (op["kind"], op["done"], op["status"]) == ("clone.message", 2, "done")
    for vm in names[:2]:
        texts = [m["text"] for m in c.get("/sim/messages", params={"vm": vm})]
        assert texts == ["Back at two"]
    assert users_on(fleet, names[0]) == ["alice"]
    entry = next(e for e in c.get("/audit") if e["action"] == "clone.message")
    assert entry["detail"]["text"] == "Back at two" and entry["detail"]["count"] == 2

    # a logoff: every user of the clones, at once; the clones keep running
    op = c.post("/clones/logoff", {"names": names[:2], "wait": True})
    assert (op["kind"], op["done"], op["status"]) == ("clone.logoff", 2, "done")
    assert users_on(fleet, names[0]) == [] and users_on(fleet, names[1]) == []
    assert power(fleet, names[:2]) == {"running"}

    # a stop under "wait" waits for a logged-in user; the item says why
    c.post("/sim/sessions", {"vm": names[2], "user": "carol"})
    op = c.post("/clones/stop", {"names": [names[2]], "rollout": {"logoff": "wait"}})
    deadline = time.monotonic() + 30
    while not (waiting := c.get(f"/operations/{op['id']}")["waiting"]):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert "waiting for users to log off: carol" in waiting[0]["reason"]
    assert fleet.show(names[2])["power"] == "running"
    c.post(f"/operations/{op['id']}/cancel")

    # without a rollout a stop logs users off and shuts the clones down, as `clone stop` does
    deadline = time.monotonic() + 30
    while c.get(f"/operations/{op['id']}")["status"] not in ("cancelled", "done"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    op = c.post("/clones/stop", {"template": template, "wait": True})
    assert (op["kind"], op["total"], op["done"], op["status"]) == ("clone.stop", 4, 4, "done")
    assert power(fleet, names) == {"stopped"}
    assert users_on(fleet, names[2]) == []
    assert {fleet.show(n)["status"] for n in names} == {"ready"}


def test_bad_selections_are_refused_and_start_nothing(fleet, template, server):
    names = fleet.create(count=2)
    c = fleet.client
    before = len(c.get("/operations"))
    for path, body, status, words in [
        ("/clones/stop", {"names": [names[0], "no-such"]}, 404, "no clone no-such"),
        ("/clones/stop", {}, 422, "not both or neither"),
        ("/clones/stop", {"names": names, "template": template}, 422, "not both or neither"),
        ("/clones/message", {"names": names, "text": "   "}, 422, "the message is empty"),
        ("/clones/start", {"names": names, "rollout": {"logoff": "leave"}}, 422, "--logoff"),
        ("/clones/start", {"names": names, "text": "hi"}, 422, "text"),
    ]:
        with pytest.raises(ClientError) as refused:
            c.post(path, body)
        assert refused.value.status == status, (path, body, refused.value)
        assert words in str(refused.value), (path, body, refused.value)
    assert len(c.get("/operations")) == before

    # RBAC: the permission on every clone named (or on the template)
    c.post(
        "/users",
        {
            "name": "desk",
            "password": "desk-password-1",
            "role": "user",
            "scope": f"clone:{names[0]}",
        },
    )
    token = c.post("/auth/login", {"name": "desk", "password": "desk-password-1"})["token"]
    desk = server.client(token)
    with pytest.raises(ClientError) as refused:
        desk.post("/clones/start", {"names": names})
    assert refused.value.status == 403 and "clone.start" in str(refused.value)
    with pytest.raises(ClientError) as refused:
        desk.post("/clones/start", {"template": template})
    assert refused.value.status == 403
    with pytest.raises(ClientError) as refused:  # the role "user" may not message
        desk.post("/clones/message", {"names": [names[0]], "text": "hi"})
    assert refused.value.status == 403 and "clone.message" in str(refused.value)
    assert len(c.get("/operations")) == before
    op = desk.post("/clones/start", {"names": [names[0]], "wait": True})
    assert (op["done"], op["status"]) == (1, "done")
    entry = next(e for e in c.get("/audit") if e["action"] == "clone.start")
    assert (entry["actor"], entry["target"]) == ("user:desk", names[0])


def test_the_cli_starts_and_stops_a_templates_clones_as_one_operation(fleet, template):
    names = fleet.create(count=3)
    op = fleet.cli_json("clone", "start", "--template", template)["operation"]
    assert (op["kind"], op["total"], op["done"], op["status"]) == ("clone.start", 3, 3, "done")
    assert power(fleet, names) == {"running"}
    op = fleet.cli_json("clone", "stop", "--template", template)["operation"]
    assert (op["kind"], op["done"], op["status"]) == ("clone.stop", 3, "done")
    assert power(fleet, names) == {"stopped"}
    both = fleet.cli("clone", "stop", names[0], "--template", template)
    assert both.returncode != 0 and "either a clone name or --template" in both.stderr
    assert fleet.cli_json("clone", "start", names[0])["power"] == "running"  # one, as before
