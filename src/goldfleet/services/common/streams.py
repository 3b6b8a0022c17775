"""Long actions answered as JSON lines over HTTP, so a client can show their progress.

The lines are ``start`` (what the action is), ``progress`` (units done of the total, a few times
a second), then ``done`` with the result or ``error`` with the status and message. The action
runs in its own thread: a client that goes away does not stop it (it completes or fails as it
would have without the stream).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from pydantic import BaseModel

from goldfleet.errors import GoldfleetError

log = logging.getLogger("goldfleet.streams")

PROGRESS_EVERY = 0.25  # seconds between progress lines

Report = Callable[[int, int], None]  # told the units done so far and the total


def stream(
    start: dict[str, Any], work: Callable[[Report], BaseModel], *, what: str
) -> Iterator[bytes]:
    """Run ``work(report)`` in a thread and yield its lines; ``start`` is the first line's
    content, ``what`` names the action in the log and in an unexpected error."""
    events: queue.Queue[dict[str, Any]] = queue.Queue()
    last = [0.0]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY:
            last[0] = now
            events.put({"event": "progress", "done": done, "total": total})

    def run() -> None:
        try:
            events.put({"event": "done", "result": work(report).model_dump(mode="json")})
        except GoldfleetError as exc:
            events.put(
                {
                    "event": "error",
                    "status": exc.status_code,
                    "error": type(exc).__name__,
                    "message": exc.message,
                }
            )
        except Exception as exc:  # the stream must end with a line the client understands
            log.exception("%s failed", what)
            events.put(
                {
                    "event": "error",
                    "status": 500,
                    "error": type(exc).__name__,
                    "message": f"{what} failed: {exc}",
                }
            )

    yield line({"event": "start", **start})
    threading.Thread(target=run, daemon=True, name=f"goldfleet-{what.replace(' ', '-')}").start()
    while True:
        event = events.get()
        yield line(event)
        if event["event"] != "progress":
            return


def line(event: dict[str, Any]) -> bytes:
    return json.dumps(event, default=str).encode() + b"\n"
