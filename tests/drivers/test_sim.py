"""The sim driver's own model: placement, users, the guest's own shutdown, and the fault plan.

Outcomes are read back through the driver (or a second driver on the same database, when the
first is busy or closed), measured with a clock, or caught as exceptions.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from goldfleet.bootstrap import make_driver
from goldfleet.config import Settings
from goldfleet.drivers import sim
from goldfleet.drivers.base import (
    RUNNING,
    STOPPED,
    UNDEFINED,
    DiskSpec,
    DomainSpec,
    DriverError,
    Unsupported,
)
from goldfleet.drivers.sim import SimDriver, SimPlan
from goldfleet.errors import Conflict, InvalidInput, NotFound

HOSTS = ["sim-host-1", "sim-host-2"]
Make = Callable[..., SimDriver]


@pytest.fixture
def make(fresh_db: sessionmaker[Session]) -> Iterator[Make]:
    """``make(plan={...}, hosts=[...])``: a sim driver on the test's database."""
    made: list[SimDriver] = []

    def build(plan: dict | None = None, hosts: list[str] = HOSTS) -> SimDriver:
        made.append(SimDriver(fresh_db, hosts=hosts, plan=SimPlan.from_dict(plan or {})))
        return made[-1]

    yield build
    for d in made:
        d.close()


@pytest.fixture
def drv(make: Make) -> SimDriver:
    return make()


def world(driver: SimDriver) -> Session:
    """A unit of work on the simulated world, committed on success."""
    return driver.factory.begin()  # type: ignore[return-value]


def users(driver: SimDriver, name: str) -> list[str]:
    return [g.user for g in driver.sessions(names=[name])[name]]


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, errors


# --- placement ----------------------------------------------------------------------------


def test_new_vms_go_to_the_least_loaded_host(
    make: Make, vm_spec: Callable[..., DomainSpec]
) -> None:
    drv = make(hosts=["h1", "h2", "h3"])
    placed = {f"desk-{i:03}": drv.define(spec=vm_spec(f"desk-{i:03}")) for i in range(6)}
    assert list(placed.values()) == ["h1", "h2", "h3", "h1", "h2", "h3"]  # ties: config order
    assert drv.define(spec=vm_spec("desk-006"), host="h3") == "h3"  # loads now h1 2, h2 2, h3 3
    for name in ("desk-000", "desk-003"):
        drv.undefine(name=name)  # h1 0, h2 2, h3 3
    fresh = [drv.define(spec=vm_spec(f"desk-1{i:02}")) for i in range(4)]
    assert fresh == ["h1", "h1", "h1", "h2"]


