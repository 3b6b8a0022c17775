"""The console's pages and actions (docs/console.md).

Who is calling: a user logged in with its password (``access.login``), whose session secret
(``gs_…``) is kept in an HttpOnly, SameSite=Strict cookie (Secure over TLS) and checked on every
request with ``access.authenticate`` — the same sessions, expiry and throttled, audited logins
as the API's ``/auth/login``. What the caller may do: the API's permission names, asked of the
same policy (``access.authorize``, ``access.reach``, ``access.visible``); an action the caller
may not do is left off the page and refused (403) when posted anyway. Every non-GET carries a
CSRF token derived from the session secret (a form field ``csrf`` or the header
``X-CSRF-Token`` htmx sends from the page's meta tag), checked before anything else.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import secrets
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.types import ASGIApp, Receive, Scope, Send

from goldfleet import __version__
from goldfleet.context import Context
from goldfleet.domain.access import (
    clone_path,
    cluster_path,
    pool_path,
    site_path,
    template_path,
)
from goldfleet.domain.model import LIGHT_ACTIONS
from goldfleet.domain.rollout import Policy
from goldfleet.errors import Forbidden, GoldfleetError, InvalidInput, Unauthorized
from goldfleet.services import (
    access,
    catalog,
    clusters,
    distribution,
    fleet,
    guests,
    hosts,
    pools,
    rollouts,
)
from goldfleet.services.common import audit

log = logging.getLogger("goldfleet.web")

CONSOLE_PREFIX = "/ui"
COOKIE = "gf_console"
LOGIN_COOKIE = "gf_login_csrf"
HERE = Path(__file__).parent
PAGE_SIZES = (50, 100, 200, 500)
MAX_ITEMS_SHOWN = 500  # an operation's items on its page (the counts cover them all)
SSE_TICK = 0.2  # seconds between looks at a running operation
SSE_STREAM_SECONDS = 30.0  # then the stream ends and the browser opens a new one
LIGHT_KINDS = frozenset(str(a) for a in LIGHT_ACTIONS)  # start, stop, message, logoff

templates = Jinja2Templates(directory=str(HERE / "templates"))


class NotLoggedIn(Exception):
    """No session, or one that ended: the login page (GET) or 401 (anything else)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def csrf_of(secret: str) -> str:
    """The CSRF token of a session: derived from its secret, which only the HttpOnly cookie
    holds, so a page of another origin can neither read nor compute it."""
    return hashlib.sha256(b"goldfleet-console-csrf\0" + secret.encode()).hexdigest()


def holds(caller: access.Caller, permission: str) -> bool:
    """The caller holds ``permission`` on some scope (a page or control worth showing)."""
    return any(permission in g.permissions for g in caller.grants)


def may(ctx: Context, caller: access.Caller, permission: str, kind: str | None, name: Any) -> bool:
    try:
        access.authorize(ctx, caller, permission, kind, name)
    except Forbidden:
        return False
    return True


def human_size(n: int | None) -> str:
    if n is None:
        return "–"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def when(t: datetime | None) -> str:
    return "–" if t is None else t.strftime("%Y-%m-%d %H:%M:%S")


templates.env.filters["size"] = human_size
templates.env.filters["when"] = when


# --- the pieces every page needs -----------------------------------------------------------


class Page:
    """A request of a logged-in user: the context, the caller, its session's CSRF token."""

    def __init__(self, request: Request, ctx: Context, caller: access.Caller, secret: str):
        self.request = request
        self.ctx = ctx
        self.caller = caller
        self.csrf = csrf_of(secret)
        self.secret = secret

    def render(self, name: str, status: int = 200, **values: Any) -> HTMLResponse:
        c = self.caller
        nav = [
            ("Dashboard", "/ui/", True),
            ("Templates", "/ui/templates", holds(c, "template.read")),
            ("Clones", "/ui/clones", holds(c, "clone.read")),
            ("Operations", "/ui/operations", holds(c, "operation.read")),
            ("Sessions", "/ui/sessions", holds(c, "clone.read")),
            ("Pools", "/ui/pools", holds(c, "pool.read")),
            ("Sites", "/ui/sites", holds(c, "site.read")),
            ("Hosts", "/ui/hosts", holds(c, "cluster.read")),
            ("Keys", "/ui/keys", holds(c, "key.read")),
            ("Audit", "/ui/audit", holds(c, "audit.read")),
            ("Users", "/ui/users", holds(c, "user.read")),
        ]
        return templates.TemplateResponse(
            self.request,
            name,
            {
                "caller": c,
                "csrf": self.csrf,
                "nav": [(label, href) for label, href, shown in nav if shown],
                "path": self.request.url.path,
                "version": __version__,
                **values,
            },
            status_code=status,
        )


def error_fragment(exc: GoldfleetError | str, status: int | None = None) -> HTMLResponse:
    """The server's words, as an element htmx puts next to the control that caused them."""
    message = exc if isinstance(exc, str) else exc.message
    code = status or (exc.status_code if isinstance(exc, GoldfleetError) else 400)
    body = templates.env.from_string(
        '<p class="error" role="alert">{{ code }}: {{ message }}</p>'
    ).render(code=code, message=message)
    return HTMLResponse(body, status_code=code)


def done_fragment(message: str, link: str | None = None, refresh: bool = False) -> HTMLResponse:
    body = templates.env.from_string(
        '<p class="ok" role="status">{{ message }}'
        '{% if link %} <a href="{{ link }}">open</a>{% endif %}</p>'
    ).render(message=message, link=link)
    headers = {"HX-Refresh": "true"} if refresh else {}
    return HTMLResponse(body, headers=headers)


async def session_of(request: Request, ctx: Context) -> tuple[access.Caller, str]:
    secret = request.cookies.get(COOKIE, "")
    if not secret:
        raise NotLoggedIn("not logged in")
    try:
        caller = await run_in_threadpool(access.authenticate, ctx, secret)
    except Unauthorized as exc:
        raise NotLoggedIn(exc.message) from None
    if caller.user is None:  # a cookie holding an API token: the console is for users
        raise NotLoggedIn("log in with a user name and password")
    return caller, secret


async def page(request: Request) -> Page:
    ctx: Context = request.app.state.ctx
    caller, secret = await session_of(request, ctx)
    return Page(request, ctx, caller, secret)


async def action(request: Request) -> tuple[Page, dict[str, Any]]:
    """A non-GET request: the session, then its CSRF token (header or form field), checked
    before anything is done; answers the page and the form's fields."""
    p = await page(request)
    problem = form_body_problem(request)
    if problem is not None:  # too large (413) or of unknown length (411): never read
        raise problem
    form = await request.form()
    sent = request.headers.get("x-csrf-token") or str(form.get("csrf") or "")
    if not sent or not hmac.compare_digest(sent, p.csrf):
        raise Forbidden("the form's CSRF token is missing or wrong: reload the page")
    fields: dict[str, Any] = {}
    for key in form:
        values = form.getlist(key)
        fields[key] = [str(v) for v in values] if len(values) > 1 else str(values[0])
    return p, fields


def form_body_problem(request: Request) -> GoldfleetError | None:
    """A console form is parsed in memory: the API's cap (``MAX_BODY``, 411 without a length)
    holds for it too. (A bundle's upload is streamed under its own limit, not a form.)"""
    from goldfleet.api.uploads import body_problem

    return body_problem(request.method, request.url.path, request.headers)


def listed(fields: dict[str, Any], key: str) -> list[str]:
    value = fields.get(key)
    if value is None or value == "":
        return []
    return value if isinstance(value, list) else [value]


def text(fields: dict[str, Any], key: str) -> str | None:
    value = fields.get(key)
    if isinstance(value, list):
        value = value[-1]
    value = (value or "").strip()
    return value or None


def number(fields: dict[str, Any], key: str, label: str) -> int | None:
    value = text(fields, key)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidInput(f"{label} {value!r} is not a whole number") from None


