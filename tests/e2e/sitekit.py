"""Helpers of the site tests: HQ and sites as real servers, each on its own home and port."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from goldfleet.home import init_home

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


def make_raw(path: Path, fill: dict[int, bytes]) -> Path:
    with path.open("wb") as f:
        f.truncate(16 * MiB)
        for offset, data in fill.items():
            f.seek(offset)
            f.write(data)
    return path


def start_servers(
    tmp_path: Path, roles: dict[str, str], env: dict[str, str] | None = None
) -> list[Any]:
    """One started server per name (role hq or site), each on its own home and port; ``env``
    goes to every site."""
    server_class = _root_server_class()
    made = []
    for name, role in roles.items():
        home = tmp_path / name
        extra = {"GOLDFLEET_ROLE": role, **((env or {}) if role == "site" else {})}
        srv = server_class(home=home, env=extra)
        init_home(home, port=srv.port)
        (home / "server.json").write_text(json.dumps({"url": srv.url}))
        srv.start()
        made.append(srv)
    return made


@contextlib.contextmanager
def running(
    tmp_path: Path, roles: dict[str, str], env: dict[str, str] | None = None
) -> Iterator[list[Any]]:
    """:func:`start_servers`, stopped on leaving."""
    made = start_servers(tmp_path, roles, env)
    try:
        yield made
    finally:
        for srv in made:
            srv.stop()


def cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    """``goldfleet ARGS`` as an admin on the server of ``home`` would run it."""
    env = {k: v for k, v in os.environ.items() if k not in ("GOLDFLEET_URL", "GOLDFLEET_TOKEN")}
    return subprocess.run(
        [sys.executable, "-m", "goldfleet", *args],
        env={**env, "GOLDFLEET_HOME": str(home), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def layer_path(srv: Any, digest: str) -> Path:
    return srv.home / "store" / "layers" / f"sha256-{digest.removeprefix('sha256:')}.qcow2"


def new_version(srv: Any, qemu: Any, offset: int, data: bytes, template: str = "base") -> dict:
    """Patch ``template`` at ``srv`` in maintenance mode: ``data`` at ``offset``, sealed."""
    c = srv.client()
    t = c.post(f"/templates/{template}/maintenance/enter")
    scratch = srv.home.parent / f"scratch-{srv.port}-{offset}"
    qemu.write(Path(t["overlay_path"]), offset, data, scratch=scratch)
    return c.post(f"/templates/{template}/maintenance/exit", {"recreate": "none"})


def setup_site(hq: Any, site: Any, url: str, tmp_path: Path) -> str:
    image = make_raw(tmp_path / "base.raw", fill={0: os.urandom(4 * MiB)})
    hq.client().upload(
        "/templates/import", image, {"name": "base", "format": "raw", "temp": [], "data": []}
    )
    token = hq.client().post("/sites", {"name": "branch"})["token"]
    hq.client().post("/sites/branch/templates", {"template": "base"})
    joined = site.client().post("/site/join", {"url": url, "token": token})
    assert joined == {"upstream_url": url, "site": "branch"}
    return token
