"""A layer's download (services/transfer.py) against a scripted HTTP upstream, and the install
step's use of the digest computed while receiving (LayerStore.check_and_hash ``hashed``)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.server
import os
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import MiB
from goldfleet.errors import BadImage, StoreError
from goldfleet.services.distribution import LayerEntry, TokenBucket, UpstreamError
from goldfleet.services.distribution import _transfer as transfer
from goldfleet.store import LayerStore, QemuImg

DATA = os.urandom(3 * MiB + 123)
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()
ENTRY = LayerEntry(digest=DIGEST, parent=None, size=len(DATA), virtual_size=0, included=True)


class Upstream:
    """Serves DATA with Range; ``faults`` says what each successive request gets wrong."""

    def __init__(self, *faults: str) -> None:
        self.faults = list(faults)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        fault = self.faults.pop(0) if self.faults else ""
        start = 0
        if rng := request.headers.get("range"):
            start = int(rng.removeprefix("bytes=").removesuffix("-"))
        body = bytearray(DATA[start:])
        if fault == "flip":
            body[MiB] ^= 0xFF
        headers = {"content-length": str(len(body))}
        if fault == "gzip":
            headers["content-encoding"] = "gzip"
        status = 206 if start else 200
        if start:
            headers["content-range"] = f"bytes {start}-{len(DATA) - 1}/{len(DATA)}"

        def stream() -> Iterator[bytes]:
            for at in range(0, len(body), 64 * 1024):
                if fault == "cut" and at >= MiB:
                    raise httpx.ReadError("connection dropped")
                yield bytes(body[at : at + 64 * 1024])

        return httpx.Response(status, headers=headers, content=stream())


class MisbehavingHQ:
    """A real HTTP server on loopback serving DATA with Range (HTTP/1.0: one connection per
    request); ``faults`` says what each successive request gets wrong."""

    def __init__(self) -> None:
        self.faults: list[str] = []
        self.ranges: list[str | None] = []
        answer = self.answer

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                answer(self)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def answer(self, req: http.server.BaseHTTPRequestHandler) -> None:
        rng = req.headers.get("Range")
        self.ranges.append(rng)
        fault = self.faults.pop(0) if self.faults else ""
        start = int(rng.removeprefix("bytes=").removesuffix("-")) if rng else 0
        if fault == "redirect":
            req.send_response(302)
            req.send_header("Location", "/elsewhere")
            req.send_header("Content-Length", "0")
            req.end_headers()
            return
        if fault == "elsewhere":  # the bytes from another offset than asked, labelled as such
            start += 1000
        body = DATA[start:]
        if fault == "short":  # half of it, then a clean close (no Content-Length)
            body = body[: len(body) // 2]
        req.send_response(206 if rng or fault == "no-range" else 200)
        if rng and fault != "no-range":
            req.send_header("Content-Range", f"bytes {start}-{len(DATA) - 1}/{len(DATA)}")
        if fault != "short":
            req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        with contextlib.suppress(ConnectionError):  # the download drops a misplaced answer
            req.wfile.write(body)


@pytest.fixture
def hq(monkeypatch: pytest.MonkeyPatch) -> Iterator[MisbehavingHQ]:
    monkeypatch.setattr(transfer, "RETRY_PAUSE", 0)
    server = MisbehavingHQ()
    yield server
    server.server.shutdown()
    server.server.server_close()


def fetch(upstream: Upstream | MisbehavingHQ, work: Path) -> list[int]:
    wire: list[int] = []
    if isinstance(upstream, MisbehavingHQ):
        client = httpx.Client(base_url=upstream.url)
    else:
        client = httpx.Client(base_url="http://hq.test", transport=httpx.MockTransport(upstream))
    with client as http:
        transfer.download(http, ENTRY, work, TokenBucket(None), lambda done, n: wire.append(n))
    return wire


def test_a_download_resumes_after_a_drop_into_a_private_work_file(tmp_path):
    upstream = Upstream("cut")
    work = tmp_path / ".import-sync-x.qcow2"
    wire = fetch(upstream, work)
    assert work.read_bytes() == DATA
    assert stat.S_IMODE(work.stat().st_mode) == 0o600
    assert [r.headers.get("range") for r in upstream.requests] == [None, f"bytes={MiB}-"]
    assert all(r.headers["accept-encoding"] == "identity" for r in upstream.requests)
    assert sum(wire) == len(DATA)  # resumed, not restarted


def test_bytes_that_do_not_match_the_digest_are_fetched_again(tmp_path):
    upstream = Upstream("flip")
    work = tmp_path / ".import-sync-x.qcow2"
    wire = fetch(upstream, work)
    assert work.read_bytes() == DATA
    assert sum(wire) == 2 * len(DATA)


def test_an_encoded_answer_an_existing_work_file_and_a_failed_flush_are_refused(
    tmp_path, monkeypatch
):
    work = tmp_path / ".import-sync-x.qcow2"
    with pytest.raises(UpstreamError, match="encoded"):
        fetch(Upstream("gzip"), work)
    with pytest.raises(FileExistsError):  # the work file is never one made by someone else
        fetch(Upstream(), work)
    work.unlink()

    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    # a background flush that fails is reported, not lost (a later fsync may not see it again)
    monkeypatch.setattr(transfer, "_fdatasync", broken)
    with work.open("wb") as f:
        flusher = transfer._Flusher(f.fileno())
        flusher.poke()
        deadline = time.monotonic() + 10
        while flusher.error is None and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(OSError):
            flusher.poke()
        error = flusher.stop()
    assert error is not None and error.errno == errno.EIO


def test_the_install_step_takes_the_received_digest_only_for_a_private_work_file(
    tmp_path, qemu: QemuImg
):
    layers = LayerStore(tmp_path / "store", qemu)
    layers.ensure()
    work = layers.dir / ".import-sync-a.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(work), "1M"], check=True)
    os.chmod(work, 0o600)
    digest = "sha256:" + hashlib.sha256(work.read_bytes()).hexdigest()
    info = layers.check_and_hash(work, parent=None, hashed=digest)
    assert (info.digest, info.size, info.virtual_size) == (digest, work.stat().st_size, MiB)
    assert layers.check_and_hash(work, parent=None).digest == digest

    os.chmod(work, 0o644)  # not a private work file: the digest is not taken
    with pytest.raises(StoreError):
        layers.check_and_hash(work, parent=None, hashed=digest)
    outside = tmp_path / ".import-sync-b.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(outside), "1M"], check=True)
    os.chmod(outside, 0o600)
    with pytest.raises(StoreError):
        layers.check_and_hash(outside, parent=None, hashed=digest)

    # every other check still runs: a backing reference other than the parent is refused
    other = layers.dir / ".import-sync-c.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(work), str(other)],
        check=True,
    )
    os.chmod(other, 0o600)
    with pytest.raises(BadImage):
        layers.check_and_hash(other, parent=None, hashed=digest)
    with pytest.raises(BadImage):
        layers.check_and_hash(other, parent="sha256:" + "0" * 64, hashed=digest)


# --- a real HQ that misbehaves ------------------------------------------------------------

HALF = len(DATA) // 2


def test_a_body_that_ends_early_is_resumed_and_then_named(hq, tmp_path):
    hq.faults = ["short"]
    assert sum(fetch(hq, tmp_path / "a")) == len(DATA)
    assert (tmp_path / "a").read_bytes() == DATA
    assert hq.ranges == [None, f"bytes={HALF}-"]

    hq.faults = ["short"] * (transfer.CONNECT_RETRIES + 1)
    with pytest.raises(
        UpstreamError, match=f"HQ closed the connection after [0-9]+ of {len(DATA)}"
    ):
        fetch(hq, tmp_path / "b")


def test_a_redirect_is_refused_with_its_reason(hq, tmp_path):
    hq.faults = ["redirect"]
    with pytest.raises(UpstreamError, match=r"answered 302 .*redirects are not followed"):
        fetch(hq, tmp_path / "a")
    assert hq.ranges == [None]


@pytest.mark.parametrize("fault", ["elsewhere", "no-range"])
def test_a_partial_answer_from_another_byte_is_not_appended(hq, tmp_path, fault):
    hq.faults = ["short", fault]
    wire = fetch(hq, tmp_path / "a")
    assert (tmp_path / "a").read_bytes() == DATA
    # the misplaced body is not taken: the layer is asked for again, whole
    assert hq.ranges == [None, f"bytes={HALF}-", None]
    assert sum(wire) == HALF + len(DATA)


def test_partial_answers_without_a_content_range_are_named(hq, tmp_path):
    hq.faults = ["no-range"] * (transfer.CONNECT_RETRIES + 1)
    with pytest.raises(UpstreamError, match="206 with no Content-Range to a request from byte 0"):
        fetch(hq, tmp_path / "a")
