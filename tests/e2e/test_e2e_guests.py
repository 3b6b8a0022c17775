"""Guests against a real server process on the sim driver: quarantine policies applied over
HTTP and the CLI, clones evaluated through their (simulated) guest agent, filters switched,
users told once, the guest tool's version watched. The sim models the guest side (files and
the tool, by the domain's rules: tests/integration/test_guest_tool.py holds the real shell
tool to the same rules); tests/drivers/test_libvirt_boot.py proves it in a real guest."""

from __future__ import annotations

import json
import re
import textwrap
import time
from pathlib import Path

import httpx
from inflight import root_conftest

from goldfleet import guest
from goldfleet.domain import quarantine as q

Server = root_conftest().Server
TOOL = guest.GUEST_TOOL_PATH

POLICY = textwrap.dedent(
    """\
    threshold = "p2"
    restricted_message = "Patch this desktop: it may reach only the update server."
    [update_available_message]
    enabled = true
    text = "A newer patch level is available."
    [restricted_access]
    allow = ["10.9.8.7:443"]
    [[versions]]
    name = "p1"
    [[versions]]
    name = "p2"
    [[versions]]
    name = "p3"
    """
)
D1, D2, D3 = (v.descriptor for v in q.parse_policy(POLICY).versions)


def install_tool(fleet, vm: str) -> None:
    """An image builder's step, here done from inside the guest: the packaged tool copied in."""
    fleet.client.put(f"/sim/vms/{vm}/files", {"path": TOOL, "text": guest.tool_path().read_text()})


def run_in(fleet, vm: str, *argv: str) -> dict:
    return fleet.client.post(f"/sim/vms/{vm}/run", {"argv": [TOOL, *argv]})


def statuses(fleet, template: str = "base") -> dict[str, dict]:
    return {g["clone"]: g for g in fleet.client.get("/compliance", params={"template": template})}


def messages(fleet, vm: str) -> list[str]:
    return [m["text"] for m in fleet.client.get("/sim/messages", params={"vm": vm})]


