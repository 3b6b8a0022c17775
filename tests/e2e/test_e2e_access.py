"""Users, roles and scopes against a real server process (docs/access.md): a help desk scoped
to one pool, the role user on its assigned clone, a token for one clone, custom roles, logins
of disabled users, the first admin user of ``goldfleet init``, and passwords kept out of every
log, table and answer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from inflight import root_conftest

from goldfleet.cli.client import Client, ClientError

PASSWORDS = {
    "hd": "helpdesk-Secret-1!",
    "alice": "alice-Passw0rd-xyz",
    "bob": "bob-Passw0rd-abc",
    "carol": "carol-Passw0rd-123",
}


def refused(fn: Any, *args: Any, **kw: Any) -> tuple[int, str]:
    try:
        fn(*args, **kw)
    except ClientError as exc:
        return exc.status, exc.message
    raise AssertionError("the request was not refused")


def wait_pool(client: Client, pool: str, idle: int, total: int, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        p = client.get(f"/pools/{pool}")
        if p["ready"] == idle and p["total"] == total and not p["operations"]:
            return p
        assert time.monotonic() < deadline, f"pool {pool} did not settle: {p}"
        time.sleep(0.1)


def pool_clones(fleet, pool: str) -> list[str]:
    return [
        name
        for (name,) in fleet.rows(
            "SELECT c.name FROM clones c JOIN pools p ON c.pool_id = p.id WHERE p.name = ?"
            " ORDER BY c.name",
            pool,
        )
    ]


def make_user(fleet, name: str, role: str, scope: str | None = None) -> None:
    secret = fleet.tmp / f"{name}.password"
    secret.write_text(PASSWORDS[name] + "\n")
    args = ["user", "create", name, "--role", role, "--password-file", str(secret)]
    if scope is not None:
        args += ["--scope", scope]
    made = fleet.cli_json(*args)
    assert made["name"] == name and made["disabled"] is False


def login(fleet, name: str, password: str | None = None) -> Client:
    r = httpx.post(
        f"{fleet.server.url}/auth/login",
        json={"name": name, "password": password or PASSWORDS[name]},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user"] == name and body["token"].startswith("gs_")
    return fleet.server.client(body["token"])


def login_status(fleet, name: str, password: str) -> tuple[int, str]:
    r = httpx.post(
        f"{fleet.server.url}/auth/login", json={"name": name, "password": password}, timeout=30
    )
    return r.status_code, r.json().get("message", "")


@pytest.fixture
def two_pools(fleet, template):
    for pool in ("lab", "office"):
        fleet.client.post(
            "/pools", {"name": pool, "template": template, "min": 2, "max": 2, "buffer": 2}
        )
    for pool in ("lab", "office"):
        wait_pool(fleet.client, pool, idle=2, total=2)
    return pool_clones(fleet, "lab"), pool_clones(fleet, "office")


def test_helpdesk_scoped_to_a_pool_restores_its_clones_and_nothing_else(fleet, two_pools):
    lab, office = two_pools
    make_user(fleet, "hd", "helpdesk", "pool:lab")
    hd = login(fleet, "hd")
    assert hd.get("/auth/me")["grants"] == ["helpdesk on pool:lab"]

    # a list shows only what the caller may see
    assert [c["name"] for c in hd.get("/clones")] == lab
    assert [c["name"] for c in hd.get("/clones", params={"limit": 1})] == lab[:1]
    assert [p["name"] for p in hd.get("/pools")] == ["lab"]
    assert hd.get("/templates") == []  # a pool grant does not cover the template
    assert len(fleet.client.get("/clones")) == 4

    before = fleet.rows("SELECT name, status, power, updated_at FROM clones ORDER BY name")
    mine = hd.post(f"/clones/{lab[0]}/restore")
    assert mine["name"] == lab[0] and mine["status"] == "ready"
    assert hd.post(f"/clones/{lab[1]}/stop")["power"] == "stopped"
    assert hd.post(f"/clones/{lab[1]}/start")["power"] == "running"

    status, message = refused(hd.post, f"/clones/{office[0]}/restore")
    assert status == 403
    assert "clone.restore" in message and "pool:office" in message, message
    assert "helpdesk on pool:lab" in message
    assert refused(hd.get, f"/clones/{office[0]}")[0] == 403
    status, message = refused(hd.delete, f"/clones/{lab[0]}")
    assert status == 403 and "clone.delete" in message
    status, message = refused(hd.post, "/templates/base/maintenance/enter")
    assert status == 403 and "template.maintenance" in message and "template:base" in message
    assert refused(hd.post, "/clones/recreate", {"template": "base"})[0] == 403
    assert refused(hd.post, "/clones", {"template": "base", "count": 1})[0] == 403
    assert refused(hd.get, "/audit")[0] == 403
    assert refused(hd.get, "/users")[0] == 403
    assert refused(hd.post, "/pools/office/drain")[0] == 403
    after = dict((r[0], r[1:3]) for r in fleet.rows("SELECT name, status, power FROM clones"))
    assert {n: after[n] for n in office} == {r[0]: r[1:3] for r in before if r[0] in office}
    assert fleet.client.get("/templates/base")["status"] == "ready"

    # operations: those working on the pool's clones only
    def ops_of(pool: str) -> set[int]:
        return {
            op
            for (op,) in fleet.rows(
                "SELECT DISTINCT i.operation_id FROM operation_items i JOIN clones c"
                " ON c.id = i.clone_id JOIN pools p ON p.id = c.pool_id WHERE p.name = ?",
                pool,
            )
        }

    lab_ops, office_ops = ops_of("lab"), ops_of("office")
    assert lab_ops and office_ops and not lab_ops & office_ops
    assert {o["id"] for o in hd.get("/operations")} == lab_ops
    assert hd.get(f"/operations/{min(lab_ops)}")["id"] == min(lab_ops)
    status, message = refused(hd.get, f"/operations/{min(office_ops)}")
    assert status == 403 and "operation.read" in message
    assert refused(hd.post, f"/operations/{min(lab_ops)}/cancel")[0] == 403  # not in the role
    assert refused(hd.get, "/operations/not-a-number")[0] in (403, 422)

    # the audit log records the user
    entries = fleet.client.get("/audit", params={"limit": 50})
    seen = {(a["action"], a["target"], a["actor"]) for a in entries}
    assert ("clone.restore", lab[0], "user:hd") in seen
    assert ("auth.login", "hd", "user:hd") in seen

    # the same through the CLI, with the session as the token
    env = {"GOLDFLEET_TOKEN": hd.http.headers["authorization"].split()[1]}
    proc = fleet.cli("clone", "restore", office[1], env=env)
    assert proc.returncode == 1 and "clone.restore" in proc.stderr
    proc = fleet.cli("clone", "list", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert [c["name"] for c in json.loads(proc.stdout)] == lab


def test_user_role_acts_only_on_its_assigned_clone(fleet, two_pools):
    _, office = two_pools
    alice_clone = fleet.client.post("/pools/lab/assign", {"user": "alice"})["clone"]["name"]
    bob_clone = fleet.client.post("/pools/lab/assign", {"user": "bob"})["clone"]["name"]
    make_user(fleet, "alice", "user")  # scope self by default
    assert fleet.cli_json("grant", "list", "--user", "alice") == [
        {"holder_kind": "user", "holder": "alice", "role": "user", "scope": "self"}
    ]
    alice = login(fleet, "alice")
    assert [c["name"] for c in alice.get("/clones")] == [alice_clone]
    assert alice.post(f"/clones/{alice_clone}/restore")["name"] == alice_clone
    assert alice.post(f"/clones/{alice_clone}/stop")["power"] == "stopped"
    assert alice.post(f"/clones/{alice_clone}/start")["power"] == "running"
    status, message = refused(alice.post, f"/clones/{bob_clone}/restore")
    assert status == 403 and "clone.restore" in message
    for other in office:
        assert refused(alice.post, f"/clones/{other}/stop")[0] == 403
    assert refused(alice.delete, f"/clones/{alice_clone}")[0] == 403
    assert refused(alice.post, "/clones/recreate", {"name": alice_clone})[0] == 403
    assert refused(alice.post, "/pools/lab/assign", {"user": "alice"})[0] == 403
    # the role user is for one's own clones only
    status, message = refused(
        fleet.client.post, "/grants", {"user": "alice", "role": "user", "scope": "pool:lab"}
    )
    assert status == 422 and "own clones" in message
    # released, the clone is no longer hers
    fleet.client.post("/pools/lab/release", {"user": "alice"})
    assert alice.get("/clones") == []
    assert refused(alice.post, f"/clones/{alice_clone}/restore")[0] == 403


def test_token_for_one_clone_restores_starts_and_stops_it_only(fleet, template):
    names = fleet.create(count=2)
    made = fleet.cli_json("token", "create", "kiosk", "--clone", names[0])
    assert made["role"] == "user" and made["grants"] == [f"user on clone:{names[0]}"]
    kiosk = fleet.server.client(made["token"])
    assert [c["name"] for c in kiosk.get("/clones")] == [names[0]]
    assert kiosk.post(f"/clones/{names[0]}/start")["power"] == "running"
    assert kiosk.post(f"/clones/{names[0]}/restore")["name"] == names[0]
    assert kiosk.post(f"/clones/{names[0]}/stop")["power"] == "stopped"
    status, message = refused(kiosk.post, f"/clones/{names[1]}/restore")
    assert status == 403 and "clone.restore" in message and f"clone:{names[1]}" in message
    assert refused(kiosk.delete, f"/clones/{names[0]}")[0] == 403
    assert refused(kiosk.post, f"/clones/{names[0]}/rebase", {"to": "base:v1"})[0] == 403
    assert refused(kiosk.get, "/templates")[0] == 403
    assert refused(kiosk.get, "/operations")[0] == 403
    entries = fleet.client.get("/audit", params={"limit": 20})
    assert ("clone.restore", names[0], "kiosk") in {
        (a["action"], a["target"], a["actor"]) for a in entries
    }
    listed = {t["name"]: t for t in fleet.cli_json("token", "list")}
    assert listed["kiosk"]["grants"] == [f"user on clone:{names[0]}"]
    # --clone with another role or a scope is refused; nothing is made
    proc = fleet.cli("token", "create", "k2", "--clone", names[0], "--role", "admin")
    assert proc.returncode == 1 and "leave --role out" in proc.stderr
    assert "k2" not in {t["name"] for t in fleet.client.get("/tokens")}


def test_scoped_tokens_and_custom_roles(fleet, two_pools):
    lab, office = two_pools
    made = fleet.cli_json("role", "create", "restorer", "--allow", "clone.restore,clone.read")
    assert made == {
        "name": "restorer",
        "builtin": False,
        "permissions": ["clone.read", "clone.restore"],
    }
    roles = {r["name"]: r for r in fleet.cli_json("role", "list")}
    assert set(roles) >= {"admin", "operator", "helpdesk", "auditor", "user", "restorer"}
    proc = fleet.cli("role", "create", "bad", "--allow", "clone.restore,clone.nuke")
    assert proc.returncode == 1 and "clone.nuke" in proc.stderr
    token = fleet.cli_json(
        "token", "create", "desk-tool", "--role", "restorer", "--scope", "pool:office"
    )
    tool = fleet.server.client(token["token"])
    assert [c["name"] for c in tool.get("/clones")] == office
    assert tool.post(f"/clones/{office[0]}/restore")["name"] == office[0]
    assert refused(tool.post, f"/clones/{office[0]}/stop")[0] == 403
    assert refused(tool.post, f"/clones/{lab[0]}/restore")[0] == 403
    # a second grant widens it, its removal narrows it again
    fleet.cli_json("grant", "add", "restorer", "pool:lab", "--token", "desk-tool")
    assert tool.post(f"/clones/{lab[0]}/restore")["name"] == lab[0]
    fleet.cli_json("grant", "remove", "restorer", "pool:lab", "--token", "desk-tool")
    assert refused(tool.post, f"/clones/{lab[0]}/restore")[0] == 403
    proc = fleet.cli("role", "delete", "restorer")
    assert proc.returncode == 1 and "desk-tool" in proc.stderr
    # an operator on one template
    token = fleet.cli_json(
        "token", "create", "ops", "--role", "operator", "--scope", "template:base"
    )
    ops = fleet.server.client(token["token"])
    assert len(ops.get("/clones")) == 4 and [t["name"] for t in ops.get("/templates")] == ["base"]
    assert refused(ops.get, "/tokens")[0] == 403
    assert refused(ops.post, "/tokens", {"name": "x", "role": "admin"})[0] == 403
    # a bad scope is refused with the choices
    proc = fleet.cli("grant", "add", "helpdesk", "host:h1", "--token", "ops")
    assert proc.returncode == 1 and "template:NAME" in proc.stderr


def test_a_disabled_user_cannot_log_in_and_its_sessions_end(fleet, template):
    make_user(fleet, "carol", "auditor")
    carol = login(fleet, "carol")
    assert carol.get("/templates")
    assert login_status(fleet, "carol", "wrong-password") == (
        401,
        "the user name or the password is wrong",
    )
    assert login_status(fleet, "nobody", PASSWORDS["carol"])[0] == 401
    assert fleet.cli_json("user", "disable", "carol")["disabled"] is True
    assert refused(carol.get, "/templates")[0] == 401
    status, message = login_status(fleet, "carol", PASSWORDS["carol"])
    assert status == 401 and "disabled" in message
    users = {u["name"]: u for u in fleet.cli_json("user", "list")}
    assert users["carol"]["disabled"] is True and users["carol"]["grants"] == ["auditor on /"]
    fleet.cli_json("user", "enable", "carol")
    carol = login(fleet, "carol")
    # a new password ends the sessions and the old one
    new = fleet.tmp / "new.password"
    new.write_text("carol-New-Passw0rd\n")
    fleet.cli_json("user", "passwd", "carol", "--password-file", str(new))
    assert refused(carol.get, "/templates")[0] == 401
    assert login_status(fleet, "carol", PASSWORDS["carol"])[0] == 401
    carol = login(fleet, "carol", "carol-New-Passw0rd")
    # a user changes its own password (not another's)
    assert carol.post("/users/carol/password", {"password": "carol-Own-Passw0rd"}) is None
    carol = login(fleet, "carol", "carol-Own-Passw0rd")
    status, message = refused(carol.post, "/users/admin/password", {"password": "x" * 12})
    assert status == 403 and "user.write" in message
    # logging out ends the session
    assert carol.delete("/auth/session") is None
    assert refused(carol.get, "/templates")[0] == 401
    audit = {(a["action"], a["actor"]) for a in fleet.client.get("/audit", params={"limit": 100})}
    assert ("auth.login-failed", "user:carol") in audit
    assert ("auth.login-refused", "user:carol") in audit
    assert ("user.disable", "admin") in audit


def test_passwords_are_never_logged_stored_or_shown(fleet, template):
    make_user(fleet, "alice", "auditor")
    login(fleet, "alice")
    login_status(fleet, "alice", PASSWORDS["bob"])  # a failed login with another's password
    short = fleet.tmp / "short.password"
    short.write_text("short\n")
    proc = fleet.cli("user", "passwd", "alice", "--password-file", str(short))
    assert (
        proc.returncode == 1
        and "8 to 1024" in proc.stderr
        and "short" not in proc.stderr.replace("short.password", "")
    )
    shown = [
        json.dumps(fleet.client.get("/audit", params={"limit": 1000})),
        json.dumps(fleet.client.get("/users")),
        fleet.cli("user", "list").stdout,
        "\n".join(
            str(r)
            for t in ("users", "audit", "grants", "login_sessions")
            for r in fleet.rows(f"SELECT * FROM {t}")
        ),
    ]
    fleet.server.stop()  # its log flushed
    log = Path(fleet.server.log.name).read_text(errors="replace")
    raw = b"".join(p.read_bytes() for p in fleet.home.glob("goldfleet.db*") if p.is_file())
    for secret in (PASSWORDS["alice"], PASSWORDS["bob"], "short"):
        for text in shown:
            assert secret not in text.replace("short.password", "")
        if secret != "short":
            assert secret not in log
            assert secret.encode() not in raw
    (stored,) = fleet.rows("SELECT password_hash FROM users WHERE name = 'alice'")[0]
    assert stored.startswith("$argon2id$")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("GOLDFLEET_URL", "GOLDFLEET_TOKEN")}


def test_init_makes_the_first_admin_user(tmp_path):
    home = tmp_path / "fresh"
    env = _env()

    def init(*args: str) -> dict:
        proc = subprocess.run(
            [sys.executable, "-m", "goldfleet", "init", "--json", *args],
            env={**env, "GOLDFLEET_HOME": str(home)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    first = init()
    assert first["token_created"] is True and first["user_created"] is True
    assert first["user"] == "admin" and len(first["password"]) >= 16
    again = init()
    assert again["user_created"] is False and "password" not in again

    srv = root_conftest().Server(home=home)
    srv.start()
    try:
        r = httpx.post(
            f"{srv.url}/auth/login", json={"name": "admin", "password": first["password"]}
        )
        assert r.status_code == 200, r.text
        admin = srv.client(r.json()["token"])
        assert admin.get("/auth/me") == {
            "name": "user:admin",
            "kind": "user",
            "role": None,
            "grants": ["admin on /"],
        }
        assert admin.post("/tokens", {"name": "made-by-user", "role": "reader"})["token"]
        audit = {(a["action"], a["target"], a["actor"]) for a in admin.get("/audit")}
        assert ("token.create", "made-by-user", "user:admin") in audit
        assert ("user.create", "admin", "goldfleet init") in audit
    finally:
        srv.stop()


def test_init_reads_the_first_password_from_a_file(tmp_path):
    home = tmp_path / "fresh"
    secret = tmp_path / "pw"
    secret.write_text("first-admin-Passw0rd\n")
    env = _env()
    proc = subprocess.run(
        [sys.executable, "-m", "goldfleet", "init", "--password-file", str(secret)],
        env={**env, "GOLDFLEET_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "admin user admin created" in proc.stdout
    assert "first-admin-Passw0rd" not in proc.stdout + proc.stderr
    assert "admin token written" in proc.stdout
