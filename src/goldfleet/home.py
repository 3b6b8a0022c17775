"""The home: config, database, store and the admin token; and recovery at server start."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select

from goldfleet.bootstrap import bootstrap
from goldfleet.config import Settings
from goldfleet.context import Context
from goldfleet.db.tables import Server, Template, Token
from goldfleet.services import access

TOKEN_FILE = "admin.token"
SERVER_FILE = "server.json"

DEFAULT_CONFIG = """\
# goldfleet server settings; every key can also be set as GOLDFLEET_<KEY> in the environment.
# database_url = "postgresql+psycopg://goldfleet@localhost/goldfleet"   # default: SQLite here
port = {port}
driver = "sim"
max_chain_depth = 8
# max_virtual_size = 2199023255552   # bytes; larger images are refused on import
"""


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def init_home(home: Path, *, port: int = 8437) -> tuple[Settings, bool]:
    """Make (or complete) a home. Returns the settings and whether an admin token was made."""
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    config = home / "config.toml"
    if not config.exists():
        config.write_text(DEFAULT_CONFIG.format(port=port))
    os.environ["GOLDFLEET_HOME"] = str(home)
    settings = Settings(home=home)
    ctx = bootstrap(settings)
    try:
        with ctx.session() as s:
            has_admin = s.scalar(select(Token.id).where(Token.name == "admin")) is not None
        made = False
        if not has_admin:
            token = access.create_token(ctx, name="admin", role="admin", actor="goldfleet init")
            _write_private(home / TOKEN_FILE, token + "\n")
            made = True
        return settings, made
    finally:
        ctx.engine.dispose()


def recover(ctx: Context) -> list[str]:
    """Finish or roll back whatever a crash interrupted; remove leftover work files.

    With a shared database (PostgreSQL) other servers may be at work on the same store right
    now: their work files and half-done steps are not leftovers. Then nothing is cleaned here;
    the operations of a dead server are taken over by the runners through their leases."""
    from goldfleet.services import catalog, distribution, fleet, rollouts

    if ctx.engine.dialect.name != "sqlite":
        horizon = ctx.clock.now() - timedelta(seconds=ctx.settings.lease_seconds)
        with ctx.session() as s:
            others = s.scalar(select(func.count()).where(Server.heartbeat_at >= horizon))
        if others:
            return [f"{others} other server(s) at work on this database: store cleanup skipped"]

    notes = catalog.recover_templates(ctx)
    notes += rollouts.recover_operations(ctx)
    notes += fleet.recover_clones(ctx)
    notes += distribution.recover_sync(ctx)
    with ctx.session() as s:
        keep = {t.overlay for t in s.scalars(select(Template)) if t.overlay}
    leftovers = ctx.layers.remove_work_files(keep) + ctx.volumes.remove_cache_work_files()
    notes += [f"removed leftover {f}" for f in leftovers]
    notes += catalog.remove_leftover_layers(ctx)
    return notes
