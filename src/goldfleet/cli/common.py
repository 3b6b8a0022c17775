"""What every CLI sub-app shares: the --json option, a one-line failure, one API request."""

from __future__ import annotations

from typing import Annotated, Any, NoReturn

import typer

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
