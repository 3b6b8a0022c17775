"""A layer's download (services/transfer.py) against a scripted HTTP upstream, and the install
step's use of the digest computed while receiving (LayerStore.check_and_hash ``hashed``)."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import MiB
from goldfleet.errors import BadImage, StoreError
from goldfleet.services import transfer
from goldfleet.services.bundles import LayerEntry
from goldfleet.services.transfer import TokenBucket, UpstreamError
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

        def stream() -> Iterator[bytes]:
            for at in range(0, len(body), 64 * 1024):
                if fault == "cut" and at >= MiB:
                    raise httpx.ReadError("connection dropped")
                yield bytes(body[at : at + 64 * 1024])

        return httpx.Response(status, headers=headers, content=stream())


def fetch(upstream: Upstream, work: Path) -> list[int]:
    wire: list[int] = []
    http = httpx.Client(base_url="http://hq.test", transport=httpx.MockTransport(upstream))
    with http:
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
