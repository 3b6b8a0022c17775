"""Authentication and authorisation through the real HTTP API of a real server process."""

from __future__ import annotations

import hashlib
import re
import stat

import httpx
import pytest

MiB = 1 << 20

# a plausible, valid request for every endpoint, so that only the token can be the reason to refuse
BODIES = {
    ("POST", "/clones"): {"template": "base", "count": 2},
    ("POST", "/clones/recreate"): {"template": "base", "include_full": True},
    ("POST", "/clones/retry"): {"all": True},
    ("POST", "/clones/{name}/rebase"): {"to": "base:v1"},
    ("POST", "/templates/from-clone"): {"name": "stolen", "clone": "base-001"},
    ("POST", "/templates/{name}/maintenance/exit"): {"recreate": "all"},
    ("POST", "/tokens"): {"name": "intruder", "role": "admin"},
}
PARAMS = {("POST", "/templates/import"): {"name": "evil", "format": "raw"}}


def _snapshot(fleet) -> dict:
    """Everything a refused request could have changed."""
    files = sorted(
        (str(p.relative_to(fleet.store)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in fleet.store.rglob("*")
        if p.is_file()
    )
    return {
        "templates": fleet.client.get("/templates"),
        "versions": fleet.client.get("/templates/base/versions"),
        "clones": fleet.client.get("/clones"),
        "operations": fleet.client.get("/operations"),
        "tokens": fleet.client.get("/tokens"),
        "audit": fleet.client.get("/audit", params={"limit": 1000}),
        "sim": fleet.rows("SELECT name, state FROM sim_domains ORDER BY name"),
        "files": files,
    }


def _endpoints(fleet) -> list[tuple[str, str, str]]:
    """(method, path template, concrete path) of every route the server describes."""
    spec = fleet.client.get("/openapi.json")
    values = {
        "name": None,
        "number": "1",
        "op_id": "1",
        "vm": "base-001",
        "clone": "base-001",
        "user": "alice",
        "digest": "sha256:" + "0" * 64,
        "template": "base",
        "host": "sim-host-1",
        "update_id": "1",
    }
    found = []
    for template, methods in spec["paths"].items():
        if template in ("/health", "/auth/login"):  # open: tests/e2e/test_e2e_access.py
            continue
        for method in methods:
            method = method.upper()
            concrete = template
            for param in re.findall(r"{(\w+)}", template):
                value = values.get(param)
                if param == "name":
                    value = (
                        "base-001"
                        if template.startswith("/clones")
                        else "admin"
                        if template.startswith("/tokens")
                        else "base"
                    )
                assert value is not None, f"no sample value for {{{param}}} in {template}"
                concrete = concrete.replace(f"{{{param}}}", value)
            found.append((method, template, concrete))
    found.append(("GET", "/openapi.json", "/openapi.json"))
    return found


def test_health_needs_no_token(server):
    r = httpx.get(f"{server.url}/health")
    assert r.status_code == 200
    assert r.json()["status"] == "ok"


def test_every_endpoint_refuses_a_missing_or_wrong_token_and_changes_nothing(fleet, template):
    fleet.create(name="base-001")
    endpoints = _endpoints(fleet)
    routes = {(m, t) for m, t, _ in endpoints}
    # the description covers the whole surface this test is about
    for expected in [
        ("POST", "/clones"),
        ("DELETE", "/clones/{name}"),
        ("POST", "/templates/import"),
        ("DELETE", "/templates/{name}"),
        ("POST", "/templates/{name}/maintenance/enter"),
        ("POST", "/tokens"),
        ("DELETE", "/tokens/{name}"),
        ("POST", "/store/verify"),
        ("GET", "/audit"),
    ]:
        assert expected in routes
    before = _snapshot(fleet)
    bad_headers = [
        {},
        {"Authorization": "Bearer gf_not-a-real-token"},
        {"Authorization": f"Bearer {fleet.server.token}x"},
        {"Authorization": f"Basic {fleet.server.token}"},  # right secret, wrong scheme
        {"Authorization": "Bearer"},
    ]
    with httpx.Client(base_url=fleet.server.url, timeout=30) as http:
        for method, route, path in endpoints:
            for headers in bad_headers:
                kwargs: dict = {"headers": dict(headers)}
                if route == "/templates/import":
                    kwargs["content"] = b"\0" * 65536
                    kwargs["params"] = PARAMS[(method, route)]
                elif method == "POST":
                    kwargs["json"] = BODIES.get((method, route), {})
                r = http.request(method, path, **kwargs)
                assert r.status_code == 401, (method, path, headers, r.status_code, r.text)
                assert r.json()["error"] == "Unauthorized"
                assert r.headers.get("www-authenticate") == "Bearer"
            # a body that does not even fit the schema is still refused for the token first
            if method == "POST" and route != "/templates/import":
                r = http.request(method, path, json={"no-such-field": 1})
                assert r.status_code == 401, (method, path, r.status_code, r.text)
    assert _snapshot(fleet) == before


def test_clone_create_with_a_bad_token_makes_no_clone(fleet, template):
    intruder = fleet.server.client("gf_wrong")
    assert fleet.error(401, intruder.post, "/clones", {"template": "base", "count": 5})
    assert fleet.error(401, intruder.post, "/clones", {"template": "base", "name": "x"})
    assert fleet.client.get("/clones") == []
    assert fleet.client.get("/operations") == []
    assert list(fleet.clones_dir.iterdir()) == []
    assert fleet.client.get("/templates/base")["clones"] == 0


def test_reader_token_reads_but_may_not_write(fleet, template):
    fleet.create(name="desk")
    made = fleet.client.post("/tokens", {"name": "dashboard", "role": "reader"})
    assert made["role"] == "reader" and made["token"]
    reader = fleet.server.client(made["token"])

    assert [t["name"] for t in reader.get("/templates")] == ["base"]
    assert reader.get("/templates/base")["current_version"] == 1
    assert [v["name"] for v in reader.get("/templates/base/versions")] == ["v1"]
    assert [c["name"] for c in reader.get("/clones")] == ["desk"]
    assert reader.get("/clones/desk")["status"] == "ready"
    assert len(reader.get("/operations")) == 1

    before = _snapshot(fleet)
    image = fleet.tmp / "tiny.raw"
    image.write_bytes(b"\0" * MiB)
    writes = [
        lambda: reader.post("/clones", {"template": "base", "count": 1, "wait": True}),
        lambda: reader.post("/clones/desk/start"),
        lambda: reader.post("/clones/desk/stop"),
        lambda: reader.post("/clones/desk/restore"),
        lambda: reader.post("/clones/desk/rebase", {"to": "base:v1"}),
        lambda: reader.post("/clones/recreate", {"name": "desk", "wait": True}),
        lambda: reader.delete("/clones/desk"),
        lambda: reader.post("/templates/base/maintenance/enter"),
        lambda: reader.post("/templates/base/flatten"),
        lambda: reader.delete("/templates/base"),
        lambda: reader.post("/templates/from-clone", {"name": "mine", "clone": "desk"}),
        lambda: reader.upload("/templates/import", image, {"name": "mine", "format": "raw"}),
        lambda: reader.post("/tokens", {"name": "escalate", "role": "admin"}),
        lambda: reader.delete("/tokens/admin"),
        lambda: reader.post("/users", {"name": "eve", "role": "admin", "password": "x" * 12}),
        lambda: reader.post("/grants", {"token": "dashboard", "role": "admin", "scope": "/"}),
        lambda: reader.post("/store/verify"),
        lambda: reader.post("/store/verify", {"since": "last", "progress": True}),
    ]
    for write in writes:
        message = fleet.error(403, write)
        assert "dashboard" in message and "reader" in message
    assert _snapshot(fleet) == before
    # a reader token is the auditor on / (docs/access.md): it reads everything, the audit log
    # and the token list (never their values) included
    assert reader.get("/audit", params={"limit": 5})
    assert {t["name"] for t in reader.get("/tokens")} == {"admin", "dashboard"}


def test_revoked_token_is_refused(fleet, template):
    made = fleet.client.post("/tokens", {"name": "ci", "role": "admin"})
    ci = fleet.server.client(made["token"])
    assert ci.post("/clones", {"template": "base", "name": "by-ci", "wait": True})
    assert fleet.client.delete("/tokens/ci") is None
    assert fleet.error(401, ci.get, "/templates")
    assert fleet.error(401, ci.post, "/clones", {"template": "base", "name": "after", "wait": True})
    assert [c["name"] for c in fleet.client.get("/clones")] == ["by-ci"]
    tokens = {t["name"]: t for t in fleet.client.get("/tokens")}
    assert tokens["ci"]["revoked"] is True and tokens["admin"]["revoked"] is False
    assert "token" not in tokens["ci"]  # the list never shows values


def test_database_keeps_only_the_token_hash(fleet, template):
    made = fleet.client.post("/tokens", {"name": "watcher", "role": "reader"})
    secrets_ = {"admin": fleet.server.token, "watcher": made["token"]}
    stored = dict(fleet.rows("SELECT name, token_hash FROM tokens"))
    for name, token in secrets_.items():
        assert stored[name] == hashlib.sha256(token.encode()).hexdigest()
    dump = "\n".join(
        str(row)
        for table in ("tokens", "audit", "templates", "clones", "operations")
        for row in fleet.rows(f"SELECT * FROM {table}")
    )
    raw = b"".join(
        p.read_bytes() for p in fleet.home.glob("goldfleet.db*") if p.is_file()
    )  # the database file, its WAL and shared memory
    for token in secrets_.values():
        assert token not in dump
        assert token.encode() not in raw
    assert hashlib.sha256(secrets_["watcher"].encode()).hexdigest().encode() in raw


def test_admin_token_file_is_private(server):
    token_file = server.home / "admin.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert server.token.startswith("gf_")


def test_audit_log_names_every_change_and_its_actor(fleet, template):
    fleet.create(name="audited")
    fleet.client.post("/clones/audited/start")
    fleet.client.post("/tokens", {"name": "ro", "role": "reader"})
    fleet.client.delete("/clones/audited")
    entries = fleet.client.get("/audit", params={"limit": 100})
    seen = {(a["action"], a["target"], a["actor"]) for a in entries}
    for expected in [
        ("template.import", "base", "admin"),
        ("clone.create", "base", "admin"),
        ("clone.start", "audited", "admin"),
        ("token.create", "ro", "admin"),
        ("clone.delete", "audited", "admin"),
    ]:
        assert expected in seen, (expected, seen)


@pytest.mark.parametrize("role", ["root", "ADMIN", ""])
def test_token_with_an_unknown_role_is_refused(fleet, role):
    assert fleet.error(422, fleet.client.post, "/tokens", {"name": "odd", "role": role})
    assert [t["name"] for t in fleet.client.get("/tokens")] == ["admin"]


def _raw_post(server, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str]:
    """One request on a plain socket (so a declared length need not be sent); its status and
    the body of the answer."""
    import json
    import socket

    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode() + body)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    status = int(answer.split(b" ", 2)[1])
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    return status, body.get("message") or str(body)


def test_a_body_too_large_for_memory_is_refused_before_it_is_read(fleet, template):
    auth = {"Authorization": f"Bearer {fleet.server.token}", "Content-Type": "application/json"}
    status, message = _raw_post(
        fleet.server, "/clones", {**auth, "Content-Length": str(17 * MiB)}, b'{"template": '
    )
    assert status == 413 and "larger than 16 MiB" in message
    status, message = _raw_post(
        fleet.server, "/clones", {**auth, "Transfer-Encoding": "chunked"}, b'5\r\n{"tem\r\n'
    )
    assert status == 411 and "Content-Length" in message
    assert fleet.client.get("/clones") == []
    # an upload route streams its body to a file under its own limit: not refused here (a
    # five-byte raw image is a valid, tiny disk)
    status, message = _raw_post(
        fleet.server,
        "/templates/import?name=big&format=raw",
        {**auth, "Content-Type": "application/octet-stream", "Content-Length": "5"},
        b"12345",
    )
    assert status == 201, message
