"""The FastAPI application. ``create_app(ctx)`` is the only way to make one."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from goldfleet import __version__
from goldfleet.api.deps import Reader, authenticate
from goldfleet.api.routers import admin, bundles, clones, hosts, pools, sim, sites, templates
from goldfleet.api.uploads import body_problem
from goldfleet.bootstrap import Context
from goldfleet.errors import Forbidden, GoldfleetError

log = logging.getLogger("goldfleet.api")


def error_response(exc: GoldfleetError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
    return JSONResponse(
        {"error": type(exc).__name__, "message": exc.message},
        status_code=exc.status_code,
        headers=headers,
    )


class RequireToken:
    """Authenticate before anything else (body parsing included); only /health is open. Then
    refuse a body too large to be parsed in memory (api/uploads.py), before a byte is read.

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


def create_app(ctx: Context, *, recover: bool = True) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if recover:
            from goldfleet.services.home import recover as run_recovery

            ctx.runner.register()  # type: ignore[union-attr]
            for note in run_recovery(ctx):
                log.warning("recovery: %s", note)
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
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            parts.append(f"{where}: {err.get('msg')}")
        return JSONResponse(
            {"error": "InvalidInput", "message": "; ".join(parts) or "invalid request"},
            status_code=422,
        )

    @app.get("/health", tags=["health"])
    def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get("/openapi.json", tags=["health"], include_in_schema=False)
    def openapi(caller: Reader) -> dict:
        return app.openapi()

    app.include_router(templates.router)
    app.include_router(clones.router)
    app.include_router(admin.router)
    app.include_router(sim.router)
    app.include_router(pools.router)
    app.include_router(bundles.router)
    app.include_router(sites.router)
    app.include_router(hosts.router)
    return app
