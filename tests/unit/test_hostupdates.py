"""Host update rules: clusters, the one-channel rule, sync schedules, deb822 and the repository
indexes, Debian version order, the update hash and guidance (goldfleet.domain.hostupdates)."""

from __future__ import annotations

import shutil
import subprocess
from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from goldfleet.domain.hostupdates import (
    DEFAULT_RULES,
    PackageEntry,
    check_channel_change,
    check_cluster,
    check_release,
    check_repository,
    compare_versions,
    describe_schedule,
    guidance_of,
    host_guidance,
    host_steps,
    old_update_warning,
    parse_dpkg_status,
    parse_packages,
    parse_release,
    parse_rules,
    parse_stanzas,
    parse_sync_schedule,
    plan_updates,
    prechecks,
    split_by_level,
    update_hash,
    update_order,
)
from goldfleet.errors import Conflict, InvalidInput

HOSTS = ["h1", "h2", "h3"]


def entry(package: str, version: str = "1.0", **kw: str) -> PackageEntry:
    return PackageEntry(
        package=package,
        version=version,
        architecture=kw.pop("architecture", "amd64"),
        filename=f"pool/main/{package}_{version}_amd64.deb",
        size=100,
        sha256=kw.pop("sha256", "a" * 64),
        source=kw.pop("source", package),
        **kw,
    )


# --- clusters and channels ------------------------------------------------------------------


def test_a_valid_cluster_passes():
    check_cluster("pve", ["h1", "h2"], "h1", HOSTS)


@pytest.mark.parametrize(
    ("name", "hosts", "coordinator", "words"),
    [
        ("Bad Name", ["h1"], "h1", "not valid"),
        ("pve", [], "h1", "give its hosts"),
        ("pve", ["h1", "h1"], "h1", "named twice"),
        ("pve", ["h1", "../h2"], "h1", "cannot be a cluster host"),
        ("pve", ["h1", "h9"], "h1", "not a host of this server's driver"),
        ("pve", ["h1", "h2"], "h3", "coordinator 'h3' is not one of its hosts"),
    ],
)
def test_bad_clusters_are_refused(name, hosts, coordinator, words):
    with pytest.raises(InvalidInput, match=words):
        check_cluster(name, hosts, coordinator, HOSTS)


def test_one_channel_at_a_time_with_the_rule_in_the_message():
    check_channel_change("pve", None, "normal")
    check_channel_change("pve", "normal", "normal")  # the same channel again: a new URL or key
    with pytest.raises(Conflict) as info:
        check_channel_change("pve", "early-access", "normal")
    assert "disable early-access before enabling normal" in info.value.message
    with pytest.raises(Conflict, match="disable normal before enabling offline"):
        check_channel_change("pve", "normal", "offline")
    with pytest.raises(InvalidInput, match="not known"):
        check_channel_change("pve", None, "beta")


@pytest.mark.parametrize(
    ("url", "suite", "components", "arch"),
    [
        ("ftp://x", "bookworm", ["main"], "amd64"),
        ("http://x", "../etc", ["main"], "amd64"),
        ("http://x", "bookworm", [], "amd64"),
        ("http://x", "bookworm", ["ma in"], "amd64"),
        ("http://x", "bookworm", ["main"], "AMD/64"),
    ],
)
def test_bad_repositories_are_refused(url, suite, components, arch):
    with pytest.raises(InvalidInput):
        check_repository(url, suite, components, arch)


# --- schedules ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "day", "at", "cron", "words"),
    [
        ("daily", None, None, "0 2 * * *", "daily at 02:00 UTC"),
        ("daily", None, "23:05", "5 23 * * *", "daily at 23:05 UTC"),
        ("weekly", 0, None, "0 2 * * 0", "weekly on sunday (day 0) at 02:00 UTC"),
        ("weekly", 6, "1:30", "30 1 * * 6", "weekly on saturday (day 6) at 01:30 UTC"),
        ("off", None, None, None, "off"),
    ],
)
def test_sync_schedules(kind, day, at, cron, words):
    assert parse_sync_schedule(kind, day=day, at=at) == cron
    assert describe_schedule(cron) == words


@pytest.mark.parametrize(
    ("kind", "day", "at"),
    [
        ("hourly", None, None),
        ("weekly", None, None),
        ("weekly", 7, None),
        ("weekly", -1, None),
        ("daily", 3, None),
        ("daily", None, "24:00"),
        ("daily", None, "7"),
        ("off", None, "01:00"),
    ],
)
def test_bad_sync_schedules_are_refused(kind, day, at):
    with pytest.raises(InvalidInput):
        parse_sync_schedule(kind, day=day, at=at)


# --- deb822 and the indexes -----------------------------------------------------------------

