"""``goldfleet host``: the hypervisor hosts and their edge stores (docs/edge.md). Talks to the
API like every command."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from goldfleet.cli import output
from goldfleet.cli.common import JsonOpt, follow
from goldfleet.cli.common import call as _call
from goldfleet.cli.common import fail as _fail
from goldfleet.domain.names import parse_version_ref
from goldfleet.errors import InvalidInput

host_app = typer.Typer(
    no_args_is_help=True, help="Hypervisor hosts and their edge stores (local copies of layers)."
)


def _versions(h: dict[str, Any]) -> str:
    parts = []
    for v in h["versions"]:
        label = f"{v['template']}:v{v['version']}"
        if v["complete"]:
            parts.append(f"{label} complete")
        else:
            parts.append(
                f"{label} lacks {v['missing_layers']} ({output.size(v['missing_bytes']) or '0'})"
            )
    return ", ".join(parts) or "-"


@host_app.command("list")
def list_(as_json: JsonOpt = False) -> None:
    """Every host: its clones and, with edge stores on, what its edge store holds."""
    r = _call("GET", "/hosts")
    if as_json:
        output.emit_json(r)
        return
    if not r["edge_stores"]:
        output.table(None, ["host", "clones"], [[h["name"], h["clones"]] for h in r["hosts"]])
        output.console.print("edge stores are off: set edge_root to turn them on (docs/edge.md)")
        return
    rows = [
        [
            h["name"],
            h["clones"],
            h["edge_store"] or "-",
            h["layers"],
            output.size(h["bytes"]) or "0",
            h["note"] or _versions(h),
            _feeds(h),
        ]
        for h in r["hosts"]
    ]
    output.table(None, ["host", "clones", "edge store", "layers", "held", "versions", "feed"], rows)


def _feeds(h: dict[str, Any]) -> str:
    """The background copies of current versions into the host: state and bytes."""
    shown = []
    for f in h.get("feeds", []):
        text = f"{f['template']}:v{f['version']} {f['state']}"
        if f["state"] in ("queued", "copying"):
            text += f" {output.size(f['done']) or '0'}/{output.size(f['total']) or '0'}"
        elif f["state"] == "failed":
            text += f": {f['error']}"
        shown.append(text)
    return ", ".join(shown) or "-"


@host_app.command("prefetch")
def prefetch(
    host: Annotated[str, typer.Argument(metavar="HOST")],
    ref: Annotated[str, typer.Argument(metavar="TEMPLATE[:VERSION]")],
    as_json: JsonOpt = False,
) -> None:
    """Copy the layers of TEMPLATE[:VERSION] (default: current) that HOST's edge store lacks."""
    try:
        template, number = parse_version_ref(ref)
    except InvalidInput as exc:
        _fail(exc.message)
    body = {"template": template, "version": number}
    if as_json:
        output.emit_json(_call("POST", f"/hosts/{host}/prefetch", json=body))
        return
    result = follow(
        f"/hosts/{host}/prefetch",
        {**body, "progress": True},
        lambda start: f"{host} ← {start['template']}:v{start['version']}",
        "prefetch",
    )
    label = f"{result['template']}:v{result['version']}"
    if result["copied"]:
        output.console.print(
            f"host {host}: {label} complete; copied {len(result['copied'])} of"
            f" {result['layers']} layers ({output.size(result['bytes_copied'])})",
            highlight=False,
        )
    else:
        output.console.print(
            f"host {host}: {label} was already complete; nothing copied", highlight=False
        )


@host_app.command("prune")
def prune(
    host: Annotated[str | None, typer.Argument(metavar="HOST", help="One host.")] = None,
    all_hosts: Annotated[
        bool, typer.Option("--all", help="Every host; those not reachable are skipped.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be removed; remove nothing.")
    ] = False,
    keep_current: Annotated[
        bool,
        typer.Option(
            "--keep-current/--no-keep-current",
            help="Keep every template's current version, so the next clone needs no copy.",
        ),
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """Remove from edge stores the layers no clone placed there needs any more."""
    if (host is None) == (not all_hosts):
        _fail("give a HOST or --all (not both); see: goldfleet host list")
    path = "/hosts/prune" if host is None else f"/hosts/{host}/prune"
    r = _call("POST", path, json={"keep_current": keep_current, "dry_run": dry_run})
    if as_json:
        output.emit_json(r)
        return
    rows = [
        [
            h["host"],
            len(h["removed"]),
            output.size(h["bytes_freed"]) or "0",
            h["kept"],
            h["note"] or "",
        ]
        for h in r["hosts"]
    ]
    removed = "to remove" if dry_run else "removed"
    freed = "would free" if dry_run else "freed"
    output.table(None, ["host", f"layers {removed}", freed, "layers kept", "note"], rows)
    total = sum(h["bytes_freed"] for h in r["hosts"])
    if dry_run:
        output.console.print(
            f"dry run: nothing was removed; a prune would free {output.size(total) or '0'}",
            highlight=False,
        )
    else:
        output.console.print(f"freed {output.size(total) or '0'}", highlight=False)


@host_app.command("show")
def show(host: Annotated[str, typer.Argument(metavar="HOST")], as_json: JsonOpt = False) -> None:
    """The host's cluster and update state: latest synced updates applied, last software
    update and its hash, pending guidance by category (docs/hosts.md)."""
    r = _call("GET", f"/hosts/{host}")
    if as_json:
        output.emit_json(r)
        return
    p = output.console.print
    if r["cluster"] is None:
        p(f"host {host}: {r['note']}", highlight=False)
        return
    st = r["state"]
    applied = st["latest_synced_updates_applied"]
    pending = "; ".join(f"{k}: {', '.join(v)}" for k, v in st["pending"].items()) or "none"
    p(f"host {host}  cluster {r['cluster']}" + ("  (coordinator)" if st["coordinator"] else ""))
    p(f"state: {st['state']}  clones: {st['clones']}  booted kernel: {st['booted_kernel'] or '-'}")
    p(
        "latest_synced_updates_applied: "
        + ("-" if applied is None else ("yes" if applied else "no")),
        highlight=False,
    )
    p(f"last_software_update: {st['last_software_update'] or 'never'}", highlight=False)
    p(f"last_update_hash: {st['last_update_hash'] or '-'}", highlight=False)
    p(f"pending guidance: {pending}", highlight=False)
