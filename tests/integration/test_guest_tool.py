"""The guest tool, run for real by Debian's dash and by busybox's sh (with only busybox's
applets on the PATH, as in a minimal guest), agrees with the domain's nq-set rule."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from goldfleet import guest
from goldfleet.domain import quarantine as q
from goldfleet.errors import InvalidInput

POLICY = textwrap.dedent(
    """\
    threshold = "b"
    [[versions]]
    name = "a"
    [[versions]]
    name = "b"
    descriptor = "0x0000000b"
    [[versions]]
    name = "c"
    descriptor = "patch-c.1"
    """
)


def _busybox_bin(tmp: Path) -> Path | None:
    busybox = shutil.which("busybox")
    if not busybox:
        return None
    out = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True)
    folder = tmp / "busybox-bin"
    folder.mkdir()
    for applet in out.stdout.split():
        (folder / applet).symlink_to(busybox)
    return folder


@pytest.fixture(scope="module")
def shells(tmp_path_factory) -> dict[str, tuple[list[str], dict[str, str]]]:
    """Each shell, with the environment a guest of that kind has."""
    found: dict[str, tuple[list[str], dict[str, str]]] = {}
    if shutil.which("dash"):
        found["dash"] = (["dash"], {"PATH": "/usr/bin:/bin"})
    folder = _busybox_bin(tmp_path_factory.mktemp("bb"))
    if folder:
        found["busybox"] = ([str(folder / "sh")], {"PATH": str(folder)})
    if not found:
        pytest.skip("neither dash nor busybox is installed (make setup installs both)")
    return found


def run(shell, root: Path, *args: str) -> subprocess.CompletedProcess:
    argv, env = shell
    return subprocess.run(
        [*argv, str(guest.tool_path()), *args],
        env={**env, "GOLDFLEET_GUEST_ROOT": str(root)},
        capture_output=True,
        text=True,
        timeout=30,
    )


def make_guest(root: Path, policy: q.Policy, held: str | None) -> None:
    (root / "etc/goldfleet").mkdir(parents=True, exist_ok=True)
    (root / "etc/goldfleet/quarantine.policy").write_text(q.guest_policy_text(policy))
    d = root / "var/lib/goldfleet/nq-descriptor"
    if held is None:
        d.unlink(missing_ok=True)
    else:
        d.parent.mkdir(parents=True, exist_ok=True)
        d.write_text(held + "\n")


@pytest.mark.parametrize("name", ["dash", "busybox"])
def test_version_matches_the_package(shells, tmp_path, name):
    if name not in shells:
        pytest.skip(f"{name} missing")
    out = run(shells[name], tmp_path, "version")
    assert out.returncode == 0 and out.stdout.strip() == guest.tool_version()
    assert guest.tool_version() == "1.0.0"


@pytest.mark.parametrize("name", ["dash", "busybox"])
def test_nq_set_agrees_with_the_domain_on_every_pair(shells, tmp_path, name):
    if name not in shells:
        pytest.skip(f"{name} missing")
    shell = shells[name]
    policy = q.parse_policy(POLICY)
    descriptors = [v.descriptor for v in policy.versions]
    held_values = [None, "garbage!", "0xffffffff", *descriptors]
    new_values = [*descriptors, "0xffffffff", "two words", "x" * 65]
    for held, new in itertools.product(held_values, new_values):
        make_guest(tmp_path, policy, held)
        try:
            q.check_nq_set(policy, held, new)
            expected = 0
        except InvalidInput:
            expected = 1
        checked = run(shell, tmp_path, "nq-set", "-n", new)
        assert checked.returncode == expected, (held, new, checked.stderr)
        # -n only validates: the file is as it was
        after = tmp_path / "var/lib/goldfleet/nq-descriptor"
        assert (after.read_text().strip() if after.exists() else None) == held
        saved = run(shell, tmp_path, "nq-set", new)
        assert saved.returncode == expected, (held, new, saved.stderr)
        if expected == 0:
            assert after.read_text() == new + "\n"
            assert run(shell, tmp_path, "nq-get").stdout == new + "\n"
        else:
            assert saved.stderr.startswith("goldfleet-guest: ")


@pytest.mark.parametrize("name", ["dash", "busybox"])
def test_updates_walk_the_order_then_stop(shells, tmp_path, name):
    if name not in shells:
        pytest.skip(f"{name} missing")
    shell = shells[name]
    policy = q.parse_policy(POLICY)
    make_guest(tmp_path, policy, None)
    assert run(shell, tmp_path, "nq-get").returncode == 1
    for v in policy.versions:
        assert run(shell, tmp_path, "nq-set", v.descriptor).returncode == 0
    last = run(shell, tmp_path, "nq-set", policy.versions[0].descriptor)
    assert last.returncode == 1 and "not the next version" in last.stderr


@pytest.mark.parametrize("name", ["dash", "busybox"])
def test_custom_policy_stores_any_string_and_garbage_is_named(shells, tmp_path, name):
    if name not in shells:
        pytest.skip(f"{name} missing")
    shell = shells[name]
    custom = q.Policy(kind=q.Kind.CUSTOM)
    make_guest(tmp_path, custom, None)
    value = "av=2026.11 sig=ok; build 7"
    assert run(shell, tmp_path, "nq-set", value).returncode == 0
    assert run(shell, tmp_path, "nq-get").stdout == value + "\n"
    assert run(shell, tmp_path, "nq-set", "bad\tvalue").returncode == 1
    assert run(shell, tmp_path, "nq-set", "y" * 257).returncode == 1
    (tmp_path / "var/lib/goldfleet/nq-descriptor").write_bytes(b"\x01\x02\x7f\n")
    out = run(shell, tmp_path, "nq-get")
    assert out.returncode == 1 and "garbage" in out.stderr


@pytest.mark.parametrize("name", ["dash", "busybox"])
def test_no_policy_and_bad_usage(shells, tmp_path, name):
    if name not in shells:
        pytest.skip(f"{name} missing")
    shell = shells[name]
    out = run(shell, tmp_path, "nq-set", "0x0000000b")
    assert out.returncode == 1 and "no quarantine policy" in out.stderr
    assert run(shell, tmp_path).returncode == 2
    assert run(shell, tmp_path, "nq-set", "-n").returncode == 2
    assert run(shell, tmp_path, "frobnicate").returncode == 2


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "goldfleet", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "GOLDFLEET_HOME": "/nonexistent-goldfleet-home"},
    )


def test_cli_guest_tool_path_and_version():
    out = _cli("guest-tool", "path")
    assert out.returncode == 0, out.stderr
    path = Path(out.stdout.strip())
    assert path == guest.tool_path() and path.is_file() and os.access(path, os.X_OK)
    out = _cli("guest-tool", "version")
    assert out.stdout.strip() == guest.tool_version()


def test_cli_compliance_validate(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text(POLICY)
    out = _cli("compliance", "validate", str(good), "--json")
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["valid"] is True
    assert [v["name"] for v in answer["policy"]["versions"]] == ["a", "b", "c"]
    assert answer["policy"]["versions"][0]["descriptor"] == q.generated_descriptor("a")
    bad = tmp_path / "bad.toml"
    bad.write_text(
        POLICY.replace('threshold = "b"', 'threshold = "z"').replace("0x0000000b", "patch-c.1")
    )
    out = _cli("compliance", "validate", str(bad))
    assert out.returncode == 1
    assert "bad.toml:1: threshold 'z' names no version" in out.stdout + out.stderr
    assert "bad.toml:9: duplicate descriptor 'patch-c.1'" in out.stdout + out.stderr
    out = _cli("compliance", "validate", str(bad), "--json")
    assert out.returncode == 1
    assert [p["line"] for p in json.loads(out.stdout)["problems"]] == [1, 9]
    missing = _cli("compliance", "validate", str(tmp_path / "nope.toml"))
    assert missing.returncode == 1 and "nope.toml" in missing.stdout + missing.stderr
