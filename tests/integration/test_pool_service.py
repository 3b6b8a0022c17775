"""Pools through the service layer, on real qemu-img and SQLite, with a clock the tests move.

The runner executes operations in its background thread as in a server; its periodic pool pass
is switched off (``reconcile_enabled``) so that each test decides when ``reconcile_pools`` runs
and at what time, except the one test that checks the runner does it by itself.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from goldfleet.context import Context
from goldfleet.db.tables import Clone, Operation, OperationItem, Pool
from goldfleet.domain.rollout import ACTIVE
from goldfleet.drivers.sim import SimDriver, SimPlan
from goldfleet.errors import Conflict, InvalidInput, NotFound
from goldfleet.services import catalog, fleet, pools, rollouts
from goldfleet.services import sim as world
from goldfleet.services.common import OperationView, audit

MiB = 1 << 20
MONDAY_NOON = datetime(2026, 1, 5, 12, 0)  # outside the window below
SATURDAY_2230 = datetime(2026, 1, 10, 22, 30)  # inside it
SUNDAY_0030 = datetime(2026, 1, 11, 0, 30)  # just after it closed
NEXT_SATURDAY_2210 = datetime(2026, 1, 17, 22, 10)  # inside the next one
WINDOW = "0 22 * * 6"  # Saturdays 22:00 UTC, for 120 minutes


class FakeClock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at


@pytest.fixture
def clock(ctx: Context) -> FakeClock:
    fake = FakeClock(MONDAY_NOON)
    ctx.clock = fake  # type: ignore[assignment]
    ctx.runner.reconcile_enabled = False  # type: ignore[union-attr]
    return fake


@pytest.fixture
def base(ctx: Context, clock: FakeClock, tmp_path: Path) -> str:
    image = tmp_path / "base.raw"
    with image.open("wb") as f:
        f.truncate(8 * MiB)
        f.write(b"\x11" * 4096)
    catalog.import_template(
        ctx, name="base", image=image, fmt="raw", temp=["16M"], data=["16M"], actor="t"
    )
    return "base"


def new_version(ctx: Context, template: str, byte: int) -> int:
    view = catalog.enter_maintenance(ctx, template, actor="t")
    ctx.qemu.write_pattern(Path(view.overlay_path), 0, 4096, byte)
    return catalog.exit_maintenance(ctx, template, actor="t").version


def settle(ctx: Context) -> None:
    """Until no operation is under way (paused ones excepted)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with ctx.session() as s:
            ops = list(
                s.scalars(
                    select(Operation.id).where(
                        Operation.status.in_([s for s in ACTIVE if s != "paused"])
                    )
                )
            )
        if not ops:
            return
        for op_id in ops:
            ctx.runner.wait(op_id, timeout=30)  # type: ignore[union-attr]
    raise AssertionError("operations did not finish within 60 s")


def members(ctx: Context, pool: str) -> dict[str, tuple[str, int, str | None, str]]:
    """name → (status, version number, assigned user, power) of the pool's clones."""
    with ctx.session() as s:
        p = s.scalar(select(Pool).where(Pool.name == pool))
        return {
            c.name: (c.status, c.version.number, c.assigned_user, c.power)
            for c in s.scalars(select(Clone).where(Clone.pool_id == p.id).order_by(Clone.name))
        }


def pool_ops(ctx: Context, pool: str, kind: str) -> list[OperationView]:
    with ctx.session() as s:
        p = s.scalar(select(Pool).where(Pool.name == pool))
        ids = list(
            s.scalars(
                select(Operation.id)
                .where(Operation.pool_id == p.id, Operation.kind == kind)
                .order_by(Operation.id)
            )
        )
    return [rollouts.show_operation(ctx, i) for i in ids]


def make_pool(ctx: Context, name: str = "desks", **kw: object) -> pools.PoolView:
    args = {"template": "base", "min_size": 0, "max_size": 4, "buffer": 2, "actor": "t", **kw}
    view = pools.create_pool(ctx, name=name, **args)  # type: ignore[arg-type]
    settle(ctx)
    return view


# --- size and buffer ----------------------------------------------------------------------