def test_quarantine_end_to_end(fleet, template: str) -> None:
    a, b, c = fleet.create(count=3)
    for vm in (a, b, c):
        fleet.client.post(f"/clones/{vm}/start")
        install_tool(fleet, vm)
    fleet.client.post(f"/clones/{c}/stop")

    # a bad policy is refused with every problem and its line; nothing is kept
    bad = POLICY.replace('threshold = "p2"', 'threshold = "p9"')
    msg = fleet.error(422, fleet.client.put, f"/templates/{template}/compliance", {"policy": bad})
    assert "line 1: threshold 'p9' names no version" in msg
    fleet.error(404, fleet.client.get, f"/templates/{template}/compliance")

    # applied: no descriptor yet, so both running clones are restricted (fail closed)
    applied = fleet.client.put(f"/templates/{template}/compliance", {"policy": POLICY})
    assert applied["number"] == 1 and applied["policy"]["threshold"] == "p2"
    assert applied["filters"]["restricted"] == "goldfleet-restricted-base"
    st = statuses(fleet)
    assert st[a]["access"] == st[b]["access"] == "restricted"
    assert st[a]["reason"] == "the guest holds no descriptor"
    assert st[a]["filter"] == "goldfleet-restricted-base"
    assert st[c]["access"] == "unknown" and st[c]["reason"] == "not running"
    assert messages(fleet, a) == ["Patch this desktop: it may reach only the update server."]
    # the filter definitions: the restricted one lets out DHCP, DNS and the update server only
    xml = dict(fleet.server.rows("SELECT name, xml FROM sim_filters"))
    assert 'dstipaddr="10.9.8.7"' in xml["goldfleet-restricted-base"]
    assert "<all />" in xml["goldfleet-restricted-base"]
    assert set(xml) == {"goldfleet-normal-base", "goldfleet-restricted-base"}

    # inside the guest, updates go in order; a skip is refused with exit 1, -n only checks
    assert run_in(fleet, a, "nq-set", D2)["exit_code"] == 1
    assert run_in(fleet, a, "nq-set", "-n", D1)["exit_code"] == 0
    assert run_in(fleet, a, "nq-get")["exit_code"] == 1  # -n saved nothing
    assert run_in(fleet, a, "nq-set", D1)["exit_code"] == 0
    assert run_in(fleet, a, "nq-set", D2)["exit_code"] == 0
    assert run_in(fleet, a, "nq-get")["stdout"] == D2 + "\n"

    # one evaluation releases it; its users hear about the newer version once
    checked = fleet.client.post("/compliance/check", {"template": template})
    assert (checked["clones"], checked["changed"], checked["switched"]) == (2, 1, 1)
    st = statuses(fleet)
    assert (st[a]["access"], st[a]["quarantine_version"]) == ("normal", "p2")
    assert st[a]["filter"] == "goldfleet-normal-base" and st[a]["descriptor"] == D2
    assert st[b]["access"] == "restricted"
    assert messages(fleet, a)[-1] == "A newer patch level is available."
    again = fleet.client.post("/compliance/check", {"template": template})
    assert (again["changed"], again["switched"], again["messages"]) == (0, 0, 0)
    assert len(messages(fleet, a)) == 2  # not at every evaluation

    # garbage in a descriptor file: restricted, the reason says so
    fleet.client.put(
        f"/sim/vms/{b}/files", {"path": guest.GUEST_DESCRIPTOR_PATH, "text": "\x01\x02"}
    )
    fleet.client.post("/compliance/check", {})
    assert statuses(fleet)[b]["reason"] == "the descriptor file holds garbage"

    # recreated while at p2: it comes back with a fresh system disk (no descriptor), restricted
    fleet.client.post(f"/clones/{a}/restore")
    fleet.client.post(f"/clones/{a}/start")
    fleet.client.post("/compliance/check", {})
    st = statuses(fleet)
    assert st[a]["access"] == "restricted" and st[a]["descriptor"] is None
    assert st[a]["tool_version"] is None  # the tool went with the old system disk

    # the audit log has the policy; a second apply of the same text adds nothing
    again = fleet.client.put(f"/templates/{template}/compliance", {"policy": POLICY})
    assert again["number"] == 1
    audit = [e for e in fleet.client.get("/audit") if e["action"] == "compliance.apply"]
    assert len(audit) == 1 and audit[0]["detail"]["threshold"] == "p2"


