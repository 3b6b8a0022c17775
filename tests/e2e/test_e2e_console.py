"""The web console in a real browser: Debian's chromium driven by Playwright (no browser
download) against a real ``goldfleet serve`` with the sim driver. One server and one browser
for the module; each test opens its own browser context (its own cookies).

Screenshots of the dashboard, a template with its chain and a running operation are taken as
the tests pass; they are kept in ``$GOLDFLEET_CONSOLE_SHOTS`` (default
``test-artifacts/console`` under the working directory) when a test of this module failed, and
always when that variable is set.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from inflight import root_conftest

playwright_api = pytest.importorskip("playwright.sync_api")
Server = root_conftest().Server
make_raw = root_conftest().make_raw
CHROMIUM = os.environ.get("GOLDFLEET_CHROMIUM", "/usr/bin/chromium")
if not Path(CHROMIUM).exists():  # pragma: no cover - `make system-packages` installs it
    pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

# one worker runs the whole module under `make test` (pytest-xdist): one server, one browser
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("console")]

AXE = Path(__file__).parent.parent / "browser" / "axe.min.js"
ADMIN, ADMIN_PW = "root", "root-password-1"
HD, HD_PW = "hd", "helpdesk-password-1"
HD2 = "hd2"
MAIN_PAGES = ["/ui/", "/ui/templates", "/ui/templates/base", "/ui/clones", "/ui/operations"]
ALL_PAGES = [
    *MAIN_PAGES,
    "/ui/sessions",
    "/ui/pools",
    "/ui/sites",
    "/ui/hosts",
    "/ui/keys",
    "/ui/audit",
    "/ui/users",
]


@pytest.fixture(scope="module")
def shots(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("console-shots")
    failed_before = request.session.testsfailed
    yield folder
    asked = os.environ.get("GOLDFLEET_CONSOLE_SHOTS")  # set: kept always, there
    if asked or request.session.testsfailed > failed_before:
        keep = Path(asked or "test-artifacts/console")
        keep.mkdir(parents=True, exist_ok=True)
        for shot in folder.glob("*.png"):
            shutil.copy(shot, keep / shot.name)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A server with template ``base`` (60 clones), template ``win`` (4 clones), pool ``lab``
    of ``base`` (3 clones), cluster ``pve``, site ``branch``, an admin user, a helpdesk user
    scoped to ``pool:lab`` and one scoped to ``template:win``."""
    root = tmp_path_factory.mktemp("console")
    # the sim: a start takes 0.4 s (an operation to pause and cancel while it runs), every
    # action on VM "odd-001" fails and so does the first message (operations with a failed
    # item to retry)
    plan = {
        "latency_ms": {"start": 400},
        "fail_vms": ["odd-001"],
        "fail_nth": {"send_message": 1},  # the first message sent fails
    }
    server = Server(home=root / "home", env={"GOLDFLEET_SIM_PLAN": json.dumps(plan)})
    server.start()
    c = server.client()
    for name in ("base", "win"):
        image = make_raw(root / f"{name}.raw", fill={0: b"\x11" * 4096})
        c.upload("/templates/import", image, {"name": name, "format": "raw", "data": ["64M"]})
    for template, count in (("base", 60), ("win", 4)):
        op = c.post("/clones", {"template": template, "count": count, "wait": True})["operation"]
        assert op["status"] == "done", op
    c.post("/pools", {"name": "lab", "template": "base", "min": 3, "max": 3})
    c.post("/clusters", {"name": "pve", "hosts": ["sim-host-1"], "coordinator": "sim-host-1"})
    c.post("/sites", {"name": "branch"})
    c.post("/users", {"name": ADMIN, "password": ADMIN_PW, "role": "admin"})
    c.post("/users", {"name": HD, "password": HD_PW, "role": "helpdesk", "scope": "pool:lab"})
    c.post("/users", {"name": HD2, "password": HD_PW, "role": "helpdesk", "scope": "template:win"})
    deadline = time.monotonic() + 60
    while len(c.get("/clones", params={"state": "ready"})) < 67:  # the pool's three
        assert time.monotonic() < deadline, "the pool lab was not filled in 60 s"
        time.sleep(0.2)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        yield b
        b.close()


class Tab:
    """One browser context (cookies of its own) and page, with the console's errors kept."""

    def __init__(
        self, browser: Any, srv: Any, width: int = 1280, height: int = 800, **options: Any
    ) -> None:
        self.base = srv.url
        self.context = browser.new_context(viewport={"width": width, "height": height}, **options)
        self.page = self.context.new_page()
        self.page.set_default_timeout(15_000)
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", lambda d: d.accept())  # hx-confirm: the user says yes

    def go(self, path: str) -> Any:
        return self.page.goto(self.base + path)

    def login(self, name: str, password: str) -> None:
        self.go("/ui/login")
        self.page.fill("#name", name)
        self.page.fill("#password", password)
        self.page.click("button[type=submit]")
        self.page.wait_for_url(re.compile(r".*/ui/$"))

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def admin(browser: Any, srv: Any) -> Iterator[Tab]:
    tab = Tab(browser, srv)
    tab.login(ADMIN, ADMIN_PW)
    yield tab
    tab.close()


