"""Host reboots and toolstack restarts through the ``ssh`` host agent, against a real OpenSSH
server on loopback (issue 11; docs/host-updates.md "Reboots and toolstack restarts over the
host agent").

NEVER reboots this machine nor restarts any of its services: the hosts' roots are folders
(``ssh_roots``) and the reboot / toolstack commands (``host_reboot_command``,
``host_toolstack_command``) are scripts in a host's root folder, run there by the real ``ssh``
through the real ``sshd``: the "reboot" script writes another boot id into the root's
``proc/sys/kernel/random/boot_id`` after a short delay, as a real reboot changes the real one.
Proven: the boot id is read over ssh; after the reboot command the host is not back while it
answers with the same boot id and is back once it answers with another; a host that never
reboots stays not back; a failing command is refused in its own words. Not proven here: a real
reboot of a real host, nor a real ``systemctl restart libvirtd``.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

import pytest
from aptkit import World, host_root, material, world
from sitekit import make_raw
from sshkit import SSHD, Sshd, sshd

from goldfleet.config import Settings
from goldfleet.drivers.agents import BOOT_ID, HostTaskFailed, HostUnreachable, make_agent

__all__ = ["material", "sshd", "world"]  # the fixtures (tests/e2e/aptkit.py, sshkit.py)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("sshd"),
    pytest.mark.skipif(not Path(SSHD).exists(), reason="openssh-server: make system-packages"),
]

# the "reboot": another boot id a moment later, in the background (the session returns at once)
REBOOT_SH = """\
new=$(cat /proc/sys/kernel/random/uuid)
( sleep {delay}; printf '%s\\n' "$new" > proc/sys/kernel/random/boot_id ) \
  </dev/null >/dev/null 2>&1 &
"""


def _root(tmp_path: Path, host: str = "h1", boot: str = "boot-before") -> Path:
    root = host_root(tmp_path, host, [])
    (root / BOOT_ID).parent.mkdir(parents=True, exist_ok=True)
    (root / BOOT_ID).write_text(boot + "\n")
    return root


def _wait(check, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


def test_reboot_is_back_only_with_another_boot_id(sshd: Sshd, tmp_path: Path) -> None:
    root = _root(tmp_path)
    (root / "reboot.sh").write_text(REBOOT_SH.format(delay=3))
    agent = sshd.agent("h1", root, reboot_command="sh ./reboot.sh")
    before = agent.boot_id()
    assert before == "boot-before"
    agent.reboot()
    # the same boot id: not rebooted yet
    assert agent.boot_id() == before
    assert not agent.back_from_reboot(before)
    assert _wait(lambda: agent.back_from_reboot(before))
    after = agent.boot_id()
    assert after != before and len(after) == 36  # a fresh uuid, written by the "reboot"


def test_a_host_that_never_reboots_is_never_back(sshd: Sshd, tmp_path: Path) -> None:
    root = _root(tmp_path)
    agent = sshd.agent("h1", root, reboot_command="true")  # the command does nothing
    before = agent.boot_id()
    agent.reboot()
    assert not _wait(lambda: agent.back_from_reboot(before), seconds=2)
    assert agent.boot_id() == before


def test_unreachable_is_not_back(sshd: Sshd, tmp_path: Path) -> None:
    root = _root(tmp_path)
    agent = sshd.agent("h1", root, known_hosts=sshd.known_hosts("someone-else"))
    with pytest.raises(HostUnreachable, match="Host key verification failed"):
        agent.boot_id()
    assert not agent.back_from_reboot("boot-before")


def test_without_a_root_boot_id_is_this_machines(sshd: Sshd) -> None:
    """No root: the host's own ``/proc/sys/kernel/random/boot_id`` (only read)."""
    agent = sshd.agent("h1", None)
    assert agent.boot_id() == Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def test_a_failing_reboot_command_is_refused_in_its_own_words(sshd: Sshd, tmp_path: Path) -> None:
    root = _root(tmp_path)
    (root / "reboot.sh").write_text("echo 'Failed to reboot: Access denied' >&2\nexit 1\n")
    agent = sshd.agent("h1", root, reboot_command="sh ./reboot.sh")
    with pytest.raises(HostTaskFailed) as exc:
        agent.reboot()
    assert "(exit 1): Failed to reboot: Access denied" in exc.value.message
    assert "'sh ./reboot.sh'" in exc.value.message
    assert agent.boot_id() == "boot-before"


