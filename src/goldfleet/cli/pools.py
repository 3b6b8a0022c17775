"""``goldfleet pool``: pools of clones with a buffer of idle ones, users assigned to them, and
maintenance windows. Talks to the API like every command."""

from __future__ import annotations

from typing import Annotated

import typer

from goldfleet.cli import output
from goldfleet.cli.common import JsonOpt
from goldfleet.cli.common import call as _call
from goldfleet.cli.common import fail as _fail

pool_app = typer.Typer(
    no_args_is_help=True,
    help="Pools: clones of a template kept at a size, with a buffer of idle ones for users.",
)


LogoffOpt = Annotated[
    str | None,
    typer.Option(
        "--window-logoff",
        help="When a window opens, users of assigned clones are: waited for (wait, the"
        " default), told then logged off after the grace (notify-force), logged off (force).",
    ),
]
GraceOpt = Annotated[
    str | None,
    typer.Option("--window-grace", help="notify-force: time between message and logoff (10m)."),
]
MessageOpt = Annotated[
    str | None, typer.Option("--window-message", help="What the users are told.")
]


def _when(value: str | None) -> str:
    return str(value)[:16].replace("T", " ") if value else "-"


def _window(p: dict) -> str:
    if not p.get("window_cron"):
        return "-"
    text = f"{p['window_cron']} ({p['window_minutes']} min, {p.get('window_logoff') or 'wait'})"
    if p.get("window_open"):
        text += f", open until {_when(p.get('window_closes_at'))}"
    return text


def _pool_rows(items: list[dict]) -> None:
    output.table(
        None,
        [
            "name",
            "template",
            "state",
            "total",
            "idle",
            "assigned",
            "behind",
            "min/max/buffer",
            "window",
            "next window",
        ],
        [
            [
                p["name"],
                p["template"],
                p["state"],
                p["total"],
                p["idle"],
                p["assigned"],
                p["behind"],
                f"{p['min']}/{p['max']}/{p['buffer']}",
                _window(p),
                _when(p.get("next_window")),
            ]
            for p in items
        ],
    )


def _show(p: dict, as_json: bool) -> None:
    if as_json:
        output.emit_json(p)
        return
    _pool_rows([p])
    if p.get("operations"):
        ops = ", ".join(str(i) for i in p["operations"])
        output.console.print(f"operations under way: {ops} (goldfleet op show ID)")
    if p.get("note"):
        output.console.print(f"[yellow]{p['note']}[/yellow]")


