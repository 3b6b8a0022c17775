"""Serving a file without copying it through Python: the kernel's ``sendfile`` from the page
cache to the socket, Range requests included.

uvicorn has no zero-copy send (no ASGI ``http.response.pathsend`` or ``zerocopysend``), and
Starlette's FileResponse reads the file in 64 KiB chunks through a worker thread and writes
each chunk to the socket: two copies of every byte and a trip through the event loop and the
thread pool per chunk, 1.5 to 3 CPU seconds per GB served; with ``sendfile`` about 0.5
(bench/serve.py, docs/sites.md "HQ serving many sites", which also says what a receiver on
the same machine pays for it).

Two halves, joined by the ASGI zero-copy extension (``http.response.zerocopysend``, see
https://asgi.readthedocs.io/en/latest/extensions.html#zero-copy-send):

- ``ZeroCopy`` wraps the whole application, outside Starlette's middleware, and offers the
  extension on a connection uvicorn's h11 protocol runs: it frames the body with h11's own
  pass-through for sendfile (``send_with_data_passthrough``, so Content-Length and keep-alive
  stay h11's business) and moves the bytes with ``loop.sendfile`` (``os.sendfile``). Anywhere
  else (another protocol, a test client) it offers nothing and changes nothing.
- ``LayerResponse`` is Starlette's FileResponse (its Range parsing, 206 and Content-Range,
  416, If-Range, multipart ranges) whose whole-file and single-range bodies go through the
  extension when it is offered, and through 1 MiB reads otherwise.

Authentication and authorisation are untouched: the request goes through the application as
before; only the way the body's bytes reach the socket changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any, BinaryIO

import anyio
import h11
from starlette.datastructures import MutableHeaders
from starlette.responses import FileResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("goldfleet.api")

ZERO_COPY = "http.response.zerocopysend"
SLICE = 1 << 20  # bytes per sendfile call: what one call may hold the event loop for
WINDOW = 16 << 20  # bytes read ahead from disk while the window before them is sent


class _PeerGone(Exception):
    """The client went away in the middle of a zero-copy body (the connection is closed): no
    error of the server's, nothing to log but a note."""


class _Span:
    """What h11 frames in place of the body's bytes: only its length is read."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length


def _uvicorn_h11_cycle(send: Send) -> Any | None:
    """The request/response cycle of uvicorn's h11 protocol behind ``send``, when it is one
    (its h11 connection and asyncio transport are what a zero-copy body needs)."""
    try:
        from uvicorn.protocols.http.h11_impl import RequestResponseCycle
    except ImportError:  # pragma: no cover - uvicorn is a dependency
        return None
    cycle = getattr(send, "__self__", None)
    if not isinstance(cycle, RequestResponseCycle):
        return None
    conn, transport = getattr(cycle, "conn", None), getattr(cycle, "transport", None)
    if not isinstance(conn, h11.Connection) or not isinstance(transport, asyncio.Transport):
        return None
    return cycle


class ZeroCopy:
    """ASGI wrapper offering ``http.response.zerocopysend`` on uvicorn's h11 connections."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        cycle = _uvicorn_h11_cycle(send) if scope["type"] == "http" else None
        if cycle is None:
            await self.app(scope, receive, send)
            return
        scope.setdefault("extensions", {})[ZERO_COPY] = {}

        async def send_zero_copy(message: Message) -> None:
            if message["type"] != ZERO_COPY:
                await send(message)
                return
            await _sendfile(cycle, message)
            if not message.get("more_body", False):
                # uvicorn ends the response as usual: h11 has counted the bytes sent
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        try:
            await self.app(scope, receive, send_zero_copy)
        except _PeerGone:
            # the transport is closed; let uvicorn see the connection lost before this returns
            # (else it would report a response the application left unfinished)
            await asyncio.sleep(0)


