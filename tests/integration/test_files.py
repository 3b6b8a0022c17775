"""Zero-copy file answers (api/files.py) under a real uvicorn on loopback, in this process (so
``os.sendfile`` can be watched): the same bytes, statuses and headers as Starlette's
FileResponse, Range requests included; the body goes through ``sendfile`` when ``ZeroCopy``
wraps the app and through reads when it does not; a client that goes away mid-body costs the
server nothing but that connection."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse
from starlette.routing import Route

from goldfleet.api import files
from goldfleet.api.files import LayerResponse, ZeroCopy

MiB = 1 << 20
SIZE = 5 * MiB + 12345  # not a multiple of any chunk or window


@pytest.fixture(scope="module")
def layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("layers") / "layer.qcow2"
    path.write_bytes(os.urandom(SIZE))
    return path


def _app(path: Path) -> Starlette:
    def answer(request: Request) -> FileResponse:
        cls = FileResponse if request.path_params["kind"] == "plain" else LayerResponse
        return cls(path, media_type="application/octet-stream")

    return Starlette(routes=[Route("/{kind}", answer, methods=["GET", "HEAD"])])


@pytest.fixture
def sendfile_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Bytes sent by each ``os.sendfile`` call in this process (asyncio's sendfile calls it)."""
    calls: list[int] = []
    real = os.sendfile

    def spy(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        sent = real(out_fd, in_fd, offset, count)
        calls.append(sent)
        return sent

    monkeypatch.setattr(os, "sendfile", spy)
    return calls


def _serve(app: object) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # log_config None: uvicorn's own records reach the root logger (and caplog)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(params=["zero-copy", "no-wrapper"])
def url(request: pytest.FixtureRequest, layer: Path) -> Iterator[str]:
    app = _app(layer)
    yield from _serve(ZeroCopy(app) if request.param == "zero-copy" else app)


@pytest.fixture
def zero_copy_url(layer: Path) -> Iterator[str]:
    yield from _serve(ZeroCopy(_app(layer)))


def _get(client: httpx.Client, path: str, rng: str | None = None) -> httpx.Response:
    return client.get(path, headers={"Range": rng} if rng else {})


RANGES: list[Callable[[int], str]] = [
    lambda n: f"bytes={n // 2}-",  # a resume: the site's downloader asks this
    lambda n: "bytes=0-",
    lambda n: f"bytes={n - 1}-",
    lambda n: f"bytes=1000-{3 * MiB}",
    lambda n: f"bytes=1000-{n + 5000}",  # past the end: cut to the end
    lambda n: "bytes=-4096",  # the last 4096 bytes
    lambda n: "bytes=0-99, 200-299",  # two ranges: multipart
    lambda n: f"bytes={n}-",  # from the end: 416
    lambda n: "bytes=5-2",  # 400
    lambda n: "items=0-5",  # 400
]


def test_the_answers_are_starlettes(url, layer):
    """Every status, header (but the multipart boundary) and body byte as FileResponse gives,
    several requests on one keep-alive connection."""
    with httpx.Client(base_url=url, timeout=30) as client:
        for rng in [None, *(r(SIZE) for r in RANGES)]:
            ours, theirs = _get(client, "/layer", rng), _get(client, "/plain", rng)
            assert ours.status_code == theirs.status_code, rng
            drop = {"content-type", "date"} if "," in (rng or "") else {"date"}
            assert {k: v for k, v in ours.headers.items() if k not in drop} == {
                k: v for k, v in theirs.headers.items() if k not in drop
            }, rng
            if "," not in (rng or ""):
                assert ours.content == theirs.content, rng
        whole = _get(client, "/layer")
        assert whole.status_code == 200 and whole.content == layer.read_bytes()
        resumed = _get(client, "/layer", f"bytes={SIZE // 2}-")
        assert resumed.status_code == 206
        assert resumed.headers["content-range"] == f"bytes {SIZE // 2}-{SIZE - 1}/{SIZE}"
        assert resumed.content == layer.read_bytes()[SIZE // 2 :]
        refused = _get(client, "/layer", f"bytes={SIZE}-")
        assert refused.status_code == 416
        assert refused.headers["content-range"] == f"bytes */{SIZE}"
        assert client.head("/layer").headers["content-length"] == str(SIZE)


def test_bodies_go_through_sendfile_only_under_zero_copy(layer, sendfile_calls):
    for wrapped in (True, False):
        sendfile_calls.clear()
        app = _app(layer)
        for base in _serve(ZeroCopy(app) if wrapped else app):
            with httpx.Client(base_url=base, timeout=30) as client:
                assert _get(client, "/layer").content == layer.read_bytes()
                sent = sum(sendfile_calls)
                assert _get(client, "/layer", "bytes=1000-").content == layer.read_bytes()[1000:]
                assert sum(sendfile_calls) - sent == (SIZE - 1000 if wrapped else 0)
                # FileResponse itself, and what ZeroCopy does not serve, do not use it
                before = sum(sendfile_calls)
                assert _get(client, "/plain").status_code == 200
                assert _get(client, "/layer", "bytes=0-9, 20-29").status_code == 206
                assert sum(sendfile_calls) == before
        assert sum(sendfile_calls) == (2 * SIZE - 1000 if wrapped else 0)


def test_windows_cover_a_body_longer_than_one(zero_copy_url, layer, monkeypatch, sendfile_calls):
    monkeypatch.setattr(files, "WINDOW", MiB)
    with httpx.Client(base_url=zero_copy_url, timeout=30) as client:
        for rng, start in ((None, 0), ("bytes=777-", 777)):
            r = _get(client, "/layer", rng)
            digest = hashlib.sha256(layer.read_bytes()[start:]).hexdigest()
            assert hashlib.sha256(r.content).hexdigest() == digest
    assert sum(sendfile_calls) == 2 * SIZE - 777


def test_a_client_gone_mid_body_costs_only_its_connection(tmp_path, caplog):
    """The server drops that connection quietly (no warning or error logged: the send fails,
    or the application is told of the disconnect first) and serves the next request."""
    big = tmp_path / "big.qcow2"
    with big.open("wb") as f:
        f.truncate(64 * MiB)  # more than the socket buffers hold
    caplog.set_level(logging.INFO)
    for base in _serve(ZeroCopy(_app(big))):
        host, port = base.removeprefix("http://").split(":")
        for _ in range(3):
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.connect((host, int(port)))
                s.sendall(b"GET /layer HTTP/1.1\r\nHost: x\r\n\r\n")
                got = s.recv(4096)
                assert got.startswith(b"HTTP/1.1 200 ")
                while len(got) < MiB:  # the body is coming: the server is in sendfile
                    got += s.recv(65536)
                # closed with a reset while the server has most of the body left to send
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with httpx.Client(base_url=base, timeout=30) as client:
            r = _get(client, "/layer", f"bytes={64 * MiB - 10}-")
            assert r.status_code == 206 and r.content == bytes(10)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_a_file_shorter_than_its_answer_cuts_the_connection(layer, caplog):
    """Bytes promised but not in the file: the client sees the body cut (not a short body
    taken for whole, nor the next answer read as the rest of this one), the server logs it."""

    async def short(scope, receive, send):  # type: ignore[no-untyped-def]
        assert files.ZERO_COPY in scope["extensions"]
        length = str(SIZE + 100).encode()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", length)]}
        )
        with layer.open("rb") as f:
            message = {"type": files.ZERO_COPY, "file": f, "offset": 0, "count": SIZE + 100}
            await send({**message, "more_body": False})

    for base in _serve(ZeroCopy(short)):
        with (
            httpx.Client(base_url=base, timeout=30) as client,
            pytest.raises(httpx.RemoteProtocolError),
        ):
            client.get("/")
        assert "ended 100 bytes early" in caplog.text