PACKAGES = """\
Package: libvirt-daemon
Source: libvirt
Version: 9.0.0-4+deb12u1
Architecture: amd64
Filename: pool/main/libvirt-daemon_9.0.0-4+deb12u1_amd64.deb
Size: 1234
SHA256: {h}
Description: virtualization daemon
 the long description,
 on two lines

Package: hello
Version: 1.0
Architecture: all
Filename: pool/main/hello_1.0_all.deb
Size: 10
SHA256: {h}
Goldfleet-Guidance: full:reboot-host, mandatory:restart-toolstack
""".format(h="b" * 64)


def test_packages_are_parsed():
    libvirt, hello = parse_packages(PACKAGES)
    assert libvirt.package == "libvirt-daemon"
    assert libvirt.source == "libvirt"
    assert libvirt.description == "virtualization daemon"
    assert hello.source == "hello"
    assert hello.declared.startswith("full:")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("Package: x\nVersion: 1\n", "Architecture is missing"),
        (PACKAGES.replace("Size: 10\n", "Size: ten\n"), "not a number"),
        (PACKAGES.replace("b" * 64, "b" * 63, 1), "SHA256 is not 64 hex digits"),
        (PACKAGES.replace("pool/main/hello", "../../etc/hello"), "not a safe relative path"),
        (PACKAGES.replace("Package: hello", "Package: Hello World"), "not a Debian package"),
        (" continuation first\n", "continuation line with no field"),
        ("Package: a\nPackage: b\n", "appears twice"),
        ("no colon here\n", "is not 'Field: value'"),
    ],
)
def test_bad_packages_are_refused(text, words):
    with pytest.raises(InvalidInput, match=words):
        parse_packages(text)


def test_release_index():
    text = (
        "Origin: test\nSuite: stable\nCodename: bookworm\nSHA256:\n"
        f" {'c' * 64} 42 main/binary-amd64/Packages\n"
        f" {'d' * 64} 30 main/binary-amd64/Packages.gz\n"
    )
    r = parse_release(text)
    assert r.suite == "stable"
    assert r.sha256["main/binary-amd64/Packages"] == ("c" * 64, 42)
    with pytest.raises(InvalidInput, match="no SHA256 index"):
        parse_release("Suite: stable\nMD5Sum:\n x 1 y\n")
    with pytest.raises(InvalidInput, match="not a safe"):
        parse_release(f"SHA256:\n {'c' * 64} 1 ../Packages\n")


def test_dpkg_status_keeps_only_installed_packages():
    text = (
        "Package: a\nStatus: install ok installed\nVersion: 1.0\n\n"
        "Package: b\nStatus: deinstall ok config-files\nVersion: 2.0\n\n"
        "Package: c\nStatus: install ok installed\nVersion: 3:1.2-1\n"
    )
    assert parse_dpkg_status(text) == {"a": "1.0", "c": "3:1.2-1"}


def test_stanzas_lowercase_fields_and_join_continuations():
    assert parse_stanzas("A: 1\nLong: x\n y\n\n\nB: 2\n", "t") == [
        {"a": "1", "long": "x\ny"},
        {"b": "2"},
    ]


# --- versions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "op", "b"),
    [
        ("1.0", "<", "1.1"),
        ("1.0~rc1", "<", "1.0"),
        ("1.0", "<", "1.0-1"),
        ("1:0.1", ">", "9.9"),
        ("2.10", ">", "2.9"),
        ("1.0-1", "<", "1.0-1+deb12u1"),
        ("1.0a", ">", "1.0"),
        ("1.0+", ">", "1.0a"),
        ("1.01", "=", "1.1"),
        ("9.0.0-4+deb12u1", "<", "9.0.0-4+deb12u2"),
    ],
)
def test_debian_version_order(a, op, b):
    result = compare_versions(a, b)
    assert {"<": result < 0, "=": result == 0, ">": result > 0}[op]


_version = st.from_regex(r"([0-9]:)?[0-9][a-z0-9.+~]{0,6}(-[0-9a-z.+~]{1,4})?", fullmatch=True)


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="dpkg is Debian's")
@settings(max_examples=60, deadline=None)
@given(_version, _version)
def test_version_order_agrees_with_dpkg(a, b):
    def dpkg(op: str) -> bool:
        return subprocess.run(["dpkg", "--compare-versions", a, op, b], check=False).returncode == 0

    result = compare_versions(a, b)
    assert dpkg("lt") == (result < 0)
    assert dpkg("eq") == (result == 0)


# --- the update hash ------------------------------------------------------------------------


