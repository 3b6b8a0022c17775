"""``goldfleet site``: sites at HQ (create, rights, assign, list, revoke) and, at a site, joining
HQ, syncing, the sync schedule and its status; ``goldfleet template publish`` at a site.
Talks to the API like every command; a site's token is sent to its own server, never printed."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from goldfleet.cli import output
from goldfleet.cli.common import JsonOpt, follow
from goldfleet.cli.common import call as _call
from goldfleet.cli.common import fail as _fail
from goldfleet.domain.names import parse_version
from goldfleet.domain.sizes import parse_rate
from goldfleet.errors import InvalidInput

site_app = typer.Typer(no_args_is_help=True, help="Sites that pull template versions from HQ.")


def _state(st: dict[str, Any]) -> str:
    if st["state"] == "transferring":
        text = f"transferring {output.size(st['done'])}/{output.size(st['total'])}"
    elif st["state"] == "failed":
        text = f"failed: {st['reason']}"
    else:
        text = st["state"]
    return f"{text} (current)" if st.get("current") else text


def _assignment(a: dict[str, Any]) -> str:
    extra = [f"versions {a['versions']}"]
    if a["publish_at"]:
        extra.append(f"publish at {a['publish_at']} UTC")
    if a["activate"] != "on-verify":
        extra.append(a["activate"])
    return f"{a['template']} ({', '.join(extra)})"


def _print_site(r: dict[str, Any], as_json: bool, message: str) -> None:
    if as_json:
        output.emit_json(r)
    else:
        output.console.print(message, highlight=False)


# --- at HQ --------------------------------------------------------------------------------


@site_app.command("create")
def create(
    name: str,
    local_patches: Annotated[
        bool,
        typer.Option("--local-patches", help="The site may seal versions and publish them to HQ."),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """At HQ: make site NAME and its token (role site), printed once."""
    r = _call("POST", "/sites", json={"name": name, "local_patches": local_patches})
    if as_json:
        output.emit_json(r)
        return
    output.console.print(r["token"], highlight=False)
    output.err_console.print(
        f"site {name} created; give it this token once: goldfleet site join URL --token TOKEN"
    )


@site_app.command("list")
def list_(as_json: JsonOpt = False) -> None:
    """At HQ: every site, its last contact, what it receives and the state of each version."""
    r = _call("GET", "/sites")
    if as_json:
        output.emit_json(r)
        return
    rows = []
    for x in r:
        contact = x["last_contact"] or "never"
        states = "\n".join(f"{k} {_state(v)}" for k, v in x["states"].items()) or "-"
        token = "revoked" if x["token_revoked"] else "active"
        if x["local_patches"]:
            token += ", local-patches"
        assigned = "\n".join(_assignment(a) for a in x["assignments"]) or "-"
        rows.append([x["name"], token, contact, assigned, states])
    output.table("sites", ["site", "token", "last contact", "receives", "versions there"], rows)


@site_app.command("rights")
def rights(
    site: str,
    local_patches: Annotated[
        bool,
        typer.Option(
            "--local-patches/--no-local-patches",
            help="May the site seal versions of its templates and publish them to HQ?",
        ),
    ],
    as_json: JsonOpt = False,
) -> None:
    """At HQ: give or take a site's local-patches right."""
    r = _call("POST", f"/sites/{site}/rights", json={"local_patches": local_patches})
    state = "may" if r["local_patches"] else "may not"
    _print_site(r, as_json, f"site {site} {state} patch templates locally and publish them")


@site_app.command("revoke")
def revoke(site: str, as_json: JsonOpt = False) -> None:
    """At HQ: revoke the site's token; HQ serves it nothing more (401)."""
    r = _call("POST", f"/sites/{site}/revoke")
    _print_site(r, as_json, f"site {site}: token {r['token_name']} revoked")


