"""``goldfleet host``: the hypervisor hosts and their edge stores (docs/edge.md). Talks to the
API like every command."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from goldfleet.cli import output
from goldfleet.cli.client import Client, ClientError
from goldfleet.cli.common import JsonOpt
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
        ]
        for h in r["hosts"]
    ]
    output.table(None, ["host", "clones", "edge store", "layers", "held", "versions"], rows)


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
    result = _follow(host, {**body, "progress": True})
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


def _follow(host: str, body: dict[str, Any]) -> dict[str, Any]:
    """Run a streamed prefetch with a progress bar of bytes; returns its result."""
    client = Client.from_home()
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=output.err_console,
    )
    try:
        with progress:
            task = None
            for event in client.stream_lines("POST", f"/hosts/{host}/prefetch", json=body):
                kind = event.get("event")
                if kind == "start":
                    label = f"{host} ← {event['template']}:v{event['version']}"
                    task = progress.add_task(label, total=event["missing_bytes"] or 1)
                    if not event["missing_layers"]:
                        progress.update(task, completed=1)
                elif kind == "progress" and task is not None:
                    progress.update(task, completed=event["done"])
                elif kind == "done":
                    if task is not None:
                        progress.update(task, completed=progress.tasks[0].total)
                    return event["result"]
                elif kind == "error":
                    raise ClientError(event["message"], event.get("status", 500))
    except ClientError as exc:
        _fail(exc.message)
    _fail("the server ended the prefetch without a result; see: goldfleet host list")