def test_update_hash_is_over_the_sorted_set():
    items = [("b", "1", "0" * 64), ("a", "2", "1" * 64)]
    h = update_hash(items)
    assert h.startswith("sha256:") and len(h) == 71
    assert update_hash(reversed(items)) == h
    assert update_hash([*items, items[0]]) == h
    assert update_hash([("b", "1", "0" * 64), ("a", "2", "2" * 64)]) != h
    assert update_hash([("b", "1", "0" * 64), ("a", "3", "1" * 64)]) != h
    assert update_hash(items[:1]) != h


# --- guidance -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("package", "category", "task"),
    [
        ("linux-image-6.1.0-18-amd64", "recommended", "reboot-host"),
        ("libvirt-daemon", "mandatory", "restart-toolstack"),
        ("libvirt0", "mandatory", "restart-toolstack"),
        ("qemu-system-x86", "recommended", "restart-device-model"),
        ("intel-microcode", "full", "reboot-host"),
        ("firmware-linux-nonfree", "full", "reboot-host"),
        ("livepatch-6.1.0-18-amd64", "livepatch", "apply-livepatch"),
    ],
)
def test_default_guidance_rules(package, category, task):
    g = guidance_of(entry(package))
    assert g[category] == [task]
    assert sum(len(v) for v in g.values()) == 1


def test_a_plain_package_needs_no_task_and_a_declared_field_wins():
    assert guidance_of(entry("hello")) == {
        "mandatory": [],
        "recommended": [],
        "full": [],
        "livepatch": [],
    }
    g = guidance_of(entry("libvirt-daemon", declared="recommended:restart-vm"))
    assert g["recommended"] == ["restart-vm"] and g["mandatory"] == []
    with pytest.raises(InvalidInput, match="CATEGORY:TASK"):
        guidance_of(entry("x", declared="urgent:reboot-host"))


def test_a_livepatch_for_the_booted_kernel_replaces_the_reboot():
    lacking = [
        entry("linux-image-6.1.0-18-amd64", "6.1.76-1"),
        entry("livepatch-6.1.0-18-amd64", "1"),
        entry("libvirt-daemon"),
    ]
    booted = host_guidance(lacking, "6.1.0-18-amd64")
    assert booted["recommended"] == []
    assert booted["livepatch"] == ["apply-livepatch"]
    assert booted["mandatory"] == ["restart-toolstack"]
    older = host_guidance(lacking, "6.1.0-17-amd64")
    assert older["recommended"] == ["reboot-host"]
    assert older["livepatch"] == []
    assert host_guidance(lacking, None)["recommended"] == ["reboot-host"]


# --- what a sync makes available ------------------------------------------------------------


def test_updates_are_upgrades_of_what_hosts_have():
    repo = [
        entry("libvirt-daemon", "9.0.0-4+deb12u2"),
        entry("libvirt-daemon", "9.0.0-4+deb12u1"),
        entry("hello", "2.0", architecture="all"),
        entry("nothere", "5.0"),
        entry("armonly", "9.0", architecture="arm64"),
    ]
    installed = {
        "h1": {"libvirt-daemon": "9.0.0-4+deb12u1", "hello": "2.0", "armonly": "1.0"},
        "h2": {"libvirt-daemon": "9.0.0-4", "hello": "1.0"},
        "h3": {},
    }
    plan = plan_updates(repo, installed, "amd64")
    assert [(e.package, e.version) for e in plan.packages] == [
        ("hello", "2.0"),
        ("libvirt-daemon", "9.0.0-4+deb12u2"),
    ]
    assert [(x.package, x.installed, x.available) for x in plan.lacks["h1"]] == [
        ("libvirt-daemon", "9.0.0-4+deb12u1", "9.0.0-4+deb12u2")
    ]
    assert [x.package for x in plan.lacks["h2"]] == ["hello", "libvirt-daemon"]
    assert plan.lacks["h3"] == []


def test_old_update_warning():
    now = datetime(2026, 12, 1)
    assert old_update_warning(None, now) is None
    assert old_update_warning(now - timedelta(days=30), now) is None
    assert "200 days old" in old_update_warning(now - timedelta(days=200), now)


# --- the rolling update's plan --------------------------------------------------------------


def _g(**kw: list[str]) -> dict[str, list[str]]:
    return {"mandatory": [], "recommended": [], "full": [], "livepatch": [], **kw}


def test_levels_take_their_category_and_those_below():
    g = _g(
        mandatory=["restart-toolstack"],
        recommended=["reboot-host", "restart-device-model"],
        full=["restart-vm"],
    )
    run, deferred = split_by_level(g, "mandatory")
    assert run == ["restart-toolstack"]
    assert deferred == _g(recommended=["reboot-host", "restart-device-model"], full=["restart-vm"])
    run, deferred = split_by_level(g, "recommended")
    assert run == ["reboot-host", "restart-toolstack", "restart-device-model"]
    assert deferred == _g(full=["restart-vm"])
    run, deferred = split_by_level(g, "full")
    assert deferred == _g()
    assert split_by_level(_g(livepatch=["apply-livepatch"]), "mandatory") == (
        ["apply-livepatch"],
        _g(),
    )
    with pytest.raises(InvalidInput, match="--level"):
        split_by_level(g, "all")


