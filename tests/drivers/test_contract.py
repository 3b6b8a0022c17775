"""The driver contract: one suite, run against every driver.

What goldfleet relies on from a hypervisor, asserted through the driver's own reads. An action
a driver's capabilities rule out must raise :class:`Unsupported`; its tests are then skipped
with the reason. ``libvirt-test`` runs against libvirt's built-in ``test:///default`` driver
(which starts with a domain named ``test``, so every VM here gets a unique name).
"""

from __future__ import annotations

import importlib.util
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from goldfleet.drivers import sim
from goldfleet.drivers.base import (
    RUNNING,
    STOPPED,
    UNDEFINED,
    DiskSpec,
    DomainSpec,
    Driver,
    DriverError,
    GuestSession,
    Unsupported,
)

DRIVERS = ["sim", "libvirt-test"]


@pytest.fixture(params=DRIVERS)
def driver(request: pytest.FixtureRequest) -> Iterator[Driver]:
    if request.param == "sim":
        db: sessionmaker[Session] = request.getfixturevalue("fresh_db")  # migrated SQLite
        drv: Driver = sim.SimDriver(db, hosts=["sim-host-1", "sim-host-2"])
    else:
        if importlib.util.find_spec("goldfleet.drivers.libvirt") is None:
            pytest.skip("goldfleet.drivers.libvirt does not exist yet (being written)")
        from goldfleet.drivers.libvirt import LibvirtDriver

        drv = LibvirtDriver(uris=["test:///default"])
    yield drv
    close = getattr(drv, "close", None)
    if callable(close):
        close()


@pytest.fixture
def new_vm(driver: Driver) -> Iterator[Callable[[], str]]:
    """Unique VM names; whatever a test left defined is removed afterwards."""
    made: list[str] = []

    def make() -> str:
        made.append(f"gf-{uuid.uuid4().hex[:12]}")
        return made[-1]

    yield make
    for name in made:
        try:
            if driver.state(name=name) != UNDEFINED:
                driver.shutdown(name=name, timeout=5)
                driver.undefine(name=name)
        except DriverError:
            pass


@pytest.fixture
def defined(
    driver: Driver, new_vm: Callable[[], str], vm_spec: Callable[..., DomainSpec]
) -> Callable[..., str]:
    """``defined(start=True)``: a fresh VM, defined (and started)."""

    def make(*, start: bool = False) -> str:
        name = new_vm()
        driver.define(spec=vm_spec(name))
        if start:
            driver.start(name=name)
        return name

    return make


@pytest.fixture
def log_in(driver: Driver) -> Callable[[str, str], None]:
    """A user logging into a VM, where the driver's world lets a test do that."""
    if isinstance(driver, sim.SimDriver):

        def do(vm: str, user: str) -> None:
            with driver.factory.begin() as s:
                sim.login(s, vm=vm, user=user)

        return do
    pytest.skip(f"driver {driver.name} gives tests no way to log a user in")


def requires(driver: Driver, capability: str, call: Callable[[], Any]) -> None:
    """Skip unless the driver has ``capability``; without it, ``call`` must be Unsupported."""
    if getattr(driver.capabilities, capability):
        return
    with pytest.raises(Unsupported):
        call()
    pytest.skip(f"driver {driver.name} lacks capability {capability}")


def users(driver: Driver, name: str) -> list[str]:
    return [g.user for g in driver.sessions(names=[name]).get(name, [])]


# --- define, redefine, hosts --------------------------------------------------------------


def test_hosts_are_named(driver: Driver) -> None:
    hosts = driver.hosts()
    assert hosts
    assert all(isinstance(h, str) and h for h in hosts)
    assert len(set(hosts)) == len(hosts)


def test_define_makes_a_stopped_vm_on_one_of_the_hosts(
    driver: Driver, new_vm: Callable[[], str], vm_spec: Callable[..., DomainSpec]
) -> None:
    name = new_vm()
    host = driver.define(spec=vm_spec(name))
    assert host in driver.hosts()
    assert driver.host_of(name=name) == host
    assert driver.state(name=name) == STOPPED
    assert driver.states()[name] == STOPPED


