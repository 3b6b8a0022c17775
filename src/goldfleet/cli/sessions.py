"""``goldfleet session``: users logged into clones, listed, messaged and logged off by hand,
outside any rollout. Talks to the API like every command."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from goldfleet.cli import output
from goldfleet.cli.common import JsonOpt
from goldfleet.cli.common import call as _call
from goldfleet.cli.common import fail as _fail

session_app = typer.Typer(
    no_args_is_help=True, help="Users logged into clones: list, message, log off."
)


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes = int(seconds // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


@session_app.command("list")
def list_(
    template: Annotated[str | None, typer.Option(help="Only clones of this template.")] = None,
    pool: Annotated[str | None, typer.Option(help="Only clones of this pool.")] = None,
    host: Annotated[str | None, typer.Option(help="Only clones on this host.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The users logged into running clones: clone, user, since, idle (where the driver
    knows)."""
    params = {k: v for k, v in (("template", template), ("pool", pool), ("host", host)) if v}
    r = _call("GET", "/sessions", params=params)
    if as_json:
        output.emit_json(r)
    else:
        _session_rows(r["sessions"])
        for e in r["errors"]:
            output.err_console.print(
                f"{e['clone']}: sessions not listed: {e['error']}", markup=False, highlight=False
            )
    if r["errors"]:
        raise typer.Exit(1)


def _session_rows(items: list[dict[str, Any]]) -> None:
    output.table(
        None,
        ["clone", "user", "since", "idle", "template", "pool", "host"],
        [
            [
                x["clone"],
                x["user"],
                str(x["since"] or "-")[:19].replace("T", " "),
                _ago(x["idle_seconds"]),
                x["template"],
                x["pool"] or "-",
                x["host"] or "-",
            ]
            for x in items
        ],
    )


@session_app.command("message")
def message(
    target: Annotated[
        str | None,
        typer.Argument(
            metavar="CLONE", help="The clone whose users get the message (with --all-of: TEXT)."
        ),
    ] = None,
    text: Annotated[str | None, typer.Argument(metavar="TEXT", help="The message.")] = None,
    all_of: Annotated[
        str | None,
        typer.Option(
            "--all-of",
            help="Every running clone of this template with users logged in (then give only TEXT).",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Send TEXT to the users of CLONE, or of every clone of a template (--all-of T TEXT)."""
    if all_of is not None:
        if text is not None or target is None:
            _fail(
                "with --all-of TEMPLATE give only the text: goldfleet session message --all-of"
                " TEMPLATE TEXT"
            )
        body: dict[str, Any] = {"all_of": all_of, "text": target}
    else:
        if target is None or text is None:
            _fail("give a clone and the text: goldfleet session message CLONE TEXT")
        body = {"clone": target, "text": text}
    r = _call("POST", "/sessions/message", json=body)
    if as_json:
        output.emit_json(r)
    else:
        for o in r["clones"]:
            who = ", ".join(o["users"])
            if o["sent"]:
                output.console.print(f"{o['clone']}: sent" + (f" to {who}" if who else ""))
            else:
                output.err_console.print(
                    f"{o['clone']}: not sent: {o['error']}", markup=False, highlight=False
                )
        output.console.print(f"{r['sent']} clones messaged, {r['failed']} failed")
    if r["failed"]:
        raise typer.Exit(1)


@session_app.command("logoff")
def logoff(clone: str, user: str, as_json: JsonOpt = False) -> None:
    """Log USER off CLONE now (the clone keeps running)."""
    r = _call("DELETE", f"/sessions/{clone}/{user}")
    if as_json:
        output.emit_json(r)
    else:
        output.console.print(f"{user} logged off {clone}")