def test_agent_status_counts_outdated_and_missing_tools(fleet, template: str) -> None:
    a, b, c = fleet.create(count=3)
    for vm in (a, b, c):
        fleet.client.post(f"/clones/{vm}/start")
    install_tool(fleet, a)
    old = (
        guest.tool_path()
        .read_text()
        .replace(f"TOOL_VERSION={guest.tool_version()}", "TOOL_VERSION=0.9")
    )
    fleet.client.put(f"/sim/vms/{b}/files", {"path": TOOL, "text": old})
    before = fleet.client.get("/agents")
    assert (before["unknown"], before["outdated"], before["missing"]) == (3, 0, 0)
    fleet.client.post("/compliance/check", {})  # reads the tools of every running clone
    after = fleet.client.get("/agents")
    assert (after["unknown"], after["outdated"], after["missing"]) == (0, 1, 1)
    listed = {x["clone"]: x["tool_version"] for x in after["clones"]}
    assert listed == {b: "0.9", c: None}
    assert after["packaged"] == guest.tool_version()
    # the console's dashboard counts them in one grouped query (guests.agent_counts): the same
    fleet.client.post("/users", {"name": "ops", "password": "ops-password-1", "role": "admin"})
    with httpx.Client(base_url=fleet.server.url) as web:
        form = web.get("/ui/login").text
        token = re.search(r'name="login_csrf" value="([^"]+)"', form)
        assert token is not None
        fields = {"name": "ops", "password": "ops-password-1", "login_csrf": token.group(1)}
        assert web.post("/ui/login", data=fields).status_code == 303
        assert "1 out of date, 1 missing" in web.get("/ui/").text

    out = fleet.cli("agent", "status", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["outdated"] == 1
    out = fleet.cli("agent", "status")
    assert "1 clones outdated, 1 without it" in out.stdout
    # serve says it at start, as RAS's console does
    fleet.server.stop()
    fleet.server.start()
    log = (fleet.home.parent / f"server-{fleet.server.port}.log").read_text()
    assert f"1 clones have an older goldfleet-guest than {guest.tool_version()}, 1 have none" in log


def test_cli_apply_show_status_check(fleet, template: str, tmp_path: Path) -> None:
    (vm,) = fleet.create(count=1)
    fleet.client.post(f"/clones/{vm}/start")
    install_tool(fleet, vm)
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    out = fleet.cli("compliance", "apply", template, str(policy))
    assert out.returncode == 0, out.stderr
    assert "policy 1 (version)" in out.stdout and "goldfleet-restricted-base" in out.stdout
    shown = json.loads(fleet.cli("compliance", "show", template, "--json").stdout)
    assert [v["name"] for v in shown["policy"]["versions"]] == ["p1", "p2", "p3"]
    assert fleet.cli("sim", "guest-run", vm, TOOL, "nq-set", D1).returncode == 0
    skip = fleet.cli("sim", "guest-run", vm, TOOL, "nq-set", D3)
    assert skip.returncode == 1 and "not the next version" in skip.stderr
    out = fleet.cli("compliance", "check", "--template", template)
    assert out.returncode == 0 and "1 running clones read" in out.stdout
    rows = json.loads(fleet.cli("compliance", "status", "--json").stdout)
    assert [(r["clone"], r["access"], r["quarantine_version"]) for r in rows] == [
        (vm, "restricted", "p1")
    ]
    text = fleet.cli("compliance", "status").stdout
    assert "below the threshold p2" in text
    bad = tmp_path / "bad.toml"
    bad.write_text(POLICY + '\n[[versions]]\nname = "p1"\n')
    out = fleet.cli("compliance", "apply", template, str(bad))
    assert out.returncode == 1 and "used twice" in out.stderr


def test_silent_agents_fail_closed_and_the_periodic_pass_runs(home: Path, tmp_path: Path) -> None:
    # the agent of silent-001 never answers (the sim plan hangs its reads, then gives up)
    plan = {"hang": {"guest_read": ["silent-001"]}, "hang_seconds": 0.2}
    srv = Server(
        home=home,
        env={"GOLDFLEET_COMPLIANCE_SECONDS": "0.5", "GOLDFLEET_SIM_PLAN": json.dumps(plan)},
    )
    srv.start()
    try:
        client = srv.client()
        image = tmp_path / "t.raw"
        image.write_bytes(b"\0" * (16 << 20))
        client.upload(
            "/templates/import", image, {"name": "desk", "format": "raw", "temp": [], "data": []}
        )
        for vm in ("ok-001", "silent-001"):
            client.post("/clones", {"template": "desk", "name": vm, "wait": True})
            client.post(f"/clones/{vm}/start")
        client.put("/templates/desk/compliance", {"policy": POLICY})
        client.put("/sim/vms/ok-001/files", {"path": TOOL, "text": guest.tool_path().read_text()})
        client.post("/sim/vms/ok-001/run", {"argv": [TOOL, "nq-set", D1]})
        client.post("/sim/vms/ok-001/run", {"argv": [TOOL, "nq-set", D2]})
        # no check asked: the periodic pass releases it
        deadline = time.monotonic() + 30
        while True:
            st = {g["clone"]: g for g in client.get("/compliance")}
            if st["ok-001"]["access"] == "normal":
                break
            assert time.monotonic() < deadline, st
            time.sleep(0.2)
        assert st["silent-001"]["access"] == "restricted"
        assert st["silent-001"]["reason"] == "the guest agent did not answer"
        assert st["silent-001"]["filter"] == "goldfleet-restricted-desk"
    finally:
        srv.stop()


def test_a_version_carries_its_tool_and_quarantine_version(fleet, template: str) -> None:
    """Sealed at p2 with the tool read from the maintenance VM: fresh clones of that version
    start compliant (their descriptor written through the agent), and one recreated while
    restricted comes back at its version's descriptor."""
    (old,) = fleet.create(count=1)
    fleet.client.post(f"/clones/{old}/start")
    fleet.client.put(f"/templates/{template}/compliance", {"policy": POLICY})
    assert statuses(fleet)[old]["access"] == "restricted"

    fleet.client.post(f"/templates/{template}/maintenance/enter")
    # refusals come first and change nothing: a name the policy lacks, auto without the VM
    msg = fleet.error(
        422,
        fleet.client.post,
        f"/templates/{template}/maintenance/exit",
        {"quarantine_version": "p7"},
    )
    assert "no version 'p7'" in msg
    msg = fleet.error(
        409,
        fleet.client.post,
        f"/templates/{template}/maintenance/exit",
        {"guest_tool_version": "auto"},
    )
    assert "maintenance start" in msg
    fleet.client.post(f"/templates/{template}/maintenance/start")
    vm = next(
        v["name"] for v in fleet.client.get("/sim/vms") if v["name"].startswith("maintenance.")
    )
    install_tool(fleet, vm)
    done = fleet.client.post(
        f"/templates/{template}/maintenance/exit",
        {
            "shutdown": True,
            "guest_tool_version": "auto",
            "quarantine_version": "p2",
            "recreate": "linked",
        },
    )
    fleet.wait(done["operation"]["id"])
    v2 = fleet.client.get(f"/templates/{template}/versions")[-1]
    assert (v2["guest_tool_version"], v2["quarantine_version"]) == (guest.tool_version(), "p2")

    # the recreated clone is back on v2, running, with no descriptor on its new system disk:
    # the evaluation writes its version's (p2) and releases it
    fleet.client.post("/compliance/check", {})
    st = statuses(fleet)[old]
    assert (st["version"], st["access"], st["quarantine_version"]) == (2, "normal", "p2")
    # the tool installed in the maintenance VM is in v2's image: every clone on v2 has it
    assert run_in(fleet, old, "version")["stdout"] == guest.tool_version() + "\n"
    assert statuses(fleet)[old]["tool_version"] == guest.tool_version()
    (fresh,) = fleet.create(count=1)
    fleet.client.post(f"/clones/{fresh}/start")
    fleet.client.post("/compliance/check", {})
    assert statuses(fleet)[fresh]["access"] == "normal"
    assert statuses(fleet)[fresh]["descriptor"] == D2


def test_custom_policy_plugin_judges_and_fails_closed(fleet, template: str, tmp_path: Path) -> None:
    """A custom policy's plug-in gets the descriptor string: exit 0 normal, 1 restricted; a
    plug-in that hangs past its time limit or crashes leaves the clone restricted, with why."""
    plugin = tmp_path / "judge"
    plugin.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        "  *sig=ok*) exit 0 ;;\n"
        "  *hang*) sleep 30 ;;\n"
        "  *crash*) kill -SEGV $$ ;;\n"
        "esac\n"
        "exit 1\n"
    )
    plugin.chmod(0o755)
    policy = f'kind = "custom"\n[plugin]\npath = "{plugin}"\ntimeout_s = 1\n'
    vms = fleet.create(count=4)
    said = dict(zip(vms, ["av sig=ok", "av sig=stale", "please hang", "crash now"], strict=True))
    for vm in vms:
        fleet.client.post(f"/clones/{vm}/start")
        install_tool(fleet, vm)
    fleet.client.put(f"/templates/{template}/compliance", {"policy": policy})
    for vm, text in said.items():
        assert run_in(fleet, vm, "nq-set", text)["exit_code"] == 0
    fleet.client.post("/compliance/check", {})
    st = statuses(fleet)
    a, b, c, d = vms
    assert st[a]["access"] == "normal" and "exit 0" in st[a]["reason"]
    assert st[b]["access"] == "restricted" and "exit 1" in st[b]["reason"]
    assert st[c]["access"] == "restricted" and "no answer within 1 s" in st[c]["reason"]
    assert st[d]["access"] == "restricted" and "signal 11" in st[d]["reason"]
    # a plug-in missing on the server: the policy is refused there, nothing changes
    gone = policy.replace(str(plugin), str(tmp_path / "nowhere"))
    msg = fleet.error(422, fleet.client.put, f"/templates/{template}/compliance", {"policy": gone})
    assert "is missing" in msg
    assert fleet.client.get(f"/templates/{template}/compliance")["number"] == 1