def test_create_provisions_min_and_buffer_as_one_operation(ctx: Context, base: str) -> None:
    made = make_pool(ctx, min_size=3, max_size=6, buffer=2)
    assert (made.min, made.max, made.buffer, made.state) == (3, 6, 2, "enabled")
    got = members(ctx, "desks")
    assert len(got) == 3  # min 3 is more than the buffer of 2
    assert {v for v in got.values()} == {("ready", 1, None, "stopped")}
    (op,) = pool_ops(ctx, "desks", "clone.create")
    assert (op.status, op.total, op.done) == ("done", 3, 3)
    view = pools.show_pool(ctx, "desks")
    assert (view.total, view.idle, view.ready, view.assigned, view.behind) == (3, 3, 3, 0, 0)
    assert view.note is None and view.operations == []
    assert pools.reconcile_pools(ctx) == []  # nothing missing: nothing done
    assert [p.name for p in pools.list_pools(ctx)] == ["desks"]


def test_buffer_kept_as_users_are_assigned_and_never_above_max(ctx: Context, base: str) -> None:
    make_pool(ctx, max_size=4, buffer=2)
    assert len(members(ctx, "desks")) == 2

    alice = pools.assign(ctx, "desks", "alice", actor="t")
    assert alice.clone.power == "running" and alice.clone.status == "ready"
    settle(ctx)  # the assignment started provisioning of a replacement
    got = members(ctx, "desks")
    assert len(got) == 3
    assert got[alice.clone.name][2:] == ("alice", "running")
    assert sum(1 for v in got.values() if v[2] is None) == 2

    # the same user gets the same clone back
    assert pools.assign(ctx, "desks", "alice", actor="t").clone.name == alice.clone.name

    for user in ("bob", "carol", "dave"):
        pools.assign(ctx, "desks", user, actor="t")
        settle(ctx)
        for _ in range(3):  # passes repeated change nothing once the pool is at size
            pools.reconcile_pools(ctx)
        settle(ctx)
        assert len(members(ctx, "desks")) <= 4
    got = members(ctx, "desks")
    assert len(got) == 4
    assert sorted(v[2] for v in got.values()) == ["alice", "bob", "carol", "dave"]
    view = pools.show_pool(ctx, "desks")
    assert (view.total, view.assigned, view.idle) == (4, 4, 0)
    assert "maximum of 4" in (view.note or "")

    with pytest.raises(Conflict, match="all 4 of its at most 4 clones are taken"):
        pools.assign(ctx, "desks", "erin", actor="t")

    # a release gives the clone back, stopped, to the next user
    released = pools.release(ctx, "desks", "alice", actor="t")
    assert released.power == "stopped"
    assert members(ctx, "desks")[alice.clone.name][2] is None
    erin = pools.assign(ctx, "desks", "erin", actor="t")
    assert erin.clone.name == alice.clone.name
    with pytest.raises(NotFound, match="user alice has no clone in pool desks"):
        pools.release(ctx, "desks", "alice", actor="t")
    settle(ctx)
    assert len(members(ctx, "desks")) == 4


def test_no_idle_clone_starts_provisioning_and_says_so(ctx: Context, base: str) -> None:
    make_pool(ctx, max_size=2, buffer=0)  # on demand only
    assert members(ctx, "desks") == {}
    with pytest.raises(Conflict, match=r"provisioning is under way \(operation \d+\)"):
        pools.assign(ctx, "desks", "alice", actor="t")
    settle(ctx)
    assert len(members(ctx, "desks")) == 1
    alice = pools.assign(ctx, "desks", "alice", actor="t")
    assert members(ctx, "desks")[alice.clone.name][2] == "alice"