async def _sendfile(cycle: Any, message: Message) -> None:
    """Send ``count`` bytes of ``file`` from ``offset`` on the cycle's connection."""
    file: BinaryIO = message["file"]
    offset = message.get("offset")
    if offset is None:
        offset = file.tell()
    count = message.get("count")
    if count is None:
        count = os.fstat(file.fileno()).st_size - offset
    if cycle.disconnected or count <= 0:
        return
    span = _Span(count)
    transport: asyncio.Transport = cycle.transport
    loop = asyncio.get_running_loop()
    for part in cycle.conn.send_with_data_passthrough(h11.Data(data=span)):
        if part is not span:  # framing (chunked encoding): none with a Content-Length
            transport.write(part)
            continue
        try:
            await _sendfile_windows(loop, transport, file, offset, count)
        except BaseException as exc:
            # the body is unfinished, and h11 counted it sent: the connection must carry
            # nothing more, the client must see the body cut
            closing = transport.is_closing()
            transport.abort()
            gone = isinstance(exc, ConnectionError) or (isinstance(exc, RuntimeError) and closing)
            if not gone:  # cancelled, or the file could not be read: the caller's business
                raise
            log.info("a file's body was cut at the connection: %s", exc)
            raise _PeerGone() from exc


async def _sendfile_windows(
    loop: asyncio.AbstractEventLoop,
    transport: asyncio.Transport,
    file: BinaryIO,
    offset: int,
    count: int,
) -> None:
    """``loop.sendfile`` SLICE at a time, WINDOW by WINDOW, the next window read ahead.

    ``sendfile`` runs in the event loop's thread: one call copies as much as the socket takes
    (megabytes on loopback), and waits for the disk where the file is not in the page cache.
    Slices bound what one call holds the loop for, so other connections and requests get their
    turn; the read-ahead (``POSIX_FADV_WILLNEED``, asked in a worker thread) has the kernel
    read the next window from disk while this one is sent."""
    fd = file.fileno()
    end = offset + count
    await _read_ahead(fd, offset, min(WINDOW, count))
    while offset < end:
        window_end = min(offset + WINDOW, end)
        ahead = asyncio.ensure_future(_read_ahead(fd, window_end, min(WINDOW, end - window_end)))
        try:
            while offset < window_end:
                n = min(SLICE, window_end - offset)
                sent = await loop.sendfile(transport, file, offset, n)
                if sent != n:
                    raise OSError(f"the file ended {n - sent} bytes early")
                offset += n
        finally:
            await ahead


async def _read_ahead(fd: int, offset: int, length: int) -> None:
    if length > 0 and hasattr(os, "posix_fadvise"):
        with contextlib.suppress(OSError):
            await anyio.to_thread.run_sync(
                os.posix_fadvise, fd, offset, length, os.POSIX_FADV_WILLNEED
            )


class LayerResponse(FileResponse):
    """Starlette's FileResponse, zero-copy where ``ZeroCopy`` offers it (whole file and single
    ranges), in 1 MiB reads where not. Range parsing and every status stay Starlette's."""

    chunk_size = 1 << 20
    _zero_copy = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._zero_copy = ZERO_COPY in scope.get("extensions", {})
        await super().__call__(scope, receive, send)

    async def _handle_simple(self, send: Send, send_header_only: bool, send_pathsend: bool) -> None:
        if not self._zero_copy or send_header_only:
            await super()._handle_simple(send, send_header_only, send_pathsend)
            return
        start = {"type": "http.response.start", "status": self.status_code}
        await send({**start, "headers": self.raw_headers})
        await self._send_zero_copy(send, 0, int(self.headers["content-length"]))

    async def _handle_single_range(
        self, send: Send, start: int, end: int, file_size: int, send_header_only: bool
    ) -> None:
        if not self._zero_copy or send_header_only:
            await super()._handle_single_range(send, start, end, file_size, send_header_only)
            return
        headers = MutableHeaders(raw=list(self.raw_headers))
        headers["content-range"] = f"bytes {start}-{end - 1}/{file_size}"
        headers["content-length"] = str(end - start)
        await send({"type": "http.response.start", "status": 206, "headers": headers.raw})
        await self._send_zero_copy(send, start, end - start)

    async def _send_zero_copy(self, send: Send, offset: int, count: int) -> None:
        file = await anyio.to_thread.run_sync(open, self.path, "rb")
        try:
            message = {"type": ZERO_COPY, "file": file, "offset": offset, "count": count}
            await send({**message, "more_body": False})
        finally:
            file.close()
