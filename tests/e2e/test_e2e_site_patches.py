"""Sites as an admin of Dell Wyse WSM expects them (issue 14, points 1-4), between real
servers: a patch sealed at a site for a template HQ manages waits for HQ's validation; a
version that becomes current at a site is fed to its hosts' edge stores; layer files placed
beforehand are checksummed, not trusted; site status keeps the last successful sync."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sitekit import MiB, cli, layer_path, make_raw, new_version, start_servers

from goldfleet.cli.client import ClientError

pytestmark = pytest.mark.slow


@pytest.fixture
def trio(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any, Any]]:
    """HQ and sites a and b."""
    monkeypatch.setenv("GOLDFLEET_HOME", str(tmp_path / "unused"))
    made = start_servers(tmp_path, {"hq": "hq", "a": "site", "b": "site"})
    yield made[0], made[1], made[2]
    for srv in made:
        srv.stop()


def import_base(hq: Any, tmp_path: Path, size: int = 2 * MiB) -> None:
    image = make_raw(tmp_path / "base.raw", fill={0: os.urandom(size)})
    hq.client().upload(
        "/templates/import", image, {"name": "base", "format": "raw", "temp": [], "data": []}
    )


def join(hq: Any, site: Any, name: str, **options: Any) -> None:
    token = hq.client().post("/sites", {"name": name, **options})["token"]
    site.client().post("/site/join", {"url": hq.url, "token": token})
    hq.client().post(f"/sites/{name}/templates", {"template": "base"})


def versions(srv: Any) -> dict[int, dict]:
    return {v["number"]: v for v in srv.client().get("/templates/base/versions")}


def current(srv: Any) -> int | None:
    return srv.client().get("/templates/base")["current_version"]


def wait_for(check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"not reached within {timeout} s")


# --- 4. the last successful sync beside the last attempt ------------------------------------


def test_site_status_keeps_the_last_successful_sync(trio, tmp_path):
    hq, a, _ = trio
    import_base(hq, tmp_path)
    join(hq, a, "a")
    before = a.client().get("/site")
    assert before["last_success_at"] is None and before["last_sync_at"] is None
    assert a.client().post("/site/sync", {})["versions_added"] == {"base": [1]}
    ok = a.client().get("/site")
    assert ok["last_error"] is None and ok["last_success_at"] == ok["last_sync_at"]

    hq.stop()
    time.sleep(1.1)  # a later second: the attempt's time differs from the success's
    with pytest.raises(ClientError) as info:
        a.client().post("/site/sync", {})
    assert info.value.status == 502
    failed = a.client().get("/site")
    assert "cannot be reached" in failed["last_error"]
    assert failed["last_sync_at"] > ok["last_sync_at"]
    assert failed["last_success_at"] == ok["last_success_at"]
    shown = cli(a.home, "site", "status")
    assert shown.returncode == 0, shown.stderr
    line = next(x for x in shown.stdout.splitlines() if "last successful sync" in x)
    assert ok["last_success_at"][:19].replace("T", " ") in line.replace("T", " ")
    as_json = json.loads(cli(a.home, "site", "status", "--json").stdout)
    assert as_json["last_success_at"] == ok["last_success_at"]
    hq.start()