def test_define_on_a_chosen_host(
    driver: Driver, new_vm: Callable[[], str], vm_spec: Callable[..., DomainSpec]
) -> None:
    name, target = new_vm(), driver.hosts()[-1]
    assert driver.define(spec=vm_spec(name), host=target) == target
    assert driver.host_of(name=name) == target


def test_redefine_keeps_the_host_and_takes_the_new_disks(
    driver: Driver,
    new_vm: Callable[[], str],
    vm_spec: Callable[..., DomainSpec],
    vm_disks: tuple[DiskSpec, ...],
) -> None:
    name = new_vm()
    host = driver.define(spec=vm_spec(name))
    assert driver.define(spec=vm_spec(name, disks=vm_disks[:1])) == host
    assert driver.host_of(name=name) == host
    assert driver.state(name=name) == STOPPED
    driver.start(name=name)  # the redefined VM is usable
    assert driver.state(name=name) == RUNNING


# --- power --------------------------------------------------------------------------------


def test_start_and_shutdown(driver: Driver, defined: Callable[..., str]) -> None:
    name = defined()
    driver.start(name=name)
    assert driver.state(name=name) == RUNNING
    assert driver.states()[name] == RUNNING
    driver.start(name=name)  # a running VM is left so
    assert driver.state(name=name) == RUNNING
    driver.shutdown(name=name, timeout=10)
    assert driver.state(name=name) == STOPPED
    assert driver.states()[name] == STOPPED
    driver.shutdown(name=name, timeout=10)  # a stopped VM is left so
    assert driver.state(name=name) == STOPPED


def test_states_has_every_defined_vm(driver: Driver, defined: Callable[..., str]) -> None:
    running = [defined(start=True) for _ in range(2)]
    stopped = [defined() for _ in range(2)]
    states = driver.states()
    assert {n: states.get(n) for n in running + stopped} == {
        **dict.fromkeys(running, RUNNING),
        **dict.fromkeys(stopped, STOPPED),
    }


# --- undefine -----------------------------------------------------------------------------


def test_undefine_refuses_a_running_vm(driver: Driver, defined: Callable[..., str]) -> None:
    name = defined(start=True)
    with pytest.raises(DriverError, match=name):
        driver.undefine(name=name)
    assert driver.state(name=name) == RUNNING


def test_undefine_removes_a_stopped_vm(driver: Driver, defined: Callable[..., str]) -> None:
    name = defined(start=True)
    driver.shutdown(name=name)
    driver.undefine(name=name)
    assert driver.state(name=name) == UNDEFINED
    assert driver.host_of(name=name) is None
    assert name not in driver.states()


def test_undefine_ignores_an_unknown_vm(driver: Driver, new_vm: Callable[[], str]) -> None:
    name = new_vm()
    driver.undefine(name=name)
    assert driver.state(name=name) == UNDEFINED


# --- unknown VMs --------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["start", "shutdown"])
def test_power_actions_on_an_unknown_vm_fail_naming_it(
    driver: Driver, new_vm: Callable[[], str], action: str
) -> None:
    name = new_vm()
    with pytest.raises(DriverError, match=name):
        getattr(driver, action)(name=name)
    assert driver.state(name=name) == UNDEFINED
    assert driver.host_of(name=name) is None
    assert name not in driver.states()


# --- capability-gated: sessions, messages, logoff, migrate --------------------------------


def test_sessions_of_a_vm_without_users(driver: Driver, defined: Callable[..., str]) -> None:
    name = defined(start=True)
    requires(driver, "sessions", lambda: driver.sessions(names=[name]))
    found = driver.sessions(names=[name])
    assert set(found) <= {name}
    assert found.get(name, []) == []
    assert driver.sessions(names=[]) == {}