@pool_app.command("create")
def create(
    name: str,
    template: Annotated[str, typer.Option(help="The template whose clones the pool holds.")],
    max_size: Annotated[int, typer.Option("--max", help="Never more clones than this.")],
    min_size: Annotated[int, typer.Option("--min", help="At least this many clones.")] = 0,
    buffer: Annotated[int, typer.Option(help="Idle clones kept ready for new users.")] = 0,
    window_cron: Annotated[
        str | None,
        typer.Option(help="Maintenance window start, cron in UTC (e.g. '0 22 * * 6')."),
    ] = None,
    window_minutes: Annotated[
        int | None, typer.Option(help="How long each maintenance window lasts.")
    ] = None,
    window_logoff: LogoffOpt = None,
    window_grace: GraceOpt = None,
    window_message: MessageOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a pool; its first clones are provisioned at once."""
    body = {
        "name": name,
        "template": template,
        "min": min_size,
        "max": max_size,
        "buffer": buffer,
        "window_cron": window_cron,
        "window_minutes": window_minutes,
        "window_logoff": window_logoff,
        "window_grace": window_grace,
        "window_message": window_message,
    }
    _show(_call("POST", "/pools", json=body), as_json)


@pool_app.command("window")
def window(
    name: str,
    cron: Annotated[
        str | None, typer.Option(help="Window start, cron in UTC (e.g. '0 22 * * 6').")
    ] = None,
    minutes: Annotated[int | None, typer.Option(help="How long each window lasts.")] = None,
    none: Annotated[bool, typer.Option("--none", help="No maintenance window.")] = False,
    logoff: Annotated[
        str | None,
        typer.Option(
            help="When the window opens, users of assigned clones are: waited for (wait, the"
            " default), told then logged off after the grace (notify-force), logged off (force)."
        ),
    ] = None,
    grace: Annotated[
        str | None, typer.Option(help="notify-force: time between message and logoff (10m).")
    ] = None,
    message: Annotated[str | None, typer.Option(help="What the users are told.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Set the pool's maintenance window and how it takes assigned clones back, or remove it."""
    if none and (cron or minutes or logoff or grace or message):
        _fail("--none removes the window: give it alone")
    if not none and (cron is None or minutes is None):
        _fail("give --cron and --minutes, or --none to remove the window")
    body = {"cron": cron, "minutes": minutes, "logoff": logoff, "grace": grace, "message": message}
    _show(_call("PUT", f"/pools/{name}/window", json=body), as_json)


@pool_app.command("list")
def list_pools(as_json: JsonOpt = False) -> None:
    """List pools with their clones, state and window."""
    items = _call("GET", "/pools")
    output.emit_json(items) if as_json else _pool_rows(items)


@pool_app.command("show")
def show(name: str, as_json: JsonOpt = False) -> None:
    """Show one pool."""
    _show(_call("GET", f"/pools/{name}"), as_json)


@pool_app.command("assign")
def assign(name: str, user: str, as_json: JsonOpt = False) -> None:
    """Give USER an idle clone of the pool and start it (the same one again if they have one)."""
    r = _call("POST", f"/pools/{name}/assign", json={"user": user})
    if as_json:
        output.emit_json(r)
    else:
        output.console.print(f"{user} has clone {r['clone']['name']} of pool {name}")


@pool_app.command("release")
def release(name: str, user: str, as_json: JsonOpt = False) -> None:
    """Take USER's clone back: it is stopped and becomes idle again."""
    c = _call("POST", f"/pools/{name}/release", json={"user": user})
    if as_json:
        output.emit_json(c)
    else:
        output.console.print(f"clone {c['name']} of pool {name} released by {user}")


@pool_app.command("resize")
def resize(
    name: str,
    max_size: Annotated[int, typer.Option("--max", help="Never more clones than this.")],
    min_size: Annotated[int, typer.Option("--min", help="At least this many clones.")] = 0,
    buffer: Annotated[int, typer.Option(help="Idle clones kept ready for new users.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """New sizes for a pool (a --max below its clones is refused)."""
    body = {"min": min_size, "max": max_size, "buffer": buffer}
    _show(_call("PUT", f"/pools/{name}/size", json=body), as_json)


@pool_app.command("drain")
def drain(name: str, as_json: JsonOpt = False) -> None:
    """Stop assigning clones (assigned users keep theirs)."""
    _show(_call("POST", f"/pools/{name}/drain"), as_json)


@pool_app.command("enable")
def enable(name: str, as_json: JsonOpt = False) -> None:
    """Assign clones again and refill the buffer."""
    _show(_call("POST", f"/pools/{name}/enable"), as_json)


@pool_app.command("delete")
def delete(
    name: str,
    keep_clones: Annotated[
        bool, typer.Option("--keep-clones", help="Keep the clones as plain clones.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete a pool and its clones (refused while clones are assigned to users)."""
    r = _call("DELETE", f"/pools/{name}", params={"keep_clones": keep_clones})
    if as_json:
        output.emit_json(r)
        return
    op = r.get("operation")
    if op:
        output.console.print(
            f"pool {name} deleted; its {op['total']} clones are being deleted (operation"
            f" {op['id']}: goldfleet op watch {op['id']})"
        )
    else:
        output.console.print(f"pool {name} deleted")