def test_toolstack_restart_runs_the_command_or_reports_its_failure(
    sshd: Sshd, tmp_path: Path
) -> None:
    root = _root(tmp_path)
    (root / "restart.sh").write_text("date +%s.%N >> toolstack-restarts\n")
    agent = sshd.agent("h1", root, toolstack_command="sh ./restart.sh")
    agent.restart_toolstack()
    agent.restart_toolstack()
    assert len((root / "toolstack-restarts").read_text().splitlines()) == 2
    (root / "restart.sh").write_text(
        "echo 'Job for libvirtd.service failed because the control process exited' >&2\nexit 5\n"
    )
    with pytest.raises(HostTaskFailed) as exc:
        agent.restart_toolstack()
    assert exc.value.message.endswith(
        "(exit 5): Job for libvirtd.service failed because the control process exited"
    )


def test_settings_give_the_commands(sshd: Sshd, tmp_path: Path) -> None:
    root = _root(tmp_path)
    (root / "restart.sh").write_text("echo restarted > toolstack-restarted\n")
    s = Settings(
        home=tmp_path / "home",
        host_agent="ssh",
        ssh_hosts={"h1": f"{sshd.user}@127.0.0.1:{sshd.port}"},
        ssh_key=sshd.key,
        ssh_known_hosts=sshd.known_hosts("h1"),
        ssh_roots=str(tmp_path),
        host_toolstack_command="sh ./restart.sh",
    )
    agent = make_agent(s, "h1")
    assert agent.boot_id() == "boot-before"
    agent.restart_toolstack()
    assert (root / "toolstack-restarted").read_text() == "restarted\n"
    defaults = Settings(home=tmp_path / "home")
    assert defaults.host_reboot_command == "systemctl reboot"
    assert defaults.host_toolstack_command == "systemctl restart libvirtd"
    with pytest.raises(ValueError, match="the command a host runs"):
        Settings(home=tmp_path / "home", host_reboot_command="  ")


def test_the_local_root_agent_cannot_reboot(tmp_path: Path) -> None:
    from goldfleet.drivers.base import Unsupported

    agent = make_agent(Settings(home=tmp_path, host_roots=tmp_path), "h1")
    for call in (agent.boot_id, agent.reboot, agent.restart_toolstack):
        with pytest.raises(Unsupported, match="local-root host agent cannot"):
            call()


def _update(w: World, timeout: float = 90, unlike: str | None = None) -> dict:
    """The update once it is paused (for another reason than ``unlike``), done or failed."""
    deadline = time.monotonic() + timeout
    while True:
        r = w.client.get("/clusters/pve/update")
        if r["status"] in ("done", "failed") or (r["status"] == "paused" and r["reason"] != unlike):
            return r
        assert time.monotonic() < deadline, r
        time.sleep(0.2)


