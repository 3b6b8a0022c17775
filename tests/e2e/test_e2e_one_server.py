"""One server per home: a second ``goldfleet serve`` on a home that a running server uses is
refused before it touches anything, and the running server's work completes as if it had not
been tried.

The first server has work in flight when the second is started: an import whose upload stopped
half-way, a maintenance exit held in its seal check, a rollout (a recreate with clones under
way and one clone waiting for its user to log off). Then the second one must exit non-zero
with one line naming the running server's pid and URL, and leave ``server.json``, the
``servers`` rows, the upload's file and the template mid-exit as they were; the import, the
exit and the rollout complete, the rollout's items all executed by the first server. Once the
first is killed (``kill -9``) the kernel releases its lock and the second serves at once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from inflight import HeldUpload, call_in_thread, held_checks, root_conftest, serve_once

pytestmark = pytest.mark.slow

MiB = 1 << 20
_root = root_conftest()
Server, free_port, make_raw = _root.Server, _root.free_port, _root.make_raw


def _until(check, what: str, timeout: float = 60):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def _import(client, tmp: Path, name: str) -> None:  # type: ignore[no-untyped-def]
    image = make_raw(tmp / f"{name}.raw", fill={0: b"\x11" * 4096, MiB: b"\x11" * 4096})
    client.upload("/templates/import", image, {"name": name, "format": "raw", "temp": ["64M"]})


def test_a_second_serve_is_refused_and_the_first_finishes_its_import_exit_and_rollout(
    home, tmp_path, qemu
):
    held_env, hold = held_checks(tmp_path)
    first = Server(
        home=home,
        env={
            **held_env,
            "GOLDFLEET_SIM_PLAN": '{"latency_ms": {"define": 400}}',
            "GOLDFLEET_BATCH_SIZE": "3",
        },
    )
    first.start()
    try:
        client = first.client()
        # template desk: 7 clones behind its v2 (one running, alice logged on); base: in
        # maintenance with a patch in its overlay
        _import(client, tmp_path, "desk")
        created = client.post("/clones", {"template": "desk", "count": 7, "wait": True})
        names = sorted(created["clones"])
        client.post(f"/clones/{names[0]}/start")
        client.post("/sim/sessions", {"vm": names[0], "user": "alice"})
        client.post("/templates/desk/maintenance/enter")
        client.post("/templates/desk/maintenance/exit", {"recreate": "none"})
        _import(client, tmp_path, "base")
        overlay = Path(client.post("/templates/base/maintenance/enter")["overlay_path"])
        qemu.write_pattern(overlay, MiB, 4096, 0x22)

        # in flight: an upload half-way, an exit held in its check, a rollout under way
        upload = HeldUpload(
            client, make_raw(tmp_path / "fresh.raw", fill={0: b"\x33" * 4096}), "fresh"
        )
        receiving = upload.start(home / "store" / "incoming")
        hold.touch()
        exiting, exit_result = call_in_thread(
            client.post, "/templates/base/maintenance/exit", {"recreate": "none"}
        )
        _until(
            lambda: client.get("/templates/base")["status"] == "exiting-maintenance",
            "the exit to be under way",
        )
        op_id = client.post("/clones/recreate", {"template": "desk"})["id"]
        _until(
            lambda: first.rows(
                "SELECT 1 FROM operation_items WHERE operation_id = ? AND state = 'running'",
                op_id,
            ),
            "clones of the rollout to be under way",
        )
        server_json = (home / "server.json").read_text()
        servers = first.rows("SELECT id, pid FROM servers")
        assert [pid for _, pid in servers] == [first.proc.pid]

        # the second server, on another port: refused, one line naming the first
        second_port = free_port()
        ended = serve_once(home, second_port)
        assert not ended.came_up, "a second server served the same home"
        assert ended.code not in (0, None), ended
        lines = ended.stderr.strip().splitlines()
        assert len(lines) == 1, ended.stderr
        assert lines[0].startswith("error: home "), lines[0]
        assert f"pid {first.proc.pid}" in lines[0] and first.url in lines[0], lines[0]
        assert "one server per home" in lines[0]

        # nothing of the first server's was touched
        assert (home / "server.json").read_text() == server_json
        assert first.rows("SELECT id, pid FROM servers") == servers
        assert receiving.exists()
        assert client.get("/templates/base")["status"] == "exiting-maintenance"
        assert overlay.exists()

        # ... and its work completes
        answer = upload.finish()
        assert not isinstance(answer, Exception), answer
        assert [v["name"] for v in client.get("/templates/fresh/versions")] == ["v1"]
        hold.unlink()
        exiting.join(60)
        assert not isinstance(exit_result[0], Exception), exit_result[0]
        assert exit_result[0]["version"] == 2
        assert [v["name"] for v in client.get("/templates/base/versions")] == ["v1", "v2"]
        client.delete(f"/sim/sessions/{names[0]}/alice")
        op = _until(
            lambda: (o := client.get(f"/operations/{op_id}"))["status"] != "running" and o,
            "the rollout to end",
        )
        assert (op["status"], op["total"], op["done"], op["failed"]) == ("done", 7, 7, 0), op
        ((own_id, _),) = servers
        assert first.rows(
            "SELECT DISTINCT owner FROM operation_items WHERE operation_id = ?", op_id
        ) == [(own_id,)]
        assert {c["version"] for c in client.get("/clones")} == {2}
        assert list((home / "store" / "incoming").iterdir()) == []

        # the lock dies with its process: after kill -9 the next server serves at once
        first.kill9()
        second = Server(home=home, port=second_port)
        second.start()
        try:
            assert json.loads((home / "server.json").read_text())["url"] == second.url
            assert [pid for _, pid in second.rows("SELECT id, pid FROM servers")] == [
                second.proc.pid
            ]
            assert second.client().get("/operations/" + str(op_id))["status"] == "done"
        finally:
            second.stop()
    finally:
        hold.unlink(missing_ok=True)
        first.stop()


@pytest.mark.parametrize("order", ["a-first", "b-first"])
def test_two_serves_started_together_on_a_new_home_one_serves_and_one_is_refused(
    home, tmp_path, order
):
    a, b = Server(home=home), Server(home=home)
    starts = [a, b] if order == "a-first" else [b, a]
    ended: dict[int, object] = {}
    threads = []
    for srv in starts:
        thread, out = call_in_thread(serve_once_kept, srv)
        threads.append((srv, thread, out))
        time.sleep(0.05)
    for srv, thread, out in threads:
        thread.join(90)
        ended[srv.port] = out[0]
    try:
        up = [srv for srv in (a, b) if ended[srv.port] is True]
        assert len(up) == 1, ended
        (winner,) = up
        (loser,) = [srv for srv in (a, b) if srv is not winner]
        refusal = ended[loser.port]
        assert isinstance(refusal, str), refusal
        assert f"pid {winner.proc.pid}" in refusal, refusal
        assert json.loads((home / "server.json").read_text())["url"] == winner.url
        assert [pid for _, pid in winner.rows("SELECT id, pid FROM servers")] == [winner.proc.pid]
        assert winner.client().get("/templates") == []
    finally:
        a.stop()
        b.stop()


def serve_once_kept(srv) -> object:  # type: ignore[no-untyped-def]
    """Start ``srv``: True if it serves (left running), else its one line of refusal."""
    try:
        srv.start()
        return True
    except RuntimeError:
        srv.log.flush()
        log = (srv.home.parent / f"server-{srv.port}.log").read_text().strip()
        return log.splitlines()[-1] if log else "(no output)"