def rollout_from(fields: dict[str, Any]) -> SimpleNamespace:
    """The rollout policy form (the CLI's --logoff, --grace, --message, --max-parallel,
    --per-host, --canary, --max-failures, --at) as the fields ``rollouts.policy_from`` reads."""
    return SimpleNamespace(
        logoff=text(fields, "logoff") or "wait",
        deadline=text(fields, "deadline"),
        grace=text(fields, "grace"),
        message=text(fields, "message"),
        max_parallel=number(fields, "max_parallel", "max-parallel"),
        per_host=number(fields, "per_host", "per-host"),
        canary=number(fields, "canary", "canary") or 0,
        canary_auto=fields.get("canary_auto") == "on",
        stop_on_error=True,
        max_failures=text(fields, "max_failures"),
        at=text(fields, "at"),
    )


# --- the application -------------------------------------------------------------------------


def console_app(ctx: Context) -> FastAPI:
    """The console alone (paths under /ui/)."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ctx = ctx
    app.mount("/ui/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.exception_handler(NotLoggedIn)
    async def not_logged_in(request: Request, exc: NotLoggedIn) -> Response:
        if request.method in ("GET", "HEAD"):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            where = f"/ui/login?next={quote(target)}"
            if request.headers.get("hx-request"):
                return Response(status_code=401, headers={"HX-Redirect": where})
            return RedirectResponse(where, status_code=303)
        return error_fragment(f"{exc.reason}: log in again", 401)

    @app.exception_handler(GoldfleetError)
    async def refused(request: Request, exc: GoldfleetError) -> Response:
        if request.method in ("GET", "HEAD") and not request.headers.get("hx-request"):
            try:  # the page around the error, with what the caller may reach
                p = await page(request)
            except NotLoggedIn:
                p = None
            if p is not None:
                return p.render(
                    "error.html", status=exc.status_code, code=exc.status_code, message=exc.message
                )
            return templates.TemplateResponse(
                request,
                "error.html",
                {
                    "code": exc.status_code,
                    "message": exc.message,
                    "caller": None,
                    "nav": [],
                    "csrf": None,
                },
                status_code=exc.status_code,
            )
        return error_fragment(exc)

    @app.middleware("http")
    async def headers(request: Request, call_next: Callable[..., Any]) -> Response:
        response = await call_next(request)
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self';"
            " frame-ancestors 'none'; form-action 'self'",
        )
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if not request.url.path.startswith("/ui/static/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    # --- login ------------------------------------------------------------------------------

    @app.get("/ui/login")
    def login_form(request: Request, next: str = "/ui/") -> HTMLResponse:
        token = secrets.token_urlsafe(24)
        response = templates.TemplateResponse(
            request,
            "login.html",
            {"login_csrf": token, "next": _local(next), "caller": None, "nav": []},
        )
        _cookie(response, request, LOGIN_COOKIE, token, max_age=3600)
        return response

    @app.post("/ui/login")
    async def login(request: Request) -> Response:
        form = await request.form()
        name = str(form.get("name") or "")
        password = str(form.get("password") or "")
        target = _local(str(form.get("next") or "/ui/"))
        sent = str(form.get("login_csrf") or "")
        expected = request.cookies.get(LOGIN_COOKIE, "")
        if not sent or not expected or not hmac.compare_digest(sent, expected):
            return _login_again(request, target, "the login form expired: try again", 403)
        try:
            made = await run_in_threadpool(access.login, ctx, name, password)
        except GoldfleetError as exc:  # wrong password (401), disabled, throttled (429)
            return _login_again(request, target, exc.message, exc.status_code, name)
        response = RedirectResponse(target, status_code=303)
        seconds = max(60, int((made.expires_at - ctx.clock.now()).total_seconds()))
        _cookie(response, request, COOKIE, made.token, max_age=seconds)
        response.delete_cookie(LOGIN_COOKIE, path="/ui/")
        return response

    @app.post("/ui/logout")
    async def logout(request: Request) -> Response:
        p, _ = await action(request)
        await run_in_threadpool(access.logout, ctx, p.secret, actor=p.caller.name)
        response = RedirectResponse("/ui/login", status_code=303)
        response.delete_cookie(COOKIE, path="/ui/")
        if request.headers.get("hx-request"):
            response = Response(status_code=204, headers={"HX-Redirect": "/ui/login"})
            response.delete_cookie(COOKIE, path="/ui/")
        return response

    # --- dashboard ----------------------------------------------------------------------------

    @app.get("/ui")
    def bare() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=308)

    @app.get("/ui/")
    async def dashboard(request: Request) -> HTMLResponse:
        p = await page(request)
        facts = await run_in_threadpool(_dashboard, p)
        return p.render("dashboard.html", **facts)

    # --- templates ------------------------------------------------------------------------------

    @app.get("/ui/templates")
    async def template_list(request: Request) -> HTMLResponse:
        p = await page(request)
        found = await run_in_threadpool(_visible_templates, p)
        return p.render("templates.html", templates=found)

    @app.get("/ui/templates/{name}")
    async def template_detail(request: Request, name: str) -> HTMLResponse:
        p = await page(request)
        facts = await run_in_threadpool(_template_detail, p, name)
        return p.render("template.html", **facts)

    @app.post("/ui/templates/{name}/maintenance/{step}")
    async def maintenance(request: Request, name: str, step: str) -> Response:
        p, fields = await action(request)
        if step not in ("enter", "exit", "abort", "start"):
            return error_fragment(f"no maintenance step {step!r}", 404)
        try:
            return await run_in_threadpool(_maintenance, p, name, step, fields)
        except GoldfleetError as exc:
            return error_fragment(exc)

    # --- clones ---------------------------------------------------------------------------------

    @app.get("/ui/clones")
    async def clone_list(request: Request) -> HTMLResponse:
        p = await page(request)
        facts = await run_in_threadpool(_clones, p, dict(request.query_params))
        name = "_clone_table.html" if request.headers.get("hx-request") else "clones.html"
        return p.render(name, **facts)

    @app.post("/ui/clones/bulk")
    async def clone_bulk(request: Request) -> Response:
        p, fields = await action(request)
        try:
            return await run_in_threadpool(_bulk, p, fields)
        except GoldfleetError as exc:
            return error_fragment(exc)

    # --- operations -----------------------------------------------------------------------------

    @app.get("/ui/operations")
    async def operation_list(request: Request) -> HTMLResponse:
        p = await page(request)
        found = await run_in_threadpool(
            lambda: access.visible_operations(ctx, p.caller, rollouts.list_operations(ctx))
        )
        return p.render("operations.html", operations=found)

    @app.get("/ui/operations/{op_id}")
    async def operation_detail(request: Request, op_id: int) -> HTMLResponse:
        p = await page(request)
        facts = await run_in_threadpool(_operation, p, op_id)
        return p.render("operation.html", **facts)

    @app.get("/ui/operations/{op_id}/events")
    async def operation_events(request: Request, op_id: int) -> StreamingResponse:
        p = await page(request)
        await run_in_threadpool(
            access.authorize, ctx, p.caller, "operation.read", "operation", op_id
        )
        return StreamingResponse(
            _events(p, op_id),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @app.post("/ui/operations/{op_id}/{verb}")
    async def operation_control(request: Request, op_id: int, verb: str) -> Response:
        p, _ = await action(request)
        try:
            return await run_in_threadpool(_control, p, op_id, verb)
        except GoldfleetError as exc:
            return error_fragment(exc)

    # --- the other pages --------------------------------------------------------------------------

    def table_page(facts: Callable[[Page], dict[str, Any]]) -> Callable[..., Any]:
        """A page that is one table (table.html) of what ``facts`` gathers for the caller."""

        async def show(request: Request) -> HTMLResponse:
            p = await page(request)
            return p.render("table.html", **(await run_in_threadpool(facts, p)))

        return show

    for path, facts in (
        ("/ui/sessions", _sessions),
        ("/ui/pools", _pools),
        ("/ui/sites", _sites),
        ("/ui/hosts", _hosts),
        ("/ui/keys", _keys),
    ):
        app.get(path, response_class=HTMLResponse)(table_page(facts))

    @app.get("/ui/audit")
    async def audit_list(request: Request) -> HTMLResponse:
        p = await page(request)
        facts = await run_in_threadpool(_audit, p, dict(request.query_params))
        return p.render("table.html", **facts)

    @app.get("/ui/users")
    async def user_list(request: Request) -> HTMLResponse:
        p = await page(request)
        return p.render("table.html", **(await run_in_threadpool(_users, p)))

    @app.post("/ui/pools")
    async def pool_create(request: Request) -> Response:
        p, fields = await action(request)
        try:
            done = await run_in_threadpool(_pool_create, p, fields)
        except GoldfleetError as exc:
            return error_fragment(exc)
        return done_fragment(f"pool {done.name} created", refresh=True)

    @app.post("/ui/pools/resize")
    async def pool_resize(request: Request) -> Response:
        p, fields = await action(request)
        try:
            done = await run_in_threadpool(_pool_resize, p, fields)
        except GoldfleetError as exc:
            return error_fragment(exc)
        return done_fragment(
            f"pool {done.name}: min {done.min}, max {done.max}, buffer {done.buffer}", refresh=True
        )

    @app.post("/ui/pools/delete")
    async def pool_delete(request: Request) -> Response:
        p, fields = await action(request)
        try:
            name, op = await run_in_threadpool(_pool_delete, p, fields)
        except GoldfleetError as exc:
            return error_fragment(exc)
        if op is None:
            return done_fragment(f"pool {name} deleted", refresh=True)
        return done_fragment(
            f"pool {name} deleted; operation {op.id} deletes its {op.total} clones",
            f"/ui/operations/{op.id}",
        )

    @app.post("/ui/users")
    async def user_create(request: Request) -> Response:
        p, fields = await action(request)
        try:
            made = await run_in_threadpool(_user_create, p, fields)
        except GoldfleetError as exc:
            return error_fragment(exc)
        return done_fragment(f"user {made.name} created", refresh=True)

    @app.post("/ui/grants/{verb}")
    async def grant_change(request: Request, verb: str) -> Response:
        p, fields = await action(request)
        if verb not in ("add", "remove"):
            return error_fragment(f"no grant action {verb!r}: use add or remove", 404)
        try:
            said = await run_in_threadpool(_grant, p, fields, verb == "add")
        except GoldfleetError as exc:
            return error_fragment(exc)
        return done_fragment(said, refresh=True)

    @app.post("/ui/tokens")
    async def token_create(request: Request) -> Response:
        p, fields = await action(request)
        try:
            name, value = await run_in_threadpool(_token_create, p, fields)
        except GoldfleetError as exc:
            return error_fragment(exc)
        body = templates.env.from_string(
            '<div class="ok" role="status"><p>Token {{ name }} created. Its value, shown this'
            " once (copy it now; only its hash is kept):</p>"
            '<p><code id="token-value">{{ value }}</code></p></div>'
        ).render(name=name, value=value)
        return HTMLResponse(body)

    @app.post("/ui/sites")
    async def site_create(request: Request) -> Response:
        p, fields = await action(request)
        try:
            made = await run_in_threadpool(_site_create, p, fields)
        except GoldfleetError as exc:
            return error_fragment(exc)
        body = templates.env.from_string(
            '<div class="ok" role="status"><p>Site {{ name }} created. Its token, shown this'
            " once (give it to the site's server: goldfleet site join; only its hash is kept):"
            '</p><p><code id="site-token">{{ value }}</code></p></div>'
        ).render(name=made.site.name, value=made.token)
        return HTMLResponse(body)

    @app.post("/ui/sites/assign")
    async def site_assign(request: Request) -> Response:
        p, fields = await action(request)
        try:
            said = await run_in_threadpool(_site_assign, p, fields)
        except GoldfleetError as exc:
            return error_fragment(exc)
        return done_fragment(said, refresh=True)

    @app.post("/ui/sites/rights")
    async def site_rights(request: Request) -> Response:
        p, fields = await action(request)
        site = text(fields, "site") or ""
        patches = fields.get("local_patches") == "on"
        try:
            await run_in_threadpool(access.authorize, ctx, p.caller, "site.write", "site", site)
            await run_in_threadpool(
                lambda: distribution.set_rights(
                    ctx, site, local_patches=patches, actor=p.caller.name
                )
            )
        except GoldfleetError as exc:
            return error_fragment(exc)
        said = "may" if patches else "may not"
        return done_fragment(f"site {site} {said} publish local patches", refresh=True)

    @app.post("/ui/sites/{name}/revoke")
    async def site_revoke(request: Request, name: str) -> Response:
        p, _ = await action(request)
        try:
            await run_in_threadpool(access.authorize, ctx, p.caller, "site.write", "site", name)
            await run_in_threadpool(
                lambda: distribution.revoke_site(ctx, name, actor=p.caller.name)
            )
        except GoldfleetError as exc:
            return error_fragment(exc)
        return done_fragment(f"site {name}: its token is revoked", refresh=True)

    @app.post("/ui/clusters")
    async def cluster_create(request: Request) -> Response:
        p, fields = await action(request)
        try:
            made = await run_in_threadpool(_cluster_create, p, fields)
        except GoldfleetError as exc:
            return error_fragment(exc)
        return done_fragment(f"cluster {made.name} created", refresh=True)

    @app.post("/ui/clusters/settings/{what}")
    async def cluster_settings(request: Request, what: str) -> Response:
        """A cluster's package channel, proxy or sync schedule: the API's ``POST
        /clusters/NAME/channel|proxy|sync-schedule`` (``cluster.write`` on the cluster)."""
        p, fields = await action(request)
        if what not in ("channel", "proxy", "schedule"):
            return error_fragment(f"no cluster setting {what!r}", 404)
        try:
            said = await run_in_threadpool(_cluster_setting, p, what, fields)
        except GoldfleetError as exc:
            return error_fragment(exc)
        return done_fragment(said, refresh=True)

    @app.post("/ui/clusters/{name}/sync")
    async def cluster_sync(request: Request, name: str) -> Response:
        p, _ = await action(request)
        try:
            await run_in_threadpool(
                access.authorize, ctx, p.caller, "cluster.write", "cluster", name
            )
            await run_in_threadpool(lambda: clusters.sync(ctx, name, actor=p.caller.name))
        except GoldfleetError as exc:
            return error_fragment(exc)
        return done_fragment(f"cluster {name} synced", refresh=True)

    @app.post("/ui/bundles/import")
    async def bundle_import(request: Request) -> Response:
        """The bundle file as the request's body (console.js sends it with fetch), streamed
        into the incoming folder as the API's upload is; the CSRF token in its header."""
        from goldfleet.api.uploads import received_body

        p = await page(request)
        sent = request.headers.get("x-csrf-token") or ""
        if not sent or not hmac.compare_digest(sent, p.csrf):
            raise Forbidden("the form's CSRF token is missing or wrong: reload the page")
        limit = ctx.settings.max_virtual_size * 4 + (64 << 20)
        try:
            await run_in_threadpool(access.authorize, ctx, p.caller, "bundle.import", None, None)
            async with received_body(
                request, ctx, prefix="bundle", limit=limit, what="bundle"
            ) as file:
                made = await run_in_threadpool(
                    lambda: distribution.import_bundle(ctx, file, actor=p.caller.name)
                )
        except GoldfleetError as exc:
            return error_fragment(exc)
        added = ", ".join(f"v{n}" for n in made.versions_added) or "none"
        skipped = ", ".join(f"v{n}" for n in made.versions_skipped) or "none"
        return done_fragment(
            f"bundle of {made.template} imported (signed by {made.signer}): versions added"
            f" {added}; already here {skipped}; {made.layers_received} layers received",
            f"/ui/templates/{quote(made.template)}",
        )

    @app.post("/ui/keys/trust")
    async def key_trust(request: Request) -> Response:
        p, fields = await action(request)
        try:
            await run_in_threadpool(access.authorize, ctx, p.caller, "key.write", None, None)
            name = text(fields, "name") or ""
            await run_in_threadpool(
                lambda: distribution.trust_key(
                    ctx, name, str(fields.get("public_key") or ""), actor=p.caller.name
                )
            )
        except GoldfleetError as exc:
            return error_fragment(exc)
        return done_fragment(f"key {name} trusted", refresh=True)

    @app.post("/ui/keys/untrust")
    async def key_untrust(request: Request) -> Response:
        p, fields = await action(request)
        name = text(fields, "name") or ""
        try:
            await run_in_threadpool(access.authorize, ctx, p.caller, "key.write", None, None)
            await run_in_threadpool(
                lambda: distribution.untrust_key(ctx, name, actor=p.caller.name)
            )
        except GoldfleetError as exc:
            return error_fragment(exc)
        return done_fragment(f"key {name} is no longer trusted", refresh=True)

    @app.get("/ui/bundles/export")
    async def bundle_export(request: Request, template: str = "", since: str = "") -> Response:
        """The API's ``GET /templates/NAME/bundle`` as a download (``bundle.export`` on the
        template): the signed bundle streamed as a tar; refusals before the first byte, shown
        on the page around them."""
        from goldfleet.api.streaming import GuardedStream

        p = await page(request)
        await run_in_threadpool(
            access.authorize, ctx, p.caller, "bundle.export", "template", template
        )
        after = None
        if since.strip():
            if not since.strip().isdigit() or int(since) < 1:
                raise InvalidInput(f"since {since!r} is not a version number")
            after = int(since)
        plan = await run_in_threadpool(distribution.plan_export, ctx, template, after, False)
        suffix = f"-since-v{after}" if after is not None else ""
        return GuardedStream(
            distribution.stream_bundle(plan),
            stall_seconds=ctx.settings.stall_seconds,
            media_type="application/x-tar",
            headers={"Content-Disposition": f'attachment; filename="{template}{suffix}.bundle"'},
        )

    @app.post("/ui/pools/{name}/{verb}")
    async def pool_control(request: Request, name: str, verb: str) -> Response:
        p, _ = await action(request)
        steer = {"drain": pools.drain_pool, "enable": pools.enable_pool}.get(verb)
        if steer is None:
            return error_fragment(f"no pool action {verb!r}: use drain or enable", 404)
        try:
            await run_in_threadpool(access.authorize, ctx, p.caller, "pool.write", "pool", name)
            done = await run_in_threadpool(lambda: steer(ctx, name, actor=p.caller.name))
        except GoldfleetError as exc:
            return error_fragment(exc)
        return done_fragment(f"pool {done.name} is {done.state}", refresh=True)

    @app.post("/ui/sessions/{clone}/{user}/logoff")
    async def session_logoff(request: Request, clone: str, user: str) -> Response:
        p, _ = await action(request)
        try:
            await run_in_threadpool(access.authorize, ctx, p.caller, "clone.logoff", "clone", clone)
            await run_in_threadpool(lambda: fleet.logoff(ctx, clone, user, actor=p.caller.name))
        except GoldfleetError as exc:
            return error_fragment(exc)
        return done_fragment(f"{user} logged off {clone}", refresh=True)

    @app.post("/ui/tokens/{name}/revoke")
    async def token_revoke(request: Request, name: str) -> Response:
        p, _ = await action(request)
        try:
            await run_in_threadpool(access.authorize, ctx, p.caller, "user.write", None, None)
            await run_in_threadpool(lambda: access.revoke_token(ctx, name, actor=p.caller.name))
        except GoldfleetError as exc:
            return error_fragment(exc)
        return done_fragment(f"token {name} revoked", refresh=True)

    @app.post("/ui/password")
    async def password_change(request: Request) -> Response:
        """A user changes its own password; ``user.write`` changes anyone's (the API's
        ``POST /users/NAME/password``). The user's sessions end: its own, a new login."""
        p, fields = await action(request)
        name = text(fields, "user") or p.caller.user or ""
        try:
            await run_in_threadpool(_password, p, name, str(fields.get("password") or ""))
        except GoldfleetError as exc:
            return error_fragment(exc)
        if name == p.caller.user:
            response = done_fragment("password changed: log in with the new one")
            response.headers["HX-Redirect"] = "/ui/login"
            response.delete_cookie(COOKIE, path="/ui/")
            return response
        return done_fragment(f"password of {name} changed; its sessions ended")

    @app.post("/ui/roles")
    async def role_create(request: Request) -> Response:
        p, fields = await action(request)
        try:
            await run_in_threadpool(access.authorize, ctx, p.caller, "user.write", None, None)
            made = await run_in_threadpool(
                lambda: access.create_role(
                    ctx,
                    name=text(fields, "name") or "",
                    allow=listed(fields, "allow"),
                    actor=p.caller.name,
                )
            )
        except GoldfleetError as exc:
            return error_fragment(exc)
        return done_fragment(f"role {made.name} created", refresh=True)

    @app.post("/ui/roles/{name}/delete")
    async def role_delete(request: Request, name: str) -> Response:
        p, _ = await action(request)
        try:
            await run_in_threadpool(access.authorize, ctx, p.caller, "user.write", None, None)
            await run_in_threadpool(lambda: access.delete_role(ctx, name, actor=p.caller.name))
        except GoldfleetError as exc:
            return error_fragment(exc)
        return done_fragment(f"role {name} deleted", refresh=True)

    @app.post("/ui/pools/window")
    async def pool_window(request: Request) -> Response:
        p, fields = await action(request)
        try:
            done = await run_in_threadpool(_pool_window, p, fields)
        except GoldfleetError as exc:
            return error_fragment(exc)
        said = (
            f"pool {done.name}: no maintenance window"
            if not done.window_cron
            else f"pool {done.name}: window {done.window_cron} for {done.window_minutes} min"
        )
        return done_fragment(said, refresh=True)

    @app.post("/ui/users/{name}/{verb}")
    async def user_control(request: Request, name: str, verb: str) -> Response:
        p, _ = await action(request)
        try:
            access.authorize(ctx, p.caller, "user.write", None, None)
            if verb not in ("disable", "enable"):
                return error_fragment(f"no user action {verb!r}", 404)
            await run_in_threadpool(
                access.set_disabled, ctx, name, verb == "disable", actor=p.caller.name
            )
        except GoldfleetError as exc:
            return error_fragment(exc)
        return done_fragment(f"user {name}: {verb}d", refresh=True)

    return app