def wait_updates(client, timeout: float = 90) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        ups = client.get("/agents/updates")
        if ups and all(u["status"] in ("done", "failed") for u in ups):
            return ups
        assert time.monotonic() < deadline, ups
        time.sleep(0.2)


def check_updated(fleet, template: str, linked: list[str], full: list[str]) -> dict:
    """The update's outcome: a version holding the packaged tool, the linked clones recreated
    on it and seeing the tool from its image, the running full clones with it pushed in."""
    (up,) = [u for u in wait_updates(fleet.client) if u["template"] == template]
    assert up["status"] == "done", up
    v = fleet.client.get(f"/templates/{template}/versions")[-1]
    assert (v["number"], v["guest_tool_version"]) == (up["version"], guest.tool_version())
    if up["operation_id"] is not None:
        assert fleet.wait(up["operation_id"])["status"] == "done"
    assert sorted(up["pushed"]) == sorted(full)
    assert all(r == f"installed {guest.tool_version()}" for r in up["pushed"].values())
    for vm in linked:
        assert fleet.show(vm)["version"] == up["version"]
        if fleet.show(vm)["power"] != "running":
            fleet.client.post(f"/clones/{vm}/start")
    fleet.client.post("/compliance/check", {})
    agents = fleet.client.get("/agents")
    assert (agents["outdated"], agents["missing"], agents["templates"]) == (0, 0, [])
    return up