def test_sessions_of_an_unknown_vm_fail_naming_it(
    driver: Driver, defined: Callable[..., str], new_vm: Callable[[], str]
) -> None:
    name = defined(start=True)
    requires(driver, "sessions", lambda: driver.sessions(names=[name]))
    unknown = new_vm()
    with pytest.raises(DriverError, match=unknown):
        driver.sessions(names=[name, unknown])


def test_sessions_list_logged_in_users(
    driver: Driver, defined: Callable[..., str], log_in: Callable[[str, str], None]
) -> None:
    name, other = defined(start=True), defined(start=True)
    requires(driver, "sessions", lambda: driver.sessions(names=[name]))
    log_in(name, "alice")
    log_in(name, "bob")
    found = driver.sessions(names=[name, other])
    assert sorted(g.user for g in found[name]) == ["alice", "bob"]
    assert all(isinstance(g, GuestSession) for g in found[name])
    assert found.get(other, []) == []


def test_shutdown_ends_every_session(
    driver: Driver, defined: Callable[..., str], log_in: Callable[[str, str], None]
) -> None:
    name = defined(start=True)
    requires(driver, "sessions", lambda: driver.sessions(names=[name]))
    log_in(name, "alice")
    driver.shutdown(name=name)
    assert users(driver, name) == []
    driver.start(name=name)
    assert users(driver, name) == []


def test_logoff_ends_the_users_session(
    driver: Driver, defined: Callable[..., str], log_in: Callable[[str, str], None]
) -> None:
    name = defined(start=True)
    requires(driver, "logoff", lambda: driver.logoff(name=name, user="alice"))
    requires(driver, "sessions", lambda: driver.sessions(names=[name]))
    log_in(name, "alice")
    log_in(name, "bob")
    driver.logoff(name=name, user="alice")
    assert users(driver, name) == ["bob"]
    assert driver.state(name=name) == RUNNING


def test_logoff_of_a_user_not_logged_in_fails(
    driver: Driver, defined: Callable[..., str], new_vm: Callable[[], str]
) -> None:
    name = defined(start=True)
    requires(driver, "logoff", lambda: driver.logoff(name=name, user="nobody"))
    with pytest.raises(DriverError, match="nobody"):
        driver.logoff(name=name, user="nobody")
    unknown = new_vm()
    with pytest.raises(DriverError, match=unknown):
        driver.logoff(name=unknown, user="nobody")


def test_send_message(
    driver: Driver, defined: Callable[..., str], new_vm: Callable[[], str]
) -> None:
    name = defined(start=True)
    requires(driver, "messages", lambda: driver.send_message(name=name, text="hello"))
    driver.send_message(name=name, text="Maintenance in 10 minutes: please save your work.")
    unknown = new_vm()
    with pytest.raises(DriverError, match=unknown):
        driver.send_message(name=unknown, text="hello")


def test_migrate_moves_a_running_vm(
    driver: Driver, new_vm: Callable[[], str], vm_spec: Callable[..., DomainSpec]
) -> None:
    name = new_vm()
    first = driver.define(spec=vm_spec(name), host=driver.hosts()[0])
    driver.start(name=name)
    requires(driver, "migrate", lambda: driver.migrate(name=name, host=first))
    target = driver.hosts()[1]
    driver.migrate(name=name, host=target)
    assert driver.host_of(name=name) == target
    assert driver.state(name=name) == RUNNING


def test_migrate_to_an_unknown_host_or_of_an_unknown_vm_fails(
    driver: Driver, defined: Callable[..., str], new_vm: Callable[[], str]
) -> None:
    name = defined()
    host = driver.host_of(name=name)
    assert host is not None
    requires(driver, "migrate", lambda: driver.migrate(name=name, host=host))
    with pytest.raises(DriverError, match="no-such-host"):
        driver.migrate(name=name, host="no-such-host")
    assert driver.host_of(name=name) == host
    unknown = new_vm()
    with pytest.raises(DriverError, match=unknown):
        driver.migrate(name=unknown, host=driver.hosts()[-1])