@site_app.command("assign")
def assign(
    site: str,
    template: str,
    versions: Annotated[
        str,
        typer.Option("--versions", help="What the site receives: current, all, or N newest."),
    ] = "all",
    publish_at: Annotated[
        str | None,
        typer.Option(
            "--publish-at",
            help="A new current version goes live there at this time (HH:MM or ISO, UTC).",
        ),
    ] = None,
    activate: Annotated[
        str | None,
        typer.Option(
            "--activate",
            help="on-verify (each site on its own) or when-all-verified (every site of the"
            " template first); applies to the template at every site.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """At HQ: SITE receives TEMPLATE (assigning again changes the options)."""
    body = {"template": template, "versions": versions, "publish_at": publish_at}
    r = _call("POST", f"/sites/{site}/templates", json=body | {"activate": activate})
    a = next(a for a in r["assignments"] if a["template"] == template)
    _print_site(r, as_json, f"site {site} receives {_assignment(a)}")


@site_app.command("unassign")
def unassign(site: str, template: str, as_json: JsonOpt = False) -> None:
    """At HQ: SITE receives nothing more of TEMPLATE (what it holds stays there)."""
    r = _call("DELETE", f"/sites/{site}/templates/{template}")
    _print_site(r, as_json, f"site {site} no longer receives {template}")


# --- at a site ----------------------------------------------------------------------------


@site_app.command("join")
def join(
    url: str,
    token: Annotated[str, typer.Option("--token", help="The token `site create` printed.")],
    as_json: JsonOpt = False,
) -> None:
    """At a site: pull from HQ at URL with TOKEN (kept in the home, mode 0600)."""
    r = _call("POST", "/site/join", json={"url": url, "token": token})
    _print_site(r, as_json, f"joined {r['upstream_url']} as site {r['site']}")


@site_app.command("status")
def status(as_json: JsonOpt = False) -> None:
    """At a site: HQ's URL, the schedule, the last attempt, its problem and the last successful
    sync, the next sync, rights, waiting versions."""
    r = _call("GET", "/site")
    if as_json:
        output.emit_json(r)
        return
    if r["role"] != "site":
        output.console.print("this server runs as hq; see: goldfleet site list")
        return
    pending = ", ".join(f"{k} v{v['version']} at {v['at']}" for k, v in r["pending"].items())
    rows = [
        ["upstream", r["upstream_url"] or "not joined (goldfleet site join URL --token T)"],
        ["site", r["site"] or "-"],
        ["schedule", r["schedule"] or "on demand only"],
        ["bandwidth limit", _shown_rate(r["limit"])],
        ["next sync", r["next_sync_at"] or "-"],
        ["syncing since", r["syncing_since"] or "-"],
        ["last sync", r["last_sync_at"] or "never"],
        ["last problem", r["last_error"] or "-"],
        ["last successful sync", r.get("last_success_at") or "never"],
        ["local patches", "yes" if r["rights"].get("local-patches") else "no"],
        ["templates", ", ".join(r["templates"]) or "-"],
        ["waiting to go live", pending or "-"],
        ["waiting for HQ's validation", _awaiting(r.get("awaiting_validation") or {})],
    ]
    output.table("site", ["", ""], rows)


def _awaiting(awaiting: dict[str, list[int]]) -> str:
    shown = [f"{t} " + ", ".join(f"v{n}" for n in numbers) for t, numbers in awaiting.items()]
    return "; ".join(shown) or "-"


def _rate(text: str) -> int | None:
    """--limit RATE|off as the API takes it: bytes a second, or None for no limit."""
    if text.strip().lower() in ("off", "none"):
        return None
    try:
        return parse_rate(text)
    except InvalidInput as exc:
        _fail(exc.message)


@site_app.command("schedule")
def schedule(
    spec: Annotated[
        str | None,
        typer.Argument(
            help="'daily [HH:MM]', 'weekly DAY [HH:MM]', a cron expression (UTC), or 'off'."
        ),
    ] = None,
    limit: Annotated[
        str | None,
        typer.Option(
            "--limit", help="Bandwidth limit of every sync, e.g. 50MB/s, or 'off' (default)."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """At a site: when to sync with HQ (besides `site sync`), and at what bandwidth."""
    body: dict[str, Any] = {}
    if spec is not None:
        body["schedule"] = None if spec.strip().lower() in ("off", "none", "") else spec
    if limit is not None:
        body["limit"] = _rate(limit)
    if not body:
        _fail("say what to change: a schedule (e.g. 'daily 02:00' or 'off'), --limit, or both")
    r = _call("POST", "/site/schedule", json=body)
    text = f"sync schedule {r['schedule']} (UTC); next sync {r['next_sync_at']}"
    text = text if r["schedule"] else "syncs only on demand"
    text += f"; bandwidth limit {_shown_rate(r['limit'])}"
    _print_site(r, as_json, text)


def _shown_rate(rate: float | None) -> str:
    return f"{output.size(int(rate))}/s" if rate else "none"


@site_app.command("sync")
def sync(
    limit: Annotated[
        str | None,
        typer.Option(
            "--limit",
            help="Bandwidth limit of this sync, e.g. 50MB/s, or 'off'"
            " (default: the site's, see site schedule --limit).",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """At a site: download the layers it lacks and add the versions HQ sends it."""
    body: dict[str, Any] = {} if limit is None else {"limit": _rate(limit)}
    if as_json:
        r = _call("POST", "/site/sync", json=body)
        output.emit_json(r)
    else:
        r = follow("/site/sync", {**body, "progress": True}, lambda _: "sync ← HQ", "sync")
        for name in r["templates"]:
            added = ", ".join(f"v{n}" for n in r["versions_added"].get(name, [])) or "up to date"
            if name in r["activated"]:
                added += f"; v{r['activated'][name]} is current"
            if name in r["pending"]:
                p = r["pending"][name]
                added += f"; v{p['version']} goes live at {p['at']} UTC"
            if name in r["failed"]:
                kept = ", ".join(f"v{n}" for n in r["versions_added"].get(name, []))
                added = (f"added {kept}; then " if kept else "") + f"failed: {r['failed'][name]}"
            if name in r["skipped"]:
                added = f"waiting: {r['skipped'][name]}"
            output.console.print(f"{name}: {added}", highlight=False)
        output.console.print(
            f"{r['layers_downloaded']} layers, {output.size(r['bytes_downloaded'])} downloaded"
        )
    if r["failed"]:
        raise typer.Exit(1)


def publish(
    name: str,
    version: Annotated[
        int | None,
        typer.Option(
            "--version",
            help="The version to publish (default: the newest waiting for validation, else"
            " the current one).",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """At a site with the local-patches right: send a version sealed here to HQ. It waits
    there (pending-validation) until HQ validates it, then goes to every site of the
    template, this one included."""
    r = _call("POST", f"/templates/{name}/publish", json={"version": version})
    if as_json:
        output.emit_json(r)
    elif r["already_at_hq"]:
        output.console.print(f"{name} v{r['version']} is already at HQ; nothing was sent")
    else:
        output.console.print(
            f"published {name} v{r['version']} to HQ: {r['layers_sent']} layers,"
            f" {output.size(r['bytes_sent'])}; it waits for HQ's validation (goldfleet"
            f" template validate {name} v{r['version']} at HQ)",
            highlight=False,
        )


def validate(name: str, version: str, as_json: JsonOpt = False) -> None:
    """At HQ: enable version VERSION (vN) of NAME that a site published; it becomes current
    here if newer, and every site of the template receives it on its next sync."""
    try:
        number = parse_version(version)
    except InvalidInput as exc:
        _fail(exc.message)
    r = _call("POST", f"/templates/{name}/versions/{number}/validate")
    if as_json:
        output.emit_json(r)
        return
    now = "; it is the current version here" if r["current"] else ""
    output.console.print(
        f"validated {name} v{r['number']}{now}; the sites of {name} receive it on their next sync",
        highlight=False,
    )
