"""A full disk, on a small tmpfs, through real servers, as an admin meets it (issue 15, part 3).

A bulk create that fills the disk must end paused with the reason (never left ``running`` with
items held by a live server), the CLI must end with that reason instead of hanging, the server
must keep serving reads and say once that it cannot write its heartbeat, and once space is back
``op resume`` must finish the work without a restart. Large work (an import, full clones) is
refused up front with the space it needs and the space there is.

Mounting a tmpfs needs root (CI runs as root); elsewhere these tests are skipped with the reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sitekit import _root_server_class

from goldfleet.cli.client import ClientError

pytestmark = pytest.mark.slow

MiB = 1 << 20


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[str, str], Path]]:
    """``small_disk(name, size)``: a fresh tmpfs of ``size`` mounted at tmp_path/name,
    unmounted at the end (after the servers of the test stopped)."""
    mounted: list[Path] = []

    def mount(name: str, size: str) -> Path:
        path = tmp_path / name
        path.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"mounting a small tmpfs needs root (CI runs as root): {done.stderr}")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Any]]:
    """``start(home, **env)``: a real ``goldfleet serve`` on ``home``, stopped at the end."""
    monkeypatch.setenv("GOLDFLEET_HOME", str(tmp_path / "unused"))
    made: list[Any] = []

    def run(home: Path, **env: str) -> Any:
        srv = _root_server_class()(home=home, env=env)  # tests/conftest.py's Server
        srv.start()
        made.append(srv)
        return srv

    yield run
    for srv in made:
        srv.stop()


def cli(home: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    """``goldfleet ARGS`` as an admin runs it; a CLI that hangs fails the test."""
    env = {k: v for k, v in os.environ.items() if k not in ("GOLDFLEET_URL", "GOLDFLEET_TOKEN")}
    return subprocess.run(
        [sys.executable, "-m", "goldfleet", *args],
        env={**env, "GOLDFLEET_HOME": str(home), "COLUMNS": "400"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def raw_image(path: Path, size: int, data: int = 0) -> Path:
    """A raw disk image of ``size`` bytes whose first ``data`` bytes are random (incompressible,
    so the imported layer holds them all)."""
    with path.open("wb") as f:
        f.truncate(size)
        f.write(os.urandom(data) if data else b"\x11" * 4096)
    return path


def ballast(path: Path, size: int) -> Path:
    """A file that takes ``size`` bytes of the disk, removed later to give the space back."""
    with path.open("wb") as f:
        for _ in range(size // (64 << 10)):
            f.write(b"\xa5" * (64 << 10))
    return path


def leave(path: Path, room: int) -> Path:
    """A ballast file that leaves about ``room`` bytes free on its disk (clones write their
    volumes sparsely, a few pages each: a fixed ballast would leave room for hundreds)."""
    st = os.statvfs(path.parent)
    return ballast(path, max(st.f_bavail * st.f_frsize - room, 0))


def fill(path: Path) -> Path:
    """Write ``path`` until its disk is full (to the last byte)."""
    with path.open("wb") as f:
        try:
            while True:
                f.write(b"\xa5" * (64 << 10))
                f.flush()
        except OSError:
            pass
    return path


def import_base(srv: Any, tmp_path: Path) -> None:
    """Template ``base``: a small linked template (each clone holds about 0.6 MiB)."""
    image = raw_image(tmp_path / "base.raw", 16 * MiB)
    srv.client().upload(
        "/templates/import",
        image,
        {"name": "base", "format": "raw", "temp": ["64M"], "data": ["64M"]},
    )


def until(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def item_states(srv: Any, op_id: int) -> dict[str, int]:
    return dict(
        srv.rows(
            "SELECT state, count(*) FROM operation_items WHERE operation_id = ? GROUP BY state",
            op_id,
        )
    )


def assert_finished_after_resume(srv: Any, op_id: int, count: int) -> None:
    """``op resume`` finishes every clone, on the same server process (no restart)."""
    pid = srv.proc.pid
    resumed = until(lambda: cli(srv.home, "op", "resume", str(op_id)), "op resume to run")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    op = until(
        lambda: (o := srv.client().get(f"/operations/{op_id}"))["status"] != "running" and o,
        f"operation {op_id} to finish",
    )
    assert (op["status"], op["done"], op["failed"], op["total"]) == ("done", count, 0, count), op
    assert srv.proc.pid == pid and srv.proc.poll() is None
    clones = srv.client().get("/clones")
    assert len(clones) == count and {c["status"] for c in clones} == {"ready"}
    assert {c["error"] for c in clones} == {None}
    store = Path(srv.env.get("GOLDFLEET_STORE_DIR") or srv.home / "store")
    folders = [p for p in (store / "clones").iterdir() if p.is_dir()]
    assert len(folders) == count
    for folder in folders:
        assert sorted(p.name for p in folder.iterdir()) == [
            "data0.qcow2",
            "system.qcow2",
            "temp0.qcow2",
        ]


# --- a full disk in the middle of a bulk create -----------------------------------------------


def test_a_full_store_pauses_the_create_with_the_reason_and_resume_finishes_it(
    small_disk, start, tmp_path
):
    """The store alone is on the small disk (the database is not): the clones that met the
    full disk go back to the queue and the operation pauses saying so."""
    store = small_disk("store", "24m")
    srv = start(tmp_path / "home", GOLDFLEET_STORE_DIR=str(store))
    import_base(srv, tmp_path)
    room = leave(store / "ballast", MiB)

    created = cli(srv.home, "clone", "create", "base", "--count", "60")
    assert created.returncode == 1, created.stdout + created.stderr
    assert f"paused: disk full at {store}: " in created.stdout, created.stdout

    (listed,) = srv.client().get("/operations")
    op = srv.client().get(f"/operations/{listed['id']}")
    assert op["status"] == "paused" and op["running"] == 0, op
    reason = op["paused_reason"]
    assert reason.startswith(f"disk full at {store}: ") and " free" in reason, reason
    assert f"goldfleet op resume {op['id']}" in reason
    assert op["error"].startswith(f"disk full at {store}: "), op
    assert 0 < op["done"] < 60 and op["failed"] == 0, op
    assert "running" not in item_states(srv, op["id"])
    assert any(w["reason"].startswith("disk full at") for w in op["waiting"]), op["waiting"]
    shown = cli(srv.home, "op", "show", str(op["id"]))
    assert f"paused: disk full at {store}: " in shown.stdout, shown.stdout

    room.unlink()
    assert_finished_after_resume(srv, op["id"], 60)


def test_a_full_home_pauses_the_create_and_resume_finishes_it(small_disk, start, tmp_path):
    """The issue's case: database and store share one small disk, which the clones fill. The
    outcomes may not be recordable either: the clones in work must not stay ``running`` under
    this (live) server."""
    home = small_disk("home", "30m")
    srv = start(home)
    import_base(srv, tmp_path)
    room = leave(home / "ballast", 3 * MiB // 2)

    created = cli(srv.home, "clone", "create", "base", "--count", "80")
    assert created.returncode == 1, created.stdout + created.stderr
    assert f"paused: disk full at {home}" in created.stdout, created.stdout
    (op,) = srv.client().get("/operations")
    assert op["status"] == "paused" and op["running"] == 0, op
    assert op["paused_reason"].startswith(f"disk full at {home}"), op

    room.unlink()
    assert_finished_after_resume(srv, op["id"], 80)


def test_a_database_that_cannot_be_written_pauses_in_memory_and_the_log_says_it_once(
    small_disk, start, tmp_path
):
    """The disk fills to the last byte while a batch is in work (each VM's definition takes
    1.5 s on the sim driver): neither the outcomes nor the pause can be written. The operation
    is shown paused all the same, reads are served, the heartbeat's failure is said once, and
    once space is back the pause is written by itself and op resume finishes the work."""
    home = small_disk("home", "30m")
    srv = start(
        home,
        GOLDFLEET_LEASE_SECONDS="2",  # a heartbeat every 0.5 s
        GOLDFLEET_BATCH_SIZE="4",
        GOLDFLEET_SIM_PLAN='{"latency_ms": {"define": 1500}}',
    )
    import_base(srv, tmp_path)
    client = srv.client()
    op = client.post("/clones", {"template": "base", "count": 8})["operation"]
    until(lambda: item_states(srv, op["id"]).get("running"), "clones in work")
    filler = fill(home / "filler")

    watched = cli(srv.home, "op", "watch", str(op["id"]))  # ends; does not hang
    assert watched.returncode == 1, watched.stdout + watched.stderr
    assert f"paused: disk full at {home}" in watched.stdout, watched.stdout
    assert "not yet recorded: the database cannot be written" in watched.stdout
    shown = client.get(f"/operations/{op['id']}")
    assert (shown["status"], shown["running"]) == ("paused", 0), shown
    assert item_states(srv, op["id"]).get("running")  # the database still says so

    time.sleep(3)  # the disk stays full: heartbeats fail, reads are served
    assert [t["name"] for t in client.get("/templates")] == ["base"]
    assert len(client.get("/clones")) == 8
    refused = cli(srv.home, "op", "resume", str(op["id"]))
    assert refused.returncode == 1 and "cannot be resumed yet: disk full at" in refused.stderr

    filler.unlink()
    paused = until(
        lambda: (
            srv.rows("SELECT status, paused_reason FROM operations WHERE id = ?", op["id"])[0][0]
            == "paused"
        ),
        "the pause to be written",
        timeout=15,
    )
    assert paused and "running" not in item_states(srv, op["id"])
    assert_finished_after_resume(srv, op["id"], 8)
    time.sleep(1.5)  # a few more heartbeats, now written
    log = (srv.home.parent / f"server-{srv.port}.log").read_text()
    said = [line for line in log.splitlines() if "heartbeat" in line]
    assert len(said) == 2, said  # once when it could not be written, once when it could again
    assert "cannot write this server's heartbeat" in said[0] and f"disk full at {home}" in said[0]
    assert "written again" in said[1]


# --- large work refused up front --------------------------------------------------------------


def test_an_import_larger_than_the_free_space_is_refused_up_front(small_disk, start, tmp_path):
    home = small_disk("home", "30m")
    srv = start(home)
    client = srv.client()
    free = os.statvfs(home).f_bavail * os.statvfs(home).f_frsize

    big = raw_image(tmp_path / "big.raw", 40 * MiB, 40 * MiB)  # the upload alone does not fit
    with pytest.raises(ClientError) as refused:
        client.upload("/templates/import", big, {"name": "big", "format": "raw"})
    assert refused.value.status == 409, refused.value.message
    message = refused.value.message
    assert "not enough space" in message and str(home / "store") in message, message
    assert "needs 4" in message and "MiB free" in message, message

    # the upload fits, its conversion into a layer would not: refused before converting
    half = raw_image(tmp_path / "half.raw", 20 * MiB, 20 * MiB)
    with pytest.raises(ClientError) as refused:
        client.upload("/templates/import", half, {"name": "half", "format": "raw"})
    assert refused.value.status == 409, refused.value.message
    assert "needs 2" in refused.value.message and "MiB free" in refused.value.message

    assert client.get("/templates") == []
    assert list((home / "store" / "incoming").iterdir()) == []
    assert list((home / "store" / "layers").iterdir()) == []
    after = os.statvfs(home).f_bavail * os.statvfs(home).f_frsize
    assert after > free - 2 * MiB  # nothing half-made was left taking space


def test_full_clones_larger_than_the_free_space_are_refused_up_front(small_disk, start, tmp_path):
    home = small_disk("home", "30m")
    srv = start(home)
    client = srv.client()
    image = raw_image(tmp_path / "base.raw", 16 * MiB, 6 * MiB)  # a layer of about 6 MiB
    client.upload("/templates/import", image, {"name": "base", "format": "raw"})

    refused = cli(home, "clone", "create", "base", "--count", "3", "--full")
    assert refused.returncode == 1
    assert "not enough space" in refused.stderr and "3 full clones" in refused.stderr, refused
    assert "MiB free" in refused.stderr
    assert client.get("/clones") == [] and client.get("/operations") == []

    made = cli(home, "clone", "create", "base", "--count", "1", "--full")
    assert made.returncode == 0, made.stdout + made.stderr
    assert [c["kind"] for c in client.get("/clones")] == ["full"]