def test_agent_update_linked_and_full_clones(fleet, template: str) -> None:
    linked = fleet.create(count=2)
    full = fleet.create(count=1, full=True)
    stopped_full = fleet.create(count=1, full=True)
    for vm in (*linked, *full):
        fleet.client.post(f"/clones/{vm}/start")
    fleet.client.post("/compliance/check", {})
    assert fleet.client.get("/agents")["missing"] == 3

    # refusals first, nothing stored: an unknown template, one in maintenance
    fleet.error(404, fleet.client.post, "/agents/update", {"templates": ["nope"]})
    fleet.client.post(f"/templates/{template}/maintenance/enter")
    msg = fleet.error(409, fleet.client.post, "/agents/update", {})
    assert "maintenance" in msg
    fleet.client.post(f"/templates/{template}/maintenance/abort")
    assert fleet.client.get("/agents/updates") == []

    made = fleet.client.post("/agents/update", {"rollout": {"logoff": "force"}})
    assert [(u["template"], u["status"]) for u in made] == [(template, "queued")]
    up = check_updated(fleet, template, linked, full)
    assert stopped_full[0] not in up["pushed"]  # pushed into running clones only
    # the template's current version now holds the packaged tool: nothing left to update
    msg = fleet.error(422, fleet.client.post, "/agents/update", {})
    assert "no template to update" in msg
    out = fleet.cli("agent", "updates")
    assert out.returncode == 0 and "done" in out.stdout
