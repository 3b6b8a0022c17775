"""``goldfleet cluster``: clusters of hypervisor hosts, their update channel, proxy and sync
(docs/hosts.md). Talks to the API like every command; the proxy password is read from a file
and sent to the server, never printed."""

from __future__ import annotations

import base64
import json
import shlex
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from goldfleet.cli import output
from goldfleet.cli.client import Client, ClientError
from goldfleet.cli.common import JsonOpt, follow
from goldfleet.cli.common import call as _call
from goldfleet.cli.common import fail as _fail

cluster_app = typer.Typer(
    no_args_is_help=True,
    help="Clusters of hypervisor hosts: coordinator, update channel, proxy, sync, updates.",
)

NameArg = Annotated[str, typer.Argument(metavar="NAME", help="The cluster.")]
MAX_FILE = 2 << 20


def _read(path: Path, what: str) -> bytes:
    try:
        if path.stat().st_size > MAX_FILE:
            _fail(f"{what} {path} is larger than {MAX_FILE >> 20} MiB")
        return path.read_bytes()
    except OSError as exc:
        _fail(f"cannot read {what} {path}: {exc.strerror}")


def _guidance(g: dict[str, list[str]]) -> str:
    return "; ".join(f"{k}: {', '.join(v)}" for k, v in g.items() if v) or "-"


def _print_cluster(c: dict[str, Any]) -> None:
    p = output.console.print
    p(f"cluster {c['name']}  coordinator {c['coordinator']}", highlight=False)
    ch = c["channel"]
    if ch is None:
        p("channel: none enabled", highlight=False)
    elif ch["kind"] == "offline":
        p("channel: offline (updates from an uploaded bundle)", highlight=False)
    else:
        comps = ",".join(ch["components"])
        p(
            f"channel: {ch['kind']}  {ch['url']} {ch['suite']} {comps} [{ch['arch']}]"
            f"  key {ch['fingerprint']}  hash {ch['hash'] or '-'}",
            highlight=False,
        )
    px = c["proxy"]
    if px is not None:
        user = f"  user {px['username']}" if px["username"] else ""
        pw = "  password set" if px["password_set"] else ""
        p(f"proxy: {px['url']}{user}{pw}", highlight=False)
    p(
        f"sync schedule: {c['sync_schedule']}"
        + (f"  next {c['next_sync_at']}" if c["next_sync_at"] else ""),
        highlight=False,
    )
    p(
        f"last_update_sync: {c['last_update_sync'] or 'never'}"
        + (
            f"  hash {c['last_sync_hash']} by {c['last_sync_coordinator']}"
            if c["last_sync_hash"]
            else ""
        )
        + ("  (syncing now)" if c["syncing"] else ""),
        highlight=False,
    )
    if c["last_error"]:
        p(f"last sync error: {c['last_error']}", highlight=False)
    for w in c["warnings"]:
        p(f"warning: {w}", highlight=False)

    def applied(v: bool | None) -> str:
        return "-" if v is None else ("yes" if v else "no")

    rows = [
        [
            h["name"] + (" *" if h["coordinator"] else ""),
            h["state"],
            h["clones"],
            h["installed_packages"],
            h["booted_kernel"] or "-",
            applied(h["latest_synced_updates_applied"]),
            _guidance(h["pending"]),
            h["last_update_hash"] or "-",
        ]
        for h in c["hosts"]
    ]
    output.table(
        None,
        [
            "host (* coordinator)",
            "state",
            "clones",
            "packages",
            "booted kernel",
            "latest synced updates applied",
            "pending guidance",
            "last update hash",
        ],
        rows,
    )


@cluster_app.command("list")
def list_(as_json: JsonOpt = False) -> None:
    """Every cluster, its coordinator, channel and last sync."""
    r = _call("GET", "/clusters")
    if as_json:
        output.emit_json(r)
        return
    rows = [
        [
            c["name"],
            c["coordinator"],
            len(c["hosts"]),
            c["channel"]["kind"] if c["channel"] else "-",
            c["sync_schedule"],
            c["last_update_sync"] or "never",
        ]
        for c in r
    ]
    output.table(
        None, ["cluster", "coordinator", "hosts", "channel", "schedule", "last sync"], rows
    )


