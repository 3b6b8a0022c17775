"""A signed bundle carried between two real servers by the CLI, as an admin would."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sitekit import MiB, _root_server_class, cli, layer_path, make_raw, start_servers

from goldfleet.home import init_home


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


def _stalled_export(srv: Any, stop_for: float) -> tuple[int, bool]:
    """GET the bundle over a raw socket with a small receive buffer, read a little, stop
    reading for ``stop_for`` seconds, then read on: (body bytes after the stop, ended cleanly)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", srv.port))
    sock.sendall(
        b"GET /templates/base/bundle HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {srv.token}\r\n\r\n".encode()
    )
    first = sock.recv(4096)
    assert first.startswith(b"HTTP/1.1 200"), first[:200]
    time.sleep(stop_for)
    sock.settimeout(10)
    received, tail = 0, b""
    try:
        while chunk := sock.recv(1 << 20):
            received += len(chunk)
            tail = (tail + chunk)[-16:]
    except (ConnectionResetError, TimeoutError):
        pass
    finally:
        sock.close()
    return received, tail.endswith(b"0\r\n\r\n")  # the chunked body's last chunk


def test_an_export_to_a_client_that_stops_reading_is_aborted(tmp_path, monkeypatch):
    """A client that holds the stream open without reading does not hold the export (its
    writer thread and layer file) forever: after ``stall_seconds`` the response is aborted."""
    monkeypatch.setenv("GOLDFLEET_HOME", str(tmp_path / "unused"))
    home = tmp_path / "a"
    srv = _root_server_class()(home=home, env={"GOLDFLEET_STALL_SECONDS": "1"})
    init_home(home, port=srv.port)
    srv.start()
    try:
        image = tmp_path / "base.raw"
        image.write_bytes(os.urandom(48 * MiB))  # far more than the socket buffers hold
        srv.client().upload("/templates/import", image, {"name": "base", "format": "raw"})

        received, whole = _stalled_export(srv, stop_for=4)
        assert not whole and received < 48 * MiB, "the stalled export went on to the end"
        log = (tmp_path / f"server-{srv.port}.log").read_text()
        assert "the client read nothing for 1 s; the response was aborted" in log

        # a client that keeps reading gets the whole bundle, from the same server
        out = cli(home, "bundle", "export", "base", "-o", str(tmp_path / "base.bundle"))
        assert out.returncode == 0, out.stderr
        assert (tmp_path / "base.bundle").stat().st_size > 48 * MiB
    finally:
        srv.stop()
