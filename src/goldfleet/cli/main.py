"""``goldfleet``: the command line. Every command but init, serve and demo calls the API."""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from goldfleet.cli import options, output
from goldfleet.cli.access import grant_app, read_password, role_app, user_app
from goldfleet.cli.bundles import bundle_app, keys_app
from goldfleet.cli.client import CLONE_PAGE, SERVER_FILE, TOKEN_FILE, Client, ClientError
from goldfleet.cli.clusters import cluster_app
from goldfleet.cli.common import JsonOpt, follow
from goldfleet.cli.common import fail as _fail
from goldfleet.cli.guests import agent_app, compliance_app, guest_tool_app, print_updates
from goldfleet.cli.hosts import host_app
from goldfleet.cli.pools import pool_app
from goldfleet.cli.sessions import session_app
from goldfleet.cli.sim import sim_app
from goldfleet.cli.sites import publish as _publish
from goldfleet.cli.sites import site_app
from goldfleet.cli.sites import validate as _validate
from goldfleet.errors import GoldfleetError
from goldfleet.homedir import home_dir

options.install()  # typer's option coercion without importing pydantic (cli/options.py)

ROOT: dict[str, Any] = {
    "no_args_is_help": True,
    "add_completion": False,
    "pretty_exceptions_enable": False,  # never print locals (tokens) or tracebacks to users
    "help": "goldfleet: golden images for VM and VDI fleets — templates, versions, clones.",
}
app = typer.Typer(**ROOT)
template_app = typer.Typer(no_args_is_help=True, help="Templates and their versions.")
maintenance_app = typer.Typer(no_args_is_help=True, help="Maintenance mode of a template.")
clone_app = typer.Typer(no_args_is_help=True, help="Clones made from template versions.")
store_app = typer.Typer(no_args_is_help=True, help="The layer store.")
op_app = typer.Typer(no_args_is_help=True, help="Long-running operations.")
token_app = typer.Typer(no_args_is_help=True, help="API tokens.")
app.add_typer(template_app, name="template")
template_app.add_typer(maintenance_app, name="maintenance")
app.add_typer(clone_app, name="clone")
app.add_typer(store_app, name="store")
app.add_typer(op_app, name="op")
app.add_typer(token_app, name="token")
app.add_typer(sim_app, name="sim")
app.add_typer(pool_app, name="pool")
app.add_typer(bundle_app, name="bundle")
app.add_typer(keys_app, name="keys")
app.add_typer(site_app, name="site")
template_app.command("publish")(_publish)
template_app.command("validate")(_validate)
app.add_typer(host_app, name="host")
app.add_typer(guest_tool_app, name="guest-tool")
app.add_typer(compliance_app, name="compliance")
app.add_typer(agent_app, name="agent")
app.add_typer(session_app, name="session")
app.add_typer(user_app, name="user")
app.add_typer(role_app, name="role")
app.add_typer(grant_app, name="grant")
app.add_typer(cluster_app, name="cluster")

R = "Rollout policy"
LogoffOpt = Annotated[
    str, typer.Option(help="Logged-in users: wait, notify-force or force.", rich_help_panel=R)
]
DeadlineOpt = Annotated[
    str | None,
    typer.Option(help="With --logoff wait: skip clones still in use then.", rich_help_panel=R),
]
GraceOpt = Annotated[
    str | None, typer.Option(help="notify-force: time before logoff (10m).", rich_help_panel=R)
]
MessageOpt = Annotated[
    str | None, typer.Option(help="notify-force: the message users see.", rich_help_panel=R)
]
MaxParallelOpt = Annotated[
    int | None, typer.Option(help="Clones rebuilt at once, fleet-wide.", rich_help_panel=R)
]
PerHostOpt = Annotated[
    int | None, typer.Option(help="Clones rebuilt at once per host (4).", rich_help_panel=R)
]
CanaryOpt = Annotated[
    int, typer.Option(help="Do K clones first, then pause for op resume.", rich_help_panel=R)
]
CanaryAutoOpt = Annotated[
    bool, typer.Option("--canary-auto", help="Go on if the canary succeeded.", rich_help_panel=R)
]
StopOnErrorOpt = Annotated[
    bool,
    typer.Option("--stop-on-error/--continue-on-error", help="Default.", rich_help_panel=R),
]
MaxFailuresOpt = Annotated[
    str | None, typer.Option(help="Tolerate N or P% failures.", rich_help_panel=R)
]
AtOpt = Annotated[
    str | None, typer.Option(help="Start at HH:MM or an ISO time (UTC).", rich_help_panel=R)
]
DetachOpt = Annotated[
    bool, typer.Option("--detach", help="Print the operation and return at once.")
]