def test_host_steps_follow_the_order_and_skip_what_a_reboot_covers():
    assert host_steps(["restart-toolstack"]) == [
        "disable",
        "apply-packages",
        "restart-toolstack",
        "enable",
    ]
    assert host_steps(["reboot-host", "restart-toolstack", "restart-device-model"]) == [
        "disable",
        "evacuate",
        "apply-packages",
        "reboot-host",
        "restart-device-model",
        "enable",
        "migrate-back",
    ]
    assert host_steps(["restart-device-model", "restart-vm"]) == [
        "disable",
        "apply-packages",
        "restart-vm",
        "enable",
    ]
    assert host_steps([]) == ["disable", "apply-packages", "enable"]


def test_the_coordinator_goes_first():
    assert update_order(["h1", "h2", "h3"], "h2") == ["h2", "h1", "h3"]


def test_prechecks_name_what_fails():
    good = prechecks(
        requested_hash="sha256:a",
        synced_hash="sha256:a",
        synced_by="h1",
        coordinator="h1",
        host_states={"h1": "enabled", "h2": "enabled"},
        offline_at_sync=[],
        syncing=False,
    )
    assert all(p.ok for p in good)
    bad = prechecks(
        requested_hash="sha256:b",
        synced_hash="sha256:a",
        synced_by="h1",
        coordinator="h2",
        host_states={"h1": "enabled", "h2": "disabled"},
        offline_at_sync=["h1"],
        syncing=True,
    )
    failed = {p.name: p.reason for p in bad if not p.ok}
    assert set(failed) == {
        "hosts-online",
        "hash-is-latest-sync",
        "synced-by-coordinator",
        "no-sync-running",
    }
    assert "h1, h2" in failed["hosts-online"]
    assert "not sha256:b" in failed["hash-is-latest-sync"]


def test_the_signed_release_must_be_the_suite_asked_for_and_not_expired():
    now = datetime(2026, 12, 1, 12, 0)
    index = f"SHA256:\n {'c' * 64} 1 main/binary-amd64/Packages\n"
    ok = parse_release(f"Suite: stable\nCodename: bookworm\n{index}")
    check_release(ok, "bookworm", now)
    check_release(ok, "stable", now)
    with pytest.raises(InvalidInput, match="not trixie"):
        check_release(ok, "trixie", now)
    fresh = parse_release(f"Suite: stable\nValid-Until: Tue, 08 Dec 2026 12:00:00 UTC\n{index}")
    check_release(fresh, "stable", now)
    with pytest.raises(InvalidInput, match="expired"):
        check_release(fresh, "stable", datetime(2026, 12, 9))
    bad = parse_release(f"Suite: stable\nValid-Until: someday\n{index}")
    with pytest.raises(InvalidInput, match="not a date"):
        check_release(bad, "stable", now)


def test_a_clusters_own_rules_come_before_the_shipped_ones():
    own = parse_rules(
        [
            {"packages": "linux-image-*", "category": "full", "task": "reboot-host"},
            {"packages": "hel?o", "category": "mandatory", "task": "restart-vm", "why": "ours"},
        ]
    )
    ruleset = own + DEFAULT_RULES
    assert guidance_of(entry("linux-image-6.1.0-18-amd64"), ruleset)["full"] == ["reboot-host"]
    assert guidance_of(entry("linux-image-6.1.0-18-amd64"), ruleset)["recommended"] == []
    assert guidance_of(entry("hello"), ruleset)["mandatory"] == ["restart-vm"]
    assert guidance_of(entry("libvirt0"), ruleset)["mandatory"] == ["restart-toolstack"]
    assert parse_rules([]) == ()


@pytest.mark.parametrize(
    ("items", "words"),
    [
        ("linux-*", "a list"),
        ([{"packages": "linux-[a]*", "category": "full", "task": "reboot-host"}], "pattern"),
        ([{"packages": "x", "category": "urgent", "task": "reboot-host"}], "category"),
        ([{"packages": "x", "category": "full", "task": "reinstall"}], "task"),
        ([{"packages": "x", "category": "full", "task": "reboot-host", "z": 1}], "an object"),
        ([{"packages": "x", "category": "full", "task": "reboot-host"}] * 101, "at most 100"),
    ],
)
def test_bad_rules_are_refused(items, words):
    with pytest.raises(InvalidInput, match=words):
        parse_rules(items)
