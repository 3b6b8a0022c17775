"""Moving a layer's bytes from an upstream server over HTTP: resumable, verified, limited.

One layer is downloaded into a work file: a dropped connection resumes with HTTP Range, the
bytes are hashed as they arrive and thrown away (then fetched again) when they do not match the
digest, and a token bucket caps the rate. What happens to the file afterwards (qemu-img check,
backing reference, sealing) is the install step's business (services/bundles.py).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from goldfleet.errors import GoldfleetError
from goldfleet.services.bundles import LayerEntry

log = logging.getLogger("goldfleet.transfer")

CHUNK = 1 << 20
CONNECT_RETRIES = 5  # resumes of one download after a dropped connection
FETCH_ATTEMPTS = 3  # whole downloads of one layer whose bytes did not match its digest


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


def download(
    http: httpx.Client,
    entry: LayerEntry,
    work: Path,
    bucket: TokenBucket,
    progress: Callable[[int, int], None],
) -> None:
    """Fetch one layer into ``work``; resume with Range after a drop, re-fetch on a bad hash.

    ``progress(done, wire)`` is told the bytes held so far and the bytes just received."""
    last = ""
    for _attempt in range(FETCH_ATTEMPTS):
        h, done = hashlib.sha256(), 0
        with work.open("wb") as f:
            for retry in range(CONNECT_RETRIES + 1):
                headers = {"Range": f"bytes={done}-"} if done else {}
                try:
                    with http.stream("GET", f"/sync/layers/{entry.digest}", headers=headers) as r:
                        if r.status_code == 401:
                            raise UpstreamRefused("HQ refused this site's token (revoked?)")
                        if r.status_code >= 400:
                            r.read()
                            raise UpstreamError(
                                f"HQ answered {r.status_code} for layer {entry.digest}"
                            )
                        if done and r.status_code != 206:  # Range ignored: start again
                            h, done = hashlib.sha256(), 0
                            f.seek(0)
                            f.truncate()
                        for block in r.iter_bytes(CHUNK):
                            bucket.take(len(block))
                            if done + len(block) > entry.size:
                                raise UpstreamError(f"layer {entry.digest} is longer than declared")
                            f.write(block)
                            h.update(block)
                            done += len(block)
                            progress(done, len(block))
                    if done == entry.size:
                        break
                except httpx.TransportError as exc:
                    last = f"connection dropped at {done} of {entry.size} bytes ({exc})"
                    log.warning("layer %s: %s; resuming", entry.digest, last)
                    time.sleep(0.2 * (retry + 1))
            else:
                raise UpstreamError(f"layer {entry.digest}: {last}")
            f.flush()
            os.fsync(f.fileno())
        if done == entry.size and "sha256:" + h.hexdigest() == entry.digest:
            return
        last = f"received bytes do not match the digest ({done} of {entry.size} bytes)"
        log.warning("layer %s: %s; fetching it again", entry.digest, last)
    raise UpstreamError(f"layer {entry.digest}: {last}, {FETCH_ATTEMPTS} times")