def _rollout(**fields: Any) -> dict[str, Any] | None:
    """The request's rollout policy; None when every flag is left at its default."""
    defaults = {"logoff": "wait", "canary": 0, "canary_auto": False, "stop_on_error": True}
    chosen = {k: v for k, v in fields.items() if v is not None and defaults.get(k) != v}
    return chosen or None


def _client() -> Client:
    return Client.from_home()


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except ClientError as exc:
        _fail(exc.message)


UNDER_WAY = ("scheduled", "running", "cancelling")


def _ended(op: dict) -> int:
    return op["done"] + op["failed"] + op.get("skipped", 0) + op.get("cancelled", 0)


def _status_line(op: dict) -> str:
    parts = [op["status"]]
    if op.get("running"):
        parts.append(f"working on {', '.join(op.get('current', [])[:3])}")
    if op.get("waiting"):
        first = op["waiting"][0]
        parts.append(f"{len(op['waiting'])} waiting ({first['clone']}: {first['reason']})")
    return "; ".join(parts)


def _poll_interval(elapsed: float) -> float:
    """How long the progress bar waits before asking again: 0.2 s for a short operation, 0.5 s
    once it has run 2 s (each answer counts the operation's items: on a fleet of 10,000 a
    poll every 0.2 s took server time from the work it shows)."""
    return 0.2 if elapsed < 2.0 else 0.5


def _watch(client: Client, op: dict, label: str, *, quiet: bool = False) -> dict:
    """Follow an operation until it ends or pauses, with a progress bar unless ``quiet``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if quiet:
        while op["status"] in UNDER_WAY:
            time.sleep(0.1)
            op = _call(client.get, f"/operations/{op['id']}")
        return op
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[line]}", markup=False),  # reasons may hold "[Errno 28]"
        console=output.err_console,
        transient=False,
    ) as progress:
        task = progress.add_task(label, total=op["total"], failed=0, line="")
        began = time.monotonic()
        while True:
            progress.update(task, completed=_ended(op), failed=op["failed"], line=_status_line(op))
            if op["status"] not in UNDER_WAY:
                break
            time.sleep(_poll_interval(time.monotonic() - began))
            op = _call(client.get, f"/operations/{op['id']}")
    return op


def _finish(op: dict, as_json: bool, extra: dict | None = None) -> None:
    if as_json:
        output.emit_json({"operation": op, **(extra or {})})
    else:
        output.console.print(
            f"operation {op['id']} {op['status']}: {op['done']} done, {op['failed']} failed"
            f" of {op['total']}"
        )
        if op.get("error") and op["status"] != "paused":
            output.console.print(f"[yellow]{op['error']}[/yellow]")
        if op["status"] == "paused":
            reason = op.get("paused_reason") or ""
            output.console.print(f"paused: {reason}", markup=False, highlight=False, soft_wrap=True)
    if op["status"] in UNDER_WAY:
        return  # detached: still running
    # paused on purpose (a canary, an admin) is fine; paused by a problem (a full disk) is not
    if op["status"] not in ("done", "paused") or (op["status"] == "paused" and op.get("error")):
        raise typer.Exit(1)


# --- home and server ----------------------------------------------------------------------


@app.command()
def init(
    port: Annotated[int, typer.Option(help="Port the server will listen on.")] = 8437,
    password_file: Annotated[
        Path | None,
        typer.Option(help="The first admin user's password (else one is made and shown once)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Make a home ($GOLDFLEET_HOME): config, database, store, an admin token and the first
    admin user (admin)."""
    from goldfleet.home import ADMIN_USER, init_admin_user, init_home

    home = home_dir()
    password = None if password_file is None else read_password(password_file)
    try:
        _, made = init_home(home, port=port)
        user_made, shown = init_admin_user(home, password)
    except Exception as exc:  # a clear line, never a traceback
        _fail(f"cannot initialise {home}: {exc}")
    info = {"home": str(home), "token_file": str(home / TOKEN_FILE), "token_created": made}
    info |= {"user": ADMIN_USER, "user_created": user_made}
    if shown is not None:
        info["password"] = shown  # shown once: only its hash is stored
    if as_json:
        output.emit_json(info)
    else:
        output.console.print(f"home ready at {home}")
        if made:
            output.console.print(f"admin token written to {home / TOKEN_FILE} (mode 0600)")
        if user_made:
            output.console.print(f"admin user {ADMIN_USER} created", highlight=False)
        if shown is not None:
            output.console.print(f"its password (shown once): {shown}", highlight=False)


