"""``goldfleet sim``: the simulated world of the sim driver — log users in and out, read the
messages they were sent, shut a guest down from inside. Talks to the API like every command."""

from __future__ import annotations

from typing import Annotated

import typer

from goldfleet.cli import output
from goldfleet.cli.common import JsonOpt
from goldfleet.cli.common import call as _call

sim_app = typer.Typer(
    no_args_is_help=True,
    help="The sim driver's simulated world: users, messages, guests (admin token).",
)

VmOpt = Annotated[str | None, typer.Option("--vm", help="Only this VM.")]


def _session_rows(items: list[dict]) -> None:
    output.table(
        None,
        ["vm", "user", "since"],
        [[u["vm"], u["user"], str(u["since"])[:19].replace("T", " ")] for u in items],
    )


def _vm_rows(items: list[dict]) -> None:
    output.table(
        None,
        ["vm", "host", "state", "users"],
        [[v["name"], v["host"], v["state"], ", ".join(v["users"]) or "-"] for v in items],
    )


@sim_app.command("login")
def login(vm: str, user: str, as_json: JsonOpt = False) -> None:
    """A user logs into a running VM."""
    r = _call("POST", "/sim/sessions", json={"vm": vm, "user": user})
    output.emit_json(r) if as_json else output.console.print(f"{user} logged into {vm}")


@sim_app.command("logout")
def logout(vm: str, user: str, as_json: JsonOpt = False) -> None:
    """A user logs out of a VM by themselves."""
    _call("DELETE", f"/sim/sessions/{vm}/{user}")
    msg = {"vm": vm, "user": user, "logged_out": True}
    output.emit_json(msg) if as_json else output.console.print(f"{user} logged out of {vm}")


@sim_app.command("sessions")
def sessions(vm: VmOpt = None, as_json: JsonOpt = False) -> None:
    """Logged-in users."""
    items = _call("GET", "/sim/sessions", params={"vm": vm} if vm else None)
    output.emit_json(items) if as_json else _session_rows(items)


@sim_app.command("messages")
def messages(vm: VmOpt = None, as_json: JsonOpt = False) -> None:
    """Messages delivered to users, oldest first."""
    items = _call("GET", "/sim/messages", params={"vm": vm} if vm else None)
    if as_json:
        output.emit_json(items)
    else:
        output.table(
            None,
            ["vm", "at", "text"],
            [[m["vm"], str(m["at"])[:19].replace("T", " "), m["text"]] for m in items],
        )


@sim_app.command("guest-shutdown")
def guest_shutdown(vm: str, as_json: JsonOpt = False) -> None:
    """The guest shuts itself down; its users' sessions end and goldfleet is not told."""
    r = _call("POST", f"/sim/vms/{vm}/guest-shutdown")
    output.emit_json(r) if as_json else output.console.print(f"{vm} shut itself down")


@sim_app.command("vms")
def vms(as_json: JsonOpt = False) -> None:
    """Every simulated VM with its host, power state and users."""
    items = _call("GET", "/sim/vms")
    output.emit_json(items) if as_json else _vm_rows(items)


@sim_app.command("guest-run", context_settings={"ignore_unknown_options": True})
def guest_run(
    vm: str,
    argv: Annotated[list[str], typer.Argument(help="The program and its arguments.")],
    as_json: JsonOpt = False,
) -> None:
    """A user inside the guest runs a program (e.g. /usr/local/bin/goldfleet-guest nq-set D);
    exits with the program's exit code."""
    r = _call("POST", f"/sim/vms/{vm}/run", json={"argv": argv})
    if as_json:
        output.emit_json(r)
    else:
        print(r["stdout"], end="")
        if r["stderr"]:
            output.err_console.print(r["stderr"].rstrip("\n"), highlight=False, markup=False)
    raise typer.Exit(r["exit_code"])


@sim_app.command("guest-write")
def guest_write(vm: str, path: str, text: str) -> None:
    """Something inside the guest writes TEXT into the file PATH."""
    _call("PUT", f"/sim/vms/{vm}/files", json={"path": path, "text": text})
    output.console.print(f"{vm}: wrote {path}")