def test_a_browser_asking_for_root_is_sent_to_the_console_and_must_log_in(
    browser: Any, srv: Any
) -> None:
    tab = Tab(browser, srv)
    tab.go("/")
    tab.page.wait_for_url(re.compile(r".*/ui/login\?next=.*"))
    # the API's answer to a client that is not a browser is unchanged
    assert httpx.get(srv.url + "/").status_code == 401
    tab.page.fill("#name", ADMIN)
    tab.page.fill("#password", "not-the-password")
    tab.page.click("button[type=submit]")
    assert "the user name or the password is wrong" in tab.page.inner_text("#login-error")
    # the refused login is answered 401, which the browser logs; nothing else may be there
    assert tab.errors and all("status of 401" in e for e in tab.errors), tab.errors
    tab.errors.clear()
    tab.page.fill("#password", ADMIN_PW)
    tab.page.click("button[type=submit]")
    tab.page.wait_for_url(re.compile(r".*/ui/$"))
    cookie = next(c for c in tab.context.cookies() if c["name"] == "gf_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert cookie["value"].startswith("gs_")
    failed = [e for e in srv.client().get("/audit") if e["action"] == "auth.login-failed"]
    assert any(e["target"] == ADMIN for e in failed)
    assert tab.errors == []
    tab.close()


def test_every_page_renders_with_real_data_and_no_console_error(admin: Tab, shots: Path) -> None:
    for path in ALL_PAGES:
        response = admin.go(path)
        assert response.status == 200, (path, response.status)
        assert admin.page.locator("h1").count() == 1, path
    admin.go("/ui/")
    assert admin.page.inner_text("#c-templates + p") == "2"
    assert "ready 67" in " ".join(admin.page.inner_text(".counts >> nth=0").split())
    admin.page.screenshot(path=str(shots / "console-dashboard.png"), full_page=True)  # docs/img
    admin.go("/ui/templates/base")
    assert admin.page.locator("svg#chain rect.own").count() >= 1
    admin.page.screenshot(path=str(shots / "template-chain.png"), full_page=True)
    admin.go("/ui/clones?template=win")
    assert admin.page.locator('input[name="clone"]').count() == 4
    admin.go("/ui/users")
    assert HD in admin.page.inner_text("main")
    admin.go("/ui/hosts")
    assert "sim-host-1" in admin.page.inner_text("main")
    admin.go("/ui/sites")
    assert "branch" in admin.page.inner_text("main")
    admin.go("/ui/pools")
    assert admin.page.locator("main a[href='/ui/clones?pool=lab']").count() == 1
    assert admin.errors == []


def test_the_row_actions_of_pools_sessions_and_tokens(admin: Tab, srv: Any) -> None:
    page, c = admin.page, srv.client()
    admin.go("/ui/pools")
    page.click("main button:text('Drain')")
    page.wait_for_selector("main td:text('draining')")
    page.click("main button:text('Enable')")
    page.wait_for_selector("main td:text('enabled')")
    c.post("/clones/base-060/start")
    c.post("/sim/sessions", {"vm": "base-060", "user": "alice"})
    admin.go("/ui/sessions")
    assert "alice" in page.inner_text("main table")
    page.click("main button:text('Log off')")
    page.wait_for_selector("main td:text('None.')")
    assert c.get("/sessions")["sessions"] == []
    c.post("/tokens", {"name": "ci", "role": "reader"})
    admin.go("/ui/users")
    page.click("main tr:has(td:text-is('ci')) button:text('Revoke')")
    page.wait_for_selector("main tr:has(td:text-is('ci')) td:text-is('yes')")
    actions = {(e["actor"], e["action"]) for e in c.get("/audit")}
    assert {("user:root", "pool.drain"), ("user:root", "token.revoke")} <= actions
    assert admin.errors == []


def test_a_maintenance_cycle_done_only_through_the_console(admin: Tab, shots: Path) -> None:
    page = admin.page
    admin.go("/ui/templates/win")
    page.click("#enter-maintenance")
    page.wait_for_selector("#exit-maintenance")  # the page reloaded: in maintenance
    page.select_option("#recreate", "linked")
    page.fill("#canary", "1")
    page.fill("#max_parallel", "1")
    page.click("#exit-maintenance")
    page.wait_for_url(re.compile(r".*/ui/operations/\d+$"))
    op_url = page.url
    # the canary is done, then the operation pauses for a look: the page says so, live
    page.wait_for_selector("#op-status:text('paused')", timeout=30_000)
    assert page.inner_text("#op-counts").startswith("1 done")
    page.screenshot(path=str(shots / "operation-running.png"), full_page=True)
    page.click("#op-resume")
    page.wait_for_selector("#op-status:text('done')", timeout=60_000)
    assert "4 done, 0 failed" in page.inner_text("#op-counts")
    assert page.url == op_url  # no reload: the server's events brought every change
    assert page.locator("#items .badge.done").count() == 4
    admin.go("/ui/templates/win")
    assert "v2" in (page.text_content("svg#chain") or "")
    page.screenshot(path=str(shots / "console-template.png"), full_page=True)  # docs/img
    assert admin.errors == []


def test_bulk_restore_of_50_selected_clones_starts_one_operation(admin: Tab, srv: Any) -> None:
    page = admin.page
    admin.go("/ui/clones?template=base&size=50")
    page.check("#select-all")
    assert page.inner_text("#selected-count") == "50 selected"
    page.select_option("#bulk-action", "restore")
    page.click("#bulk-go")
    page.wait_for_selector("#bulk-result .ok")
    op_id = int(re.search(r"operation (\d+) started", page.inner_text("#bulk-result")).group(1))
    page.click("#bulk-result a")
    page.wait_for_selector("#op-status:text('done')", timeout=60_000)
    op = srv.client().get(f"/operations/{op_id}")
    assert (op["kind"], op["total"], op["done"], op["failed"]) == ("clone.restore", 50, 50, 0)
    entries = [e for e in srv.client().get("/audit") if e["action"] == "clone.restore"]
    assert any(e["actor"] == f"user:{ADMIN}" and e["detail"].get("count") == 50 for e in entries)
    assert admin.errors == []


def test_selected_clones_stopped_as_one_operation_that_reaches_done(admin: Tab, srv: Any) -> None:
    c = srv.client()
    started = [f"base-05{i}" for i in range(2, 6)]
    op = c.post("/clones/start", {"names": started, "wait": True})
    assert (op["kind"], op["done"]) == ("clone.start", 4)
    c.post("/sim/sessions", {"vm": started[0], "user": "erin"})
    running = {r["name"] for r in c.get("/clones", params={"state": "running"})}
    page = admin.page
    admin.go("/ui/clones?template=base&state=running&size=50")
    page.check("#select-all")
    assert page.inner_text("#selected-count") == f"{len(running)} selected"
    page.select_option("#bulk-action", "stop")
    page.click("#bulk-go")
    page.wait_for_selector("#bulk-result .ok")
    op_id = int(re.search(r"operation (\d+) started", page.inner_text("#bulk-result")).group(1))
    page.click("#bulk-result a")
    page.wait_for_selector("#op-status:text('done')", timeout=60_000)
    assert f"{len(running)} done, 0 failed" in page.inner_text("#op-counts")
    op = c.get(f"/operations/{op_id}")
    assert (op["kind"], op["total"], op["done"]) == ("clone.stop", len(running), len(running))
    assert c.get("/clones", params={"state": "running"}) == []
    assert c.get("/sim/sessions", params={"vm": started[0]}) == []  # logged off, then stopped
    entries = [e for e in c.get("/audit") if e["action"] == "clone.stop"]
    assert any(e["actor"] == f"user:{ADMIN}" and e["detail"].get("operation") == op_id
               for e in entries)  # fmt: skip
    assert admin.errors == []


def test_users_grants_and_a_token_made_on_the_users_page(admin: Tab, srv: Any) -> None:
    page, c = admin.page, srv.client()
    admin.go("/ui/users")
    page.fill("#new-user", "newbie")
    page.fill("#new-password", "newbie-password-1")
    page.select_option("#new-role", "helpdesk")
    page.fill("#new-scope", "pool:lab")
    page.click("#user-create")
    page.wait_for_selector("main td:text-is('newbie')")  # the page reloaded with the user
    users = {u["name"]: u for u in c.get("/users")}
    assert users["newbie"]["grants"] == ["helpdesk on pool:lab"]
    # the same name again: refused in the server's words, next to the form
    page.fill("#new-user", "newbie")
    page.fill("#new-password", "newbie-password-1")
    page.click("#user-create")
    page.wait_for_selector("#user-create-result .error")
    assert "409: user newbie already exists" in page.inner_text("#user-create-result")
    page.select_option("#grant-user", "newbie")
    page.select_option("#grant-role", "auditor")
    page.fill("#grant-scope", "template:win")
    page.click("#grant-add")
    page.wait_for_selector("main td:text('auditor on template:win')")
    assert "auditor on template:win" in {u["name"]: u for u in c.get("/users")}["newbie"]["grants"]
    page.select_option("#grant-user", "newbie")
    page.select_option("#grant-role", "auditor")
    page.fill("#grant-scope", "template:win")
    page.click("#grant-remove")
    page.wait_for_selector("main td:text('auditor on template:win')", state="detached")
    assert {u["name"]: u for u in c.get("/users")}["newbie"]["grants"] == ["helpdesk on pool:lab"]
    # a token: its value shown once, and it works against the API
    admin.go("/ui/users")
    page.fill("#token-name", "deploy")
    page.select_option("#token-role", "auditor")
    page.click("#token-create")
    value = page.inner_text("#token-value")
    assert value.startswith("gf_")
    got = httpx.get(srv.url + "/templates", headers={"Authorization": f"Bearer {value}"})
    assert got.status_code == 200
    admin.go("/ui/users")
    assert value not in page.content()  # listed by name, never by value
    assert "deploy" in page.inner_text("main")
    actions = {(e["actor"], e["action"], e["target"]) for e in c.get("/audit")}
    assert ("user:root", "user.create", "newbie") in actions
    assert any(a[:2] == ("user:root", "token.create") for a in actions)
    assert admin.errors == [] or all("status of 409" in e for e in admin.errors), admin.errors


def test_a_pool_created_resized_and_deleted_on_the_pools_page(admin: Tab, srv: Any) -> None:
    page, c = admin.page, srv.client()
    admin.go("/ui/pools")
    page.fill("#pool-name", "kiosk")
    page.select_option("#pool-template", "base")
    page.fill("#pool-max", "2")
    page.fill("#pool-buffer", "1")
    page.click("#pool-create")
    page.wait_for_selector("main a[href='/ui/clones?pool=kiosk']")
    assert (c.get("/pools/kiosk")["max"], c.get("/pools/kiosk")["buffer"]) == (2, 1)
    page.select_option("#resize-pool", "kiosk")
    page.fill("#resize-max", "0")
    page.click("#pool-resize")
    page.wait_for_selector("#pool-resize-result .error")
    assert "422" in page.inner_text("#pool-resize-result")
    assert c.get("/pools/kiosk")["max"] == 2  # nothing changed
    page.fill("#resize-max", "4")
    page.fill("#resize-buffer", "2")
    page.click("#pool-resize")
    page.wait_for_selector("main tr:has(a[href='/ui/clones?pool=kiosk']) td:text-is('4')")
    assert (c.get("/pools/kiosk")["max"], c.get("/pools/kiosk")["buffer"]) == (4, 2)
    admin.go("/ui/pools")
    page.select_option("#delete-pool", "kiosk")
    page.click("#pool-delete")
    page.wait_for_selector("#pool-delete-result .ok")
    assert "kiosk" not in {p["name"] for p in c.get("/pools")}
    actions = {(e["actor"], e["action"], e["target"]) for e in c.get("/audit")}
    assert {("user:root", a, "kiosk") for a in ("pool.create", "pool.resize", "pool.delete")} <= (
        actions
    )
    assert [e for e in admin.errors if "status of 422" not in e] == []


def test_the_forms_are_absent_and_refused_without_their_permission(browser: Any, srv: Any) -> None:
    tab = Tab(browser, srv)
    tab.login(HD, HD_PW)  # helpdesk on pool:lab: reads pools, writes none, no users
    page = tab.page
    tab.go("/ui/pools")
    assert page.locator("#pool-forms, #pool-create, #pool-resize, #pool-delete").count() == 0
    csrf = page.get_attribute('meta[name="csrf-token"]', "content")
    for path, form, permission in [
        ("/ui/pools/resize", {"pool": "lab", "max": "9"}, "pool.write"),
        ("/ui/pools/delete", {"pool": "lab"}, "pool.write"),
        ("/ui/pools", {"name": "x", "template": "base", "max": "1"}, "pool.write"),
        ("/ui/users", {"name": "x", "password": "x-password-123", "role": "admin"}, "user.write"),
        ("/ui/grants/add", {"user": HD, "role": "admin", "scope": "/"}, "user.write"),
        ("/ui/tokens", {"name": "x", "role": "admin"}, "user.write"),
        ("/ui/sites", {"name": "x"}, "site.write"),
        ("/ui/sites/assign", {"site": "branch", "template": "base"}, "site.write"),
        ("/ui/clusters", {"name": "x", "hosts": "h", "coordinator": "h"}, "cluster.write"),
        ("/ui/clusters/pve/sync", {}, "cluster.write"),
        ("/ui/keys/trust", {"name": "x", "public_key": "ab" * 32}, "key.write"),
        ("/ui/password", {"user": ADMIN, "password": "x-password-123"}, "user.write"),
        ("/ui/roles", {"name": "x", "allow": "user.write"}, "user.write"),
        ("/ui/roles/auditor/delete", {}, "user.write"),
        ("/ui/pools/window", {"pool": "lab", "cron": "0 2 * * *", "minutes": "60"}, "pool.write"),
        ("/ui/sites/rights", {"site": "branch", "local_patches": "on"}, "site.write"),
        ("/ui/sites/branch/revoke", {}, "site.write"),
        ("/ui/keys/untrust", {"name": "x"}, "key.write"),
        ("/ui/clusters/settings/schedule", {"cluster": "pve", "kind": "off"}, "cluster.write"),
        ("/ui/clusters/settings/proxy", {"cluster": "pve", "url": "http://p:1"}, "cluster.write"),
        ("/ui/clusters/settings/channel", {"cluster": "pve", "kind": "disable"}, "cluster.write"),
    ]:
        answer = page.request.post(srv.url + path, headers={"X-CSRF-Token": csrf}, form=form)
        assert answer.status == 403 and permission in answer.text(), (path, answer.text())
    answer = page.request.post(
        srv.url + "/ui/bundles/import",
        headers={"X-CSRF-Token": csrf, "Content-Type": "application/octet-stream"},
        data=b"anything",
    )
    assert answer.status == 403 and "bundle.import" in answer.text(), answer.text()
    answer = page.request.get(srv.url + "/ui/bundles/export?template=base")
    assert answer.status == 403 and "bundle.export" in answer.text(), answer.text()
    c = srv.client()
    assert c.get("/pools/lab")["max"] == 3 and "x" not in {p["name"] for p in c.get("/pools")}
    assert {u["name"]: u for u in c.get("/users")}[HD]["grants"] == ["helpdesk on pool:lab"]
    assert "x" not in {u["name"] for u in c.get("/users")}
    assert "x" not in {t["name"] for t in c.get("/tokens")}
    assert "x" not in {r["name"] for r in c.get("/roles")}
    assert "auditor" in {r["name"] for r in c.get("/roles")}
    assert c.get("/pools/lab")["window_cron"] is None
    assert c.get("/clusters/pve")["proxy"] is None
    branch = {v["name"]: v for v in c.get("/sites")}["branch"]
    assert (branch["local_patches"], branch["token_revoked"]) == (False, False)
    assert c.post("/auth/login", {"name": ADMIN, "password": ADMIN_PW})["token"]
    tab.close()


def test_passwords_set_by_an_admin_and_changed_by_their_user(
    browser: Any, admin: Tab, srv: Any
) -> None:
    c = srv.client()
    c.post("/users", {"name": "pw", "password": "pw-password-old", "role": "auditor"})
    page = admin.page
    admin.go("/ui/users")
    page.select_option("#password-user", "pw")
    page.fill("#password-new", "short")
    page.click("#password-set")
    page.wait_for_selector("#password-result .error")
    assert "422: a password needs" in page.inner_text("#password-result")
    page.fill("#password-new", "pw-password-set")
    page.click("#password-set")
    page.wait_for_selector("#password-result .ok")
    tab = Tab(browser, srv)
    tab.login("pw", "pw-password-set")  # the admin's password works
    tab.page.fill("#own-password", "pw-password-own")
    tab.page.click("#own-password-set")
    tab.page.wait_for_url(re.compile(r".*/ui/login"))  # its session ended: log in again
    tab.login("pw", "pw-password-own")
    for old in ("pw-password-old", "pw-password-set"):
        got = httpx.post(srv.url + "/auth/login", json={"name": "pw", "password": old})
        assert got.status_code == 401, got.text
    actions = [(e["actor"], e["action"], e["target"]) for e in c.get("/audit")]
    assert actions.count(("user:root", "user.passwd", "pw")) == 1
    assert ("user:pw", "user.passwd", "pw") in actions
    assert tab.errors == []
    tab.close()


def test_a_custom_role_created_granted_and_deleted(admin: Tab, srv: Any) -> None:
    page, c = admin.page, srv.client()
    admin.go("/ui/users")
    page.fill("#role-name", "lister")
    page.check("#allow-template-read")
    page.check("#allow-clone-read")
    page.click("#role-create")
    page.wait_for_selector("main td:text-is('lister')")
    roles = {r["name"]: r for r in c.get("/roles")}
    assert sorted(roles["lister"]["permissions"]) == ["clone.read", "template.read"]
    page.fill("#role-name", "lister")  # no permission checked: the server's words
    page.click("#role-create")
    page.wait_for_selector("#role-result .error")
    assert "422: a role needs at least one permission" in page.inner_text("#role-result")
    page.check("#allow-audit-read")  # the same name again: 409
    page.click("#role-create")
    page.wait_for_selector("#role-result .error:text('409')")
    assert "409: role lister" in page.inner_text("#role-result")
    page.select_option("#grant-user", HD2)
    page.select_option("#grant-role", "lister")
    page.fill("#grant-scope", "template:base")
    page.click("#grant-add")
    page.wait_for_selector("main td:text('lister on template:base')")
    assert "lister on template:base" in {u["name"]: u for u in c.get("/users")}[HD2]["grants"]
    c.post("/grants/remove", {"user": HD2, "role": "lister", "scope": "template:base"})
    c.post("/roles", {"name": "gone", "allow": ["audit.read"]})
    admin.go("/ui/users")
    page.click("main tr:has(td:text-is('gone')) button:text-is('Delete')")
    page.wait_for_selector("main td:text-is('gone')", state="detached")
    assert "gone" not in {r["name"] for r in c.get("/roles")}
    actions = {(e["actor"], e["action"], e["target"]) for e in c.get("/audit")}
    assert ("user:root", "role.create", "lister") in actions
    assert ("user:root", "role.delete", "gone") in actions
    assert [e for e in admin.errors if not re.search("status of 4(09|22)", e)] == []


def test_a_pool_window_set_and_removed_on_the_pools_page(admin: Tab, srv: Any) -> None:
    page, c = admin.page, srv.client()
    admin.go("/ui/pools")
    page.select_option("#window-pool", "lab")
    page.fill("#window-cron", "not a cron")
    page.fill("#window-minutes", "60")
    page.click("#pool-window")
    page.wait_for_selector("#pool-window-result .error")
    assert "422" in page.inner_text("#pool-window-result")
    assert c.get("/pools/lab")["window_cron"] is None  # nothing changed
    page.fill("#window-cron", "0 2 * * *")
    page.select_option("#window-logoff", "notify-force")
    page.fill("#window-grace", "10m")
    page.click("#pool-window")
    page.wait_for_selector("main td:text-is('0 2 * * * (60 min)')")
    lab = c.get("/pools/lab")
    assert (lab["window_cron"], lab["window_minutes"], lab["window_logoff"]) == (
        "0 2 * * *",
        60,
        "notify-force",
    )
    assert lab["window_grace_seconds"] == 600
    page.select_option("#window-pool", "lab")
    page.fill("#window-cron", "")
    page.fill("#window-minutes", "")
    page.click("#pool-window")
    page.wait_for_selector("main td:text-is('0 2 * * * (60 min)')", state="detached")
    assert c.get("/pools/lab")["window_cron"] is None
    actions = [(e["actor"], e["action"], e["target"]) for e in c.get("/audit")]
    assert actions.count(("user:root", "pool.window", "lab")) == 2
    assert [e for e in admin.errors if "status of 422" not in e] == []


def test_a_console_form_larger_than_the_api_body_limit_is_refused(admin: Tab, srv: Any) -> None:
    csrf = admin.page.get_attribute('meta[name="csrf-token"]', "content")
    big = "x" * ((16 << 20) + 1)
    answer = admin.page.request.post(
        srv.url + "/ui/roles",
        headers={"X-CSRF-Token": csrf},
        form={"name": "huge", "allow": big},
    )
    assert answer.status == 413 and "larger than 16 MiB" in answer.text(), answer.text()[:200]
    assert "huge" not in {r["name"] for r in srv.client().get("/roles")}


def test_an_operation_paused_resumed_and_cancelled_from_its_page(
    admin: Tab, srv: Any, shots: Path
) -> None:
    c, page = srv.client(), admin.page
    names = [f"base-0{i}" for i in range(10, 30)]  # 20 starts of 0.4 s, one at a time
    op = c.post("/clones/start", {"names": names, "rollout": {"max_parallel": 1}})
    admin.go(f"/ui/operations/{op['id']}")
    policy = page.inner_text("#op-policy")  # a start: no logoff, grace or message shown
    assert "max_parallel=1" in policy and not re.search("message|logoff|grace", policy), policy
    page.click("#op-pause")
    page.wait_for_selector("#op-status:text('paused')")
    page.click("#op-resume")
    page.wait_for_selector("#op-status:text('running')")
    deadline = time.monotonic() + 15  # a few done, live: the picture of a running operation
    while int(page.get_attribute("#op-bar", "value") or 0) < 3 and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    page.screenshot(path=str(shots / "console-operation.png"), full_page=True)  # docs/img
    page.click("#op-cancel")
    page.wait_for_selector("#op-status:text('cancelled')", timeout=30_000)
    shown = c.get(f"/operations/{op['id']}")
    assert shown["status"] == "cancelled" and 0 < shown["cancelled"] < 20, shown
    assert page.locator("#op-cancel, #op-pause, #op-resume").count() == 0  # it has ended
    # the counts and the items on the page are of the same moment
    counts = page.inner_text("#op-counts")
    for state in ("done", "cancelled"):
        rows = page.locator(f"#items .badge.{state}").count()
        assert f"{rows} {state}" in counts, (state, rows, counts)
    steps = [
        e["action"]
        for e in c.get("/audit")
        if e["actor"] == f"user:{ADMIN}" and e["target"] == str(op["id"])
    ]
    assert {"operation.pause", "operation.resume", "operation.cancel"} <= set(steps), steps
    assert admin.errors == []


def test_the_failed_items_of_an_operation_retried_as_one_operation(admin: Tab, srv: Any) -> None:
    c, page = srv.client(), admin.page
    made = c.post("/clones", {"template": "base", "name": "odd-001", "wait": True})["operation"]
    assert made["failed"] == 1, made  # the sim fails every action on odd-001
    admin.go(f"/ui/operations/{made['id']}")
    page.wait_for_selector("#op-status:text('failed')")
    first = page.url
    page.click("#op-retry")
    page.wait_for_url(lambda url: url != first and re.search(r"/ui/operations/\d+$", url))
    retry_id = int(page.url.rsplit("/", 1)[1])
    assert retry_id != made["id"]
    page.wait_for_selector("#op-status:text('failed')", timeout=30_000)  # it fails again
    again = c.get(f"/operations/{retry_id}")
    assert (again["kind"], again["total"], again["failed"]) == ("clone.retry", 1, 1)
    assert "odd-001" in page.inner_text("#items")
    assert [e for e in admin.errors if "status of" not in e] == []


def test_a_failed_message_retried_as_the_same_message_to_that_clone(admin: Tab, srv: Any) -> None:
    c, page = srv.client(), admin.page
    names = ["base-040", "base-041"]
    c.post("/clones/start", {"names": names, "wait": True})
    op = c.post("/clones/message", {"names": names, "text": "Lunch at noon", "wait": True})
    assert (op["done"], op["failed"]) == (1, 1), op  # the sim failed the first message
    admin.go(f"/ui/operations/{op['id']}")
    first = page.url
    page.click("#op-retry")
    page.wait_for_url(lambda url: url != first and re.search(r"/ui/operations/\d+$", url))
    page.wait_for_selector("#op-status:text('done')", timeout=30_000)
    again = c.get(f"/operations/{page.url.rsplit('/', 1)[1]}")
    assert (again["kind"], again["total"], again["done"]) == ("clone.message", 1, 1)
    got = {n: [m["text"] for m in c.get("/sim/messages", params={"vm": n})] for n in names}
    assert sorted(got.values()) == [["Lunch at noon"], ["Lunch at noon"]], got
    assert {c.get(f"/clones/{n}")["status"] for n in names} == {"ready"}  # items failed, not clones
    assert admin.errors == []


def test_maintenance_aborted_from_the_template_page(admin: Tab, srv: Any) -> None:
    page = admin.page
    admin.go("/ui/templates/win")
    page.click("#enter-maintenance")
    page.wait_for_selector("#abort-maintenance")
    assert srv.client().get("/templates/win")["status"] == "maintenance"
    page.click("#abort-maintenance")  # its confirmation accepted
    page.wait_for_selector("#enter-maintenance")
    assert srv.client().get("/templates/win")["status"] == "ready"
    assert any(
        e["action"] == "template.maintenance.abort" and e["actor"] == f"user:{ADMIN}"
        for e in srv.client().get("/audit")
    )
    assert admin.errors == []


def test_a_disabled_users_session_reaches_no_page(browser: Any, admin: Tab, srv: Any) -> None:
    srv.client().post("/users", {"name": "leaver", "password": "leaver-password-1",
                                 "role": "helpdesk", "scope": "pool:lab"})  # fmt: skip
    tab = Tab(browser, srv)
    tab.login("leaver", "leaver-password-1")
    assert tab.go("/ui/clones").status == 200
    admin.go("/ui/users")
    admin.page.click("ul.useractions li:has-text('leaver:') button:text('Disable')")
    admin.page.wait_for_selector("ul.useractions li:has-text('leaver:') button:text('Enable')")
    for path in ["/ui/", "/ui/clones", "/ui/pools"]:
        tab.go(path)
        tab.page.wait_for_url(re.compile(r".*/ui/login\?next=.*"))
    csrf_less = tab.page.request.post(srv.url + "/ui/clones/bulk", form={"action": "stop"})
    assert csrf_less.status == 401
    tab.close()


def test_the_login_throttle_is_shown_with_its_429(browser: Any, srv: Any) -> None:
    srv.client().post("/users", {"name": "forgetful", "password": "forgetful-password-1",
                                 "role": "auditor"})  # fmt: skip
    tab = Tab(browser, srv)
    tab.go("/ui/login")
    for _ in range(5):
        tab.page.fill("#name", "forgetful")
        tab.page.fill("#password", "not-it")
        tab.page.click("button[type=submit]")
        tab.page.wait_for_selector("#login-error")
    tab.page.fill("#name", "forgetful")
    tab.page.fill("#password", "forgetful-password-1")  # right, but too soon
    answer = tab.page.expect_response(lambda r: r.url.endswith("/ui/login"))
    with answer as got:
        tab.page.click("button[type=submit]")
    assert got.value.status == 429
    assert "failed logins of forgetful: try again in" in tab.page.inner_text("#login-error")
    assert any(e["action"] == "auth.login-throttled" for e in srv.client().get("/audit"))
    tab.close()


def test_sites_clusters_and_keys_changed_on_their_pages(admin: Tab, srv: Any) -> None:
    page, c = admin.page, srv.client()
    admin.go("/ui/sites")
    page.fill("#site-name", "harbour")
    page.click("#site-create")
    assert page.inner_text("#site-token").startswith("gf_")  # shown once
    admin.go("/ui/sites")
    assert "harbour" in page.inner_text("main table")
    page.select_option("#assign-site", "branch")
    page.select_option("#assign-template", "win")
    page.click("#site-assign")
    page.wait_for_selector("main tr:has(td:text-is('branch')) td:text-is('win')")
    assert "win" in {s["name"]: s for s in c.get("/sites")}["branch"]["templates"]
    page.select_option("#rights-site", "harbour")
    page.check("#rights-patches")
    page.click("#site-rights")
    page.wait_for_selector("main tr:has(td:text-is('harbour')) td:nth-child(5):text-is('yes')")
    assert {s["name"]: s for s in c.get("/sites")}["harbour"]["local_patches"] is True
    page.click("main tr:has(td:text-is('harbour')) button:text-is('Revoke')")
    page.wait_for_selector("main tr:has(td:text-is('harbour')) td:nth-child(6):text-is('yes')")
    assert {s["name"]: s for s in c.get("/sites")}["harbour"]["token_revoked"] is True
    admin.go("/ui/hosts")
    page.fill("#cluster-name", "edge")
    page.fill("#cluster-hosts", "sim-host-2")
    page.fill("#cluster-coordinator", "sim-host-2")
    page.click("#cluster-create")
    page.wait_for_selector("main td:text-is('edge')")
    assert c.get("/clusters/edge")["coordinator"] == "sim-host-2"
    page.select_option("#schedule-cluster", "edge")
    page.select_option("#schedule-kind", "weekly")
    page.fill("#schedule-day", "1")
    page.fill("#schedule-at", "03:30")
    page.click("#cluster-schedule")
    page.wait_for_selector("main tr:has(td:text-is('edge')) td:text('03:30')")  # reloaded
    schedule = c.get("/clusters/edge")["sync_schedule"]
    assert "03:30" in schedule and schedule.startswith("weekly"), schedule
    page.select_option("#proxy-cluster", "edge")
    page.fill("#proxy-url", "ftp://proxy.lan")  # refused in the server's words
    page.click("#cluster-proxy")
    page.wait_for_selector("#cluster-proxy-result .error")
    assert "422" in page.inner_text("#cluster-proxy-result")
    assert c.get("/clusters/edge")["proxy"] is None
    page.fill("#proxy-url", "http://proxy.lan:3128")
    page.fill("#proxy-user", "fleet")
    page.fill("#proxy-password", "proxy-secret-42")
    page.click("#cluster-proxy")
    page.wait_for_selector("main td:text('http://proxy.lan:3128 as fleet (password set)')")
    assert "proxy-secret-42" not in page.content()  # never shown back
    assert c.get("/clusters/edge")["proxy"]["password_set"] is True
    page.select_option("#channel-cluster", "edge")
    page.select_option("#channel-kind", "normal")
    page.fill("#channel-url", "http://127.0.0.1:9/debian")
    page.fill("#channel-suite", "bookworm")
    page.fill("#channel-components", "main")
    page.click("#cluster-channel")  # no signing key: refused in the server's words
    page.wait_for_selector("#cluster-channel-result .error")
    assert "needs the key its InRelease is signed with" in page.inner_text(
        "#cluster-channel-result"
    )
    assert c.get("/clusters/edge")["channel"] is None
    page.select_option("#channel-kind", "offline")
    page.fill("#channel-url", "")
    page.fill("#channel-suite", "")
    page.fill("#channel-components", "")
    page.click("#cluster-channel")
    page.wait_for_selector("main tr:has(td:text-is('edge')) td:text-is('offline')")
    assert c.get("/clusters/edge")["channel"]["kind"] == "offline"
    # pve has no package channel: the sync is refused in the server's words, next to the table
    page.click("main tr:has(td:text-is('pve')) button:text('Sync now')")
    page.wait_for_selector("#table-result .error")
    refusal = page.inner_text("#table-result")
    assert re.match(r"^4\d\d: ", refusal) and "pve" in refusal, refusal
    admin.go("/ui/keys")
    page.fill("#key-name", "partner")
    page.fill("#key-public", "not a key")
    page.click("#key-trust")
    page.wait_for_selector("#key-trust-result .error")
    assert "422" in page.inner_text("#key-trust-result")
    page.fill("#key-public", "ab" * 32)
    page.click("#key-trust")
    page.wait_for_selector("main td:has-text('partner')")
    actions = {(e["actor"], e["action"]) for e in c.get("/audit")}
    assert {("user:root", "site.create"), ("user:root", "cluster.create")} <= actions
    assert {("user:root", "site.rights"), ("user:root", "site.revoke")} <= actions
    assert {("user:root", "cluster.sync-schedule"), ("user:root", "cluster.proxy")} <= actions
    assert [e for e in admin.errors if not re.search(r"status of 4\d\d", e)] == []


def test_a_bundle_uploaded_on_the_keys_page(admin: Tab, srv: Any, tmp_path: Path) -> None:
    page, c = admin.page, srv.client()
    junk = tmp_path / "junk.bundle"
    junk.write_bytes(b"not a bundle at all" * 100)
    admin.go("/ui/keys")
    page.set_input_files("#bundle-file", str(junk))
    page.click("#bundle-go")
    page.wait_for_selector("#bundle-result .error")
    assert page.inner_text("#bundle-result").startswith(
        "422: bundle refused: the file is truncated or not a bundle"
    )
    # this server's own bundle of win, its own key trusted: imported again
    own = c.get("/keys")["own"]["public_key"]
    c.post("/keys/trust", {"name": "myself", "public_key": own})
    admin.go("/ui/keys")
    page.fill("#export-since", "x")  # refused in the server's words, on the page
    page.click("#bundle-export-go")
    page.wait_for_selector("main .error, main p:text('422')")
    assert "since 'x' is not a version number" in page.inner_text("main")
    admin.go("/ui/keys")
    page.select_option("#export-template", "win")
    with page.expect_download() as download:  # the console's own export: a download
        page.click("#bundle-export-go")
    assert download.value.suggested_filename == "win.bundle"
    real = tmp_path / "win.bundle"
    download.value.save_as(str(real))
    page.set_input_files("#bundle-file", str(real))
    page.click("#bundle-go")
    page.wait_for_selector("#bundle-result .ok")
    said = page.inner_text("#bundle-result")
    assert said.startswith("bundle of win imported (signed by myself): versions added none;")
    assert "already here v1" in said  # nothing new: every version of it is here
    assert any(
        e["action"] == "bundle.import" and e["actor"] == f"user:{ADMIN}" for e in c.get("/audit")
    )
    admin.go("/ui/keys")
    page.select_option("#untrust-name", "myself")
    page.click("#key-untrust")  # the page reloads without it
    page.wait_for_selector("#untrust-name option:text-is('myself')", state="detached")
    assert "myself" not in {k["name"] for k in c.get("/keys")["trusted"]}
    actions = {(e["actor"], e["action"]) for e in c.get("/audit")}
    assert (f"user:{ADMIN}", "key.untrust") in actions
    assert [e for e in admin.errors if "status of 422" not in e] == []


def test_a_helpdesk_user_of_one_pool_sees_its_clones_and_no_maintenance(
    browser: Any, srv: Any, shots: Path
) -> None:
    tab = Tab(browser, srv, width=820, height=1180)  # a tablet
    tab.login(HD, HD_PW)
    page = tab.page
    tab.go("/ui/clones?size=500")
    shown = page.locator('input[name="clone"]').evaluate_all("els => els.map(e => e.value)")
    lab = {c["name"] for c in srv.client().get("/clones") if c["name"].startswith("lab")}
    pool_clones = {
        r[0]
        for r in srv.rows(
            "SELECT c.name FROM clones c JOIN pools p ON c.pool_id = p.id WHERE p.name = 'lab'"
        )
    }
    assert set(shown) == pool_clones and len(pool_clones) == 3, (shown, lab)
    page.screenshot(path=str(shots / "clones-tablet.png"), full_page=True)
    options = page.locator("#bulk-action option").evaluate_all("els => els.map(e => e.value)")
    assert set(options) == {"restore", "start", "stop", "message", "logoff"}
    nav = page.inner_text("nav[aria-label=Main]")
    assert "Audit" not in nav and "Users" not in nav
    # a template outside its pool: refused in the server's words
    assert tab.go("/ui/templates/base").status == 403
    assert "template.read" in page.inner_text("main")
    # forged: the maintenance route, posted with the session's own valid CSRF token
    csrf = page.get_attribute('meta[name="csrf-token"]', "content")
    answer = page.request.post(
        srv.url + "/ui/templates/base/maintenance/enter", headers={"X-CSRF-Token": csrf}
    )
    assert answer.status == 403
    assert "template.maintenance" in answer.text()
    # a clone of another template, restored by a forged bulk post: refused, nothing started
    before = len(srv.client().get("/operations"))
    answer = page.request.post(
        srv.url + "/ui/clones/bulk",
        headers={"X-CSRF-Token": csrf},
        form={"action": "restore", "clone": "win-001"},
    )
    assert answer.status == 403 and "clone.restore" in answer.text()
    assert len(srv.client().get("/operations")) == before
    assert srv.client().get("/templates/base")["status"] == "ready"
    assert [e for e in tab.errors if "status of 403" not in e] == []
    tab.close()
    # helpdesk on a template reads it, and has no maintenance control there either
    tab = Tab(browser, srv)
    tab.login(HD2, HD_PW)
    assert tab.go("/ui/templates/win").status == 200
    assert tab.page.locator("svg#chain").count() == 1
    assert tab.page.locator("#maintenance, #enter-maintenance, #exit-maintenance").count() == 0
    assert tab.errors == []
    tab.close()


def test_a_post_without_csrf_token_is_refused_and_a_logged_out_session_reaches_nothing(
    browser: Any, srv: Any
) -> None:
    tab = Tab(browser, srv)
    tab.login(ADMIN, ADMIN_PW)
    page = tab.page
    answer = page.request.post(srv.url + "/ui/templates/win/maintenance/enter")
    assert answer.status == 403 and "CSRF" in answer.text()
    answer = page.request.post(
        srv.url + "/ui/templates/win/maintenance/enter", headers={"X-CSRF-Token": "0" * 64}
    )
    assert answer.status == 403
    assert srv.client().get("/templates/win")["status"] == "ready"
    secret = next(c for c in tab.context.cookies() if c["name"] == "gf_console")["value"]
    tab.go("/ui/")
    page.click("header form.who button")
    page.wait_for_url(re.compile(r".*/ui/login$"))
    assert "logout" in {e["action"].split(".")[-1] for e in srv.client().get("/audit")}
    # the old secret, sent again by hand, reaches no page: each one sends to the login page
    old = httpx.Client(base_url=srv.url, cookies={"gf_console": secret}, follow_redirects=False)
    for path in ALL_PAGES:
        got = old.get(path)
        assert got.status_code == 303 and got.headers["location"].startswith("/ui/login"), path
    assert old.post("/ui/clones/bulk", data={"action": "restore"}).status_code == 401
    tab.close()


def test_the_main_pages_have_no_serious_accessibility_violation(browser: Any, srv: Any) -> None:
    # the console's CSP allows no inline script: axe is injected past it, in this context only
    admin = Tab(browser, srv, bypass_csp=True)
    admin.login(ADMIN, ADMIN_PW)
    found: dict[str, list[str]] = {}
    for path in ["/ui/login", *MAIN_PAGES]:
        admin.go(path)
        admin.page.add_script_tag(path=str(AXE))
        result = admin.page.evaluate("async () => JSON.stringify(await axe.run(document))")
        report = json.loads(result)
        assert len(report["passes"]) > 10, path  # axe ran and checked the page
        bad = [
            f"{v['id']} ({v['impact']}): {v['help']}"
            for v in report["violations"]
            if v["impact"] in ("serious", "critical")
        ]
        if bad:
            found[path] = bad
    admin.close()
    assert found == {}
