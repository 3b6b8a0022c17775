"""A signed bundle carried between two real servers by the CLI, as an admin would."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sitekit import MiB, cli, layer_path, make_raw, start_servers


@pytest.fixture
def servers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any]]:
    """Two real servers on two homes and two ports (tests/conftest.py's Server helper)."""
    monkeypatch.setenv("GOLDFLEET_HOME", str(tmp_path / "unused"))
    made = start_servers(tmp_path, {"a": "hq", "b": "hq"})
    yield made[0], made[1]
    for srv in made:
        srv.stop()


def test_bundle_from_server_a_imports_on_server_b(servers, tmp_path):
    a, b = servers
    image = make_raw(tmp_path / "base.raw", fill={0: b"\x11" * 4096})
    a.client().upload("/templates/import", image, {"name": "base", "format": "raw"})
    bundle = tmp_path / "base.bundle"

    out = cli(a.home, "bundle", "export", "base", "-o", str(bundle), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["bytes"] == bundle.stat().st_size > 0

    refused = cli(b.home, "bundle", "import", str(bundle))
    assert refused.returncode == 1 and "untrusted key" in refused.stderr
    assert b.client().get("/templates") == []

    key = json.loads(cli(a.home, "keys", "show", "--json").stdout)["own"]["public_key"]
    trusted = cli(b.home, "keys", "trust", "hq", key, "--json")
    assert trusted.returncode == 0, trusted.stderr
    done = cli(b.home, "bundle", "import", str(bundle), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["versions_added"] == [1]

    theirs = a.client().get("/templates/base/versions")
    ours = b.client().get("/templates/base/versions")
    assert [v["top_layer"] for v in ours] == [v["top_layer"] for v in theirs]
    shown = json.loads(cli(b.home, "keys", "show", "--json").stdout)
    assert [k["name"] for k in shown["trusted"]] == ["hq"]
    assert cli(b.home, "keys", "untrust", "hq").returncode == 0


def test_an_export_cut_short_by_the_server_fails_and_leaves_no_file(servers, tmp_path):
    a, _b = servers
    image = tmp_path / "base.raw"
    image.write_bytes(os.urandom(4 * MiB))
    a.client().upload("/templates/import", image, {"name": "base", "format": "raw"})
    top = a.client().get("/templates/base/versions")[0]["top_layer"]
    layer = layer_path(a, top)
    layer.chmod(0o644)  # sealed layers are 0444: a disk fault, simulated
    with layer.open("r+b") as f:
        f.truncate(layer.stat().st_size // 2)
    bundle = tmp_path / "base.bundle"

    out = cli(a.home, "bundle", "export", "base", "-o", str(bundle))
    assert out.returncode == 1, out.stdout
    assert "cut off" in out.stderr and "not written" in out.stderr, out.stderr
    assert list(tmp_path.glob("*.bundle*")) == []
