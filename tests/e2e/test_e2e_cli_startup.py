"""The CLI starts without what it does not need (issue 10): no server-side stack (FastAPI,
SQLAlchemy, pydantic, the settings), no HTTP client for ``--help``. Read from the modules the
real entry point imports (``python -X importtime -m goldfleet …``), so a new top-level import,
or a typer release that brings pydantic back into option parsing, fails here by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SERVER_SIDE = ("fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "pydantic")
SERVER_SIDE += ("pydantic_core", "pydantic_settings", "goldfleet.config", "goldfleet.services")


def imported(home, *args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOLDFLEET_")}
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "goldfleet", *args],
        env={**env, "GOLDFLEET_HOME": str(home)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    modules = {
        line.rsplit("|", 1)[1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    return proc, modules


def heavy(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == n or m.startswith(f"{n}.") for n in names))


def test_help_imports_neither_the_server_side_nor_httpx(fleet):
    proc, modules = imported(fleet.home, "--help")
    assert proc.returncode == 0 and "clone" in proc.stdout
    assert "goldfleet.cli.main" in modules
    assert heavy(modules, (*SERVER_SIDE, "httpx", "httpcore")) == []


@pytest.mark.parametrize(
    "args",
    [
        ("clone", "list", "--json"),
        ("clone", "list", "--json", "--template", "base", "--state", "ready", "--version", "1"),
        ("op", "list", "--json"),
        ("audit", "--limit", "5", "--json"),
    ],
)
def test_commands_import_no_server_side_module(fleet, template, args):
    fleet.create(count=2)
    proc, modules = imported(fleet.home, *args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    json.loads(proc.stdout)
    assert "httpx" in modules
    assert heavy(modules, SERVER_SIDE) == []


def test_usage_errors_still_come_from_typer(fleet):
    """Option values not known without pydantic go to typer's own coercion, unchanged."""
    proc, modules = imported(fleet.home, "op", "show", "seven")
    assert proc.returncode == 2 and "should be a valid integer" in " ".join(proc.stderr.split())
    assert "pydantic" in modules  # typer's coercion, for the value it has to judge


def full_cli(home, *args: str) -> subprocess.CompletedProcess:
    """``goldfleet ARGS`` through typer whatever the arguments (cli/main.py's ``main``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOLDFLEET_")}
    code = "import sys; from goldfleet.cli.main import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env={**env, "GOLDFLEET_HOME": str(home)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    "args",
    [
        ("clone", "list", "--json"),
        ("clone", "list", "--template=base", "--json", "--state", "ready", "--version", "v1"),
        ("clone", "list", "--json", "--host", "nowhere"),  # nothing there: []
        ("clone", "list", "--json", "--template", "nosuch"),  # the API's refusal
        ("clone", "list", "--json", "--state", "asleep"),
    ],
)
def test_plain_clone_list_json_runs_without_typer_and_prints_what_typer_prints(
    fleet, template, args
):
    """cli/fastpath.py: the plain forms of ``clone list --json`` skip typer, and print the
    same bytes, error line and exit code as the full CLI."""
    fleet.create(count=3)
    proc, modules = imported(fleet.home, *args)
    assert heavy(modules, ("typer", "goldfleet.cli.main")) == []
    full = full_cli(fleet.home, *args)
    assert (proc.returncode, proc.stdout) == (full.returncode, full.stdout)
    assert [line for line in proc.stderr.splitlines() if not line.startswith("import time:")] == (
        full.stderr.splitlines()
    )


@pytest.mark.parametrize(
    "args",
    [
        ("clone", "list"),  # a table for people
        ("clone", "list", "--json", "--version", "seven"),  # typer's path says why
        ("clone", "list", "--json", "--template"),  # a value missing: click's usage error
        ("clone", "list", "--json", "--template", "a", "--template", "b"),
        ("clone", "list", "--json", "--help"),
    ],
)
def test_other_forms_of_clone_list_go_through_typer(fleet, template, args):
    proc, modules = imported(fleet.home, *args)
    assert "goldfleet.cli.main" in modules
    full = full_cli(fleet.home, *args)

    def shown(text: str) -> list[str]:  # the usage line names the program: -m goldfleet, -c
        return [line for line in text.splitlines() if "Usage:" not in line]

    assert (proc.returncode, shown(proc.stdout)) == (full.returncode, shown(full.stdout))
