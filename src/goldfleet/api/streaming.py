"""Streamed answers whose client must keep reading.

A client that holds a streamed response open without reading (a stalled ``bundle export``, a
progress stream left in a suspended terminal) would otherwise hold the producer — a writer
thread with an open layer file, a sync — forever: a send blocks until the client reads. Here a
send that waits longer than ``stall_seconds`` aborts the response (the connection is closed)
and the body's iterator is closed, so its producer stops and lets go of what it holds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

log = logging.getLogger("goldfleet.api")


class StalledClient(Exception):
    """The client read nothing for ``stall_seconds``; the response is aborted."""


class GuardedStream(StreamingResponse):
    def __init__(self, content: Iterator[bytes], *, stall_seconds: float, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._source = content
        self.stall_seconds = stall_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def guarded(message: Message) -> None:
            try:
                await asyncio.wait_for(send(message), self.stall_seconds)
            except TimeoutError:
                log.warning(
                    "%s %s: the client read nothing for %g s; the response was aborted",
                    scope.get("method"),
                    scope.get("path"),
                    self.stall_seconds,
                )
                raise StalledClient(scope.get("path")) from None

        try:
            await super().__call__(scope, receive, guarded)
        finally:
            close = getattr(self._source, "close", None)
            if close is not None:
                # a generator suspended at a yield closes here (its finally runs: the producer
                # is told to stop); one running in a worker thread ends by itself
                with contextlib.suppress(ValueError):
                    close()
