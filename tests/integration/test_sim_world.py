"""The simulated world through the service layer and the API: users, messages, guest shutdowns,
each audited; refused for readers and when the driver is not sim."""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from goldfleet.api.app import create_app
from goldfleet.context import Context
from goldfleet.drivers.base import RUNNING, STOPPED, DiskSpec, DomainSpec
from goldfleet.errors import Conflict, InvalidInput, NotFound
from goldfleet.services import access
from goldfleet.services import sim as world
from goldfleet.services.common import audit


@pytest.fixture
def running(ctx: Context, tmp_path: Path) -> Callable[[str], str]:
    """``running(name)``: a VM defined on real disk files and started through the driver."""
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "8M"], check=True)

    def make(name: str) -> str:
        ctx.driver.define(spec=DomainSpec(name=name, disks=(DiskSpec("system", str(disk)),)))
        ctx.driver.start(name=name)
        return name

    return make


@pytest.fixture
def api(ctx: Context, home: Path) -> TestClient:
    token = (home / "admin.token").read_text().strip()
    return TestClient(create_app(ctx, recover=False), headers={"Authorization": f"Bearer {token}"})


def test_login_logout_and_the_driver_sees_it(ctx: Context, running: Callable[[str], str]) -> None:
    vm = running("desk-001")
    made = world.login(ctx, vm=vm, user="alice", actor="admin")
    assert (made.vm, made.user) == (vm, "alice")
    assert [g.user for g in ctx.driver.sessions(names=[vm])[vm]] == ["alice"]
    assert [(s.vm, s.user) for s in world.list_sessions(ctx)] == [(vm, "alice")]
    world.logout(ctx, vm=vm, user="alice", actor="admin")
    assert ctx.driver.sessions(names=[vm])[vm] == []
    actions = [(a.action, a.target, a.detail) for a in audit.list_audit(ctx)][:2]
    assert actions == [
        ("sim.logout", vm, {"user": "alice"}),
        ("sim.login", vm, {"user": "alice"}),
    ]


def test_world_refusals(ctx: Context, running: Callable[[str], str]) -> None:
    vm = running("desk-001")
    with pytest.raises(NotFound, match="desk-404"):
        world.login(ctx, vm="desk-404", user="alice", actor="admin")
    with pytest.raises(InvalidInput, match="VM name"):
        world.login(ctx, vm="../x", user="alice", actor="admin")
    with pytest.raises(NotFound, match="alice is not logged into VM desk-001"):
        world.logout(ctx, vm=vm, user="alice", actor="admin")
    world.guest_shutdown(ctx, vm=vm, actor="admin")
    with pytest.raises(Conflict, match="only log into a running VM"):
        world.login(ctx, vm=vm, user="alice", actor="admin")
    assert world.list_sessions(ctx) == []


def test_guest_shutdown_and_messages(ctx: Context, running: Callable[[str], str]) -> None:
    a, b = running("desk-001"), running("desk-002")
    world.login(ctx, vm=a, user="alice", actor="admin")
    ctx.driver.send_message(name=a, text="Maintenance at 18:00")
    shown = world.guest_shutdown(ctx, vm=a, actor="admin")
    assert (shown.name, shown.state, shown.users) == (a, STOPPED, [])
    assert ctx.driver.states() == {a: STOPPED, b: RUNNING}
    assert [(v.name, v.state) for v in world.list_vms(ctx)] == [(a, STOPPED), (b, RUNNING)]
    assert [(m.vm, m.text) for m in world.list_messages(ctx, vm=a)] == [(a, "Maintenance at 18:00")]
    assert world.list_messages(ctx, vm=b) == []
    assert audit.list_audit(ctx)[0].action == "sim.guest-shutdown"


def test_refused_when_the_driver_is_not_sim(ctx: Context) -> None:
    libvirt = pytest.importorskip("goldfleet.drivers.libvirt")
    other = dataclasses.replace(ctx, driver=libvirt.LibvirtDriver(uris=["test:///default"]))
    for call in (
        lambda: world.list_vms(other),
        lambda: world.list_sessions(other),
        lambda: world.login(other, vm="desk-001", user="alice", actor="admin"),
    ):
        with pytest.raises(Conflict, match="not sim"):
            call()


def test_api_routes(api: TestClient, running: Callable[[str], str]) -> None:
    vm = running("desk-001")
    r = api.post("/sim/sessions", json={"vm": vm, "user": "alice"})
    assert r.status_code == 201, r.text
    assert r.json()["user"] == "alice"
    assert api.post("/sim/sessions", json={"vm": vm, "user": "alice"}).status_code == 409
    assert api.post("/sim/sessions", json={"vm": "desk-404", "user": "bob"}).status_code == 404
    assert api.post("/sim/sessions", json={"vm": vm, "user": "a b"}).status_code == 422
    assert api.post("/sim/sessions", json={"vm": vm}).status_code == 422
    assert [s["user"] for s in api.get("/sim/sessions", params={"vm": vm}).json()] == ["alice"]
    assert api.get("/sim/sessions", params={"vm": "desk-002"}).json() == []
    r = api.get("/sim/vms")
    assert [(v["name"], v["state"], v["users"]) for v in r.json()] == [(vm, RUNNING, ["alice"])]
    assert api.delete(f"/sim/sessions/{vm}/alice").status_code == 204
    assert api.delete(f"/sim/sessions/{vm}/alice").status_code == 404
    r = api.post(f"/sim/vms/{vm}/guest-shutdown")
    assert (r.status_code, r.json()["state"]) == (200, STOPPED)
    assert api.post(f"/sim/vms/{vm}/guest-shutdown").status_code == 409
    assert api.get("/sim/messages", params={"vm": vm}).json() == []


def test_api_needs_an_admin_token(ctx: Context, api: TestClient) -> None:
    reader = access.create_token(ctx, name="viewer", role="reader", actor="test")
    anonymous = TestClient(api.app)
    assert anonymous.get("/sim/vms").status_code == 401
    headers = {"Authorization": f"Bearer {reader}"}
    assert anonymous.get("/sim/vms", headers=headers).status_code == 403
    assert anonymous.post("/sim/vms/x/guest-shutdown", headers=headers).status_code == 403


def test_websockets_are_refused_before_anything(api: TestClient) -> None:
    """goldfleet serves no websocket: the auth layer closes one at once, token or not."""
    from starlette.websockets import WebSocketDisconnect

    for path in ("/templates", "/health", "/sync/catalog"):
        with pytest.raises(WebSocketDisconnect) as info, api.websocket_connect(path):
            pass
        assert info.value.code == 1008
