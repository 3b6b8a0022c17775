"""What every CLI sub-app shares: the --json option, a one-line failure, one API request, a
long action followed with a progress bar of bytes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, NoReturn

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from goldfleet.cli import output
from goldfleet.cli.client import Client, ClientError

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def fail(message: str, code: int = 1) -> NoReturn:
    output.err_console.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def call(method: str, path: str, **kwargs: Any) -> Any:
    """One API request; a refusal becomes one line on stderr and exit code 1."""
    try:
        return Client.from_home().request(method, path, **kwargs)
    except ClientError as exc:
        fail(exc.message)


def follow(
    path: str,
    body: dict[str, Any],
    label: Callable[[dict[str, Any]], str],
    what: str,
    *,
    unit: str = "bytes",
    show: bool = True,
) -> dict[str, Any]:
    """POST a long action answered with JSON lines (services/streams.py) and show its progress
    as a bar on stderr (unless not ``show``), of bytes or (``unit="items"``) of items done of
    the total; returns its result, or fails with its error. The lines also keep a long action's
    connection alive past the client's read timeout."""
    counts: list[ProgressColumn] = (
        [DownloadColumn(binary_units=True), TransferSpeedColumn()]
        if unit == "bytes"
        else [MofNCompleteColumn(), TimeRemainingColumn()]
    )
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        *counts,
        TimeElapsedColumn(),
        console=output.err_console,
        disable=not show,
    )
    try:
        with progress:
            task = None
            for event in Client.from_home().stream_lines("POST", path, json=body):
                kind = event.get("event")
                if kind == "start":
                    task = progress.add_task(label(event), total=event.get("total") or None)
                elif kind == "progress" and task is not None:
                    progress.update(task, completed=event["done"], total=event["total"] or None)
                elif kind == "done":
                    if task is not None:
                        total = progress.tasks[0].total or 0
                        progress.update(task, completed=total, total=total)
                    return event["result"]
                elif kind == "error":
                    raise ClientError(event["message"], event.get("status", 500))
    except ClientError as exc:
        fail(exc.message)
    fail(f"the server ended the {what} without a result")
