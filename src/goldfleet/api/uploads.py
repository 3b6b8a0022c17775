"""Request bodies: an upload saved to a file in the store's incoming folder (removed
afterwards), and the cap on every other body."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Request

from goldfleet.context import Context
from goldfleet.errors import GoldfleetError, InvalidInput, LengthRequired, TooLarge

_ZEROS = memoryview(bytes(1 << 20))  # compared against, never copied


@asynccontextmanager
async def received_body(
    request: Request, ctx: Context, *, prefix: str, limit: int, what: str
) -> AsyncIterator[Path]:
    """Stream the body into a new file (at most ``limit`` bytes) and yield its path; the file
    is removed when the block ends, whatever happened. A body of known length that the store's
    disk cannot hold is refused before a byte is read (NoSpace: needed and free).

    Runs of zeros are left as holes: a raw disk image is mostly zeros, and its file then takes
    only the space of its data, which is also what the import's own space check measures."""
    length = request.headers.get("content-length", "")
    if length.isdigit():
        ctx.layers.check_room(f"the {what} upload", int(length))
    incoming = ctx.layers.incoming_path(prefix)  # named with this server's id
    try:
        received = 0
        with open(incoming, "xb") as f:
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit:
                    raise InvalidInput(f"the {what} is larger than the configured limit")
                if len(chunk) <= len(_ZEROS) and _ZEROS[: len(chunk)] == chunk:
                    f.seek(len(chunk), os.SEEK_CUR)
                    f.truncate()  # the file grows with the upload all the same, by a hole
                else:
                    f.write(chunk)
        yield incoming
    finally:
        if os.path.exists(incoming):
            os.unlink(incoming)


# the routes that stream their body into a file (received_body), each under its own limit; every
# other route's body is parsed in memory and capped at MAX_BODY by the app (api/app.py)
UPLOAD_ROUTES = re.compile(r"/templates/import|/bundles/import|/sync/publish/[^/]+")
MAX_BODY = 16 << 20


def body_problem(method: str, path: str, headers: Mapping[str, str]) -> GoldfleetError | None:
    """Why a request's body is refused before it is read, if it is: a body larger than MAX_BODY
    (413) or one of unknown length (411) on a route that reads its body into memory."""
    if method == "POST" and UPLOAD_ROUTES.fullmatch(path):
        return None
    length = headers.get("content-length")
    if length is None:
        if headers.get("transfer-encoding"):
            return LengthRequired("send the request body with a Content-Length")
        return None
    if not length.isdigit():
        return InvalidInput(f"Content-Length {length[:40]!r} is not a number")
    if int(length) > MAX_BODY:
        return TooLarge(
            f"the request body ({length} bytes) is larger than {MAX_BODY >> 20} MiB, the limit"
            " of this endpoint"
        )
    return None
