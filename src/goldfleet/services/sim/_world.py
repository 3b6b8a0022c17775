"""The simulated world of the ``sim`` driver, for admins and tests: users log in and out, guests
shut themselves down, and the messages goldfleet sent can be read back.

These are events of the world goldfleet manages, not goldfleet actions: goldfleet itself only
learns of them through its driver (``sessions()``, ``states()``), as it would from a real
hypervisor. Every function refuses with :class:`Conflict` unless the configured driver is sim.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from goldfleet.context import Context
from goldfleet.domain.names import check_name
from goldfleet.drivers import sim
from goldfleet.errors import Conflict, InvalidInput
from goldfleet.services.common import audit


class SimSessionView(BaseModel):
    vm: str
    user: str
    since: datetime


class SimMessageView(BaseModel):
    vm: str
    text: str
    at: datetime


class SimExecView(BaseModel):
    vm: str
    argv: list[str]
    exit_code: int
    stdout: str
    stderr: str


class SimVmView(BaseModel):
    name: str
    host: str
    state: str
    users: list[str]
    disks: list[str]


def _require_sim(ctx: Context) -> None:
    if not isinstance(ctx.driver, sim.SimDriver):
        raise Conflict(
            f"the configured driver is {ctx.driver.name}, not sim: there is no simulated world"
            ' to act on; set driver = "sim" to use one'
        )


def _vm_view(vm: sim.SimVm) -> SimVmView:
    return SimVmView(
        name=vm.name, host=vm.host, state=vm.state, users=list(vm.users), disks=list(vm.disks)
    )


def login(ctx: Context, *, vm: str, user: str, actor: str) -> SimSessionView:
    """A user logs into a running VM."""
    _require_sim(ctx)
    check_name(vm, "VM name")
    with ctx.session() as s:
        row = sim.login(s, vm=vm, user=user)
        audit.record(s, actor, "sim.login", vm, user=user)
        s.commit()
        return SimSessionView(vm=row.vm, user=row.user, since=row.since)


def logout(ctx: Context, *, vm: str, user: str, actor: str) -> None:
    """A user logs out of a VM by themselves."""
    _require_sim(ctx)
    check_name(vm, "VM name")
    with ctx.session() as s:
        sim.logout(s, vm=vm, user=user)
        audit.record(s, actor, "sim.logout", vm, user=user)
        s.commit()


def list_sessions(ctx: Context, *, vm: str | None = None) -> list[SimSessionView]:
    _require_sim(ctx)
    with ctx.session() as s:
        return [SimSessionView(vm=u.vm, user=u.user, since=u.since) for u in sim.users(s, vm=vm)]


def list_messages(ctx: Context, *, vm: str | None = None) -> list[SimMessageView]:
    _require_sim(ctx)
    with ctx.session() as s:
        return [SimMessageView(vm=m.vm, text=m.text, at=m.at) for m in sim.messages(s, vm=vm)]


def guest_shutdown(ctx: Context, *, vm: str, actor: str) -> SimVmView:
    """The guest shuts itself down (its users' sessions end); goldfleet is not told."""
    _require_sim(ctx)
    check_name(vm, "VM name")
    with ctx.session() as s:
        view = _vm_view(sim.guest_shutdown(s, vm=vm))
        audit.record(s, actor, "sim.guest-shutdown", vm)
        s.commit()
        return view


def list_vms(ctx: Context) -> list[SimVmView]:
    _require_sim(ctx)
    with ctx.session() as s:
        return [_vm_view(v) for v in sim.vms(s)]


def guest_run(ctx: Context, *, vm: str, argv: list[str], actor: str) -> SimExecView:
    """A user inside the guest runs a program (the guest tool: ``goldfleet-guest nq-set …``
    after patching); its exit code and output, as the user would see them."""
    _require_sim(ctx)
    check_name(vm, "VM name")
    for arg in argv:
        _text(arg, "an argument")
    with ctx.session() as s:
        done = sim.guest_run(s, vm=vm, argv=argv)
        audit.record(s, actor, "sim.guest-run", vm, argv=argv, exit_code=done.exit_code)
        s.commit()
        return SimExecView(
            vm=vm, argv=argv, exit_code=done.exit_code, stdout=done.stdout, stderr=done.stderr
        )


def guest_write(ctx: Context, *, vm: str, path: str, data: bytes, actor: str) -> None:
    """Something inside the guest writes a file (a broken program writing garbage into the
    descriptor file, say)."""
    _require_sim(ctx)
    check_name(vm, "VM name")
    _text(path, "the path")
    if not path.startswith("/") or len(path) > 255:
        raise InvalidInput(f"{path!r} is not an absolute path of at most 255 characters")
    with ctx.session() as s:
        sim.guest_write(s, vm=vm, path=path, data=data)
        audit.record(s, actor, "sim.guest-write", vm, path=path, size=len(data))
        s.commit()


def _text(value: str, what: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{what} is not UTF-8 text") from None
    if "\0" in value:
        raise InvalidInput(f"{what} holds a NUL character")