def test_concurrent_passes_never_exceed_max(ctx: Context, base: str) -> None:
    make_pool(ctx, max_size=5, buffer=5)
    names = sorted(members(ctx, "desks"))
    for name in names[:3]:  # an admin deletes three of them by hand
        fleet.delete_clone(ctx, name, actor="t")
    assert len(members(ctx, "desks")) == 2

    threads = [threading.Thread(target=pools.reconcile_pools, args=(ctx,)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    settle(ctx)
    pools.reconcile_pools(ctx)
    settle(ctx)
    assert len(members(ctx, "desks")) == 5
    creates = pool_ops(ctx, "desks", "clone.create")
    assert [op.total for op in creates] == [5, 3]  # the first fill, then one operation of three


def test_failed_clones_stop_provisioning_until_handled(ctx: Context, base: str) -> None:
    healthy = ctx.driver
    # a hypervisor that fails every action on the pool's first clone
    ctx.driver = SimDriver(
        ctx.sessions,
        hosts=ctx.settings.sim_hosts,
        plan=SimPlan.from_dict({"fail_vms": ["base-001"]}),
    )
    make_pool(ctx, max_size=4, buffer=1)
    assert members(ctx, "desks") == {"base-001": ("failed", 1, None, "stopped")}
    assert pools.reconcile_pools(ctx) == []  # no clone after clone into the same failure
    view = pools.show_pool(ctx, "desks")
    assert view.failed == 1 and "provisioning stopped: 1 failed clones" in (view.note or "")
    with pytest.raises(Conflict, match=r"cannot provision one now.*failed clones"):
        pools.assign(ctx, "desks", "alice", actor="t")
    assert len(members(ctx, "desks")) == 1

    ctx.driver = healthy  # the cause is fixed; the admin retries the clone
    fleet.retry(ctx, name="base-001", actor="t", wait=True)
    assert pools.assign(ctx, "desks", "alice", actor="t").clone.name == "base-001"
    settle(ctx)
    assert len(members(ctx, "desks")) == 2


# --- drain and enable ---------------------------------------------------------------------


def test_drain_stops_assigning_and_provisioning_enable_resumes(ctx: Context, base: str) -> None:
    make_pool(ctx, max_size=4, buffer=2)
    pools.assign(ctx, "desks", "alice", actor="t")
    settle(ctx)
    drained = pools.drain_pool(ctx, "desks", actor="t")
    assert (drained.enabled, drained.state) == (False, "draining")
    with pytest.raises(Conflict, match=r"pool desks is drained.*goldfleet pool enable desks"):
        pools.assign(ctx, "desks", "bob", actor="t")
    # the assigned user keeps the clone and gets it back
    assert pools.assign(ctx, "desks", "alice", actor="t").clone.name in members(ctx, "desks")

    # an idle clone goes away: a drained pool does not replace it
    idle = sorted(n for n, v in members(ctx, "desks").items() if v[2] is None)
    fleet.delete_clone(ctx, idle[0], actor="t")
    assert pools.reconcile_pools(ctx) == []
    assert len(members(ctx, "desks")) == 2

    enabled = pools.enable_pool(ctx, "desks", actor="t")
    assert (enabled.enabled, enabled.state) == (True, "enabled")
    settle(ctx)
    assert len(members(ctx, "desks")) == 3  # buffer of 2 idle again
    bob = pools.assign(ctx, "desks", "bob", actor="t")
    assert members(ctx, "desks")[bob.clone.name][2] == "bob"
    actions = [a.action for a in audit.list_audit(ctx) if a.action.startswith("pool.")]
    assert {"pool.create", "pool.assign", "pool.drain", "pool.enable"} <= set(actions)


# --- maintenance windows ------------------------------------------------------------------


def test_window_takes_assigned_clones_back_recreates_them_and_assigns_afresh_after(
    ctx: Context, base: str, clock: FakeClock
) -> None:
    make_pool(ctx, max_size=6, buffer=3, window_cron=WINDOW, window_minutes=120)
    alice = pools.assign(ctx, "desks", "alice", actor="t")
    settle(ctx)
    assert len(members(ctx, "desks")) == 4
    assert new_version(ctx, "base", 0x22) == 2

    # outside the window nothing is recreated or taken back, however often the pass runs
    for _ in range(3):
        pools.reconcile_pools(ctx)
    settle(ctx)
    assert {v[1] for v in members(ctx, "desks").values()} == {1}
    assert members(ctx, "desks")[alice.clone.name][2] == "alice"
    assert pool_ops(ctx, "desks", "pool.recreate") == []
    view = pools.show_pool(ctx, "desks")
    assert (view.behind, view.window_open, view.next_window) == (
        4,
        False,
        datetime(2026, 1, 10, 22),
    )
    assert (view.window_logoff, view.window_grace_seconds) == ("wait", 600.0)

    # inside it: alice (nobody logged on) loses her clone at once, stopped; all four idle
    # clones behind are recreated; the pool assigns nothing for the whole window
    clock.at = SATURDAY_2230
    notes = pools.reconcile_pools(ctx)
    assert f"pool desks: clone {alice.clone.name} taken back from alice for the window" in notes
    assert any("4 idle clones being recreated" in n for n in notes)
    (op,) = pool_ops(ctx, "desks", "pool.recreate")
    assert op.total == 4
    with pytest.raises(Conflict, match="in its maintenance window until 2026-01-11 00:00 UTC"):
        pools.assign(ctx, "desks", "bob", actor="t")
    settle(ctx)
    got = members(ctx, "desks")
    assert got[alice.clone.name] == ("ready", 2, None, "stopped")
    assert {v[:3] for v in got.values()} == {("ready", 2, None)}
    assert pools.reconcile_pools(ctx) == []  # done: nothing more in this window
    view = pools.show_pool(ctx, "desks")
    assert (view.state, view.behind, view.assigned, view.window_open) == (
        "maintenance",
        0,
        0,
        True,
    )
    assert view.window_closes_at == datetime(2026, 1, 11, 0, 0)
    assert view.next_window == datetime(2026, 1, 17, 22, 0)
    with pytest.raises(Conflict, match="maintenance window"):
        pools.assign(ctx, "desks", "alice", actor="t")
    taken = [a for a in audit.list_audit(ctx) if a.action == "pool.unassign"]
    assert [(a.actor, a.detail["user"], a.detail["clone"]) for a in taken] == [
        ("pool-window", "alice", alice.clone.name)
    ]

    # the window ends: the pool is enabled again and assignments start afresh, on v2
    clock.at = SUNDAY_0030
    assert pools.show_pool(ctx, "desks").state == "enabled"
    for user in ("bob", "alice"):
        got_one = pools.assign(ctx, "desks", user, actor="t")
        assert (got_one.clone.version, got_one.clone.power) == (2, "running")


def _assigned_with_users(ctx: Context, clock: FakeClock, **window: object) -> dict[str, str]:
    """A windowed pool (its logoff policy from ``window``), v2 made, three users assigned;
    alice and bob logged on to theirs, carol not. Returns user → clone."""
    make_pool(ctx, max_size=3, buffer=3, window_cron=WINDOW, window_minutes=120, **window)
    clones = {u: pools.assign(ctx, "desks", u, actor="t").clone.name for u in ("alice", "bob")}
    clones["carol"] = pools.assign(ctx, "desks", "carol", actor="t").clone.name
    world.login(ctx, vm=clones["alice"], user="alice", actor="t")
    world.login(ctx, vm=clones["bob"], user="bob", actor="t")
    new_version(ctx, "base", 0x22)
    return clones


def test_window_notify_force_messages_waits_the_grace_then_logs_off_and_takes_back(
    ctx: Context, base: str, clock: FakeClock
) -> None:
    text = "Maintenance tonight: save your work"
    clones = _assigned_with_users(
        ctx, clock, window_logoff="notify-force", window_grace="10m", window_message=text
    )
    clock.at = SATURDAY_2230
    notes = pools.reconcile_pools(ctx)
    assert f"pool desks: clone {clones['carol']} taken back from carol for the window" in notes
    assert any("told of the window" in n for n in notes)
    settle(ctx)
    got = members(ctx, "desks")
    assert (got[clones["alice"]][2], got[clones["bob"]][2]) == ("alice", "bob")
    assert got[clones["carol"]][1:3] == (2, None)  # taken back, then recreated
    for user in ("alice", "bob"):
        assert [m.text for m in world.list_messages(ctx, vm=clones[user])] == [text]

    clock.at = datetime(2026, 1, 10, 22, 35)  # within the grace: told once, nobody logged off
    pools.reconcile_pools(ctx)
    assert {u.user for u in world.list_sessions(ctx)} == {"alice", "bob"}
    assert len(world.list_messages(ctx, vm=clones["alice"])) == 1

    clock.at = datetime(2026, 1, 10, 22, 41)  # the grace is over: logged off, taken back
    pools.reconcile_pools(ctx)
    settle(ctx)
    pools.reconcile_pools(ctx)  # the next pass recreates what was taken back
    settle(ctx)
    assert world.list_sessions(ctx) == []
    assert {v[1:3] for v in members(ctx, "desks").values()} == {(2, None)}
    taken = {
        a.detail["user"]: a.detail for a in audit.list_audit(ctx) if a.action == "pool.unassign"
    }
    assert taken["alice"]["logged_off"] == ["alice"] and taken["carol"]["logged_off"] == []
    logoffs = [a for a in audit.list_audit(ctx) if a.action == "session.logoff"]
    assert {(a.actor, a.detail["user"]) for a in logoffs} == {
        ("pool-window", "alice"),
        ("pool-window", "bob"),
    }


def test_window_wait_leaves_a_clone_in_use_with_its_user_until_they_log_off(
    ctx: Context, base: str, clock: FakeClock
) -> None:
    clones = _assigned_with_users(ctx, clock)  # the default: wait
    clock.at = SATURDAY_2230
    pools.reconcile_pools(ctx)
    settle(ctx)
    got = members(ctx, "desks")
    assert got[clones["alice"]][:3] == ("ready", 1, "alice")  # untouched, still v1
    assert got[clones["carol"]][1:3] == (2, None)
    assert world.list_messages(ctx) == []  # wait sends nothing
    world.logout(ctx, vm=clones["alice"], user="alice", actor="t")
    clock.at = datetime(2026, 1, 10, 23, 0)
    notes = pools.reconcile_pools(ctx)
    assert f"pool desks: clone {clones['alice']} taken back from alice for the window" in notes
    assert members(ctx, "desks")[clones["bob"]][2] == "bob"  # bob stays logged on


def test_window_options_are_checked_and_can_be_changed(
    ctx: Context, base: str, clock: FakeClock
) -> None:
    with pytest.raises(InvalidInput, match="--window-logoff 'soon' is not valid"):
        make_pool(ctx, window_cron=WINDOW, window_minutes=60, window_logoff="soon")
    with pytest.raises(InvalidInput, match="go with a window"):
        make_pool(ctx, window_logoff="force")
    make_pool(ctx)
    view = pools.set_window(ctx, "desks", cron=WINDOW, minutes=60, logoff="force", actor="t")
    assert (view.window_cron, view.window_logoff, view.next_window) == (
        WINDOW,
        "force",
        datetime(2026, 1, 10, 22),
    )
    view = pools.set_window(ctx, "desks", cron=None, minutes=None, actor="t")
    assert (view.window_cron, view.window_logoff) == (None, None)
    assert [a.action for a in audit.list_audit(ctx)].count("pool.window") == 2


def _window_pool_with_a_busy_clone(ctx: Context, clock: FakeClock) -> tuple[int, str, list[str]]:
    """Three idle clones behind; on one of them a user is logged in (without the pool giving
    it to them), so the window operation's default policy waits for that user. Returns the
    operation, the busy clone and the others, once the others are done."""
    make_pool(ctx, max_size=3, buffer=3, window_cron=WINDOW, window_minutes=120)
    names = sorted(members(ctx, "desks"))
    busy, others = names[0], names[1:]
    fleet.start_clone(ctx, busy, actor="t")
    world.login(ctx, vm=busy, user="mallory", actor="t")
    new_version(ctx, "base", 0x22)

    clock.at = SATURDAY_2230
    pools.reconcile_pools(ctx)
    (op,) = pool_ops(ctx, "desks", "pool.recreate")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        view = rollouts.show_operation(ctx, op.id)
        if view.done == 2 and any(w.clone == busy for w in view.waiting):
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"the window operation did not reach its busy clone: {view}")
    assert [members(ctx, "desks")[n][1] for n in others] == [2, 2]
    return op.id, busy, others


def test_window_closing_midway_pauses_and_next_window_resumes(
    ctx: Context, base: str, clock: FakeClock
) -> None:
    op_id, busy, _ = _window_pool_with_a_busy_clone(ctx, clock)
    assert pools.show_pool(ctx, "desks").state == "maintenance"

    clock.at = SUNDAY_0030  # the window closed with one clone left
    assert any("paused" in n for n in pools.reconcile_pools(ctx))
    view = rollouts.show_operation(ctx, op_id)
    assert view.status == "paused"
    assert view.paused_reason is not None
    assert view.paused_reason.startswith(
        "maintenance window closed; continues at 2026-01-17 22:00 UTC"
    )
    assert pools.show_pool(ctx, "desks").state == "enabled"  # assigning again between windows

    world.logout(ctx, vm=busy, user="mallory", actor="t")
    for _ in range(3):  # outside the window the pause holds
        pools.reconcile_pools(ctx)
        ctx.runner.tick()  # type: ignore[union-attr]
    assert rollouts.show_operation(ctx, op_id).status == "paused"
    assert members(ctx, "desks")[busy][1] == 1

    clock.at = NEXT_SATURDAY_2210
    assert any("resumed" in n for n in pools.reconcile_pools(ctx))
    ctx.runner.wait(op_id, timeout=60)  # type: ignore[union-attr]
    view = rollouts.show_operation(ctx, op_id)
    assert (view.status, view.done, view.failed) == ("done", 3, 0)
    assert {v[:2] for v in members(ctx, "desks").values()} == {("ready", 2)}
    assert pools.reconcile_pools(ctx) == []


def test_an_admin_pause_is_not_undone_by_the_window(
    ctx: Context, base: str, clock: FakeClock
) -> None:
    op_id, _, _ = _window_pool_with_a_busy_clone(ctx, clock)
    rollouts.pause_operation(ctx, op_id, actor="admin")
    pools.reconcile_pools(ctx)  # window still open
    view = rollouts.show_operation(ctx, op_id)
    assert (view.status, view.paused_reason) == ("paused", "paused by admin")


def test_assigning_between_windows_takes_a_waiting_clone_out_of_the_operation(
    ctx: Context, base: str, clock: FakeClock
) -> None:
    op_id, busy, others = _window_pool_with_a_busy_clone(ctx, clock)
    clock.at = SUNDAY_0030
    pools.reconcile_pools(ctx)
    world.logout(ctx, vm=busy, user="mallory", actor="t")
    # the two up-to-date clones go first; the third user gets the one still waiting
    assert {pools.assign(ctx, "desks", u, actor="t").clone.name for u in ("u1", "u2")} == set(
        others
    )
    got = pools.assign(ctx, "desks", "u3", actor="t")
    assert (got.clone.name, got.clone.version) == (busy, 1)
    with ctx.session() as s:
        item = s.scalar(
            select(OperationItem).where(
                OperationItem.operation_id == op_id, OperationItem.clone_name == busy
            )
        )
        assert item.state == "skipped" and "assigned to u3" in (item.reason or "")

    clock.at = NEXT_SATURDAY_2210
    pools.reconcile_pools(ctx)
    ctx.runner.wait(op_id, timeout=60)  # type: ignore[union-attr]
    view = rollouts.show_operation(ctx, op_id)
    assert (view.status, view.done, view.skipped) == ("done", 2, 1)
    # the operation left u3's clone alone; the window took it back from u3 (nobody logged
    # on), and the window's next pass recreates it as an idle clone
    assert members(ctx, "desks")[busy][:3] == ("ready", 1, None)
    pools.reconcile_pools(ctx)
    settle(ctx)
    assert members(ctx, "desks")[busy][:3] == ("ready", 2, None)


def test_no_window_means_no_automatic_recreate(ctx: Context, base: str, clock: FakeClock) -> None:
    make_pool(ctx, max_size=3, buffer=2)
    new_version(ctx, "base", 0x22)
    for at in (MONDAY_NOON, SATURDAY_2230):
        clock.at = at
        pools.reconcile_pools(ctx)
    settle(ctx)
    assert {v[1] for v in members(ctx, "desks").values()} == {1}
    assert pools.show_pool(ctx, "desks").behind == 2


def test_the_runner_keeps_pools_at_size_by_itself(ctx: Context, base: str) -> None:
    ctx.settings.reconcile_seconds = 0.1
    make_pool(ctx, max_size=3, buffer=2)
    ctx.runner.reconcile_enabled = True  # type: ignore[union-attr]
    victim = sorted(members(ctx, "desks"))[0]
    fleet.delete_clone(ctx, victim, actor="t")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        got = members(ctx, "desks")
        if len(got) == 2 and all(v[0] == "ready" for v in got.values()):
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the runner did not refill the pool: {members(ctx, 'desks')}")
    assert len(pool_ops(ctx, "desks", "clone.create")) == 2


# --- rules and deletion -------------------------------------------------------------------


def test_bad_pools_are_refused(ctx: Context, base: str) -> None:
    def make(**kw: object) -> None:
        args = {
            "name": "p",
            "template": "base",
            "min_size": 0,
            "max_size": 4,
            "buffer": 1,
            "actor": "t",
            **kw,
        }
        pools.create_pool(ctx, **args)  # type: ignore[arg-type]

    with pytest.raises(InvalidInput, match="--buffer 5 is larger than --max 4"):
        make(buffer=5)
    with pytest.raises(InvalidInput, match="--min 5 is larger than --max 4"):
        make(min_size=5)
    with pytest.raises(InvalidInput, match="pool name 'Bad Name'"):
        make(name="Bad Name")
    with pytest.raises(InvalidInput, match="five fields"):
        make(window_cron="sometimes", window_minutes=60)
    with pytest.raises(InvalidInput, match="both"):
        make(window_cron=WINDOW)
    with pytest.raises(NotFound, match="template nope"):
        make(template="nope")
    make()
    with pytest.raises(Conflict, match="pool p already exists"):
        make()
    with pytest.raises(NotFound, match="pool q does not exist"):
        pools.assign(ctx, "q", "alice", actor="t")
    with pytest.raises(InvalidInput, match="user name"):
        pools.assign(ctx, "p", "al ice", actor="t")
    with ctx.session() as s:
        assert list(s.scalars(select(Pool.name))) == ["p"]


def test_delete_refused_while_assigned_then_deletes_its_clones(ctx: Context, base: str) -> None:
    make_pool(ctx, max_size=3, buffer=2)
    alice = pools.assign(ctx, "desks", "alice", actor="t")
    settle(ctx)
    with pytest.raises(Conflict, match=f"{alice.clone.name} \\(alice\\).*pool release desks"):
        pools.delete_pool(ctx, "desks", actor="t")
    pools.release(ctx, "desks", "alice", actor="t")
    names = set(members(ctx, "desks"))
    op = pools.delete_pool(ctx, "desks", actor="t")
    assert op is not None and (op.kind, op.total) == ("pool.delete", len(names))
    ctx.runner.wait(op.id, timeout=60)  # type: ignore[union-attr]
    assert rollouts.show_operation(ctx, op.id).status == "done"
    with ctx.session() as s:
        assert s.scalar(select(Pool).where(Pool.name == "desks")) is None
        assert not set(s.scalars(select(Clone.name))) & names
        # the pool's history is kept, no longer pointing at a pool
        assert s.scalar(select(Operation.id).where(Operation.pool_id.is_not(None))) is None
    with pytest.raises(NotFound):
        pools.show_pool(ctx, "desks")


def test_delete_keeping_clones_leaves_plain_clones(ctx: Context, base: str) -> None:
    make_pool(ctx, max_size=3, buffer=2)
    names = set(members(ctx, "desks"))
    assert pools.delete_pool(ctx, "desks", keep_clones=True, actor="t") is None
    with ctx.session() as s:
        kept = {c.name: c.pool_id for c in s.scalars(select(Clone))}
    assert kept == dict.fromkeys(names)