def _local(target: str) -> str:
    """Only a path of the console (no other site) after login."""
    return target if target.startswith("/ui/") and "//" not in target else "/ui/"


def _cookie(response: Response, request: Request, name: str, value: str, *, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/ui/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def _login_again(
    request: Request, target: str, message: str, status: int, name: str = ""
) -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    response = templates.TemplateResponse(
        request,
        "login.html",
        {
            "login_csrf": token,
            "next": target,
            "error": message,
            "name": name,
            "caller": None,
            "nav": [],
        },
        status_code=status,
    )
    _cookie(response, request, LOGIN_COOKIE, token, max_age=3600)
    return response


# --- what the pages show ------------------------------------------------------------------------


def _visible_templates(p: Page) -> list[Any]:
    if not holds(p.caller, "template.read"):
        return []
    return access.visible(
        p.caller, "template.read", catalog.list_templates(p.ctx), lambda t: template_path(t.name)
    )


def _dashboard(p: Page) -> dict[str, Any]:
    ctx, c = p.ctx, p.caller
    facts: dict[str, Any] = {}
    found = _visible_templates(p)
    facts["templates"] = found
    facts["in_maintenance"] = [t for t in found if t.status != "ready"]
    facts["behind"] = sum(t.clones_behind for t in found)
    if holds(c, "clone.read"):
        facts["counts"] = fleet.count_clones(ctx, reach=access.reach(c, "clone.read"))
    if holds(c, "operation.read"):
        ops = access.visible_operations(ctx, c, rollouts.list_operations(ctx, limit=100))
        facts["running"] = [o for o in ops if o.status in ("running", "paused", "scheduled")]
        facts["failures"] = [o for o in ops if o.failed or o.status == "failed"][:10]
    if holds(c, "site.read"):
        sites = access.visible(
            c, "site.read", distribution.list_sites(ctx), lambda v: site_path(v.name)
        )
        facts["sites"] = len(sites)
        facts["sites_behind"] = [
            s.name
            for s in sites
            if any(st.state != "verified" for st in s.states.values()) or s.token_revoked
        ]
    if holds(c, "cluster.read"):
        found_clusters = access.visible(
            c, "cluster.read", clusters.list_clusters(ctx), lambda v: cluster_path(v.name)
        )
        facts["clusters"] = len(found_clusters)
        facts["hosts_pending"] = [
            f"{cl.name}/{h.name}" for cl in found_clusters for h in cl.hosts if h.pending
        ]
    if holds(c, "compliance.read") and access.reach(c, "compliance.read").everything:
        facts["agents"] = guests.agent_counts(ctx)
    return facts


def _template_detail(p: Page, name: str) -> dict[str, Any]:
    ctx, c = p.ctx, p.caller
    access.authorize(ctx, c, "template.read", "template", name)
    t = catalog.show_template(ctx, name)
    versions = catalog.list_versions(ctx, name)
    digests = [d for v in versions for d in v.chain]
    sizes = catalog.layer_sizes(ctx, digests)
    return {
        "t": t,
        "versions": versions,
        "chain": chain_svg(versions, sizes),
        "can_maintain": may(ctx, c, "template.maintenance", "template", name),
    }


def chain_svg(versions: list[Any], sizes: dict[str, int]) -> dict[str, Any]:
    """The layer chain as boxes: one column per layer (base first), one row per version; a
    version's row fills the layers of its chain, so shared layers line up in one column."""
    order: list[str] = []
    for v in sorted(versions, key=lambda v: v.number):
        for d in reversed(v.chain):  # base first
            if d not in order:
                order.append(d)
    col_w, row_h, left, top = 120, 34, 70, 28
    largest = max((sizes.get(d, 0) for d in order), default=0) or 1
    layers = []
    for i, d in enumerate(order):
        users = [v.name for v in versions if d in v.chain]
        share = sizes.get(d, 0) / largest
        layers.append(
            {
                "digest": d,
                "short": d.removeprefix("sha256:")[:10],
                "size": human_size(sizes.get(d)),
                "x": left + i * col_w,
                "bar": max(4, int((col_w - 16) * math.sqrt(share))),
                "versions": users,
                "shared": len(users) > 1,
            }
        )
    rows = []
    for j, v in enumerate(sorted(versions, key=lambda v: -v.number)):
        cells = [
            {"x": lay["x"], "shared": lay["shared"], "digest": lay["short"]}
            for lay in layers
            if lay["digest"] in v.chain
        ]
        rows.append(
            {
                "name": v.name,
                "y": top + j * row_h,
                "cells": cells,
                "clones": v.clones,
                "current": v.current,
            }
        )
    width = max(560, left + max(1, len(layers)) * col_w + 110)
    height = top + max(1, len(rows)) * row_h + 40
    return {
        "layers": layers,
        "rows": rows,
        "width": width,
        "height": height,
        "col_w": col_w,
        "row_h": row_h,
        "legend_y": top + len(rows) * row_h + 18,
    }


def _maintenance(p: Page, name: str, step: str, fields: dict[str, Any]) -> Response:
    ctx, c = p.ctx, p.caller
    access.authorize(ctx, c, "template.maintenance", "template", name)
    if step == "enter":
        catalog.enter_maintenance(ctx, name, actor=c.name)
        return done_fragment(f"template {name} is in maintenance", refresh=True)
    if step == "abort":
        catalog.abort_maintenance(ctx, name, actor=c.name)
        return done_fragment(f"maintenance of {name} aborted", refresh=True)
    if step == "start":
        catalog.start_maintenance_vm(ctx, name, actor=c.name)
        return done_fragment(f"the maintenance VM of {name} is running", refresh=True)
    recreate = text(fields, "recreate") or "none"
    if recreate not in ("none", "linked", "all"):
        raise InvalidInput(f"recreate {recreate!r} is not one of none, linked, all")
    policy, start_at = rollouts.policy_from(ctx, rollout_from(fields))
    done = catalog.exit_maintenance(
        ctx,
        name,
        recreate=recreate,
        shutdown=fields.get("shutdown") == "on",
        actor=c.name,
        policy=policy,
        start_at=start_at,
        guest_tool_version=None,
        quarantine_version=None,
    )
    if done.operation is not None:
        link = f"/ui/operations/{done.operation.id}"
        response = done_fragment(
            f"version {done.version} published; operation {done.operation.id} started", link
        )
        response.headers["HX-Redirect"] = link
        return response
    return done_fragment(f"version {done.version} published", refresh=True)


def _clones(p: Page, query: dict[str, str]) -> dict[str, Any]:
    ctx, c = p.ctx, p.caller
    if not holds(c, "clone.read"):
        raise Forbidden(f"{c.who} holds clone.read nowhere: it may list no clone")
    size = int(query.get("size") or PAGE_SIZES[0])
    if size not in PAGE_SIZES:
        raise InvalidInput(f"page size {size} is not one of {PAGE_SIZES}")
    filters = {
        k: (query.get(k) or None) for k in ("template", "state", "host", "pool", "user", "after")
    }
    version = query.get("version") or None
    if version is not None and not version.isdigit():
        raise InvalidInput(f"version {version!r} is not a number")
    rows = fleet.clone_rows(
        ctx,
        reach=access.reach(c, "clone.read"),
        version=int(version) if version else None,
        limit=size + 1,
        **filters,
    )
    more = len(rows) > size
    rows = rows[:size]
    kept = {k: v for k, v in query.items() if v and k not in ("after",)}
    next_link = "/ui/clones?" + urlencode({**kept, "after": rows[-1]["name"]}) if more else None
    first_link = "/ui/clones?" + urlencode(kept) if filters["after"] else None
    actions = [
        (a, label)
        for a, label, perm in (
            ("restore", "Restore", "clone.restore"),
            ("recreate", "Recreate", "clone.recreate"),
            ("rebase", "Rebase to current", "clone.rebase"),
            ("start", "Start", "clone.start"),
            ("stop", "Stop", "clone.stop"),
            ("message", "Message users", "clone.message"),
            ("logoff", "Log off users", "clone.logoff"),
        )
        if holds(c, perm)
    ]
    return {
        "rows": rows,
        "query": query,
        "size": size,
        "sizes": PAGE_SIZES,
        "next_link": next_link,
        "first_link": first_link,
        "actions": actions,
        "states": fleet_states(),
    }


def fleet_states() -> list[str]:
    return ["ready", "failed", "creating", "restoring", "rebasing", "recreating", "running",
            "stopped"]  # fmt: skip


BULK_PERMISSION = {
    "restore": "clone.restore",
    "recreate": "clone.recreate",
    "rebase": "clone.rebase",
    "start": "clone.start",
    "stop": "clone.stop",
    "message": "clone.message",
    "logoff": "clone.logoff",
}


def _bulk(p: Page, fields: dict[str, Any]) -> Response:
    ctx, c = p.ctx, p.caller
    verb = text(fields, "action") or ""
    permission = BULK_PERMISSION.get(verb)
    if permission is None:
        raise InvalidInput(f"no bulk action {verb!r}: use {', '.join(BULK_PERMISSION)}")
    names = listed(fields, "clone")
    if not names:
        raise InvalidInput("no clone selected")
    for name in names:  # every clone, before anything is done to any
        access.authorize(ctx, c, permission, "clone", name)
    op = fleet.bulk_action(
        ctx,
        names=names,
        action=verb,
        text=text(fields, "text") if verb == "message" else None,
        actor=c.name,
    )
    link = f"/ui/operations/{op.id}"
    return done_fragment(f"operation {op.id} started: {verb} of {op.total} clones", link)


def _operation(p: Page, op_id: int) -> dict[str, Any]:
    ctx, c = p.ctx, p.caller
    access.authorize(ctx, c, "operation.read", "operation", op_id)
    op, items = snapshot(ctx, op_id)
    return {
        "op": op,
        "items": items,
        "policy": policy_line(op.kind, op.policy),
        "can_control": may(ctx, c, "operation.control", "operation", op_id),
        "can_retry": holds(c, retry_permission(op.kind)),
    }


def progress_key(op: Any) -> tuple:
    return (op.status, op.done, op.failed, op.running, op.queued, op.skipped, op.cancelled)


def snapshot(ctx: Context, op_id: int, tries: int = 3) -> tuple[Any, list[Any]]:
    """The operation and its items as of one moment: read the operation, its items, then the
    operation again; its counts unchanged in between, they agree with the items (else read
    again, a few times; the last pair is at worst one tick apart and the next tick sends it
    again, its counts having changed)."""
    op = rollouts.show_operation(ctx, op_id)
    while True:
        items = rollouts.list_items(ctx, op_id, limit=MAX_ITEMS_SHOWN)
        again = rollouts.show_operation(ctx, op_id)
        tries -= 1
        if progress_key(again) == progress_key(op) or tries <= 0:
            return again, items
        op = again


# what of a rollout policy matters to an operation of each kind: a start logs nobody off and
# sends no message; a message sends its text and logs nobody off
POLICY_HIDDEN = {
    "clone.start": {"logoff", "grace_seconds", "message", "deadline"},
    "clone.message": {"logoff", "grace_seconds", "deadline"},
}


def policy_line(kind: str, policy: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """The policy as ``key=value`` pairs, without what does not apply to the operation's kind
    (a start shows no logoff message) and without empty values."""
    hidden = POLICY_HIDDEN.get(kind, set())
    return sorted(
        (k, v) for k, v in (policy or {}).items() if k not in hidden and v not in (None, "")
    )


def retry_permission(kind: str) -> str:
    """What retrying an operation's failed items asks: the same start, stop, message or logoff
    again, or finishing the clones' failed action (clone.recreate, as `clone retry`)."""
    light = kind.removeprefix("clone.")
    return f"clone.{light}" if light in LIGHT_KINDS else "clone.recreate"


def _control(p: Page, op_id: int, verb: str) -> Response:
    ctx, c = p.ctx, p.caller
    if verb == "retry":
        access.authorize(ctx, c, "operation.read", "operation", op_id)
        items = rollouts.list_items(ctx, op_id, limit=fleet.MAX_BULK)
        failed = [i.clone for i in items if i.state == "failed"]
        if not failed:
            raise InvalidInput(f"operation {op_id} has no failed item to retry")
        first = rollouts.show_operation(ctx, op_id)
        light = first.kind.removeprefix("clone.")
        if light in LIGHT_KINDS:
            # a start, stop, message or logoff failed an item, not its clone: the same action
            # again over those clones, under the same policy (a message: the same text)
            for name in failed:
                access.authorize(ctx, c, f"clone.{light}", "clone", name)
            policy = Policy.from_json(first.policy)
            op = fleet.bulk_action(
                ctx,
                names=failed,
                action=light,
                text=policy.message if light == "message" else None,
                policy=policy,
                actor=c.name,
            )
            link = f"/ui/operations/{op.id}"
            response = done_fragment(f"operation {op.id}: {light} of {op.total} clones", link)
            response.headers["HX-Redirect"] = link
            return response
        for name in failed:
            access.authorize(ctx, c, "clone.recreate", "clone", name)
        op = fleet.retry(ctx, names=failed, actor=c.name)
        link = f"/ui/operations/{op.id}"
        response = done_fragment(f"operation {op.id} retries {op.total} clones", link)
        response.headers["HX-Redirect"] = link
        return response
    steer = {
        "pause": rollouts.pause_operation,
        "resume": rollouts.resume_operation,
        "cancel": rollouts.cancel_operation,
    }.get(verb)
    if steer is None:
        raise InvalidInput(f"no operation action {verb!r}: use pause, resume, cancel, retry")
    access.authorize(ctx, c, "operation.control", "operation", op_id)
    op = steer(ctx, op_id, actor=c.name)
    return done_fragment(f"operation {op.id} is {op.status}")


async def _events(p: Page, op_id: int) -> AsyncIterator[bytes]:
    """Server-sent events: the progress and the items of the operation each time they change,
    until it ends (then once more, and the stream closes). The session is checked again every
    few seconds: a logout or an expiry ends the stream. A stream lasts at most
    SSE_STREAM_SECONDS; the browser's EventSource reconnects and gets the state at once."""
    ctx = p.ctx
    loop = asyncio.get_running_loop()
    until = loop.time() + SSE_STREAM_SECONDS
    yield b"retry: 1000\n\n"  # the browser reconnects 1 s after a stream ends early
    can_control, can_retry = await run_in_threadpool(
        lambda: (
            may(ctx, p.caller, "operation.control", "operation", op_id),
            holds(p.caller, retry_permission(rollouts.show_operation(ctx, op_id).kind)),
        )
    )
    last: tuple | None = None
    checked = loop.time()
    while True:
        op = await run_in_threadpool(rollouts.show_operation, ctx, op_id)
        if progress_key(op) != last:
            op, items = await run_in_threadpool(snapshot, ctx, op_id)
            last = progress_key(op)
            progress = templates.get_template("_progress.html").render(
                op=op, can_control=can_control, can_retry=can_retry
            )
            rows = templates.get_template("_items.html").render(items=items)
            yield _event("progress", progress)
            yield _event("items", rows)
            if op.finished_at is not None:
                yield _event("end", op.status)
                return
        await asyncio.sleep(SSE_TICK)
        now = loop.time()
        if now > until:  # a stream is not held open for ever (a server's stop waits
            return  # for its open responses): the page's EventSource opens another
        if now - checked > 5:
            checked = now
            try:
                await run_in_threadpool(access.authenticate, ctx, p.secret)
            except Unauthorized:
                yield _event("end", "logged out")
                return


def _event(name: str, data: str) -> bytes:
    lines = "".join(f"data: {line}\n" for line in data.splitlines() or [""])
    return f"event: {name}\n{lines}\n".encode()


def _sessions(p: Page) -> dict[str, Any]:
    ctx, c = p.ctx, p.caller
    if not holds(c, "clone.read"):
        raise Forbidden(f"{c.who} holds clone.read nowhere")
    found = fleet.list_sessions(ctx)
    shown = access.visible(
        c,
        "clone.read",
        found.sessions,
        lambda v: clone_path(v.clone, v.template, v.pool, None, None),
    )
    return {
        "title": "Sessions",
        "intro": "Users logged in to running clones, as the driver reports them. To message "
        "the users of clones, select them on the clones page (Message users).",
        "tables": [
            (
                "Logged in",
                ["Clone", "User", "Since", "Idle (s)", "Template", "Pool", "Host", "Action"],
                [
                    [
                        s.clone,
                        s.user,
                        when(s.since),
                        s.idle_seconds,
                        s.template,
                        s.pool,
                        s.host,
                        button(
                            f"/ui/sessions/{quote(s.clone)}/{quote(s.user)}/logoff",
                            "Log off",
                            f"Log {s.user} off {s.clone} now?",
                        )
                        if may(ctx, c, "clone.logoff", "clone", s.clone)
                        else None,
                    ]
                    for s in shown
                ],
            )
        ],
    }


def _pools(p: Page) -> dict[str, Any]:
    ctx, c = p.ctx, p.caller
    if not holds(c, "pool.read"):
        raise Forbidden(f"{c.who} holds pool.read nowhere")
    found = access.visible(
        c, "pool.read", pools.list_pools(ctx), lambda v: pool_path(v.name, v.template)
    )

    def steer(v: Any) -> Any:
        if not may(ctx, c, "pool.write", "pool", v.name):
            return None
        if v.enabled:
            return button(f"/ui/pools/{quote(v.name)}/drain", "Drain", f"Drain pool {v.name}?")
        return button(f"/ui/pools/{quote(v.name)}/enable", "Enable")

    templates_writable = [
        t.name
        for t in _visible_templates(p)
        if holds(c, "pool.write") and may(ctx, c, "pool.write", "template", t.name)
    ]
    return {
        "title": "Pools",
        "forms": "_pool_forms.html",
        "pool_create": templates_writable,
        "pool_targets": [v.name for v in found if may(ctx, c, "pool.write", "pool", v.name)],
        "tables": [
            (
                "Pools",
                [
                    "Pool",
                    "Template",
                    "Min",
                    "Max",
                    "Buffer",
                    "Window",
                    "State",
                    "Clones",
                    "Idle",
                    "Action",
                ],
                [
                    [
                        (v.name, f"/ui/clones?pool={quote(v.name)}"),
                        v.template,
                        v.min,
                        v.max,
                        v.buffer,
                        f"{v.window_cron} ({v.window_minutes} min)" if v.window_cron else "–",
                        v.state,
                        v.total,
                        v.idle,
                        steer(v),
                    ]
                    for v in found
                ],
            )
        ],
    }


def _pool_create(p: Page, fields: dict[str, Any]) -> Any:
    ctx, c = p.ctx, p.caller
    template = text(fields, "template") or ""
    access.authorize(ctx, c, "pool.write", "template", template)
    return pools.create_pool(
        ctx,
        name=text(fields, "name") or "",
        template=template,
        min_size=number(fields, "min", "min") or 0,
        max_size=_required(number(fields, "max", "max"), "max"),
        buffer=number(fields, "buffer", "buffer") or 0,
        actor=c.name,
    )


def _pool_resize(p: Page, fields: dict[str, Any]) -> Any:
    ctx, c = p.ctx, p.caller
    name = text(fields, "pool") or ""
    access.authorize(ctx, c, "pool.write", "pool", name)
    return pools.resize_pool(
        ctx,
        name,
        min_size=number(fields, "min", "min") or 0,
        max_size=_required(number(fields, "max", "max"), "max"),
        buffer=number(fields, "buffer", "buffer") or 0,
        actor=c.name,
    )


def _pool_delete(p: Page, fields: dict[str, Any]) -> tuple[str, Any]:
    ctx, c = p.ctx, p.caller
    name = text(fields, "pool") or ""
    access.authorize(ctx, c, "pool.write", "pool", name)
    keep = fields.get("keep_clones") == "on"
    return name, pools.delete_pool(ctx, name, keep_clones=keep, actor=c.name)


def _pool_window(p: Page, fields: dict[str, Any]) -> Any:
    """The API's ``PUT /pools/NAME/window``: cron and minutes both empty, no window."""
    ctx, c = p.ctx, p.caller
    name = text(fields, "pool") or ""
    access.authorize(ctx, c, "pool.write", "pool", name)
    return pools.set_window(
        ctx,
        name,
        cron=text(fields, "cron"),
        minutes=number(fields, "minutes", "minutes"),
        logoff=text(fields, "logoff"),
        grace=text(fields, "grace"),
        message=text(fields, "message"),
        actor=c.name,
    )


def _password(p: Page, name: str, password: str) -> None:
    ctx, c = p.ctx, p.caller
    if c.user != name:
        access.authorize(ctx, c, "user.write", None, None)
    access.set_password(ctx, name, password, actor=c.name)


def _required(value: int | None, label: str) -> int:
    if value is None:
        raise InvalidInput(f"give the {label}")
    return value


def _user_create(p: Page, fields: dict[str, Any]) -> Any:
    ctx, c = p.ctx, p.caller
    access.authorize(ctx, c, "user.write", None, None)
    return access.create_user(
        ctx,
        name=text(fields, "name") or "",
        password=str(fields.get("password") or ""),
        role=text(fields, "role") or "",
        scope=text(fields, "scope"),
        actor=c.name,
    )


def _grant(p: Page, fields: dict[str, Any], add: bool) -> str:
    ctx, c = p.ctx, p.caller
    access.authorize(ctx, c, "user.write", None, None)
    user, role, scope = text(fields, "user"), text(fields, "role"), text(fields, "scope")
    if not user or not role or not scope:
        raise InvalidInput("give the user, the role and the scope")
    holder = access.Holder("user", user)
    if add:
        access.add_grant(ctx, holder, role, scope, actor=c.name)
        return f"{user} holds {role} on {scope}"
    access.remove_grant(ctx, holder, role, scope, actor=c.name)
    return f"{user} no longer holds {role} on {scope}"


def _token_create(p: Page, fields: dict[str, Any]) -> tuple[str, str]:
    ctx, c = p.ctx, p.caller
    access.authorize(ctx, c, "user.write", None, None)
    name = text(fields, "name") or ""
    value = access.create_token(
        ctx, name=name, role=text(fields, "role") or "", scope=text(fields, "scope"), actor=c.name
    )
    return name, value


def _site_create(p: Page, fields: dict[str, Any]) -> Any:
    ctx, c = p.ctx, p.caller
    access.authorize(ctx, c, "site.write", None, None)
    return distribution.create_site(
        ctx,
        text(fields, "name") or "",
        local_patches=fields.get("local_patches") == "on",
        actor=c.name,
    )


def _site_assign(p: Page, fields: dict[str, Any]) -> str:
    ctx, c = p.ctx, p.caller
    site, template = text(fields, "site") or "", text(fields, "template") or ""
    access.authorize(ctx, c, "site.write", "site", site)
    versions = text(fields, "versions") or "all"
    distribution.assign_template(ctx, site, template, versions=versions, actor=c.name)
    return f"site {site} receives {template} ({versions})"


def _cluster_create(p: Page, fields: dict[str, Any]) -> Any:
    ctx, c = p.ctx, p.caller
    access.authorize(ctx, c, "cluster.write", None, None)
    hosts = [h.strip() for h in (text(fields, "hosts") or "").split(",") if h.strip()]
    return clusters.create_cluster(
        ctx, text(fields, "name") or "", hosts, text(fields, "coordinator") or "", actor=c.name
    )


def _cluster_setting(p: Page, what: str, fields: dict[str, Any]) -> str:
    ctx, c = p.ctx, p.caller
    name = text(fields, "cluster") or ""
    access.authorize(ctx, c, "cluster.write", "cluster", name)
    if what == "schedule":
        done = clusters.set_sync_schedule(
            ctx,
            name,
            text(fields, "kind") or "",
            day=number(fields, "day", "day"),
            at=text(fields, "at"),
            actor=c.name,
        )
        return f"cluster {name}: sync {done.sync_schedule}"
    if what == "proxy":  # the password is sent on, never shown back
        url = text(fields, "url")
        clusters.set_proxy(
            ctx,
            name,
            url,
            username=text(fields, "username"),
            password=str(fields.get("password") or "") or None,
            actor=c.name,
        )
        return f"cluster {name}: proxy {url}" if url else f"cluster {name}: no proxy"
    kind = text(fields, "kind") or ""
    if kind == "disable":
        clusters.disable_channel(ctx, name, actor=c.name)
        return f"cluster {name}: no package channel"
    components = (text(fields, "components") or "").replace(",", " ").split()
    clusters.set_channel(
        ctx,
        name,
        kind,
        url=text(fields, "url"),
        suite=text(fields, "suite"),
        components=components or None,
        arch=text(fields, "arch") or "amd64",
        key=(text(fields, "key") or "").encode() or None,  # an armored OpenPGP public key
        actor=c.name,
    )
    return f"cluster {name}: channel {kind}"


def _sites(p: Page) -> dict[str, Any]:
    ctx, c = p.ctx, p.caller
    if not holds(c, "site.read"):
        raise Forbidden(f"{c.who} holds site.read nowhere")
    found = access.visible(
        c, "site.read", distribution.list_sites(ctx), lambda v: site_path(v.name)
    )
    targets = [v.name for v in found if may(ctx, c, "site.write", "site", v.name)]
    return {
        "title": "Sites",
        "forms": "_site_forms.html",
        "site_create": may(ctx, c, "site.write", None, None),
        "site_targets": targets,
        "site_templates": [t.name for t in _visible_templates(p)] if targets else [],
        "tables": [
            (
                "Sites",
                [
                    "Site",
                    "Last contact",
                    "Templates",
                    "Versions",
                    "Local patches",
                    "Revoked",
                    "Action",
                ],
                [
                    [
                        v.name,
                        when(v.last_contact),
                        ", ".join(v.templates) or "–",
                        ", ".join(f"{k}: {st.state}" for k, st in sorted(v.states.items())) or "–",
                        "yes" if v.local_patches else "no",
                        "yes" if v.token_revoked else "no",
                        button(
                            f"/ui/sites/{quote(v.name)}/revoke",
                            "Revoke",
                            f"Revoke site {v.name}'s token? It is refused from now on.",
                        )
                        if v.name in targets and not v.token_revoked
                        else None,
                    ]
                    for v in found
                ],
            )
        ],
    }


def _hosts(p: Page) -> dict[str, Any]:
    ctx, c = p.ctx, p.caller
    if not holds(c, "cluster.read"):
        raise Forbidden(f"{c.who} holds cluster.read nowhere")
    found = access.visible(
        c, "cluster.read", clusters.list_clusters(ctx), lambda v: cluster_path(v.name)
    )
    tables = [
        (
            "Clusters",
            [
                "Cluster",
                "Coordinator",
                "Hosts",
                "Sync schedule",
                "Channel",
                "Proxy",
                "Last sync",
                "Last error",
                "Action",
            ],
            [
                [
                    v.name,
                    v.coordinator,
                    len(v.hosts),
                    v.sync_schedule,
                    _channel(v.channel),
                    _proxy(v.proxy),
                    when(v.last_update_sync),
                    v.last_error or "–",
                    button(f"/ui/clusters/{quote(v.name)}/sync", "Sync now")
                    if may(ctx, c, "cluster.write", "cluster", v.name)
                    else None,
                ]
                for v in found
            ],
        ),
        (
            "Cluster hosts",
            ["Cluster", "Host", "Pending updates"],
            [
                [
                    v.name,
                    h.name,
                    "; ".join(f"{k}: {', '.join(vs)}" for k, vs in h.pending.items()) or "–",
                ]
                for v in found
                for h in v.hosts
            ],
        ),
    ]
    if access.reach(c, "cluster.read").everything:
        edge = hosts.list_hosts(ctx)
        tables.append(
            (
                "Edge stores" if edge.edge_stores else "Hosts (no edge stores)",
                ["Host", "Details"],
                [[h.name, _brief(h)] for h in edge.hosts],
            )
        )
    return {
        "title": "Hosts and clusters",
        "tables": tables,
        "forms": "_host_forms.html",
        "cluster_create": may(ctx, c, "cluster.write", None, None),
        "cluster_targets": [
            v.name for v in found if may(ctx, c, "cluster.write", "cluster", v.name)
        ],
    }


def _channel(ch: Any) -> str:
    if ch is None:
        return "–"
    where = " ".join(x for x in (ch.url, ch.suite, " ".join(ch.components)) if x)
    return f"{ch.kind}: {where}" if where else ch.kind


def _proxy(px: Any) -> str:
    """The proxy's address and user; of its password only whether one is set."""
    if px is None:
        return "–"
    user = f" as {px.username}" if px.username else ""
    return f"{px.url}{user}" + (" (password set)" if px.password_set else "")


def button(url: str, label: str, confirm: str | None = None) -> dict[str, str | None]:
    """A table cell holding one action (posted by htmx, its answer shown under the table)."""
    return {"post": url, "label": label, "confirm": confirm}


def _brief(view: Any) -> str:
    data = view.model_dump() if hasattr(view, "model_dump") else dict(view)
    data.pop("name", None)
    return ", ".join(f"{k}: {v}" for k, v in data.items() if not isinstance(v, (list, dict)))


def _keys(p: Page) -> dict[str, Any]:
    ctx, c = p.ctx, p.caller
    access.authorize(ctx, c, "key.read", None, None)
    keys = distribution.show_keys(ctx)
    data = keys.model_dump()
    rows = []
    for k, v in data.items():
        if isinstance(v, list):
            for entry in v:
                rows.append([k, entry if not isinstance(entry, dict) else _flat(entry)])
        else:
            rows.append([k, v if not isinstance(v, dict) else _flat(v)])
    return {
        "title": "Bundles and keys",
        "forms": "_key_forms.html",
        "key_write": may(ctx, c, "key.write", None, None),
        "bundle_import": may(ctx, c, "bundle.import", None, None),
        "trusted": [k.name for k in keys.trusted],
        "exportable": [
            t.name
            for t in _visible_templates(p)
            if holds(c, "bundle.export") and may(ctx, c, "bundle.export", "template", t.name)
        ],
        "intro": "This server's signing key and the keys it trusts for offline bundles.",
        "tables": [("Keys", ["What", "Value"], rows)],
    }


def _flat(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in d.items())


def _audit(p: Page, query: dict[str, str]) -> dict[str, Any]:
    ctx, c = p.ctx, p.caller
    access.authorize(ctx, c, "audit.read", None, None)
    entries = audit.list_audit(ctx, limit=2000)
    actor = (query.get("actor") or "").strip()
    act = (query.get("action") or "").strip()
    target = (query.get("target") or "").strip()
    if actor:
        entries = [e for e in entries if actor in e.actor]
    if act:
        entries = [e for e in entries if act in e.action]
    if target:
        entries = [e for e in entries if target in (e.target or "")]
    return {
        "title": "Audit log",
        "filters": [("actor", actor), ("action", act), ("target", target)],
        "tables": [
            (
                f"Latest entries ({len(entries[:500])} shown)",
                ["At", "Who", "Action", "Target", "Detail"],
                [
                    [when(e.at), e.actor, e.action, e.target, _flat(e.detail or {})]
                    for e in entries[:500]
                ],
            )
        ],
    }


def _users(p: Page) -> dict[str, Any]:
    ctx, c = p.ctx, p.caller
    access.authorize(ctx, c, "user.read", None, None)
    can_write = may(ctx, c, "user.write", None, None)
    users = access.list_users(ctx)
    return {
        "title": "Users, roles and tokens",
        "user_actions": can_write,
        "forms": "_user_forms.html",
        "role_names": [r.name for r in access.list_roles(ctx)] if can_write else [],
        "permissions": sorted(access.PERMISSIONS) if can_write else [],
        "tables": [
            (
                "Users",
                ["User", "Disabled", "Created", "Grants"],
                [
                    [u.name, "yes" if u.disabled else "no", when(u.created_at), "; ".join(u.grants)]
                    for u in users
                ],
            ),
            (
                "Roles",
                ["Role", "Built in", "Permissions", "Action"],
                [
                    [
                        r.name,
                        "yes" if r.builtin else "no",
                        ", ".join(r.permissions),
                        button(
                            f"/ui/roles/{quote(r.name)}/delete",
                            "Delete",
                            f"Delete role {r.name}?",
                        )
                        if can_write and not r.builtin
                        else None,
                    ]
                    for r in access.list_roles(ctx)
                ],
            ),
            (
                "API tokens",
                ["Token", "Role", "Created", "Revoked", "Grants", "Action"],
                [
                    [
                        t.name,
                        t.role,
                        when(t.created_at),
                        "yes" if t.revoked else "no",
                        "; ".join(t.grants),
                        button(
                            f"/ui/tokens/{quote(t.name)}/revoke",
                            "Revoke",
                            f"Revoke token {t.name}? Whoever uses it is refused from now on.",
                        )
                        if can_write and not t.revoked
                        else None,
                    ]
                    for t in access.list_tokens(ctx)
                ],
            ),
        ],
        "users": users,
    }


# --- beside the API -------------------------------------------------------------------------


def wants_html(scope: Scope) -> bool:
    for key, value in scope.get("headers", ()):
        if key == b"accept":
            return b"text/html" in value
    return False


def create_app(ctx: Context, *, recover: bool = True) -> ASGIApp:
    """The API's application, unchanged, with the console beside it: paths under /ui/ go to
    the console; a browser asking for / (Accept: text/html) is sent to /ui/; everything else,
    the lifespan included, is the API's."""
    from goldfleet.api.app import create_app as create_api

    api = create_api(ctx, recover=recover)
    console = console_app(ctx)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if path == CONSOLE_PREFIX or path.startswith(CONSOLE_PREFIX + "/"):
                await console(scope, receive, send)
                return
            if path == "/" and scope["method"] in ("GET", "HEAD") and wants_html(scope):
                await RedirectResponse("/ui/", status_code=303)(scope, receive, send)
                return
        await api(scope, receive, send)

    app.api = api  # type: ignore[attr-defined]
    return app
