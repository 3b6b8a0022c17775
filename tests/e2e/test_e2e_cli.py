"""The real CLI (``python -m goldfleet …``) against a real server, found through the home."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

MiB = 1 << 20


def _error(proc) -> str:
    """A failed command: non-zero, nothing on stdout, ``error: …`` on stderr, no traceback."""
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert proc.stdout == ""
    assert proc.stderr.startswith("error: ")
    return " ".join(proc.stderr.split())


def _one_line_error(proc) -> str:
    _error(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_cli_json_list_create_show(fleet, template):
    templates = fleet.cli_json("template", "list")
    assert [t["name"] for t in templates] == ["base"]
    assert templates[0]["current_version"] == 1

    created = fleet.cli_json("clone", "create", "base", "--count", "3")
    assert created["clones"] == ["base-001", "base-002", "base-003"]
    assert created["operation"]["status"] == "done"
    assert created["operation"]["done"] == 3

    shown = fleet.cli_json("clone", "show", "base-002")
    assert (shown["name"], shown["template"], shown["status"]) == ("base-002", "base", "ready")
    vols = shown["volumes"]
    assert [(v["role"], v["version"]) for v in vols] == [
        ("system", "v1"),
        ("temp", None),
        ("data", None),
    ]
    for v in vols:
        assert Path(v["path"]).is_file()
    assert fleet.shows(Path(vols[0]["path"]), MiB, 0x11)
    # the CLI and the API tell the same story
    assert shown["volumes"] == fleet.show("base-002")["volumes"]
    listed = fleet.cli_json("clone", "list", "--template", "base")
    assert [c["name"] for c in listed] == created["clones"]
    versions = fleet.cli_json("template", "versions", "base")
    assert [v["name"] for v in versions] == ["v1"] and versions[0]["clones"] == 3


def test_cli_human_output_is_a_table(fleet, template):
    proc = fleet.cli("template", "list")
    assert proc.returncode == 0, proc.stderr
    assert "base" in proc.stdout and "ready" in proc.stdout
    with pytest.raises(json.JSONDecodeError):
        json.loads(proc.stdout)


def test_cli_import_and_maintenance_round_trip(fleet, tmp_path):
    image = tmp_path / "disk.raw"
    with image.open("wb") as f:
        f.truncate(16 * MiB)
        f.seek(MiB)
        f.write(b"\x11" * 4096)
    made = fleet.cli_json(
        "template",
        "import",
        "desk",
        str(image),
        "--format",
        "raw",
        "--temp",
        "32M",
        "--data",
        "64M",
    )
    assert (made["name"], made["temp"], made["data"]) == ("desk", [32 * MiB], [64 * MiB])
    fleet.cli_json("clone", "create", "desk", "--count", "2")

    entered = fleet.cli_json("template", "maintenance", "enter", "desk")
    overlay = Path(entered["overlay_path"])
    assert entered["status"] == "maintenance" and overlay.is_file()
    fleet.pattern(overlay, MiB, 0x22)
    status = fleet.cli_json("template", "maintenance", "status", "desk")
    assert status["status"] == "maintenance" and status["overlay_path"] == str(overlay)

    out = fleet.cli_json("template", "maintenance", "exit", "desk", "--recreate", "linked")
    assert out["version"] == 2
    assert out["operation"]["status"] == "done" and out["operation"]["done"] == 2
    assert out["clones_behind"] == 0
    assert not overlay.exists()
    for name in ("desk-001", "desk-002"):
        shown = fleet.cli_json("clone", "show", name)
        assert shown["version"] == 2
        assert fleet.shows(Path(shown["volumes"][0]["path"]), MiB, 0x22)


def test_cli_error_is_one_line_without_traceback(fleet, template):
    proc = fleet.cli("clone", "create", "nosuch", "--json")
    line = _one_line_error(proc)
    assert "nosuch" in line and "does not exist" in line
    assert proc.stdout == ""
    assert fleet.client.get("/clones") == []

    line = _one_line_error(fleet.cli("template", "show", "nosuch"))
    assert "nosuch" in line
    assert "UPPER" in _error(fleet.cli("template", "show", "UPPER"))


def test_cli_without_a_server_says_so_in_one_line(fleet):
    fleet.server.stop()
    proc = fleet.cli("template", "list", env={"GOLDFLEET_URL": "http://127.0.0.1:9"})
    assert "no goldfleet server answers" in _error(proc)


def test_cli_with_a_wrong_token_says_so_in_one_line(fleet, template):
    proc = fleet.cli("clone", "create", "base", "--count", "2", env={"GOLDFLEET_TOKEN": "gf_x"})
    assert "token" in _error(proc)
    assert fleet.client.get("/clones") == []


def test_cli_long_errors_stay_on_one_line(fleet, template):
    name = "windows-11-enterprise-23h2-finance"
    line = _one_line_error(fleet.cli("clone", "create", name, "--json"))
    assert name in line and "goldfleet template list" in line
    assert "UPPER" in _one_line_error(fleet.cli("template", "show", "UPPER"))
    fleet.server.stop()
    proc = fleet.cli("template", "list", env={"GOLDFLEET_URL": "http://127.0.0.1:9"})
    assert "goldfleet serve" in _one_line_error(proc)