# --- inside the guest (agent) and network filters -----------------------------------------
# A guest's files live on its disks: each test VM here gets disks of its own.


@pytest.fixture
def own_disks(tmp_path_factory: pytest.TempPathFactory) -> Callable[[], tuple[DiskSpec, ...]]:
    """Fresh disks for one VM: a system overlay on a base layer."""

    def make() -> tuple[DiskSpec, ...]:
        folder = tmp_path_factory.mktemp("own")
        base, system = folder / "base.qcow2", folder / "system.qcow2"
        for cmd in (
            ["qemu-img", "create", "-q", "-f", "qcow2", str(base), "16M"],
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                "base.qcow2",
                "-F",
                "qcow2",
                str(system),
            ],
        ):
            subprocess.run(cmd, check=True, cwd=folder)
        return (DiskSpec(role="system", path=str(system), backing=(str(base),)),)

    return make


@pytest.fixture
def running_vm(
    driver: Driver,
    new_vm: Callable[[], str],
    vm_spec: Callable[..., DomainSpec],
    own_disks: Callable[[], tuple[DiskSpec, ...]],
) -> Callable[..., tuple[str, tuple[DiskSpec, ...]]]:
    def make(*, start: bool = True) -> tuple[str, tuple[DiskSpec, ...]]:
        name, disks = new_vm(), own_disks()
        driver.define(spec=vm_spec(name, disks))
        if start:
            driver.start(name=name)
        return name, disks

    return make


def test_guest_files_round_trip_and_follow_the_system_disk(
    driver: Driver, running_vm, vm_spec: Callable[..., DomainSpec], tmp_path: Path
) -> None:
    name, disks = running_vm()
    requires(driver, "guest_agent", lambda: driver.guest_read(name=name, path="/etc/x"))
    assert driver.guest_read(name=name, path="/etc/goldfleet/x") is None
    driver.guest_write(name=name, path="/etc/goldfleet/x", data=b"one\n")
    assert driver.guest_read(name=name, path="/etc/goldfleet/x") == b"one\n"
    assert driver.guest_read(name=name, path="/etc/goldfleet/x", limit=2) == b"on"
    assert driver.guest_read_many(names=[name], path="/etc/goldfleet/x") == {name: b"one\n"}
    driver.shutdown(name=name, timeout=5)
    with pytest.raises(DriverError, match="stopped"):
        driver.guest_read(name=name, path="/etc/goldfleet/x")
    assert isinstance(driver.guest_read_many(names=[name], path="/x")[name], DriverError)
    # redefined on the same disks: the files are there (they live on the disk, not the VM)
    driver.define(spec=vm_spec(name, disks))
    driver.start(name=name)
    assert driver.guest_read(name=name, path="/etc/goldfleet/x") == b"one\n"
    # a rebuilt system volume (what restore and recreate make) starts without them
    driver.shutdown(name=name, timeout=5)
    system = Path(disks[0].path)
    system.unlink()
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", str(system)],
        check=True,
        cwd=system.parent,
    )
    driver.define(spec=vm_spec(name, disks))
    driver.start(name=name)
    assert driver.guest_read(name=name, path="/etc/goldfleet/x") is None


