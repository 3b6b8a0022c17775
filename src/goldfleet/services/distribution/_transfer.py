"""Moving a layer's bytes from an upstream server over HTTP: resumable, verified, limited.

One layer is downloaded into a work file: a dropped connection resumes with HTTP Range, the
bytes are hashed as they arrive and thrown away (then fetched again) when they do not match the
digest, and a token bucket caps the rate. The body is read as it comes off the socket
(``iter_raw``, no re-chunking), written, hashed, and flushed to disk in the background while more
arrives, so a download costs little more than the transfer: see "Where the time goes" in
docs/sites.md. What happens to the file afterwards (qemu-img check, backing reference, sealing)
is the install step's business (services/bundles.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from goldfleet.errors import GoldfleetError
from goldfleet.services.distribution._bundles import LayerEntry

log = logging.getLogger("goldfleet.transfer")

CHUNK = 1 << 20
FLUSH_EVERY = 16 << 20  # bytes written between two background flushes (see _Flusher)
CONNECT_RETRIES = 5  # resumes of one download after a dropped connection
FETCH_ATTEMPTS = 3  # whole downloads of one layer whose bytes did not match its digest
RETRY_PAUSE = 0.2  # seconds before the first retry of a download; the n-th waits n times this


class UpstreamError(GoldfleetError):
    """The upstream server could not be reached or answered with an error."""

    status_code = 502


class UpstreamRefused(UpstreamError):
    """The upstream refused this server's token: retrying will not help until an admin acts."""


class TokenBucket:
    """At most ``rate`` bytes a second on average, in bursts of a quarter second."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.capacity = max((rate or 0) / 4, CHUNK)
        self.tokens = self.capacity
        self.at = time.monotonic()

    def take(self, n: int) -> None:
        if not self.rate:
            return
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        self.tokens -= n
        if self.tokens < 0:
            time.sleep(-self.tokens / self.rate)


class _Flusher:
    """Writes a download's bytes to disk while more arrive: ``fdatasync`` in a thread each time
    ``poke`` is called (every FLUSH_EVERY bytes), so the disk works while the network does and the
    fsync that ends the download finds little left to write. It adds no durability of its own
    (that fsync does); an error it meets is handed back by ``stop`` (a second fsync on the same
    file might not report it again)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.error: OSError | None = None
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="layer-flush", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            try:
                _fdatasync(self.fd)
            except OSError as exc:
                self.error = exc
                return

    def poke(self) -> None:
        if self.error is not None:
            raise self.error
        self._wake.set()

    def stop(self) -> OSError | None:
        self._stopping = True
        self._wake.set()
        self._thread.join()
        return self.error


_fdatasync = getattr(os, "fdatasync", os.fsync)


