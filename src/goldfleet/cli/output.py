"""Printing for the CLI: Rich tables for people, ``--json`` for scripts."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from goldfleet.domain.sizes import format_size

# piped output (logs, less, CI) gets wide lines instead of folded cells
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, soft_wrap=True)  # one error, one line


def emit_json(data: Any) -> None:
    sys.stdout.write(dumps(data) + "\n")


_SCALARS = frozenset((str, int, float, bool, type(None)))


def _flat_rows(data: Any) -> bool:
    """A non-empty list of non-empty objects whose keys are strings and values plain scalars."""
    if type(data) is not list or not data:
        return False
    keys: set[type] = set()
    values: set[type] = set()
    for row in data:
        if type(row) is not dict or not row:
            return False
        keys.update(map(type, row))
        values.update(map(type, row.values()))
    return keys == {str} and values <= _SCALARS


def dumps(data: Any) -> str:
    """``json.dumps(data, indent=2, default=str)``, character for character.

    Python's JSON encoder in C does not indent, and the one in Python takes most of the time of
    ``clone list --json`` over a large fleet. For a list of flat objects (clones, operations,
    tokens…), the C encoder writes the line breaks of the objects' own separators, and the few
    around the objects are put right afterwards: a raw line break is never inside a JSON string
    (it is written ``\\n``), and no value of a flat object ends in ``}``, so ``},<break>    {``
    is only ever between two objects. Anything else goes to the Python encoder."""
    if not _flat_rows(data):
        return json.dumps(data, indent=2, default=str)
    return "[\n" + list_items(data) + "\n]"


def list_items(items: list[Any]) -> str:
    """The items of a non-empty list as :func:`dumps` writes them inside ``[…]``: each at an
    indent of 2, joined by ``,<break>``. So a long list can be written from its parts: "[",
    a break, the parts joined by ``,<break>``, a break, "]" (an empty list is ``[]``)."""
    if not _flat_rows(items):
        return ",\n".join(
            "  " + json.dumps(i, indent=2, default=str).replace("\n", "\n  ") for i in items
        )
    inner = json.dumps(items, separators=(",\n    ", ": "))  # [{"k": v,\n    "k": v},\n    {…}]
    return "  {\n    " + inner[2:-2].replace("},\n    {", "\n  },\n  {\n    ") + "\n  }"


def table(title: str | None, columns: list[str], rows: list[list[Any]]) -> None:
    t = Table(title=title, show_lines=False)
    for i, c in enumerate(columns):
        # names identify things: never cut them
        t.add_column(c, no_wrap=i == 0)
    for r in rows:
        # plain text, not markup: an error's "[Errno 28]" or a path in brackets is shown as is
        t.add_row(*(Text("" if v is None else str(v)) for v in r))
    console.print(t)


def size(value: int | None) -> str:
    return "" if value is None else format_size(value)


def sizes(values: list[int]) -> str:
    return ", ".join(format_size(v) for v in values) or "-"


def template_rows(items: list[dict]) -> None:
    table(
        None,
        ["name", "status", "kind", "current", "clones", "behind", "system", "temp", "data"],
        [
            [
                t["name"],
                t["status"],
                t["kind"],
                f"v{t['current_version']}" if t["current_version"] else "-",
                t["clones"],
                t["clones_behind"],
                size(t["system_size"]),
                sizes(t["temp"]),
                sizes(t["data"]),
            ]
            for t in items
        ],
    )


def clone_rows(items: list[dict]) -> None:
    table(
        None,
        ["name", "template", "version", "kind", "status", "power", "note"],
        [
            [
                c["name"],
                c["template"],
                f"v{c['version']}",
                c["kind"],
                c["status"],
                c["power"],
                c.get("error") or "",
            ]
            for c in items
        ],
    )


def operation_rows(items: list[dict]) -> None:
    table(
        None,
        ["id", "kind", "target", "status", "done", "failed", "total", "started", "error"],
        [
            [
                o["id"],
                o["kind"],
                o["target"],
                o["status"],
                o["done"],
                o["failed"],
                o["total"],
                str(o["created_at"])[5:16].replace("T", " "),
                o.get("error") or "",
            ]
            for o in items
        ],
    )