@cluster_app.command("create")
def create(
    name: NameArg,
    hosts: Annotated[str, typer.Option("--hosts", help="The hosts, comma-separated: h1,h2,h3.")],
    coordinator: Annotated[
        str, typer.Option("--coordinator", help="The host updated first (one of --hosts).")
    ],
    memory_mib: Annotated[
        int | None, typer.Option("--memory-mib", help="Each host's memory for VMs, MiB.")
    ] = None,
    vcpus: Annotated[int | None, typer.Option("--vcpus", help="Each host's vCPUs.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Group hosts of this server's driver into a cluster with a coordinator."""
    body = {
        "name": name,
        "hosts": [h.strip() for h in hosts.split(",") if h.strip()],
        "coordinator": coordinator,
        "memory_mib": memory_mib,
        "vcpus": vcpus,
    }
    r = _call("POST", "/clusters", json=body)
    if as_json:
        output.emit_json(r)
        return
    _print_cluster(r)


@cluster_app.command("show")
def show(name: NameArg, as_json: JsonOpt = False) -> None:
    """The cluster: hosts and their state, channel, proxy, schedule, last sync, warnings."""
    r = _call("GET", f"/clusters/{name}")
    if as_json:
        output.emit_json(r)
        return
    _print_cluster(r)


@cluster_app.command("coordinator")
def coordinator(
    name: NameArg,
    host: Annotated[str, typer.Argument(metavar="HOST")],
    as_json: JsonOpt = False,
) -> None:
    """Make HOST the coordinator; the last sync no longer counts until the new one syncs."""
    r = _call("POST", f"/clusters/{name}/coordinator", json={"host": host})
    if as_json:
        output.emit_json(r)
        return
    output.console.print(f"cluster {name}: coordinator is now {host}", highlight=False)
    for w in r["warnings"]:
        output.console.print(f"warning: {w}", highlight=False)


@cluster_app.command("channel")
def channel(
    name: NameArg,
    kind: Annotated[
        str | None,
        typer.Argument(metavar="[early-access|normal|offline]", help="The channel to enable."),
    ] = None,
    url: Annotated[str | None, typer.Option("--url", help="The apt repository's URL.")] = None,
    suite: Annotated[str | None, typer.Option("--suite", help="Its suite, e.g. bookworm.")] = None,
    components: Annotated[
        str | None, typer.Option("--components", help="Comma-separated, e.g. main,contrib.")
    ] = None,
    arch: Annotated[str, typer.Option("--arch", help="The hosts' architecture.")] = "amd64",
    key: Annotated[
        Path | None, typer.Option("--key", help="The OpenPGP public key InRelease is signed with.")
    ] = None,
    disable: Annotated[
        bool, typer.Option("--disable", help="Disable the enabled channel.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Enable the cluster's one update channel, or --disable it."""
    body: dict[str, Any]
    if disable:
        if kind is not None:
            _fail("give a channel to enable or --disable, not both")
        body = {"disable": True}
    else:
        if kind is None:
            _fail("give the channel to enable (early-access, normal or offline) or --disable")
        body = {"kind": kind, "url": url, "suite": suite, "arch": arch}
        if components is not None:
            body["components"] = [c.strip() for c in components.split(",") if c.strip()]
        if key is not None:
            body["key"] = base64.b64encode(_read(key, "key file")).decode()
    r = _call("POST", f"/clusters/{name}/channel", json=body)
    if as_json:
        output.emit_json(r)
        return
    ch = r["channel"]
    if ch is None:
        output.console.print(f"cluster {name}: no channel enabled", highlight=False)
    else:
        fpr = f", key {ch['fingerprint']}" if ch["fingerprint"] else ""
        output.console.print(f"cluster {name}: channel {ch['kind']} enabled{fpr}", highlight=False)


@cluster_app.command("proxy")
def proxy(
    name: NameArg,
    url: Annotated[str | None, typer.Option("--url", help="http://HOST:PORT")] = None,
    username: Annotated[str | None, typer.Option("--username")] = None,
    password_file: Annotated[
        Path | None,
        typer.Option("--password-file", help="A file holding the password (never printed)."),
    ] = None,
    disable: Annotated[bool, typer.Option("--disable", help="Sync without a proxy.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """The HTTP proxy syncs go through, or --disable it."""
    if disable == (url is not None):
        _fail("give --url (with --username and --password-file if it needs them) or --disable")
    body: dict[str, Any] = {"url": url, "username": username}
    if password_file is not None:
        text = _read(password_file, "password file").decode(errors="replace")
        body["password"] = text.rstrip("\r\n")
    r = _call("POST", f"/clusters/{name}/proxy", json=body)
    if as_json:
        output.emit_json(r)
        return
    px = r["proxy"]
    if px is None:
        output.console.print(f"cluster {name}: no proxy", highlight=False)
    else:
        user = f" as {px['username']}" if px["username"] else ""
        output.console.print(f"cluster {name}: syncs go through {px['url']}{user}", highlight=False)


@cluster_app.command("sync")
def sync(name: NameArg, as_json: JsonOpt = False) -> None:
    """Read the channel's signed index, download what the hosts lack to the coordinator's
    cache (sha256 verified) and print the update hash."""
    if as_json:
        output.emit_json(_call("POST", f"/clusters/{name}/sync"))
        return
    r = follow(
        f"/clusters/{name}/sync", {"progress": True}, lambda _: f"sync of cluster {name}", "sync"
    )
    output.console.print(
        f"cluster {name}: {r['packages']} packages available, {r['downloaded']} downloaded"
        f" ({output.size(r['bytes_downloaded']) or '0'}) to {r['cache']}",
        highlight=False,
    )
    if r["offline_hosts"]:
        output.console.print(
            f"warning: not read (offline): {', '.join(r['offline_hosts'])}", highlight=False
        )
    output.console.print(f"update hash: {r['hash']}", highlight=False)


@cluster_app.command("sync-schedule")
def sync_schedule(
    name: NameArg,
    kind: Annotated[str, typer.Argument(metavar="daily|weekly|off")],
    day: Annotated[
        int | None, typer.Option("--day", help="weekly: 0-6, 0 is Sunday (as in cron).")
    ] = None,
    at: Annotated[str | None, typer.Option("--at", help="HH:MM, UTC (default 02:00).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """When the cluster syncs by itself."""
    r = _call("POST", f"/clusters/{name}/sync-schedule", json={"kind": kind, "day": day, "at": at})
    if as_json:
        output.emit_json(r)
        return
    nxt = f"; next {r['next_sync_at']} UTC" if r["next_sync_at"] else ""
    output.console.print(f"cluster {name}: sync {r['sync_schedule']}{nxt}", highlight=False)


@cluster_app.command("updates")
def updates(name: NameArg, as_json: JsonOpt = False) -> None:
    """What the last sync made available: per host what it lacks, per update its guidance."""
    r = _call("GET", f"/clusters/{name}/updates")
    if as_json:
        output.emit_json(r)
        return
    sync_info = r["sync"]
    if r["hash"] is None:
        output.console.print(f"cluster {name}: no sync yet", highlight=False)
        return
    output.console.print(
        f"update hash {r['hash']}  synced {sync_info['at']} by {sync_info['coordinator']}",
        highlight=False,
    )
    if not sync_info["valid"]:
        output.console.print(f"warning: {sync_info['note']}", highlight=False)
    output.table(
        "updates",
        ["update", "packages", "versions", "guidance", "description"],
        [
            [
                u["id"],
                ", ".join(p["package"] for p in u["packages"]),
                ", ".join(u["versions"]),
                _guidance(u["guidance"]),
                u["description"],
            ]
            for u in r["updates"]
        ],
    )
    output.table(
        "hosts",
        ["host", "state", "lacks", "guidance"],
        [
            [
                h["host"],
                h["state"] or "-",
                ", ".join(
                    f"{p['package']} {p['installed']}→{p['available']}" for p in h["packages"]
                )
                or "nothing",
                _guidance(h["guidance"]),
            ]
            for h in r["hosts"]
        ],
    )


@cluster_app.command("update-plan")
def update_plan(
    name: NameArg,
    hash_: Annotated[str, typer.Option("--hash", help="The update hash of the latest sync.")],
    level: Annotated[
        str, typer.Option("--level", help="mandatory, recommended or full.")
    ] = "recommended",
    as_json: JsonOpt = False,
) -> None:
    """What a rolling update would do, coordinator first, and its prechecks by name; exits 1
    when a precheck fails. A plan only: the rolling update itself is not built yet."""
    r = _call("GET", f"/clusters/{name}/update-plan", params={"hash": hash_, "level": level})
    if as_json:
        output.emit_json(r)
    else:
        for p in r["prechecks"]:
            mark = "ok  " if p["ok"] else "FAIL"
            why = f": {p['reason']}" if p["reason"] else ""
            output.console.print(f"{mark} {p['name']}{why}", highlight=False)
        for n in r["not_checked"]:
            output.console.print(f"--   {n}", highlight=False)
        output.table(
            f"plan at level {r['level']} (coordinator first)",
            ["host", "packages", "steps", "left pending"],
            [
                [
                    h["host"] + (" *" if h["coordinator"] else ""),
                    len(h["packages"]),
                    " → ".join(h["steps"]) or "nothing to do",
                    _guidance(h["deferred"]),
                ]
                for h in r["hosts"]
            ],
        )
        output.console.print(r["note"], highlight=False)
    if not r["ready"]:
        raise typer.Exit(1)


@cluster_app.command("guidance-rules")
def guidance_rules(
    name: NameArg,
    rules_file: Annotated[
        Path | None,
        typer.Option(
            "--rules",
            help='A JSON file: [{"packages": "linux-image-*", "category": "full",'
            ' "task": "reboot-host"}, ...], tried before the shipped rules.',
        ),
    ] = None,
    reset: Annotated[bool, typer.Option("--reset", help="Only the shipped rules.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """The guidance rules in force (first match wins); --rules FILE sets the cluster's own."""
    if rules_file is not None and reset:
        _fail("give --rules FILE or --reset, not both")
    if rules_file is None and not reset:
        r = _call("GET", f"/clusters/{name}")
    else:
        items = None
        if rules_file is not None:
            try:
                items = json.loads(_read(rules_file, "rules file"))
            except ValueError as exc:
                _fail(f"rules file {rules_file} is not JSON: {exc}")
        r = _call("POST", f"/clusters/{name}/guidance-rules", json={"rules": items})
    if as_json:
        output.emit_json(r["guidance_rules"])
        return
    output.table(
        f"guidance rules of cluster {name} (first match wins)",
        ["packages", "category", "task", "why", "from"],
        [
            [g["packages"], g["category"], g["task"], g["why"], g["source"]]
            for g in r["guidance_rules"]
        ],
    )


# --- the rolling update (docs/host-updates.md) ------------------------------------------------


def _argv(text: str, what: str) -> list[str]:
    try:
        argv = shlex.split(text)
    except ValueError as exc:
        _fail(f"{what} {text!r}: {exc}")
    if not argv:
        _fail(f"{what} is empty")
    return argv


@cluster_app.command("ha")
def ha(
    name: NameArg,
    disable_cmd: Annotated[
        list[str] | None,
        typer.Option(
            "--disable-cmd",
            help="A command (split as a shell would, run without one) that switches HA or"
            " balancing off before an update; repeat for several.",
        ),
    ] = None,
    enable_cmd: Annotated[
        list[str] | None,
        typer.Option("--enable-cmd", help="The commands that switch them on again at the end."),
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="No commands.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """The cluster's HA/load-balancing switches, run around a rolling update."""
    if clear and (disable_cmd or enable_cmd):
        _fail("give --clear or the commands, not both")
    if not clear and not (disable_cmd or enable_cmd):
        r = _call("GET", f"/clusters/{name}")
    else:
        body: dict[str, Any] = {"disable": None, "enable": None}
        if not clear:
            body = {
                "disable": [_argv(c, "--disable-cmd") for c in disable_cmd or []],
                "enable": [_argv(c, "--enable-cmd") for c in enable_cmd or []],
            }
        r = _call("POST", f"/clusters/{name}/ha", json=body)
    if as_json:
        output.emit_json(r.get("ha"))
        return
    ha_ = r.get("ha")
    if not ha_:
        output.console.print(f"cluster {name}: no HA/balancing commands", highlight=False)
        return
    for which in ("disable", "enable"):
        for argv in ha_[which]:
            output.console.print(f"{which}: {shlex.join(argv)}", highlight=False)


def _print_update(r: dict[str, Any]) -> None:
    p = output.console.print
    why = f" — {r['reason']}" if r["reason"] else ""
    p(
        f"cluster {r['cluster']}: {r['kind']} #{r['id']} {r['status']}{why}"
        f"  (level {r['level']}, max {r['max_hosts']} host(s) at once, HA {r['ha']})",
        highlight=False,
    )
    output.table(
        "hosts (coordinator first)",
        ["host", "state", "steps", "left pending"],
        [
            [
                h["host"] + (" *" if h["coordinator"] else ""),
                h["state"],
                " → ".join((f"[{s}]" if s in h["done_steps"] else s) for s in h["steps"])
                or "nothing to do",
                _guidance(h["deferred"]),
            ]
            for h in r["hosts"]
        ],
    )


def _wait_update(name: str, r: dict[str, Any], as_json: bool) -> dict[str, Any]:
    """Poll until the update is done, failed or paused, showing steps done on stderr."""
    seen = -1
    while r["status"] == "running":
        done = sum(len(h["done_steps"]) for h in r["hosts"])
        total = sum(len(h["steps"]) for h in r["hosts"])
        if done != seen and not as_json:
            output.err_console.print(f"{done}/{total} steps", highlight=False)
            seen = done
        time.sleep(0.5)
        r = _call("GET", f"/clusters/{name}/update")
    return r


def _end_update(r: dict[str, Any], as_json: bool) -> None:
    if as_json:
        output.emit_json(r)
    else:
        _print_update(r)
    if r["status"] in ("paused", "failed"):
        raise typer.Exit(1)


@cluster_app.command("update")
def update(
    name: NameArg,
    hash_: Annotated[str, typer.Option("--hash", help="The update hash of the latest sync.")],
    level: Annotated[str, typer.Option("--level", help="mandatory, recommended or full.")],
    max_hosts: Annotated[
        int, typer.Option("--max-hosts", help="Hosts updated at once, when capacity holds.")
    ] = 1,
    logoff: Annotated[
        str, typer.Option("--logoff", help="For VMs that fit nowhere: wait, notify-force, force.")
    ] = "wait",
    grace: Annotated[str | None, typer.Option("--grace", help="notify-force: e.g. 10m.")] = None,
    message: Annotated[str | None, typer.Option("--message", help="Told to their users.")] = None,
    ha_disabled: Annotated[
        bool,
        typer.Option("--ha-disabled", help="HA and balancing are off already (no commands)."),
    ] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Follow it to its end.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """The durable rolling update: prechecks by name, then the coordinator first, each host
    disabled, evacuated, patched, its tasks, enabled, its VMs back."""
    r = _call(
        "POST",
        f"/clusters/{name}/update",
        json={
            "hash": hash_,
            "level": level,
            "max_hosts": max_hosts,
            "logoff": logoff,
            "grace": grace,
            "message": message,
            "ha_disabled": ha_disabled,
        },
    )
    if wait:
        r = _wait_update(name, r, as_json)
    _end_update(r, as_json)


@cluster_app.command("update-status")
def update_status(
    name: NameArg,
    wait: Annotated[bool, typer.Option("--wait", help="Follow it to its end.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """The latest rolling update of the cluster, each host's steps ([done])."""
    r = _call("GET", f"/clusters/{name}/update")
    if wait:
        r = _wait_update(name, r, as_json)
    _end_update(r, as_json)


@cluster_app.command("update-resume")
def update_resume(
    name: NameArg,
    skip: Annotated[
        str | None, typer.Option("--skip", help="Leave this host out (the one it paused on).")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow it to its end.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Resume a paused rolling update: the step it paused on is tried again."""
    r = _call("POST", f"/clusters/{name}/update/resume", json={"skip": skip})
    if wait:
        r = _wait_update(name, r, as_json)
    _end_update(r, as_json)


@cluster_app.command("pending")
def pending(
    name: NameArg,
    run: Annotated[bool, typer.Option("--run", help="Carry them out now.")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="With --run: follow it.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Guidance rolling updates left undone (above their level), per host and VM."""
    if run:
        r = _call("POST", f"/clusters/{name}/pending/run", json={})
        if wait:
            r = _wait_update(name, r, as_json)
        _end_update(r, as_json)
        return
    r = _call("GET", f"/clusters/{name}/pending")
    if as_json:
        output.emit_json(r)
        return
    rows = []
    for host, g in r["hosts"].items():
        rows.append([host, "host", _guidance(g["host"])])
        rows += [[host, vm, _guidance(vg)] for vm, vg in g["vms"].items()]
    output.table(f"pending guidance of cluster {name}", ["host", "on", "guidance"], rows)


bundle_app = typer.Typer(no_args_is_help=True, help="The offline channel's signed bundles.")
cluster_app.add_typer(bundle_app, name="bundle")


@bundle_app.command("upload")
def bundle_upload(
    name: NameArg,
    file: Annotated[Path, typer.Argument(metavar="FILE", help="A tar of a signed apt repository.")],
    as_json: JsonOpt = False,
) -> None:
    """Sync the offline channel from a bundle: its InRelease verified against the channel key,
    its Packages and .debs against it; prints the update hash."""
    if not file.is_file():
        _fail(f"bundle {file} is not a file")
    try:
        r = Client.from_home().upload(f"/clusters/{name}/bundle", file, {})
    except ClientError as exc:
        _fail(exc.message)
    if as_json:
        output.emit_json(r)
        return
    output.console.print(
        f"cluster {name}: {r['packages']} packages available,"
        f" {r['downloaded']} put in {r['cache']}",
        highlight=False,
    )
    output.console.print(f"update hash: {r['hash']}", highlight=False)