def download(
    http: httpx.Client,
    entry: LayerEntry,
    work: Path,
    bucket: TokenBucket,
    progress: Callable[[int, int], None],
) -> None:
    """Fetch one layer into ``work``; resume with Range after a drop, re-fetch on a bad hash.

    ``work`` is created here (``O_EXCL``, 0600) and, when this returns, holds exactly the
    layer's bytes, hashed to ``entry.digest`` while they arrived and fsynced: the install step
    may take that digest instead of reading the file again (``LayerStore.check_and_hash``,
    ``hashed``). On an error the caller removes ``work``. ``progress(done, wire)`` is told the
    bytes held so far and the bytes received since it was last told (about every CHUNK)."""
    fd = os.open(work, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        flusher = _Flusher(fd)
        try:
            _fetch(http, entry, f, bucket, progress, flusher)
            f.flush()
            error = flusher.stop()
            if error is not None:
                raise error
            os.fsync(fd)  # the one fsync of these bytes: the install step does not repeat it
        finally:
            flusher.stop()


def _fetch(
    http: httpx.Client,
    entry: LayerEntry,
    f: BinaryIO,
    bucket: TokenBucket,
    progress: Callable[[int, int], None],
    flusher: _Flusher,
) -> None:
    last = ""
    for _attempt in range(FETCH_ATTEMPTS):
        h, done = _restart(f)
        for retry in range(CONNECT_RETRIES + 1):
            if retry:
                log.warning("layer %s: %s; asking again", entry.digest, last)
                time.sleep(RETRY_PAUSE * retry)
            # identity: the bytes hashed and written are the bytes received (iter_raw)
            headers = {"Accept-Encoding": "identity"}
            if done:
                headers["Range"] = f"bytes={done}-"
            try:
                with http.stream("GET", f"/sync/layers/{entry.digest}", headers=headers) as r:
                    _check_answer(r, entry)
                    start = _body_start(r)
                    if start not in (done, 0):
                        # a 206 from another byte than asked (or without a readable
                        # Content-Range) cannot be appended: drop what is held and ask for the
                        # whole layer (no Range), as one more retry
                        cr = r.headers.get("content-range")
                        shown = f"Content-Range {cr!r}" if cr else "no Content-Range"
                        last = f"HQ answered 206 with {shown} to a request from byte {done}"
                        h, done = _restart(f)
                        continue
                    if start != done:  # the whole layer (Range ignored): start again
                        h, done = _restart(f)
                    unflushed = untold = 0
                    try:
                        for block in r.iter_raw():
                            n = len(block)
                            bucket.take(n)
                            if done + n > entry.size:
                                raise UpstreamError(f"layer {entry.digest} is longer than declared")
                            f.write(block)
                            h.update(block)
                            done += n
                            unflushed += n
                            untold += n
                            if unflushed >= FLUSH_EVERY:
                                flusher.poke()
                                unflushed = 0
                            if untold >= CHUNK:
                                progress(done, untold)
                                untold = 0
                    finally:
                        if untold:
                            progress(done, untold)
                if done == entry.size:
                    break
                last = f"HQ closed the connection after {done} of {entry.size} bytes"
            except httpx.TransportError as exc:
                last = f"connection dropped at {done} of {entry.size} bytes ({exc})"
        else:
            raise UpstreamError(f"layer {entry.digest}: {last}")
        if "sha256:" + h.hexdigest() == entry.digest:
            return
        last = f"received bytes do not match the digest ({done} of {entry.size} bytes)"
        log.warning("layer %s: %s; fetching it again", entry.digest, last)
    raise UpstreamError(f"layer {entry.digest}: {last}, {FETCH_ATTEMPTS} times")


def _restart(f: BinaryIO) -> tuple[Any, int]:
    """Empty the work file: a fresh hash and no byte held."""
    f.seek(0)
    f.truncate()
    return hashlib.sha256(), 0


def error_message(r: httpx.Response, limit: int = 4096) -> str:
    """HQ's message in an error answer (its JSON ``message``, else its text), read up to
    ``limit`` bytes: an error body is never read whole."""
    body = b""
    for chunk in r.iter_bytes():
        body += chunk
        if len(body) >= limit:
            break
    body = body[:limit]
    try:
        message = json.loads(body).get("message")
    except (ValueError, AttributeError):
        message = None
    text = message if isinstance(message, str) else body.decode("utf-8", "replace")
    return " ".join(text.split())[:500]


def _check_answer(r: httpx.Response, entry: LayerEntry) -> None:
    """Refuse any answer but 200 or 206 with the layer's plain bytes, with the reason."""
    if r.status_code == 401:
        raise UpstreamRefused("HQ refused this site's token (revoked?)")
    if r.status_code >= 400:
        said = error_message(r)
        raise UpstreamError(
            f"HQ answered {r.status_code} for layer {entry.digest}" + (f": {said}" if said else "")
        )
    if 300 <= r.status_code < 400:
        raise UpstreamError(
            f"HQ answered {r.status_code} for layer {entry.digest} (redirects are not followed)"
        )
    if r.status_code not in (200, 206):
        raise UpstreamError(
            f"HQ answered {r.status_code} for layer {entry.digest}, not its bytes (200 or 206)"
        )
    if r.headers.get("content-encoding", "identity") != "identity":
        raise UpstreamError(f"HQ sent layer {entry.digest} encoded")


_CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/(?:\d+|\*)")


def _body_start(r: httpx.Response) -> int | None:
    """The byte of the layer the body starts at: 0 for a 200, the first byte of a 206's
    Content-Range (None when it has none or an unreadable one)."""
    if r.status_code != 206:
        return 0
    m = _CONTENT_RANGE.fullmatch(r.headers.get("content-range", "").strip())
    return int(m.group(1)) if m else None
