"""The CLI's entry point, and the commands scripts run most, without typer (issue 10).

Importing typer and building its click commands is most of what a command costs beyond the
HTTP client itself. ``goldfleet clone list --json`` — what scripts and monitoring run, often —
needs neither: when its arguments are plain (only ``--json`` and the list's filters, each at
most once, every value given and not starting with ``-``), it is run here, with the same
request, the same output character for character and the same one-line error and exit code
as through typer. Anything else — ``--help``, a typo, an unusual spelling of an option, a
value click would judge, a table for people — goes to the full CLI (cli/main.py), unchanged.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

LIST_FILTERS = ("--template", "--state", "--host", "--version")


def clone_list_params(args: list[str]) -> dict[str, Any] | None:
    """The API query of ``clone list ARGS`` when ARGS are plain and ask for ``--json``; None
    when typer must judge them (see the module's docstring)."""
    from goldfleet.domain.names import parse_version
    from goldfleet.errors import GoldfleetError

    given: dict[str, str] = {}
    as_json = False
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if arg == "--json" and not as_json:
            as_json = True
            continue
        name, eq, value = arg.partition("=")
        if name not in LIST_FILTERS or name in given:
            return None
        if not eq:
            if not rest:
                return None
            value = rest.pop(0)
        if not value or value.startswith("-"):
            return None
        given[name] = value
    if not as_json:
        return None
    from goldfleet.cli.client import CLONE_PAGE

    params: dict[str, Any] = {"limit": CLONE_PAGE}
    for key in ("template", "state", "host"):
        if f"--{key}" in given:
            params[key] = given[f"--{key}"]
    if "--version" in given:
        try:
            params["version"] = parse_version(given["--version"])
        except GoldfleetError:
            return None  # typer's path says why, as ever
    return params


def run(argv: list[str]) -> bool:
    """Run ``goldfleet ARGV`` here if it is one of the plain forms; False: not handled."""
    if argv[:2] != ["clone", "list"]:
        return False
    params = clone_list_params(argv[2:])
    if params is None:
        return False
    from goldfleet.cli import output
    from goldfleet.cli.client import Client, ClientError

    try:
        parts = [output.list_items(page) for page in _ahead(Client.from_home(), params) if page]
    except ClientError as exc:
        output.err_console.print(f"[red]error:[/red] {exc.message}", highlight=False)
        sys.exit(1)
    # written once every page is in: a failure half way prints nothing but the error, as ever
    sys.stdout.write("[\n" + ",\n".join(parts) + "\n]\n" if parts else "[]\n")
    return True


def _ahead(client: Any, params: dict[str, Any]) -> Iterator[list[Any]]:
    """The pages of GET /clones, each asked for while the one before is being formatted (a
    thread fetches, this one formats: over 10,000 clones they overlap)."""
    import threading
    from queue import SimpleQueue

    pages: SimpleQueue[tuple[list[Any] | None, BaseException | None]] = SimpleQueue()

    def fetch() -> None:
        try:
            for page in client.iter_pages("/clones", params):
                pages.put((page, None))
            pages.put((None, None))
        except BaseException as exc:  # handed to the formatting thread
            pages.put((None, exc))

    threading.Thread(target=fetch, name="goldfleet-pages", daemon=True).start()
    while True:
        page, error = pages.get()
        if error is not None:
            raise error
        if page is None:
            return
        yield page


def main() -> None:
    """``goldfleet``: a plain form of a frequent command here, everything else through typer
    (the same last-resort handling as cli/main.py's ``main``)."""
    try:
        handled = run(sys.argv[1:])
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # a bug: one line for the user, the details for a report
        from goldfleet.cli import output
        from goldfleet.errors import GoldfleetError

        if isinstance(exc, GoldfleetError):
            output.err_console.print(f"[red]error:[/red] {exc.message}", highlight=False)
            sys.exit(1)
        output.err_console.print(
            f"[red]internal error:[/red] {type(exc).__name__}: {exc}", highlight=False
        )
        sys.exit(70)
    if not handled:
        from goldfleet.cli.main import main as full

        full()
