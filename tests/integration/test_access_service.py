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
