"""``goldfleet site``: sites at HQ (create, assign, list) and, at a site, joining HQ and syncing.
Talks to the API like every command; a site's token is sent to its own server, never printed."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from goldfleet.cli import output
from goldfleet.cli.common import JsonOpt
from goldfleet.cli.common import call as _call
from goldfleet.cli.common import fail as _fail
from goldfleet.domain.sizes import parse_size
from goldfleet.errors import InvalidInput

site_app = typer.Typer(no_args_is_help=True, help="Sites that pull template versions from HQ.")


def _state(st: dict[str, Any]) -> str:
    if st["state"] == "transferring":
        return f"transferring {output.size(st['done'])}/{output.size(st['total'])}"
    if st["state"] == "failed":
        return f"failed: {st['reason']}"
    return st["state"]


@site_app.command("create")
def create(name: str, as_json: JsonOpt = False) -> None:
    """At HQ: make site NAME and its token (role site), printed once."""
    r = _call("POST", "/sites", json={"name": name})
    if as_json:
        output.emit_json(r)
        return
    output.console.print(r["token"], highlight=False)
    output.err_console.print(
        f"site {name} created; give it this token once: goldfleet site join URL --token TOKEN"
    )


@site_app.command("list")
def list_(as_json: JsonOpt = False) -> None:
    """At HQ: every site, its last contact and the state of each version there."""
    r = _call("GET", "/sites")
    if as_json:
        output.emit_json(r)
        return
    rows = []
    for x in r:
        contact = x["last_contact"] or "never"
        states = ", ".join(f"{k} {_state(v)}" for k, v in x["states"].items()) or "-"
        token = "revoked" if x["token_revoked"] else "active"
        rows.append([x["name"], token, contact, ", ".join(x["templates"]) or "-", states])
    output.table("sites", ["site", "token", "last contact", "templates", "versions"], rows)


@site_app.command("assign")
def assign(site: str, template: str, as_json: JsonOpt = False) -> None:
    """At HQ: SITE receives every version of TEMPLATE."""
    r = _call("POST", f"/sites/{site}/templates", json={"template": template})
    if as_json:
        output.emit_json(r)
    else:
        output.console.print(f"site {site} receives: {', '.join(r['templates'])}")


@site_app.command("join")
def join(
    url: str,
    token: Annotated[str, typer.Option("--token", help="The token `site create` printed.")],
    as_json: JsonOpt = False,
) -> None:
    """At a site: pull from HQ at URL with TOKEN (kept in the home, mode 0600)."""
    r = _call("POST", "/site/join", json={"url": url, "token": token})
    if as_json:
        output.emit_json(r)
    else:
        output.console.print(f"joined {r['upstream_url']} as site {r['site']}")


@site_app.command("sync")
def sync(
    limit: Annotated[
        str | None, typer.Option("--limit", help="Bandwidth limit, e.g. 50MB/s.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """At a site: download the layers it lacks and add the versions HQ holds."""
    body: dict[str, Any] = {}
    if limit is not None:
        try:
            body["limit"] = parse_size(limit.strip().removesuffix("/s").removesuffix("/S"))
        except InvalidInput as exc:
            _fail(exc.message)
    r = _call("POST", "/site/sync", json=body)
    if as_json:
        output.emit_json(r)
        return
    for name in r["templates"]:
        added = ", ".join(f"v{n}" for n in r["versions_added"].get(name, [])) or "up to date"
        if name in r["failed"]:
            added = f"failed: {r['failed'][name]}"
        output.console.print(f"{name}: {added}", highlight=False)
    output.console.print(
        f"{r['layers_downloaded']} layers, {output.size(r['bytes_downloaded'])} downloaded"
    )
    if r["failed"]:
        raise typer.Exit(1)