def test_placement_counts_another_servers_vms_at_the_next_count(
    make: Make, vm_spec: Callable[..., DomainSpec], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The VMs per host are counted in the database at most every LOAD_SECONDS (not once per
    define, which would scan the whole fleet per VM); this driver's own defines count at once,
    another server's from the next count."""
    mine, other = make(hosts=["h1", "h2"]), make(hosts=["h1", "h2"])
    assert [mine.define(spec=vm_spec(f"desk-{i:03}")) for i in range(3)] == ["h1", "h2", "h1"]
    for i in range(4):
        other.define(spec=vm_spec(f"other-{i:03}"), host="h2")  # h1 2, h2 5
    # within LOAD_SECONDS of its count, this driver still sees h1 2, h2 1
    assert mine.define(spec=vm_spec("desk-003")) == "h2"
    monkeypatch.setattr(sim, "LOAD_SECONDS", 0.0)
    assert [mine.define(spec=vm_spec(f"desk-1{i:02}")) for i in range(3)] == ["h1"] * 3


def test_redefine_keeps_the_host_even_if_another_is_asked(
    drv: SimDriver, vm_spec: Callable[..., DomainSpec]
) -> None:
    host = drv.define(spec=vm_spec("desk-001"), host="sim-host-2")
    assert drv.define(spec=vm_spec("desk-001"), host="sim-host-1") == host == "sim-host-2"
    assert drv.host_of(name="desk-001") == "sim-host-2"


def test_define_on_an_unknown_host_fails(
    drv: SimDriver, vm_spec: Callable[..., DomainSpec]
) -> None:
    with pytest.raises(DriverError, match="elsewhere: not a sim host"):
        drv.define(spec=vm_spec("desk-001"), host="elsewhere")
    assert drv.state(name="desk-001") == UNDEFINED


def test_a_vm_cannot_start_without_its_disk_files(
    drv: SimDriver,
    vm_spec: Callable[..., DomainSpec],
    vm_disks: tuple[DiskSpec, ...],
    tmp_path: Path,
) -> None:
    missing = DiskSpec(role="system", path=vm_disks[0].path, backing=(str(tmp_path / "gone"),))
    drv.define(spec=vm_spec("desk-001", disks=(missing,)))
    with pytest.raises(DriverError, match=r"desk-001 cannot start: its system disk needs .*gone"):
        drv.start(name="desk-001")
    assert drv.state(name="desk-001") == STOPPED


def test_state_survives_a_new_driver_on_the_same_database(
    make: Make, vm_spec: Callable[..., DomainSpec]
) -> None:
    first = make()
    host = first.define(spec=vm_spec("desk-001"))
    first.start(name="desk-001")
    first.close()
    second = make()
    assert second.states() == {"desk-001": RUNNING}
    assert second.host_of(name="desk-001") == host


# --- users, messages, the guest's own shutdown ---------------------------------------------


def test_users_log_in_and_out_of_running_vms_only(
    drv: SimDriver, vm_spec: Callable[..., DomainSpec]
) -> None:
    drv.define(spec=vm_spec("desk-001"))
    with pytest.raises(Conflict, match="desk-001 is stopped"), world(drv) as s:
        sim.login(s, vm="desk-001", user="alice")
    with pytest.raises(NotFound, match="desk-404"), world(drv) as s:
        sim.login(s, vm="desk-404", user="alice")
    drv.start(name="desk-001")
    with world(drv) as s:
        sim.login(s, vm="desk-001", user="alice")
        sim.login(s, vm="desk-001", user="j.doe@corp")
    with pytest.raises(Conflict, match="already logged"), world(drv) as s:
        sim.login(s, vm="desk-001", user="alice")
    with pytest.raises(InvalidInput, match="user"), world(drv) as s:
        sim.login(s, vm="desk-001", user="../etc")
    assert users(drv, "desk-001") == ["alice", "j.doe@corp"]
    with world(drv) as s:
        sim.logout(s, vm="desk-001", user="alice")
    with pytest.raises(NotFound, match="alice is not logged into VM desk-001"), world(drv) as s:
        sim.logout(s, vm="desk-001", user="alice")
    assert users(drv, "desk-001") == ["j.doe@corp"]


def test_shutdown_ends_the_sessions(drv: SimDriver, vm_spec: Callable[..., DomainSpec]) -> None:
    drv.define(spec=vm_spec("desk-001"))
    drv.start(name="desk-001")
    with world(drv) as s:
        sim.login(s, vm="desk-001", user="alice")
    drv.shutdown(name="desk-001", timeout=1)
    assert users(drv, "desk-001") == []
    with world(drv) as s:
        assert sim.users(s) == []


def test_messages_reach_running_vms_and_are_kept(
    drv: SimDriver, vm_spec: Callable[..., DomainSpec]
) -> None:
    drv.define(spec=vm_spec("desk-001"))
    with pytest.raises(DriverError, match="desk-001: it is stopped"):
        drv.send_message(name="desk-001", text="hello")
    drv.start(name="desk-001")
    drv.send_message(name="desk-001", text="first")
    drv.send_message(name="desk-001", text="second")
    with world(drv) as s:
        assert [m.text for m in sim.messages(s, vm="desk-001")] == ["first", "second"]
        assert sim.messages(s, vm="desk-002") == []


def test_guest_shutdown_is_seen_through_states(
    drv: SimDriver, vm_spec: Callable[..., DomainSpec]
) -> None:
    for name in ("desk-001", "desk-002"):
        drv.define(spec=vm_spec(name))
        drv.start(name=name)
    with world(drv) as s:
        sim.login(s, vm="desk-001", user="alice")
        sim.guest_shutdown(s, vm="desk-001")
    assert drv.states() == {"desk-001": STOPPED, "desk-002": RUNNING}
    assert users(drv, "desk-001") == []
    with pytest.raises(Conflict, match="already stopped"), world(drv) as s:
        sim.guest_shutdown(s, vm="desk-001")
    with world(drv) as s:
        listed = {v.name: (v.state, v.users) for v in sim.vms(s)}
    assert listed == {"desk-001": (STOPPED, ()), "desk-002": (RUNNING, ())}


def test_migrate_keeps_the_vm_running_with_its_users(
    drv: SimDriver, vm_spec: Callable[..., DomainSpec]
) -> None:
    drv.define(spec=vm_spec("desk-001"), host="sim-host-1")
    drv.start(name="desk-001")
    with world(drv) as s:
        sim.login(s, vm="desk-001", user="alice")
    drv.migrate(name="desk-001", host="sim-host-2")
    assert drv.host_of(name="desk-001") == "sim-host-2"
    assert drv.state(name="desk-001") == RUNNING
    assert users(drv, "desk-001") == ["alice"]
    with pytest.raises(DriverError, match="mars: not a sim host"):
        drv.migrate(name="desk-001", host="mars")
    assert drv.host_of(name="desk-001") == "sim-host-2"


def test_one_host_cannot_migrate(make: Make, vm_spec: Callable[..., DomainSpec]) -> None:
    drv = make(hosts=["only"])
    assert drv.capabilities.migrate is False
    assert drv.define(spec=vm_spec("desk-001")) == "only"
    with pytest.raises(Unsupported, match="one host"):
        drv.migrate(name="desk-001", host="only")


def test_sessions_of_many_vms_is_one_query(
    drv: SimDriver, vm_spec: Callable[..., DomainSpec]
) -> None:
    names = [f"desk-{i:03}" for i in range(200)]
    for name in names:
        drv.define(spec=vm_spec(name))
        drv.start(name=name)
    with world(drv) as s:
        sim.login(s, vm="desk-007", user="alice")
        sim.login(s, vm="desk-150", user="bob")
    statements: list[str] = []
    engine = drv.factory.kw["bind"]

    def count(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        found = drv.sessions(names=names)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len([st for st in statements if st.lstrip().upper().startswith("SELECT")]) == 1
    assert {n: [g.user for g in v] for n, v in found.items() if v} == {
        "desk-007": ["alice"],
        "desk-150": ["bob"],
    }
    assert set(found) == set(names)
    assert found["desk-007"][0].since is not None
    assert found["desk-007"][0].since.tzinfo is not None


# --- the plan: latency --------------------------------------------------------------------


def test_latency_per_action_and_default(make: Make, vm_spec: Callable[..., DomainSpec]) -> None:
    drv = make({"latency_ms": {"start": 150, "*": 40, "state": 0}})
    define_s = timed(lambda: drv.define(spec=vm_spec("desk-001")))
    start_s = timed(lambda: drv.start(name="desk-001"))
    state_s = timed(lambda: drv.state(name="desk-001"))
    assert start_s >= 0.150
    assert 0.040 <= define_s < 0.150
    assert state_s < 0.040


# --- the plan: failures -------------------------------------------------------------------


def test_fail_nth_fails_exactly_that_call(make: Make, vm_spec: Callable[..., DomainSpec]) -> None:
    drv = make({"fail_nth": {"start": 2}})
    for name in ("desk-001", "desk-002", "desk-003"):
        drv.define(spec=vm_spec(name))
    drv.start(name="desk-001")
    with pytest.raises(DriverError, match="start of VM desk-002 failed on call 2"):
        drv.start(name="desk-002")
    drv.start(name="desk-003")
    assert drv.states() == {"desk-001": RUNNING, "desk-002": STOPPED, "desk-003": RUNNING}
    drv.start(name="desk-002")  # call 4: the retry succeeds
    assert drv.state(name="desk-002") == RUNNING
    assert drv.calls("start") == 4


def test_fail_nth_every_and_lists(make: Make, vm_spec: Callable[..., DomainSpec]) -> None:
    drv = make({"fail_nth": {"state": {"every": 3}, "host_of": [1, 4]}})
    drv.define(spec=vm_spec("desk-001"))
    outcomes = []
    for _ in range(7):
        try:
            drv.state(name="desk-001")
            outcomes.append("ok")
        except DriverError:
            outcomes.append("fail")
    assert outcomes == ["ok", "ok", "fail", "ok", "ok", "fail", "ok"]
    failed = []
    for n in range(1, 6):
        try:
            drv.host_of(name="desk-001")
        except DriverError:
            failed.append(n)
    assert failed == [1, 4]


def test_fail_vms_fails_every_action_on_them(
    make: Make, vm_spec: Callable[..., DomainSpec]
) -> None:
    drv = make({"fail_vms": ["desk-007"]})
    with pytest.raises(DriverError, match="define of VM desk-007 failed"):
        drv.define(spec=vm_spec("desk-007"))
    drv.define(spec=vm_spec("desk-008"))
    drv.start(name="desk-008")
    for call in (
        lambda: drv.start(name="desk-007"),
        lambda: drv.shutdown(name="desk-007"),
        lambda: drv.state(name="desk-007"),
        lambda: drv.host_of(name="desk-007"),
        lambda: drv.undefine(name="desk-007"),
        lambda: drv.migrate(name="desk-007", host="sim-host-2"),
        lambda: drv.sessions(names=["desk-008", "desk-007"]),
        lambda: drv.send_message(name="desk-007", text="hi"),
        lambda: drv.logoff(name="desk-007", user="alice"),
    ):
        with pytest.raises(DriverError, match="desk-007"):
            call()
    assert drv.states() == {"desk-008": RUNNING}  # the others are untouched
    assert users(drv, "desk-008") == []


# --- the plan: hangs ----------------------------------------------------------------------


def test_a_hung_call_returns_only_when_the_driver_closes(
    make: Make, vm_spec: Callable[..., DomainSpec]
) -> None:
    drv = make({"hang": {"shutdown": ["desk-009"]}})
    for name in ("desk-009", "desk-010"):
        drv.define(spec=vm_spec(name))
        drv.start(name=name)
    drv.shutdown(name="desk-010")  # other VMs do not hang
    thread, errors = in_thread(lambda: drv.shutdown(name="desk-009"))
    thread.join(0.5)
    assert thread.is_alive()  # still hung: only the caller's timeout would end it
    t0 = time.perf_counter()
    drv.close()
    thread.join(5)
    assert not thread.is_alive()
    assert time.perf_counter() - t0 < 1
    assert len(errors) == 1
    assert isinstance(errors[0], DriverError)
    assert "desk-009" in str(errors[0])
    # the hung shutdown did nothing; a closed driver refuses; the world is as it was
    with pytest.raises(DriverError, match="closed"):
        drv.state(name="desk-009")
    assert make().states() == {"desk-009": RUNNING, "desk-010": STOPPED}


def test_hang_everything_gives_up_after_hang_seconds(
    make: Make, vm_spec: Callable[..., DomainSpec]
) -> None:
    drv = make({"hang": {"*": "*"}, "hang_seconds": 0.2})
    t0 = time.perf_counter()
    with pytest.raises(DriverError, match=r"hung .* gave up after 0\.2 s"):
        drv.define(spec=vm_spec("desk-001"))
    assert time.perf_counter() - t0 >= 0.2
    with pytest.raises(DriverError, match="hung"):
        drv.states()
    assert make().states() == {}


def test_hang_wildcard_vms_for_one_action(make: Make, vm_spec: Callable[..., DomainSpec]) -> None:
    drv = make({"hang": {"start": "*"}, "hang_seconds": 0.05})
    drv.define(spec=vm_spec("desk-001"))
    with pytest.raises(DriverError, match="hung"):
        drv.start(name="desk-001")
    assert drv.state(name="desk-001") == STOPPED


# --- the plan: scripted users -------------------------------------------------------------


def test_scripted_users_log_in_at_the_first_start_only(
    make: Make, vm_spec: Callable[..., DomainSpec]
) -> None:
    plan = {
        "sessions": [
            {"vm": "desk-001", "user": "alice"},
            {"vm": "desk-001", "user": "bob"},
            {"vm": "desk-002", "user": "carol"},
        ]
    }
    drv = make(plan)
    for name in ("desk-001", "desk-002", "desk-003"):
        drv.define(spec=vm_spec(name))
    assert drv.sessions(names=["desk-001", "desk-002"]) == {"desk-001": [], "desk-002": []}
    drv.start(name="desk-001")
    drv.start(name="desk-003")
    assert sorted(users(drv, "desk-001")) == ["alice", "bob"]
    assert users(drv, "desk-002") == []  # not started yet
    assert users(drv, "desk-003") == []
    drv.shutdown(name="desk-001")
    assert users(drv, "desk-001") == []
    drv.start(name="desk-001")  # not the first start: nobody logs in again
    assert users(drv, "desk-001") == []
    drv.close()
    again = make(plan)  # a restarted server: the first start is remembered in the database
    again.shutdown(name="desk-001")
    again.start(name="desk-001")
    assert users(again, "desk-001") == []
    again.start(name="desk-002")
    assert users(again, "desk-002") == ["carol"]


# --- plans from text ----------------------------------------------------------------------


def test_the_empty_plan_has_no_faults() -> None:
    assert SimPlan.from_json("") == SimPlan.from_json("  ") == SimPlan.from_json("{}") == SimPlan()


def test_a_full_plan_parses() -> None:
    plan = SimPlan.from_json(
        """{"latency_ms": {"define": 5, "start": 20, "*": 1},
            "fail_nth": {"start": 3, "shutdown": {"every": 2}, "define": [1, 5]},
            "fail_vms": ["desk-007"],
            "hang": {"shutdown": ["desk-009"], "migrate": "*"},
            "hang_seconds": 30,
            "sessions": [{"vm": "desk-001", "user": "alice"}]}"""
    )
    assert plan.latency("start") == 0.020
    assert plan.latency("undefine") == 0.001
    assert plan.fail_nth["start"].hits(3) and not plan.fail_nth["start"].hits(6)
    assert plan.fail_nth["shutdown"].hits(4)
    assert plan.fail_nth["define"].calls == {1, 5}
    assert plan.fail_vms == {"desk-007"}
    assert plan.hangs("shutdown", ["desk-009"]) and not plan.hangs("shutdown", ["desk-001"])
    assert plan.hangs("migrate", ["anything"])
    assert plan.hang_seconds == 30
    assert plan.sessions == (sim.ScriptedSession(vm="desk-001", user="alice"),)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"latency": {}}', "unknown keys latency; use latency_ms"),
        ('{"latency_ms": {"boot": 5}}', "'boot' is not a driver action"),
        ('{"latency_ms": {"start": -1}}', "latency_ms.start: -1 is not a number >= 0"),
        ('{"latency_ms": {"start": "fast"}}', "not a number"),
        ('{"latency_ms": [5]}', "latency_ms must be an object"),
        ('{"fail_nth": {"start": 0}}', "fail_nth.start: 0 is not a call number >= 1"),
        ('{"fail_nth": {"*": 2}}', "'\\*' is not a driver action"),
        ('{"fail_nth": {"start": {"each": 2}}}', "every"),
        ('{"fail_nth": {"start": true}}', "not a call number"),
        ('{"fail_vms": "desk-007"}', "fail_vms must be a list of VM names"),
        ('{"fail_vms": ["Desk 7"]}', "'Desk 7' is not a valid VM name"),
        ('{"hang": {"shutdown": "desk-009"}}', "hang.shutdown must be a list of VM names"),
        ('{"hang_seconds": -5}', "hang_seconds: -5 is not a number"),
        ('{"sessions": {"vm": "desk-001"}}', "sessions must be a list"),
        ('{"sessions": [{"vm": "desk-001"}]}', "sessions\\[0\\] must be"),
        ('{"sessions": [{"vm": "desk-001", "user": "a b"}]}', "user 'a b' is not valid"),
        ('{"unsupported": "reboot_host"}', "unsupported must be a list of driver actions"),
        ('{"unsupported": ["reboot"]}', "unsupported: 'reboot' is not a driver action"),
    ],
)
def test_bad_plans_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        SimPlan.from_json(text)


