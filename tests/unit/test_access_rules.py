"""The permission and scope rules of domain/access.py."""

from __future__ import annotations

import pytest

from goldfleet.domain import access as rules
from goldfleet.domain.access import Grant, resolve
from goldfleet.errors import InvalidInput


def grants(*pairs: tuple[str, str], custom: dict | None = None) -> tuple[Grant, ...]:
    return resolve(pairs, custom or {})


CLONE_IN_POOL = rules.clone_path("desk-1", "win11", "lab", None, None)
CLONE_ELSEWHERE = rules.clone_path("desk-9", "win11", "office", None, None)


def test_admin_holds_every_permission_and_auditor_every_read():
    assert rules.BUILTIN_ROLES["admin"] == frozenset(rules.PERMISSIONS)
    auditor = rules.BUILTIN_ROLES["auditor"]
    assert {p for p in rules.PERMISSIONS if p.endswith(".read")} - {"sim.read"} <= auditor
    assert not any(p.endswith((".write", ".control", ".restore")) for p in auditor)


def test_roles_hold_only_known_permissions():
    for name, perms in rules.BUILTIN_ROLES.items():
        assert perms <= rules.PERMISSIONS.keys(), name


def test_helpdesk_may_restore_but_not_recreate_or_enter_maintenance():
    hd = rules.BUILTIN_ROLES["helpdesk"]
    assert {"clone.start", "clone.stop", "clone.restore", "clone.message", "clone.logoff"} <= hd
    assert "clone.recreate" not in hd and "template.maintenance" not in hd
    assert "user.write" not in rules.BUILTIN_ROLES["operator"]


def test_a_pool_grant_covers_the_pools_clones_only():
    g = grants(("helpdesk", "pool:lab"))
    assert rules.allows(g, "clone.restore", CLONE_IN_POOL)
    assert not rules.allows(g, "clone.restore", CLONE_ELSEWHERE)
    assert not rules.allows(g, "clone.delete", CLONE_IN_POOL)  # not in the role
    assert not rules.allows(g, "clone.restore", rules.ROOT)


def test_a_template_grant_covers_its_clones_pools_and_itself():
    g = grants(("operator", "template:win11"))
    assert rules.allows(g, "clone.recreate", CLONE_IN_POOL)
    assert rules.allows(g, "clone.recreate", CLONE_ELSEWHERE)
    assert rules.allows(g, "pool.write", rules.pool_path("lab", "win11"))
    assert rules.allows(g, "template.maintenance", rules.template_path("win11"))
    assert not rules.allows(g, "template.maintenance", rules.template_path("linux"))
    other = rules.clone_path("srv-1", "linux", None, None, None)
    assert not rules.allows(g, "clone.read", other)


def test_a_grant_on_root_covers_everything():
    g = grants(("auditor", "/"))
    for path in (CLONE_IN_POOL, rules.site_path("paris"), rules.ROOT):
        assert rules.allows(g, "clone.read", path)
    assert not rules.allows(g, "clone.restore", CLONE_IN_POOL)


def test_self_covers_only_the_clones_assigned_to_the_caller():
    g = grants(("user", "self"))
    mine = rules.clone_path("desk-1", "win11", "lab", "alice", "alice")
    theirs = rules.clone_path("desk-2", "win11", "lab", "bob", "alice")
    unassigned = rules.clone_path("desk-3", "win11", "lab", None, "alice")
    assert rules.allows(g, "clone.restore", mine)
    assert not rules.allows(g, "clone.restore", theirs)
    assert not rules.allows(g, "clone.restore", unassigned)
    assert not rules.allows(g, "clone.delete", mine)
    assert not rules.allows(g, "clone.recreate", mine)


def test_a_clone_grant_covers_that_clone_only():
    g = grants(("user", "clone:desk-1"))
    assert rules.allows(g, "clone.restore", CLONE_IN_POOL)
    assert rules.allows(g, "clone.start", CLONE_IN_POOL)
    assert not rules.allows(g, "clone.restore", CLONE_ELSEWHERE)


def test_the_user_role_is_granted_only_on_own_clones():
    rules.check_grant("user", "self", holder_kind="user")
    rules.check_grant("user", "clone:desk-1", holder_kind="token")
    for scope in ("/", "pool:lab", "template:win11"):
        with pytest.raises(InvalidInput, match="own clones"):
            rules.check_grant("user", scope, holder_kind="user")
    with pytest.raises(InvalidInput, match="users only"):
        rules.check_grant("helpdesk", "self", holder_kind="token")