@app.command()
def serve(
    port: Annotated[int | None, typer.Option(help="Port (default: config, 8437).")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
) -> None:
    """Run the API server and the web console (/ui/) (initialising the home first if needed).

    One server per home: the home's lock (goldfleet/homelock.py) is taken before anything in
    the home is touched (init, migrations, server.json, recovery) and held until the process
    ends; a second ``serve`` on the home is refused with the running server's pid and URL."""
    import uvicorn

    from goldfleet.api.files import ZeroCopy
    from goldfleet.bootstrap import bootstrap
    from goldfleet.config import Settings
    from goldfleet.home import init_home
    from goldfleet.homelock import lock_home
    from goldfleet.web import create_app  # the API, and the console beside it under /ui/

    home = home_dir()
    overrides: dict[str, Any] = {"host": host}
    if port is not None:
        overrides["port"] = port
    try:
        lock = lock_home(home)  # the descriptor stays open, and the lock held, until exit
        if not (home / "config.toml").exists():
            init_home(home)
        settings = Settings(**overrides)
        url = f"http://{settings.host}:{settings.port}"
        lock.announce(url=url)
        ctx = bootstrap(settings)
        ctx.home_id = lock.home_id
    except GoldfleetError as exc:
        _fail(exc.message)
    except ValueError as exc:  # pydantic's ValidationError: a bad setting
        _fail(f"bad setting: {exc}")
    (home / SERVER_FILE).write_text(json.dumps({"url": url, "pid": os.getpid()}))
    output.err_console.print(f"goldfleet serving on {url} (home {home})")
    uvicorn.run(
        ZeroCopy(create_app(ctx)),  # outside Starlette's middleware: it needs uvicorn's send
        http="h11",  # the protocol ZeroCopy sends layer files on (api/files.py)
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
    )


@app.command()
def demo(
    keep: Annotated[bool, typer.Option(help="Keep the demo home afterwards.")] = False,
    linked: Annotated[int, typer.Option(help="Linked clones to make.")] = 20,
    full: Annotated[int, typer.Option(help="Full clones to make.")] = 2,
) -> None:
    """The main job, end to end on a temporary home: patch a template, carry it to clones."""
    from goldfleet.cli.demo import run_demo

    raise typer.Exit(run_demo(keep=keep, linked=linked, full=full))


# --- templates ----------------------------------------------------------------------------


@template_app.command("import")
def template_import(
    name: str,
    image: Path,
    format: Annotated[str, typer.Option("--format", help="qcow2 or raw.")] = "qcow2",
    temp: Annotated[list[str] | None, typer.Option(help="Size of a temp volume.")] = None,
    data: Annotated[list[str] | None, typer.Option(help="Size of a data volume.")] = None,
    kind: Annotated[str, typer.Option(help="Default clone kind: linked or full.")] = "linked",
    as_json: JsonOpt = False,
) -> None:
    """Import an outside image as v1 of a new template."""
    if not image.is_file():
        _fail(f"{image} is not a readable file")
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    client = _client()
    params = {"name": name, "format": format, "kind": kind, "temp": temp or [], "data": data or []}
    with Progress(
        TextColumn("uploading"),
        BarColumn(),
        TimeElapsedColumn(),
        console=output.err_console,
        transient=True,
        disable=as_json,
    ) as progress:
        task = progress.add_task("upload", total=image.stat().st_size)
        result = _call(
            client.upload,
            "/templates/import",
            image,
            params,
            progress=lambda n: progress.advance(task, n),
        )
    if as_json:
        output.emit_json(result)
    else:
        output.template_rows([result])


@template_app.command("list")
def template_list(as_json: JsonOpt = False) -> None:
    """List templates."""
    items = _call(_client().get, "/templates")
    output.emit_json(items) if as_json else output.template_rows(items)


@template_app.command("show")
def template_show(name: str, as_json: JsonOpt = False) -> None:
    """Show one template."""
    t = _call(_client().get, f"/templates/{name}")
    if as_json:
        output.emit_json(t)
        return
    output.template_rows([t])
    if t.get("overlay_path"):
        output.console.print(f"maintenance overlay: {t['overlay_path']}")
    if t.get("error"):
        output.console.print(f"[yellow]last error: {t['error']}[/yellow]")


@template_app.command("versions")
def template_versions(name: str, as_json: JsonOpt = False) -> None:
    """List a template's versions, oldest first."""
    items = _call(_client().get, f"/templates/{name}/versions")
    if as_json:
        output.emit_json(items)
        return
    output.table(
        name,
        ["version", "current", "layers", "top layer", "clones", "created", "note"],
        [
            [
                v["name"],
                "*" if v["current"] else ("" if v["status"] == "enabled" else v["status"]),
                len(v["chain"]),
                v["top_layer"][:19],
                v["clones"],
                str(v["created_at"])[:19],
                v["note"],
            ]
            for v in items
        ],
    )


@template_app.command("delete")
def template_delete(name: str, as_json: JsonOpt = False) -> None:
    """Delete a template (refused while anything depends on it)."""
    _call(_client().delete, f"/templates/{name}")
    output.emit_json({"deleted": name}) if as_json else output.console.print(f"deleted {name}")


@template_app.command("delete-version")
def template_delete_version(name: str, version: str, as_json: JsonOpt = False) -> None:
    """Delete an old version (refused while clones use it)."""
    from goldfleet.domain.names import parse_version

    try:
        number = parse_version(version)
    except Exception as exc:  # InvalidInput
        _fail(str(exc))
    _call(_client().delete, f"/templates/{name}/versions/{number}")
    msg = {"deleted": f"{name}:v{number}"}
    output.emit_json(msg) if as_json else output.console.print(f"deleted {name}:v{number}")


@template_app.command("create-from-clone")
def template_create_from_clone(name: str, clone: str, as_json: JsonOpt = False) -> None:
    """Seal a clone's system volume as v1 of a new template (lower layers shared)."""
    t = _call(_client().post, "/templates/from-clone", {"name": name, "clone": clone})
    output.emit_json(t) if as_json else output.template_rows([t])


@template_app.command("flatten")
def template_flatten(name: str, as_json: JsonOpt = False) -> None:
    """Merge the current version's chain into a new base layer (a new version)."""
    v = _call(_client().post, f"/templates/{name}/flatten")
    if as_json:
        output.emit_json(v)
    else:
        output.console.print(f"{name}:{v['name']} is the flattened current version: {v['note']}")


@maintenance_app.command("enter")
def maintenance_enter(name: str, as_json: JsonOpt = False) -> None:
    """Give the template a writable overlay; new clones are refused until exit or abort."""
    t = _call(_client().post, f"/templates/{name}/maintenance/enter")
    if as_json:
        output.emit_json(t)
    else:
        output.console.print(
            f"template {name} is in maintenance; change its overlay with any tool:"
        )
        output.console.print(f"  {t['overlay_path']}", highlight=False)
        output.console.print(f"then: goldfleet template maintenance exit {name}")


@agent_app.command("update")
def agent_update(
    template: Annotated[
        list[str] | None, typer.Option("--template", help="A template (repeat); default: outdated.")
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", help="Leave this template out (repeat).")
    ] = None,
    recreate_full: Annotated[
        bool, typer.Option("--recreate-full", help="Recreate full clones instead of pushing.")
    ] = False,
    logoff: LogoffOpt = "wait",
    deadline: DeadlineOpt = None,
    grace: GraceOpt = None,
    message: MessageOpt = None,
    max_parallel: MaxParallelOpt = None,
    per_host: PerHostOpt = None,
    canary: CanaryOpt = 0,
    canary_auto: CanaryAutoOpt = False,
    stop_on_error: StopOnErrorOpt = True,
    max_failures: MaxFailuresOpt = None,
    at: AtOpt = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow until every update ends.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Update the guest tool of templates' clones in bulk: maintenance, install in the
    maintenance VM, exit with a recreate (rollout flags apply); full clones get it pushed (or
    recreated with --recreate-full). Durable: a killed server carries on where it stopped."""
    client = _client()
    body = {
        "templates": template or None,
        "exclude": exclude or [],
        "recreate_full": recreate_full,
        "rollout": _rollout(
            logoff=logoff,
            deadline=deadline,
            grace=grace,
            message=message,
            max_parallel=max_parallel,
            per_host=per_host,
            canary=canary,
            canary_auto=canary_auto,
            stop_on_error=stop_on_error,
            max_failures=max_failures,
            at=at,
        ),
    }
    made = _call(client.post, "/agents/update", body)
    while wait and any(u["status"] not in ("done", "failed") for u in made):
        time.sleep(0.5)
        made = [_call(client.get, f"/agents/updates/{u['id']}") for u in made]
    if as_json:
        output.emit_json(made)
    else:
        print_updates(made)
    if wait and any(u["status"] == "failed" for u in made):
        raise typer.Exit(1)


@maintenance_app.command("exit")
def maintenance_exit(
    name: str,
    recreate: Annotated[str, typer.Option(help="Recreate clones: none, linked or all.")] = "none",
    shutdown: Annotated[
        bool, typer.Option("--shutdown", help="Shut a running maintenance VM down first.")
    ] = False,
    logoff: LogoffOpt = "wait",
    deadline: DeadlineOpt = None,
    grace: GraceOpt = None,
    message: MessageOpt = None,
    max_parallel: MaxParallelOpt = None,
    per_host: PerHostOpt = None,
    canary: CanaryOpt = 0,
    canary_auto: CanaryAutoOpt = False,
    stop_on_error: StopOnErrorOpt = True,
    max_failures: MaxFailuresOpt = None,
    at: AtOpt = None,
    detach: DetachOpt = False,
    guest_tool_version: Annotated[
        str | None,
        typer.Option(
            help="The guest tool in the new version: auto (read from the running maintenance"
            " VM) or a version such as 1.0.0."
        ),
    ] = None,
    quarantine_version: Annotated[
        str | None,
        typer.Option(help="The new version's quarantine version (a name in the policy)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Seal the overlay as the new current version (and recreate clones on it)."""
    client = _client()
    body = {
        "recreate": recreate,
        "shutdown": shutdown,
        "guest_tool_version": guest_tool_version,
        "quarantine_version": quarantine_version,
        "rollout": _rollout(
            logoff=logoff,
            deadline=deadline,
            grace=grace,
            message=message,
            max_parallel=max_parallel,
            per_host=per_host,
            canary=canary,
            canary_auto=canary_auto,
            stop_on_error=stop_on_error,
            max_failures=max_failures,
            at=at,
        ),
    }
    r = _call(client.post, f"/templates/{name}/maintenance/exit", body)
    op = r.get("operation")
    if op is not None and not detach:
        op = _watch(client, op, f"recreating clones of {name}", quiet=as_json)
        r["operation"] = op
        r["clones_behind"] = _call(client.get, f"/templates/{name}")["clones_behind"]
    if as_json:
        output.emit_json(r)
    else:
        output.console.print(f"{name}:v{r['version']} sealed and current")
        if op is not None:
            _finish(op, False)
        if r["clones_behind"]:
            output.console.print(
                f"{r['clones_behind']} clones are behind; recreate them with: goldfleet clone"
                f" recreate --template {name}"
            )
    if op is not None and op["status"] not in ("done", "paused", *UNDER_WAY):
        raise typer.Exit(1)


@maintenance_app.command("start")
def maintenance_start(name: str, as_json: JsonOpt = False) -> None:
    """Boot the maintenance overlay as a VM through the driver."""
    t = _call(_client().post, f"/templates/{name}/maintenance/start")
    if as_json:
        output.emit_json(t)
    else:
        output.console.print(f"the maintenance VM of {name} is running")


@maintenance_app.command("abort")
def maintenance_abort(name: str, as_json: JsonOpt = False) -> None:
    """Discard the overlay; no version is made."""
    t = _call(_client().post, f"/templates/{name}/maintenance/abort")
    output.emit_json(t) if as_json else output.console.print(f"maintenance of {name} aborted")


@maintenance_app.command("status")
def maintenance_status(name: str, as_json: JsonOpt = False) -> None:
    """Show the maintenance status of a template."""
    t = _call(_client().get, f"/templates/{name}")
    if as_json:
        output.emit_json({k: t[k] for k in ("name", "status", "overlay_path", "error")})
    else:
        output.console.print(f"{name}: {t['status']}")
        if t.get("overlay_path"):
            output.console.print(f"overlay: {t['overlay_path']}", highlight=False)


# --- clones -------------------------------------------------------------------------------


@clone_app.command("create")
def clone_create(
    template: str,
    count: Annotated[int | None, typer.Option(help="How many numbered clones.")] = None,
    name: Annotated[str | None, typer.Option(help="The name of one clone.")] = None,
    full: Annotated[bool, typer.Option("--full", help="Full (independent) clones.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Create clones of a template's current version."""
    if count is None and name is None:
        count = 1
    client = _client()
    body = {"template": template, "count": count, "name": name, "full": full}
    r = _call(client.post, "/clones", body)
    quiet = as_json or len(r["clones"]) <= 1
    op = _watch(client, r["operation"], f"creating clones of {template}", quiet=quiet)
    _finish(op, as_json, {"clones": r["clones"]})


@clone_app.command("list")
def clone_list(
    template: Annotated[str | None, typer.Option(help="Only this template's clones.")] = None,
    state: Annotated[
        str | None,
        typer.Option(help="Only clones in this status (ready, failed…) or power state (running)."),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Only clones on this host.")] = None,
    version: Annotated[
        str | None, typer.Option(help="Only clones on version vN (of --template, else of any).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """List clones."""
    from goldfleet.domain.names import parse_version

    params: dict[str, Any] = {"limit": CLONE_PAGE}
    for key, value in (("template", template), ("state", state), ("host", host)):
        if value is not None:
            params[key] = value
    if version is not None:
        try:
            params["version"] = parse_version(version)
        except GoldfleetError as exc:
            _fail(exc.message)
    items = _call(_client().get_pages, "/clones", params)
    output.emit_json(items) if as_json else output.clone_rows(items)


@clone_app.command("show")
def clone_show(name: str, as_json: JsonOpt = False) -> None:
    """Show one clone with its volumes."""
    c = _call(_client().get, f"/clones/{name}")
    if as_json:
        output.emit_json(c)
        return
    output.clone_rows([c])
    output.table(
        "volumes",
        ["role", "index", "size", "version", "path"],
        [
            [v["role"], v["index"], output.size(v["size"]), v["version"] or "", v["path"]]
            for v in c["volumes"]
        ],
    )


def _clone_action(verb: str, name: str, as_json: bool, body: dict | None = None) -> None:
    c = _call(_client().post, f"/clones/{name}/{verb}", body)
    output.emit_json(c) if as_json else output.clone_rows([c])


def _clone_power(verb: str, name: str | None, template: str | None, detach: bool,
                 as_json: bool) -> None:  # fmt: skip
    if (name is None) == (template is None):
        _fail("give either a clone name or --template")
    if name is not None:
        _clone_action(verb, name, as_json)
        return
    client = _client()
    op = _call(client.post, f"/clones/{verb}", {"template": template})
    if not detach:
        op = _watch(client, op, f"{verb} of the clones of {template}", quiet=as_json)
    _finish(op, as_json)


@clone_app.command("start")
def clone_start(
    name: Annotated[str | None, typer.Argument(help="One clone (or use --template).")] = None,
    template: Annotated[
        str | None, typer.Option(help="Every ready clone of a template, as one operation.")
    ] = None,
    detach: DetachOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Start a clone (or every ready clone of --template)."""
    _clone_power("start", name, template, detach, as_json)


@clone_app.command("stop")
def clone_stop(
    name: Annotated[str | None, typer.Argument(help="One clone (or use --template).")] = None,
    template: Annotated[
        str | None,
        typer.Option(help="Every ready clone of a template, as one operation (users logged off)."),
    ] = None,
    detach: DetachOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Stop a clone (or every ready clone of --template); temp volumes are emptied."""
    _clone_power("stop", name, template, detach, as_json)


@clone_app.command("restore")
def clone_restore(name: str, as_json: JsonOpt = False) -> None:
    """System volume back to its version's content; temp emptied; data untouched."""
    _clone_action("restore", name, as_json)


@clone_app.command("rebase")
def clone_rebase(
    name: Annotated[str | None, typer.Argument(help="One clone (or use --template).")] = None,
    to: Annotated[str | None, typer.Option(help="TEMPLATE[:VERSION]; default: current.")] = None,
    template: Annotated[str | None, typer.Option(help="Every clone of a template.")] = None,
    logoff: LogoffOpt = "wait",
    deadline: DeadlineOpt = None,
    grace: GraceOpt = None,
    message: MessageOpt = None,
    max_parallel: MaxParallelOpt = None,
    per_host: PerHostOpt = None,
    canary: CanaryOpt = 0,
    canary_auto: CanaryAutoOpt = False,
    stop_on_error: StopOnErrorOpt = True,
    max_failures: MaxFailuresOpt = None,
    at: AtOpt = None,
    detach: DetachOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Move a clone (or every clone of --template) to another version; data kept."""
    if (name is None) == (template is None):
        _fail("give either a clone name or --template")
    if name is not None:
        _clone_action("rebase", name, as_json, {"to": to})
        return
    client = _client()
    body = {
        "template": template,
        "to": to,
        "rollout": _rollout(
            logoff=logoff,
            deadline=deadline,
            grace=grace,
            message=message,
            max_parallel=max_parallel,
            per_host=per_host,
            canary=canary,
            canary_auto=canary_auto,
            stop_on_error=stop_on_error,
            max_failures=max_failures,
            at=at,
        ),
    }
    op = _call(client.post, "/clones/rebase", body)
    if not detach:
        op = _watch(client, op, f"rebasing clones of {template}", quiet=as_json)
    _finish(op, as_json)


@clone_app.command("recreate")
def clone_recreate(
    name: Annotated[str | None, typer.Argument(help="One clone (or use --template).")] = None,
    template: Annotated[str | None, typer.Option(help="All clones of a template.")] = None,
    include_full: Annotated[bool, typer.Option("--include-full")] = False,
    discard_data: Annotated[bool, typer.Option("--discard-data")] = False,
    logoff: LogoffOpt = "wait",
    deadline: DeadlineOpt = None,
    grace: GraceOpt = None,
    message: MessageOpt = None,
    max_parallel: MaxParallelOpt = None,
    per_host: PerHostOpt = None,
    canary: CanaryOpt = 0,
    canary_auto: CanaryAutoOpt = False,
    stop_on_error: StopOnErrorOpt = True,
    max_failures: MaxFailuresOpt = None,
    at: AtOpt = None,
    detach: DetachOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Rebuild clones on their template's current version."""
    client = _client()
    body = {
        "name": name,
        "template": template,
        "include_full": include_full,
        "discard_data": discard_data,
        "rollout": _rollout(
            logoff=logoff,
            deadline=deadline,
            grace=grace,
            message=message,
            max_parallel=max_parallel,
            per_host=per_host,
            canary=canary,
            canary_auto=canary_auto,
            stop_on_error=stop_on_error,
            max_failures=max_failures,
            at=at,
        ),
    }
    op = _call(client.post, "/clones/recreate", body)
    if not detach:
        op = _watch(client, op, f"recreating {name or template}", quiet=as_json)
    _finish(op, as_json)


@clone_app.command("retry")
def clone_retry(
    name: Annotated[str | None, typer.Argument(help="One failed clone.")] = None,
    all_failed: Annotated[bool, typer.Option("--all", help="Every failed clone.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Finish the last action of failed clones."""
    client = _client()
    op = _call(client.post, "/clones/retry", {"name": name, "all": all_failed})
    op = _watch(client, op, "retrying", quiet=as_json)
    _finish(op, as_json)


@clone_app.command("delete")
def clone_delete(name: str, as_json: JsonOpt = False) -> None:
    """Delete a clone and its volumes."""
    _call(_client().delete, f"/clones/{name}")
    output.emit_json({"deleted": name}) if as_json else output.console.print(f"deleted {name}")


# --- store, operations, tokens, audit -----------------------------------------------------


@store_app.command("verify")
def store_verify(
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            metavar="last",
            help="Check only the files changed since the last clean verify (--since last).",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Rehash every layer and qemu-img check every layer and volume, on every core."""
    if since is not None and since.lower() != "last":
        _fail(f"--since {since!r}: the only choice is 'last' (the last clean verify)")
    body: dict[str, Any] = {"since": "last"} if since is not None else {}
    # streamed even with --json: a large store takes longer than the client's read timeout
    r = follow(
        "/store/verify",
        {**body, "progress": True},
        lambda _: "verifying the store",
        "store verify",
        unit="items",
        show=not as_json,
    )
    if as_json:
        output.emit_json(r)
    else:
        _print_verify(r, since is not None)
    if r["problems"]:
        raise typer.Exit(1)


def _print_verify(r: dict[str, Any], since_asked: bool) -> None:
    files = r["files_checked"] + r["files_skipped"]
    output.console.print(
        f"{r['layers']} layers, {r['clones_checked']} clones: {r['files_checked']} of {files}"
        f" files checked in {r['seconds']:.1f} s",
        highlight=False,
    )
    if r["files_skipped"]:
        output.console.print(
            f"{r['files_skipped']} files skipped: unchanged since the clean verify at"
            f" {str(r['since'])[:19]} UTC (last full verify {str(r['full_verify_at'])[:19]} UTC)",
            highlight=False,
        )
    elif since_asked and r["since"] is None:
        output.console.print("no clean verify was recorded: every file was checked")
    if r["problems"]:
        output.table(
            "problems", ["file", "problem"], [[p["file"], p["problem"]] for p in r["problems"]]
        )
    else:
        output.console.print("no problems found")


@op_app.command("list")
def op_list(as_json: JsonOpt = False) -> None:
    """Recent operations, newest first."""
    items = _call(_client().get, "/operations")
    output.emit_json(items) if as_json else output.operation_rows(items)


@op_app.command("show")
def op_show(op_id: int, as_json: JsonOpt = False) -> None:
    """One operation: progress, policy, the clones in work and which wait on whom."""
    o = _call(_client().get, f"/operations/{op_id}")
    if as_json:
        output.emit_json(o)
        return
    output.operation_rows([o])
    output.console.print(
        f"queued {o['queued']}, running {o['running']}, done {o['done']}, failed"
        f" {o['failed']}, skipped {o['skipped']}, cancelled {o['cancelled']}"
    )
    if o.get("paused_reason"):
        output.console.print(
            f"paused: {o['paused_reason']}", markup=False, highlight=False, soft_wrap=True
        )
    if o.get("start_at"):
        output.console.print(f"starts at: {o['start_at']} UTC")
    if o.get("current"):
        output.console.print(f"working on: {', '.join(o['current'])}")
    if o.get("waiting"):
        output.table("waiting", ["clone", "why"], [[w["clone"], w["reason"]] for w in o["waiting"]])


def _op_verb(verb: str, op_id: int, as_json: bool) -> None:
    o = _call(_client().post, f"/operations/{op_id}/{verb}")
    output.emit_json(o) if as_json else output.operation_rows([o])


@op_app.command("pause")
def op_pause(op_id: int, as_json: JsonOpt = False) -> None:
    """Start no more clones; those in flight finish."""
    _op_verb("pause", op_id, as_json)


@op_app.command("resume")
def op_resume(op_id: int, as_json: JsonOpt = False) -> None:
    """Continue a paused operation (also after a canary)."""
    _op_verb("resume", op_id, as_json)


@op_app.command("cancel")
def op_cancel(op_id: int, as_json: JsonOpt = False) -> None:
    """Start no more clones; in-flight ones finish, the rest stay on their old version."""
    _op_verb("cancel", op_id, as_json)


@op_app.command("watch")
def op_watch(op_id: int, as_json: JsonOpt = False) -> None:
    """Follow an operation to its end with a progress bar."""
    client = _client()
    o = _call(client.get, f"/operations/{op_id}")
    o = _watch(client, o, f"{o['kind']} {o['target']}", quiet=as_json)
    _finish(o, as_json)


@token_app.command("create")
def token_create(
    name: str,
    role: Annotated[
        str | None, typer.Option(help="admin, reader, site or a role (default reader).")
    ] = None,
    scope: Annotated[
        str | None, typer.Option(help="Where the role holds: /, template:T, pool:P… (/).")
    ] = None,
    clone: Annotated[
        str | None, typer.Option(help="Only this clone: restore, start, stop (role user).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Make an API token; it is shown once and stored only as a hash."""
    if role is None and clone is None:
        role = "reader"
    body = {"name": name, "role": role, "scope": scope, "clone": clone}
    r = _call(_client().post, "/tokens", {k: v for k, v in body.items() if v is not None})
    output.emit_json(r) if as_json else output.console.print(r["token"], highlight=False)


@token_app.command("list")
def token_list(as_json: JsonOpt = False) -> None:
    """List tokens (never their values)."""
    items = _call(_client().get, "/tokens")
    if as_json:
        output.emit_json(items)
    else:
        output.table(
            None,
            ["name", "role", "grants", "created", "revoked"],
            [
                [
                    t["name"],
                    t["role"],
                    ", ".join(t["grants"]),
                    str(t["created_at"])[:19],
                    t["revoked"],
                ]
                for t in items
            ],
        )


@token_app.command("revoke")
def token_revoke(name: str, as_json: JsonOpt = False) -> None:
    """Revoke a token."""
    _call(_client().delete, f"/tokens/{name}")
    output.emit_json({"revoked": name}) if as_json else output.console.print(f"revoked {name}")


@app.command("audit")
def audit_list(
    limit: Annotated[int, typer.Option(help="How many entries.")] = 50, as_json: JsonOpt = False
) -> None:
    """The audit log, newest first."""
    items = _call(_client().get, "/audit", params={"limit": limit})
    if as_json:
        output.emit_json(items)
    else:
        output.table(
            None,
            ["at", "actor", "action", "target", "detail"],
            [
                [str(a["at"])[:19], a["actor"], a["action"], a["target"], json.dumps(a["detail"])]
                for a in items
            ],
        )


def app_for(args: list[str]) -> typer.Typer:
    """The app that runs ``goldfleet ARGS``: when the first argument names a group (``clone``,
    ``template``…), the root with that group alone beside the top-level commands, else the
    root with every group as an empty stand-in (its name, help and panel, none of its
    commands). Click builds the options of every command it holds before parsing, and for the
    whole app that is half of ``goldfleet --help``; a group's own usage, help and errors are the
    same either way, and the root's help, usage and errors (``--help``, a typo at the top) list
    only the groups' names and help, which the stand-ins carry."""
    only = typer.Typer(**ROOT)
    only.registered_commands = list(app.registered_commands)
    named = [g for g in app.registered_groups if args and g.name == args[0]]
    only.registered_groups = named or [_stand_in(g) for g in app.registered_groups]
    return only


def _stand_in(group: Any) -> Any:
    """A registered group (typer's ``TyperInfo``) as it is listed at the top: without its
    commands."""
    empty = copy.copy(group.typer_instance)
    empty.registered_commands, empty.registered_groups = [], []
    stand_in = copy.copy(group)
    stand_in.typer_instance = empty
    return stand_in


def main() -> None:
    try:
        app_for(sys.argv[1:])()
    except GoldfleetError as exc:
        output.err_console.print(f"[red]error:[/red] {exc.message}", highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # a bug: one line for the user, the details for a report
        output.err_console.print(
            f"[red]internal error:[/red] {type(exc).__name__}: {exc}", highlight=False
        )
        sys.exit(70)
