"""The web console (docs/console.md): server-rendered pages under ``/ui/``, served by the same
server as the API. ``create_app(ctx)`` is what ``goldfleet serve`` runs: the API's application
(unchanged, every path as it was) with the console beside it."""

from __future__ import annotations

from goldfleet.web._console import CONSOLE_PREFIX, console_app, create_app

__all__ = ["CONSOLE_PREFIX", "console_app", "create_app"]
