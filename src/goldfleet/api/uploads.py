"""A request body saved to a file in the store's incoming folder, removed afterwards."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Request

from goldfleet.bootstrap import Context
from goldfleet.errors import InvalidInput


@asynccontextmanager
async def received_body(
    request: Request, ctx: Context, *, prefix: str, limit: int, what: str
) -> AsyncIterator[Path]:
    """Stream the body into a new file (at most ``limit`` bytes) and yield its path; the file
    is removed when the block ends, whatever happened."""
    incoming = ctx.layers.incoming / f"{prefix}-{secrets.token_hex(8)}"
    try:
        received = 0
        with open(incoming, "xb") as f:
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit:
                    raise InvalidInput(f"the {what} is larger than the configured limit")
                f.write(chunk)
        yield incoming
    finally:
        if os.path.exists(incoming):
            os.unlink(incoming)
