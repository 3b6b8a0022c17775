"""The access service on a real database: sessions expire, a disabled user's login and its
sessions end, grants resolve to permissions, custom roles in use cannot be deleted."""

from __future__ import annotations

from datetime import timedelta

import pytest

from goldfleet.context import Context
from goldfleet.errors import Conflict, Forbidden, InvalidInput, Unauthorized
from goldfleet.services import access


class FakeClock:
    def __init__(self, now):  # type: ignore[no-untyped-def]
        self.at = now

    def now(self):  # type: ignore[no-untyped-def]
        return self.at


def test_a_session_expires_after_its_hours(ctx: Context) -> None:
    clock = FakeClock(ctx.clock.now())
    ctx.clock = clock  # type: ignore[assignment]
    access.create_user(
        ctx, name="ann", password="ann-Passw0rd", role="auditor", scope=None, actor="t"
    )
    made = access.login(ctx, "ann", "ann-Passw0rd")
    caller = access.authenticate(ctx, made.token)
    assert (caller.name, caller.user) == ("user:ann", "ann")
    assert [str(g) for g in caller.grants] == ["auditor on /"]
    clock.at += timedelta(hours=access.SESSION_HOURS) - timedelta(seconds=1)
    access.authenticate(ctx, made.token)
    clock.at += timedelta(seconds=1)
    with pytest.raises(Unauthorized, match="expired"):
        access.authenticate(ctx, made.token)


def test_policy_on_a_real_fleet_row_set(ctx: Context) -> None:
    access.create_user(
        ctx, name="hd", password="hd-Passw0rd!", role="helpdesk", scope="pool:lab", actor="t"
    )
    hd = access.authenticate(ctx, access.login(ctx, "hd", "hd-Passw0rd!").token)
    with pytest.raises(Forbidden, match=r"user hd lacks clone\.restore on clone:nope"):
        access.authorize(ctx, hd, "clone.restore", "clone", "nope")
    with pytest.raises(Forbidden, match=r"user\.write on /"):
        access.authorize(ctx, hd, "user.write")
    assert access.reach(hd, "clone.restore").pools == {"lab"}
    with pytest.raises(Forbidden, match=r"audit\.read"):
        access.reach(hd, "audit.read")


def test_custom_roles_and_grants(ctx: Context) -> None:
    access.create_role(ctx, name="restorer", allow=["clone.restore"], actor="t")
    with pytest.raises(Conflict, match="built in"):
        access.create_role(ctx, name="admin", allow=["clone.restore"], actor="t")
    with pytest.raises(InvalidInput, match="16 characters"):
        access.create_role(ctx, name="r" * 17, allow=["clone.restore"], actor="t")
    token = access.create_token(ctx, name="t1", role="restorer", scope="pool:lab", actor="t")
    caller = access.authenticate(ctx, token)
    assert [(g.role, g.scope, g.permissions) for g in caller.grants] == [
        ("restorer", "pool:lab", frozenset({"clone.restore"}))
    ]
    with pytest.raises(Conflict, match="token t1 on pool:lab"):
        access.delete_role(ctx, "restorer", actor="t")
    access.remove_grant(ctx, access.Holder("token", "t1"), "restorer", "pool:lab", actor="t")
    access.delete_role(ctx, "restorer", actor="t")
    assert access.authenticate(ctx, token).grants == ()
    with pytest.raises(InvalidInput, match="does not exist"):
        access.add_grant(ctx, access.Holder("token", "t1"), "restorer", "/", actor="t")
    with pytest.raises(InvalidInput, match="site token"):
        access.create_token(ctx, name="s1", role="site", actor="t")
        access.add_grant(ctx, access.Holder("token", "s1"), "auditor", "/", actor="t")


def test_failed_logins_are_throttled_audited_and_reset_by_a_good_one(ctx: Context) -> None:
    from goldfleet.domain import access as rules
    from goldfleet.errors import TooManyRequests
    from goldfleet.services.common import audit

    clock = FakeClock(ctx.clock.now())
    ctx.clock = clock  # type: ignore[assignment]
    access.create_user(
        ctx, name="bo", password="bo-Passw0rd!", role="auditor", scope=None, actor="t"
    )
    for _ in range(rules.FREE_FAILURES):
        with pytest.raises(Unauthorized, match="wrong"):
            access.login(ctx, "bo", "guess-guess")
    # throttled: even the right password waits, unchecked
    with pytest.raises(TooManyRequests, match="try again in 30 s"):
        access.login(ctx, "bo", "bo-Passw0rd!")
    clock.at += timedelta(seconds=rules.THROTTLE_SECONDS)
    with pytest.raises(Unauthorized, match="wrong"):
        access.login(ctx, "bo", "guess-guess")
    with pytest.raises(TooManyRequests, match="try again in 60 s"):
        access.login(ctx, "bo", "guess-guess")
    clock.at += timedelta(seconds=2 * rules.THROTTLE_SECONDS)
    assert access.login(ctx, "bo", "bo-Passw0rd!").user == "bo"  # and the count starts over
    with pytest.raises(Unauthorized, match="wrong"):
        access.login(ctx, "bo", "guess-guess")
    assert access.login(ctx, "bo", "bo-Passw0rd!").user == "bo"
    actions = [a.action for a in audit.list_audit(ctx, limit=100) if a.target == "bo"]
    assert actions.count("auth.login-failed") == 7
    assert actions.count("auth.login-throttled") == 2
    assert actions.count("auth.login") == 2