def test_rolling_update_reboots_and_restarts_toolstacks_over_ssh(sshd: Sshd, world: World) -> None:
    """The server on the ssh agent with a driver that cannot reboot hosts nor restart their
    toolstacks (the sim told to refuse both as Unsupported, as the libvirt driver does): an
    update at level full restarts h1's toolstack with ``host_toolstack_command`` and reboots h2
    with ``host_reboot_command``, both through the real sshd. h2's "reboot" takes longer than
    ``host_reboot_timeout``: the update pauses saying h2 answers with the same boot id, and is
    not resumed while it does; once the new boot id is there it resumes by itself and
    finishes, the reboot command asked exactly once."""
    w = world
    known = sshd.known_hosts("h1", "h2", "h3", "h4")
    target = f"{sshd.user}@127.0.0.1:{sshd.port}"
    host_root(w.roots, "h4", [w.old["hello"]])
    for h in ("h1", "h2", "h3", "h4"):
        root = w.roots / h
        (root / BOOT_ID).parent.mkdir(parents=True, exist_ok=True)
        (root / BOOT_ID).write_text(f"{h}-boot-1\n")
        (root / "restart.sh").write_text("echo restarted >> toolstack-restarts\n")
        (root / "reboot.sh").write_text(REBOOT_SH.format(delay=1))
    # h2's "reboot" takes longer than host_reboot_timeout: its new boot id comes after 25 s
    (w.roots / "h2" / "reboot.sh").write_text(
        "echo asked >> reboots-asked\n" + REBOOT_SH.format(delay=25)
    )
    plan = {"unsupported": ["reboot_host", "restart_toolstack"]}
    w.server.env.update(  # type: ignore[attr-defined]
        {
            "GOLDFLEET_SIM_PLAN": json.dumps(plan),
            "GOLDFLEET_HOST_AGENT": "ssh",
            "GOLDFLEET_SSH_HOSTS": json.dumps({h: target for h in ("h1", "h2", "h3", "h4")}),
            "GOLDFLEET_SSH_KEY": str(sshd.key),
            "GOLDFLEET_SSH_KNOWN_HOSTS": str(known),
            "GOLDFLEET_SSH_ROOTS": str(w.roots),
            "GOLDFLEET_HOST_REBOOT_COMMAND": "sh ./reboot.sh",
            "GOLDFLEET_HOST_TOOLSTACK_COMMAND": "sh ./restart.sh",
            "GOLDFLEET_HOST_REBOOT_TIMEOUT": "3",
        }
    )
    w.server.restart()  # type: ignore[attr-defined]
    w.ok(
        "cluster", "create", "pve", "--hosts", "h1,h2,h3,h4", "--coordinator", "h1",
        "--memory-mib", "8192", "--vcpus", "64",
    )  # fmt: skip
    w.channel("normal")
    h = w.ok_json("cluster", "sync", "pve")["hash"]
    image = make_raw(w.tmp / f"image-{secrets.token_hex(4)}.raw", {0: b"base"})
    w.client.upload(
        "/templates/import", image, {"name": "base", "format": "raw", "temp": [], "data": []}
    )
    r = w.client.post("/clones", {"template": "base", "count": 4, "wait": True})
    for name in r["clones"]:
        w.client.post(f"/clones/{name}/start")
    w.ok(
        "cluster", "ha", "pve",
        "--disable-cmd", f"sh -c 'echo off >> {w.tmp / 'ha.log'}'",
        "--enable-cmd", f"sh -c 'echo on >> {w.tmp / 'ha.log'}'",
    )  # fmt: skip
    proc = w.cli("cluster", "update", "pve", "--hash", h, "--level", "full", "--wait")
    assert proc.returncode == 1, proc.stderr
    r = w.client.get("/clusters/pve/update")
    assert r["status"] == "paused", r
    assert "host h2 did not come back within 3 s of its reboot" in r["reason"], r
    assert "it answers with the same boot id h2-boot-1: not rebooted" in r["reason"], r
    assert (w.roots / "h2" / "reboots-asked").read_text() == "asked\n"  # asked exactly once
    hosts = {x["host"]: x for x in r["hosts"]}
    assert "restart-toolstack" in hosts["h1"]["done_steps"]
    assert (w.roots / "h1" / "toolstack-restarts").read_text() == "restarted\n"
    assert "reboot-host" in hosts["h2"]["steps"] and "reboot-host" not in hosts["h2"]["done_steps"]
    assert not (w.roots / "h2" / "toolstack-restarts").exists()  # a reboot follows instead
    states = {x["name"]: x["state"] for x in w.client.get("/clusters/pve")["hosts"]}
    assert states["h2"] == "offline"
    running = {n: (host, st) for n, host, st in w.server.rows(
        "SELECT name, host, state FROM sim_domains")}  # fmt: skip
    assert all(host != "h2" and st == "running" for host, st in running.values())
    # answering over ssh and to the driver, but with the same boot id: not resumed by itself
    # (the server's pass checks a paused update's offline host every second)
    time.sleep(2.5)
    assert (w.roots / "h2" / BOOT_ID).read_text() == "h2-boot-1\n"
    assert w.client.get("/clusters/pve/update")["reason"] == r["reason"]
    # h2 back late, with another boot id (written by its "reboot"): the update resumes by
    # itself and finishes
    assert _wait(lambda: (w.roots / "h2" / BOOT_ID).read_text() != "h2-boot-1\n", 60)
    assert len((w.roots / "h2" / BOOT_ID).read_text().strip()) == 36
    r = _update(w, unlike=r["reason"])
    assert r["status"] == "done", r
    hosts = {x["host"]: x for x in r["hosts"]}
    assert hosts["h2"]["done_steps"][-3:] == ["reboot-host", "enable", "migrate-back"]
    assert (w.roots / "h2" / "reboots-asked").read_text() == "asked\n"  # not asked again
    assert "reboot-host" not in hosts["h1"]["done_steps"]
    assert not w.server.rows("SELECT name FROM sim_hosts WHERE reboots > 0")  # not the sim's
    assert not w.server.rows("SELECT name FROM sim_hosts WHERE toolstack_restarts > 0")
    states = {x["name"]: x["state"] for x in w.client.get("/clusters/pve")["hosts"]}
    assert set(states.values()) == {"enabled"}
