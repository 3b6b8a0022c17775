"""The FastAPI application. ``create_app(ctx)`` is the only way to make one."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from goldfleet import __version__
from goldfleet.api.deps import Caller, authenticate
from goldfleet.api.routers import (
    admin,
    bundles,
    clones,
    clusters,
    guests,
    hosts,
    pools,
    sim,
    sites,
    templates,
    users,
)
from goldfleet.api.routers import sessions as sessions_router
from goldfleet.api.schemas import ERRORS
from goldfleet.api.uploads import body_problem
from goldfleet.context import Context
from goldfleet.errors import Forbidden, GoldfleetError, NoSpace
from goldfleet.services import guests as guest_service

log = logging.getLogger("goldfleet.api")


def error_response(exc: GoldfleetError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
    return JSONResponse(
        {"error": type(exc).__name__, "message": exc.message},
        status_code=exc.status_code,
        headers=headers,
    )


OPEN = ("/health", "/auth/login")  # no token: the server's health, and a user's login


class RequireToken:
    """Authenticate before anything else (body parsing included); only OPEN paths need no
    token. Then refuse a body too large to be parsed in memory (api/uploads.py), before a byte
    is read. What the caller may do is decided per route (api/deps.py ``Allow``).

    Plain ASGI, not ``@app.middleware("http")``: Starlette's BaseHTTPMiddleware ends a streamed
    response normally when its body fails half way (a bundle whose layer cannot be read), so a
    client would take the truncated body for a whole one. Here the failure aborts the response:
    the server closes the connection before the body's end."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # goldfleet serves none: refused before anything
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] == "http":
            request = Request(scope, receive)
            if request.url.path != "/health":
                try:
                    if request.url.path not in OPEN:
                        request.state.caller = caller = await authenticate(request)
                        if caller.role == "site" and not request.url.path.startswith("/sync/"):
                            raise Forbidden(
                                f"token {caller.name} is a site token: it may only read /sync/"
                            )
                    problem = body_problem(request.method, request.url.path, request.headers)
                    if problem is not None:
                        raise problem
                except GoldfleetError as exc:
                    await error_response(exc)(scope, receive, send)
                    return
        await self.app(scope, receive, send)


# goldfleet's times are naive UTC (2026-12-01T22:00:00.123456); JSON Schema's "date-time" is
# RFC 3339, which requires an offset, so the description says what is sent instead
UTC_TIME = {
    "type": "string",
    "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})?$",
    "description": "UTC, ISO 8601, without an offset",
}


def _naive_utc_times(node: Any) -> Any:
    """Every ``{"type": "string", "format": "date-time"}`` of a description → UTC_TIME."""
    if isinstance(node, dict):
        if node.get("type") == "string" and node.get("format") == "date-time":
            rest = {k: v for k, v in node.items() if k not in ("type", "format")}
            return {**rest, **UTC_TIME}
        return {k: _naive_utc_times(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_naive_utc_times(v) for v in node]
    return node


def create_app(ctx: Context, *, recover: bool = True) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if recover:
            from goldfleet.home import recover as run_recovery

            ctx.runner.register()  # type: ignore[union-attr]
            for note in run_recovery(ctx):
                log.warning("recovery: %s", note)
            agents = guest_service.agents(ctx)  # RAS: "N agents need an update" at console start
            if agents.outdated or agents.missing or agents.templates:
                log.warning(
                    "guest tool: %d clones have an older goldfleet-guest than %s, %d have none,"
                    " %d templates' current versions hold an older or unknown one"
                    " (goldfleet agent status)",
                    agents.outdated,
                    agents.packaged,
                    agents.missing,
                    len(agents.templates),
                )
        ctx.runner.start_background()  # type: ignore[union-attr]
        yield
        ctx.runner.shutdown()  # type: ignore[union-attr]

    # the OpenAPI description is served behind the token like everything else but /health
    app = FastAPI(
        title="goldfleet",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.ctx = ctx

    app.add_middleware(RequireToken)

    @app.exception_handler(GoldfleetError)
    async def goldfleet_error(request: Request, exc: GoldfleetError) -> JSONResponse:
        if exc.status_code == 500 and (reason := ctx.disk_full_reason(exc)) is not None:
            return error_response(NoSpace(f"{exc.message} ({reason}); free space there"))
        return error_response(exc)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        """Starlette's and FastAPI's own refusals (a body that is not JSON, no such route, a
        method the route does not take) in the one shape of every refusal, headers kept (405's
        Allow)."""
        try:
            error = HTTPStatus(exc.status_code).phrase.title().replace(" ", "").replace("-", "")
        except ValueError:
            error = "HTTPError"
        return JSONResponse(
            {"error": error, "message": str(exc.detail)},
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(OperationalError)
    @app.exception_handler(OSError)
    async def disk_full(request: Request, exc: Exception) -> JSONResponse:
        """A write that found the disk full (the database's or the store's) is said so, with
        the place and the free space, instead of "Internal Server Error"."""
        reason = ctx.disk_full_reason(exc)
        if reason is None:
            log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
            return JSONResponse(
                {"error": "InternalError", "message": "internal error; see the server's log"},
                status_code=500,
            )
        # a refused commit changed nothing; a file write may have done part of its work
        unchanged = "; nothing was changed" if isinstance(exc, OperationalError) else ""
        return error_response(NoSpace(f"{reason}{unchanged}; free space there and try again"))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            if err.get("type") == "json_invalid":  # its loc is a character offset, not a field
                problem = (err.get("ctx") or {}).get("error", "not JSON")
                parts.append(f"the request body is not valid JSON: {problem}")
                continue
            where = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            parts.append(f"{where}: {err.get('msg')}")
        return JSONResponse(
            {"error": "InvalidInput", "message": "; ".join(parts) or "invalid request"},
            status_code=422,
        )

    @app.get("/health", tags=["health"])
    def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    fastapi_openapi = app.openapi

    def described() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _naive_utc_times(fastapi_openapi())
        return app.openapi_schema

    app.openapi = described  # type: ignore[method-assign]

    @app.get("/openapi.json", tags=["health"], include_in_schema=False)
    def openapi(caller: Caller) -> dict:
        return app.openapi()

    for module in (
        templates,
        clones,
        admin,
        sim,
        pools,
        bundles,
        sites,
        hosts,
        guests,
        sessions_router,
        clusters,
    ):
        app.include_router(module.router, responses=ERRORS)
    app.include_router(users.router, responses=ERRORS)
    return app
