"""The ``ssh`` host agent against a real OpenSSH server (issue 11, docs/hosts.md "The ssh agent").

The module starts its own ``sshd`` on a free loopback port (a host key and a client key made
in a temporary folder, key-only, no PAM) and drives goldfleet's ssh agent through the real
``ssh`` client: packages read back with ``dpkg-query`` run over ssh, the booted kernel, a real
``.deb`` copied to the host, its sha256 checked there and installed with ``dpkg -i``; a wrong
key, an unknown or changed host key and a broken ``.deb`` each refused with ssh's or dpkg's
own words. The hosts' roots are folders (``ssh_roots``, ``dpkg --root``), so the test proves
the transport and the commands, never touching this machine's own dpkg database (it only
reads it once, through the agent with no root). What is not proven: an ``apply`` into a real
host's ``/``. Reboots and toolstack restarts over ssh: test_e2e_host_reboot_ssh.py (the sshd
fixture is shared, tests/e2e/sshkit.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from aptkit import NEW, UPDATED, World, build_deb, host_root, installed, material, world
from sshkit import SSHD, Sshd, free_port, keygen, sshd

from goldfleet.config import Settings
from goldfleet.drivers.agents import (
    ApplyFailed,
    HostUnreachable,
    SshAgent,
    make_agent,
    parse_target,
)

__all__ = ["material", "sshd", "world"]  # the fixtures (tests/e2e/aptkit.py, sshkit.py)

# one worker runs the whole module under `make test` (pytest-xdist): one sshd, started once
pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("sshd"),
    pytest.mark.skipif(not Path(SSHD).exists(), reason="openssh-server: make system-packages"),
]


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    where = tmp_path_factory.mktemp("debs")
    broken = where / "broken_1.0_amd64.deb"
    broken.write_bytes(b"this is not an ar archive\n" * 10)
    return {
        "hello": build_deb(where, "hello", "1.0"),
        "libvirt-daemon": build_deb(where, "libvirt-daemon", "9.0.0-4", extra="Source: libvirt\n"),
        "libvirt-daemon-new": build_deb(
            where, "libvirt-daemon", "9.0.0-4+deb12u1", extra="Source: libvirt\n"
        ),
        "broken": broken,
    }


def test_parse_target() -> None:
    assert parse_target("h1", "root", 22) == ("root", "h1", 22)
    assert parse_target("admin@10.0.0.5:2222", "root", 22) == ("admin", "10.0.0.5", 2222)
    assert parse_target("[::1]:2200", "root", 22) == ("root", "::1", 2200)
    for bad in ("-oProxyCommand=x", "root@", "h:0", "-l@h"):
        with pytest.raises(HostUnreachable):
            parse_target(bad, "root", 22)


def test_reads_packages_and_kernel_over_ssh(sshd: Sshd, debs: dict, tmp_path: Path) -> None:
    root = host_root(tmp_path, "h1", [debs["hello"], debs["libvirt-daemon"]], kernel="6.1.0-18")
    agent = sshd.agent("h1", root)
    assert agent.installed() == {"hello": "1.0", "libvirt-daemon": "9.0.0-4"}
    assert agent.booted_kernel() == "6.1.0-18"
    # no booted-kernel file in the root: what `uname -r` says on the host, over ssh
    bare = host_root(tmp_path, "h2", [])
    assert sshd.agent("h2", bare).installed() == {}
    assert sshd.agent("h2", bare).booted_kernel() == os.uname().release
    # no root: the host's own dpkg database, read only (this machine's: it has openssh-server)
    real = sshd.agent("h3", None)
    assert "openssh-server" in real.installed()
    assert real.booted_kernel() == os.uname().release


def test_settings_make_the_ssh_agent(sshd: Sshd, debs: dict, tmp_path: Path) -> None:
    host_root(tmp_path / "roots", "h1", [debs["hello"]], kernel="6.1.0-18")
    settings = Settings(
        home=tmp_path / "home",
        host_agent="ssh",
        ssh_hosts={"h1": f"{sshd.user}@127.0.0.1:{sshd.port}"},
        ssh_key=sshd.key,
        ssh_known_hosts=sshd.known_hosts("h1"),
        ssh_roots=str(tmp_path / "roots"),
    )
    agent = make_agent(settings, "h1")
    assert isinstance(agent, SshAgent)
    assert (agent.address, agent.port, agent.root) == (
        "127.0.0.1",
        sshd.port,
        f"{tmp_path / 'roots'}/h1",
    )
    assert agent.installed() == {"hello": "1.0"}
    # a host not listed is reached at its own name on ssh_port: no such host here
    with pytest.raises(HostUnreachable) as exc:
        make_agent(
            settings.model_copy(update={"ssh_connect_timeout": 2}), "nohost.invalid"
        ).installed()
    assert "nohost.invalid" in exc.value.message


def test_apply_installs_a_real_deb_over_ssh(sshd: Sshd, debs: dict, tmp_path: Path) -> None:
    # a root whose path the remote shell must not interpret
    roots = tmp_path / "odd $(touch PWNED) 'x'"
    root = host_root(roots, "h1", [debs["libvirt-daemon"]])
    agent = sshd.agent("h1", root)
    agent.apply([debs["libvirt-daemon-new"], debs["hello"]])
    assert installed(root) == {"libvirt-daemon": "9.0.0-4+deb12u1", "hello": "1.0"}
    assert agent.installed() == installed(root)
    assert not list(tmp_path.rglob("PWNED")) and not (Path.home() / "PWNED").exists()
    assert "libvirt-daemon" in (root / "var" / "log" / "dpkg.log").read_text()
    # the remote temporary folders are gone
    assert not [p for p in Path("/tmp").glob("goldfleet-apply.*") if p.stat().st_uid == os.geteuid()
                and (p / "0.deb").exists()]  # fmt: skip
    agent.apply([])  # nothing to install: nothing happens
    assert installed(root)["libvirt-daemon"] == "9.0.0-4+deb12u1"


def test_dpkg_refusing_a_broken_deb_is_apply_failed(sshd: Sshd, debs: dict, tmp_path: Path) -> None:
    root = host_root(tmp_path, "h1", [debs["hello"]])
    agent = sshd.agent("h1", root)
    with pytest.raises(ApplyFailed) as exc:
        agent.apply([debs["broken"]])
    assert "dpkg -i failed" in exc.value.message
    assert "dpkg-deb" in exc.value.message  # dpkg's own words
    assert installed(root) == {"hello": "1.0"}
    # a host whose root has no dpkg database is unreachable, nothing is copied
    with pytest.raises(HostUnreachable, match="no dpkg database"):
        sshd.agent("h9", tmp_path / "nothing").apply([debs["hello"]])


def test_a_wrong_key_is_unreachable_with_ssh_words(sshd: Sshd, tmp_path: Path) -> None:
    root = host_root(tmp_path, "h1", [])
    other = tmp_path / "other_ed25519"
    keygen(other)
    with pytest.raises(HostUnreachable) as exc:
        sshd.agent("h1", root, key=other).installed()
    assert "Permission denied (publickey)" in exc.value.message
    assert "BEGIN OPENSSH PRIVATE KEY" not in exc.value.message
    with pytest.raises(HostUnreachable) as exc:
        sshd.agent("h1", root, key=tmp_path / "missing").booted_kernel()
    assert "failed" in exc.value.message
    # nobody listening
    with pytest.raises(HostUnreachable, match="Connection refused"):
        sshd.agent("h1", root, port=free_port()).installed()


def test_an_unknown_or_changed_host_key_is_refused(sshd: Sshd, tmp_path: Path) -> None:
    root = host_root(tmp_path, "h1", [])
    # not in goldfleet's known_hosts: never trusted on first use
    with pytest.raises(HostUnreachable) as exc:
        sshd.agent("h1", root, known_hosts=sshd.known_hosts()).installed()
    assert "Host key verification failed" in exc.value.message
    # known under another key: refused, nothing run
    impostor = keygen(tmp_path / "impostor").split()
    changed = sshd.known_hosts("h1", pub=" ".join(impostor[:2]))
    with pytest.raises(HostUnreachable) as exc:
        sshd.agent("h1", root, known_hosts=changed).installed()
    assert "Host key verification failed" in exc.value.message
    assert "Host key for h1 has changed" in exc.value.message
    # the key pinned under another goldfleet host's name does not vouch for this one
    with pytest.raises(HostUnreachable, match="Host key verification failed"):
        sshd.agent("h1", root, known_hosts=sshd.known_hosts("h2")).installed()


def test_cluster_sync_and_update_over_ssh(sshd: Sshd, world: World) -> None:
    """The server itself on the ssh agent: `cluster sync` reads h1..h3 through the real sshd,
    `cluster update` installs the hash's packages through it."""
    w = world
    known = sshd.known_hosts("h1", "h2", "h3")
    target = f"{sshd.user}@127.0.0.1:{sshd.port}"
    w.server.env.update(  # type: ignore[attr-defined]
        {
            "GOLDFLEET_HOST_AGENT": "ssh",
            "GOLDFLEET_SSH_HOSTS": json.dumps({h: target for h in ("h1", "h2", "h3")}),
            "GOLDFLEET_SSH_KEY": str(sshd.key),
            "GOLDFLEET_SSH_KNOWN_HOSTS": str(known),
            "GOLDFLEET_SSH_ROOTS": str(w.roots),
            "GOLDFLEET_HOST_ROOTS": str(w.tmp / "no-local-roots"),  # not read: proves the seam
        }
    )
    w.server.restart()  # type: ignore[attr-defined]
    w.ok_json("cluster", "create", "pve", "--hosts", "h1,h2,h3", "--coordinator", "h1")
    w.channel("normal")
    r = w.ok_json("cluster", "sync", "pve")
    assert r["hash"] == w.expected_hash()
    assert r["packages"] == len(UPDATED) and not r.get("offline_hosts")
    c = w.client.get("/clusters/pve")
    for h in c["hosts"]:
        assert h["installed_packages"] == len(installed(w.roots / h["name"]))
    applied = {h["name"]: h["latest_synced_updates_applied"] for h in c["hosts"]}
    assert applied == {"h1": False, "h2": False, "h3": True}
    # the rolling update installs over ssh: copied, sha256-checked, `dpkg -i` in each root
    w.ok(
        "cluster", "ha", "pve",
        "--disable-cmd", f"sh -c 'echo off >> {w.tmp / 'ha.log'}'",
        "--enable-cmd", f"sh -c 'echo on >> {w.tmp / 'ha.log'}'",
    )  # fmt: skip
    before = {h: installed(w.roots / h) for h in ("h1", "h2", "h3")}
    u = w.ok_json(
        "cluster", "update", "pve", "--hash", r["hash"], "--level", "mandatory", "--wait"
    )  # fmt: skip
    assert u["status"] == "done", u
    for x in u["hosts"]:
        got = installed(w.roots / x["host"])
        assert all(got[p] == NEW[p][0] == v for p, v in x["applied"].items())
        assert set(got) == set(before[x["host"]])  # upgrades only, nothing else installed
    assert {x["host"] for x in u["hosts"] if x["applied"]} == {"h1", "h2"}
    log = (w.roots / "h1" / "var" / "log" / "dpkg.log").read_text()
    assert " upgrade libvirt-daemon:" in log
    c = w.client.get("/clusters/pve")
    assert all(h["latest_synced_updates_applied"] for h in c["hosts"])
    # h2's host key changes: the sync goes on, h2 is offline
    impostor = " ".join(keygen(w.tmp / "impostor").split()[:2])
    known.write_text(known.read_text().replace(f"h2 {sshd.host_pub}", f"h2 {impostor}"))
    r = w.ok_json("cluster", "sync", "pve")
    assert r["offline_hosts"] == ["h2"]
    states = {h["name"]: h["state"] for h in w.client.get("/clusters/pve")["hosts"]}
    assert states == {"h1": "enabled", "h2": "offline", "h3": "enabled"}