@pytest.mark.parametrize(
    "scope",
    ["/", "self", "template:win11", "pool:a.b-c", "site:paris", "cluster:rack-1", "clone:desk-001"],
)
def test_valid_scopes(scope):
    assert rules.check_scope(scope) == scope


@pytest.mark.parametrize(
    "scope",
    [
        "",
        "//",
        "pool:",
        "pool:UPPER",
        "host:h1",
        "template",
        "template:a/b",
        ":x",
        "pool:" + "x" * 64,
    ],
)
def test_invalid_scopes_are_refused_with_the_choices(scope):
    with pytest.raises(InvalidInput, match="template:NAME"):
        rules.check_scope(scope)


def test_custom_roles_take_permissions_from_the_list():
    assert rules.check_permissions(["clone.restore", " clone.message "]) == {
        "clone.restore",
        "clone.message",
    }
    with pytest.raises(InvalidInput, match=r"clone\.nuke"):
        rules.check_permissions(["clone.restore", "clone.nuke"])
    with pytest.raises(InvalidInput, match="at least one"):
        rules.check_permissions(["", " "])
    g = grants(("restorer", "pool:lab"), custom={"restorer": frozenset({"clone.restore"})})
    assert rules.allows(g, "clone.restore", CLONE_IN_POOL)
    assert not rules.allows(g, "clone.start", CLONE_IN_POOL)


def test_a_grant_of_a_deleted_role_gives_nothing():
    g = grants(("gone", "/"))
    assert not any(rules.allows(g, p, rules.ROOT) for p in rules.PERMISSIONS)


def test_the_denial_names_the_permission_the_scope_and_what_is_held():
    g = grants(("helpdesk", "pool:lab"))
    message = rules.denial("user hd", g, "clone.restore", CLONE_ELSEWHERE)
    assert message.startswith("user hd lacks clone.restore on clone:desk-9: it needs a role")
    assert "on /, template:win11, pool:office or clone:desk-9 (" in message
    assert rules.denial("token t (reader)", g, "user.write", rules.ROOT).startswith(
        "token t (reader) lacks user.write on /: it needs a role with user.write on / ("
    )
    assert "pool:office" in message and "template:win11" in message and "clone:desk-9" in message
    assert "helpdesk on pool:lab" in message
    assert "self" not in message


def test_reach_lists_the_scopes_of_one_permission():
    g = grants(("helpdesk", "pool:lab"), ("user", "clone:x1"), ("auditor", "site:paris"))
    r = rules.reach(g, "clone.read", "alice")
    assert not r.everything and r.pools == {"lab"} and r.clones == {"x1"}
    assert r.sees(CLONE_IN_POOL) and not r.sees(CLONE_ELSEWHERE)
    assert rules.reach(g, "clone.restore", None).pools == {"lab"}
    assert rules.reach(g, "template.write", None).nothing
    assert rules.reach(grants(("auditor", "/")), "clone.read", None).everything
    own = rules.reach(grants(("user", "self")), "clone.read", "alice")
    assert own.own == "alice"
    assert own.sees(rules.clone_path("d", "t", None, "alice", "alice"))
    assert not own.sees(rules.clone_path("d", "t", None, "bob", "alice"))


def test_legacy_token_roles_map_to_grants_on_root():
    assert rules.TOKEN_ROLE_GRANTS == {"admin": ("admin", "/"), "reader": ("auditor", "/")}


def test_failed_logins_are_throttled_after_the_free_ones():
    from datetime import datetime, timedelta

    t = datetime(2026, 12, 1, 12, 0, 0)
    assert rules.login_wait(0, None, t) == 0
    assert rules.login_wait(rules.FREE_FAILURES - 1, t, t) == 0
    assert rules.login_wait(rules.FREE_FAILURES, t, t) == rules.THROTTLE_SECONDS
    assert rules.login_wait(rules.FREE_FAILURES, t, t + timedelta(seconds=29.5)) == 1
    assert rules.login_wait(rules.FREE_FAILURES, t, t + timedelta(seconds=30)) == 0
    assert rules.login_wait(rules.FREE_FAILURES + 2, t, t) == 4 * rules.THROTTLE_SECONDS
    assert rules.login_wait(100, t, t) == rules.MAX_THROTTLE