def test_unsupported_actions_are_refused_as_a_driver_that_cannot(make: Make) -> None:
    d = make(plan={"unsupported": ["reboot_host", "restart_toolstack"]})
    with pytest.raises(Unsupported, match="driver sim cannot reboot_host"):
        d.reboot_host(host=d.hosts()[0])
    with pytest.raises(Unsupported, match="driver sim cannot restart_toolstack"):
        d.restart_toolstack(host=d.hosts()[0])
    assert d.host_up(host=d.hosts()[0])  # the others as ever


def test_bootstrap_builds_the_sim_driver_from_settings(
    fresh_db: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOLDFLEET_SIM_PLAN", '{"fail_vms": ["desk-007"]}')
    settings = Settings(home=tmp_path, sim_hosts=["a", "b", "c"])
    drv = make_driver(settings, fresh_db)
    assert isinstance(drv, SimDriver)
    assert drv.hosts() == ["a", "b", "c"]
    assert drv.plan.fail_vms == {"desk-007"}
    assert drv.capabilities.migrate
    monkeypatch.setenv("GOLDFLEET_SIM_PLAN", '{"fail_vms": 7}')
    with pytest.raises(InvalidInput, match="fail_vms"):
        make_driver(Settings(home=tmp_path), fresh_db)


@pytest.mark.parametrize(
    ("hosts", "message"), [([], "at least one host"), (["a", "a"], "twice"), (["A B"], "valid")]
)
def test_bad_hosts_are_refused(
    fresh_db: sessionmaker[Session], hosts: list[str], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        SimDriver(fresh_db, hosts=hosts)


def test_hosts_reboot_restart_and_their_vms(make: Make, vm_spec: Callable[..., DomainSpec]) -> None:
    """The sim's host model (docs/drivers.md, "Hosts in the sim driver"): a reboot stops the
    host's running VMs and takes exactly reboot_seconds, during which nothing starts on or
    migrates to it; toolstack and device-model restarts are counted and keep VMs running; a host
    in reboot_never_up stays down."""
    d = make({"reboot_seconds": 0.3, "reboot_never_up": ["sim-host-2"]})
    for name, host in (("a", "sim-host-1"), ("b", "sim-host-1"), ("c", "sim-host-2")):
        d.define(spec=vm_spec(name), host=host)
        d.start(name=name)
    d.shutdown(name="b")
    loads = {v.name: v for v in d.vms_on(host="sim-host-1")}
    assert (loads["a"].state, loads["a"].memory_mib, loads["a"].vcpus) == ("running", 128, 1)
    assert loads["b"].state == "stopped"
    d.restart_device_model(name="a")
    d.restart_toolstack(host="sim-host-1")
    assert d.state(name="a") == "running"
    with pytest.raises(DriverError, match="not running"):
        d.restart_device_model(name="b")
    d.reboot_host(host="sim-host-1")
    assert not d.host_up(host="sim-host-1") and d.state(name="a") == "stopped"
    with pytest.raises(DriverError, match="is down"):
        d.start(name="a")
    with pytest.raises(DriverError, match="is down"):
        d.migrate(name="c", host="sim-host-1")
    time.sleep(0.35)
    assert d.host_up(host="sim-host-1")
    d.start(name="a")
    d.reboot_host(host="sim-host-2")
    time.sleep(0.35)
    assert not d.host_up(host="sim-host-2")
    with d.factory() as s:
        row = s.get(sim.SimHost, "sim-host-1")
        assert (row.reboots, row.toolstack_restarts) == (1, 1)
        assert s.get(sim.SimDomain, "a").disks["dm_restarts"] == 1
