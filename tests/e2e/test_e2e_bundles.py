"""A signed bundle carried between two real servers by the CLI, as an admin would."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from goldfleet.services.home import init_home

MiB = 1 << 20


def _root_server_class() -> Any:
    """tests/conftest.py's Server (``import conftest`` here finds tests/e2e/conftest.py)."""
    path = Path(__file__).parents[1] / "conftest.py"
    spec = importlib.util.spec_from_file_location("goldfleet_tests_root_conftest", path)
    assert spec is not None and spec.loader is not None
    module = sys.modules.get(spec.name) or importlib.util.module_from_spec(spec)
    if spec.name not in sys.modules:
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return module.Server


def cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("GOLDFLEET_URL", "GOLDFLEET_TOKEN")}
    return subprocess.run(
        [sys.executable, "-m", "goldfleet", *args],
        env={**env, "GOLDFLEET_HOME": str(home), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def make_raw(path: Path, fill: dict[int, bytes]) -> Path:
    with path.open("wb") as f:
        f.truncate(16 * MiB)
        for offset, data in fill.items():
            f.seek(offset)
            f.write(data)
    return path


@pytest.fixture
def servers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any]]:
    """Two real servers on two homes and two ports (tests/conftest.py's Server helper)."""
    server_class = _root_server_class()
    monkeypatch.setenv("GOLDFLEET_HOME", str(tmp_path / "unused"))
    made = []
    for name in ("a", "b"):
        home = tmp_path / name
        srv = server_class(home=home)
        init_home(home, port=srv.port)
        (home / "server.json").write_text(json.dumps({"url": srv.url}))
        srv.start()
        made.append(srv)
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