def test_guest_files_of_a_layer_are_seen_by_every_clone_on_it(
    driver: Driver, running_vm, new_vm: Callable[[], str], vm_spec: Callable[..., DomainSpec]
) -> None:
    """A maintenance VM writes into its overlay; sealed (renamed) into a layer, its files are
    what every linked clone on that layer sees, under the clone's own writes."""
    maint, disks = running_vm()
    requires(driver, "guest_agent", lambda: driver.guest_read(name=maint, path="/x"))
    driver.guest_write(name=maint, path="/etc/image", data=b"v2\n")
    driver.shutdown(name=maint, timeout=5)
    overlay = Path(disks[0].path)
    layer = overlay.with_name("sealed-layer.qcow2")
    overlay.rename(layer)  # what the store does when it seals an overlay
    clone_disk = overlay.with_name("clone-system.qcow2")
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            layer.name,
            "-F",
            "qcow2",
            str(clone_disk),
        ],
        check=True,
        cwd=layer.parent,
    )
    clone = new_vm()
    spec = vm_spec(
        clone,
        (DiskSpec(role="system", path=str(clone_disk), backing=(str(layer), *disks[0].backing)),),
    )
    driver.define(spec=spec)
    driver.start(name=clone)
    assert driver.guest_read(name=clone, path="/etc/image") == b"v2\n"
    driver.guest_write(name=clone, path="/etc/image", data=b"mine\n")
    assert driver.guest_read(name=clone, path="/etc/image") == b"mine\n"


def test_guest_exec_runs_the_installed_tool(driver: Driver, running_vm) -> None:
    from goldfleet import guest

    name, _ = running_vm()
    requires(driver, "guest_agent", lambda: driver.guest_exec(name=name, argv=["true"]))
    assert driver.guest_exec(name=name, argv=[guest.GUEST_TOOL_PATH, "version"]).exit_code == 127
    driver.guest_write(
        name=name, path=guest.GUEST_TOOL_PATH, data=guest.tool_path().read_bytes(), mode=0o755
    )
    out = driver.guest_exec(name=name, argv=[guest.GUEST_TOOL_PATH, "version"])
    assert (out.exit_code, out.stdout.strip()) == (0, guest.tool_version())
    driver.guest_write(
        name=name,
        path=guest.GUEST_POLICY_PATH,
        data=b"kind version\nversion 0xa a\nversion 0xb b\n",
    )
    tool = guest.GUEST_TOOL_PATH
    assert driver.guest_exec(name=name, argv=[tool, "nq-set", "-n", "0xb"]).exit_code == 1
    assert driver.guest_exec(name=name, argv=[tool, "nq-set", "0xa"]).exit_code == 0
    assert driver.guest_read(name=name, path=guest.GUEST_DESCRIPTOR_PATH) == b"0xa\n"
    assert driver.guest_exec(name=name, argv=[tool, "nq-get"]).stdout == "0xa\n"


def test_filters_switch_on_a_vm(driver: Driver, running_vm) -> None:
    name, _ = running_vm()
    requires(driver, "nwfilter", lambda: driver.filter_of(name=name))
    xml = "<filter name='gf-test-open' chain='root'/>"
    with pytest.raises(DriverError, match="gf-test-open"):
        driver.set_filter(name=name, filter_name="gf-test-open")
    driver.define_filter(filter_name="gf-test-open", xml=xml)
    driver.set_filter(name=name, filter_name="gf-test-open")
    assert driver.filter_of(name=name) == "gf-test-open"


def test_batched_guest_writes_filters_and_messages(driver: Driver, running_vm) -> None:
    up, _ = running_vm()
    down, _ = running_vm(start=False)
    requires(driver, "guest_agent", lambda: driver.guest_write_many(files={}, path="/x"))
    done = driver.guest_write_many(files={up: b"a\n", down: b"b\n"}, path="/etc/goldfleet/p")
    assert done[up] is None and isinstance(done[down], DriverError)
    assert driver.guest_read(name=up, path="/etc/goldfleet/p") == b"a\n"
    if driver.capabilities.nwfilter:
        driver.define_filter(filter_name="gf-test-batch", xml="<filter name='gf-test-batch'/>")
        done = driver.set_filters(filters={up: "gf-test-batch", down: "gf-test-missing"})
        assert done[up] is None and isinstance(done[down], DriverError)
        assert driver.filter_of(name=up) == "gf-test-batch"
    if driver.capabilities.messages:
        done = driver.send_messages(messages={up: "hello", down: "hello"})
        assert done[up] is None and isinstance(done[down], DriverError)
