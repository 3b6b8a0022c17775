"""The home: config, database, store and the admin token; and recovery at server start."""

from __future__ import annotations

import os
import secrets
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from goldfleet.bootstrap import bootstrap
from goldfleet.config import Settings
from goldfleet.context import Context
from goldfleet.db.tables import Server, Template, Token, User
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


ADMIN_USER = "admin"


def init_admin_user(home: Path, password: str | None = None) -> tuple[bool, str | None]:
    """The first admin user (``admin``, the role admin on /), as the admin token is made: only
    when the home has no user yet. Its password is ``password``, or one made here and returned
    to be shown once (it is stored only as its Argon2 hash). Returns (made, password made)."""
    settings = Settings(home=home)
    ctx = bootstrap(settings)
    try:
        with ctx.session() as s:
            if s.scalar(select(User.id).limit(1)) is not None:
                return False, None
        made = None
        if password is None:
            password = made = secrets.token_urlsafe(18)
        access.create_user(
            ctx, name=ADMIN_USER, password=password, role="admin", scope="/", actor="goldfleet init"
        )
        return True, made
    finally:
        ctx.engine.dispose()


class Liveness:
    """Whether a server's work was abandoned: its server is no longer alive.

    Alive: a row in ``servers`` whose heartbeat is younger than ``lease_seconds``, and this
    server. Dead: a row whose lease ran out, or no row (a server that stopped, or an earlier
    server of a home whose lock this one holds: Runner.register removed its rows). Work that
    names no server (made before work named its server) is abandoned only when no other
    server is alive.

    A server registers before it makes anything, so asking about a server only once its work
    has been seen (a row read, a file listed) never takes a server that started meanwhile for
    a dead one: an id not seen alive before is looked up again."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        with ctx.session() as s:
            self.live = set(
                s.scalars(select(Server.id).where(Server.heartbeat_at >= self._horizon()))
            )
        self.live.add(ctx.server_id)
        self.alone = self.live == {ctx.server_id}
        self.dead: set[str] = set()

    def _horizon(self) -> datetime:
        return self.ctx.clock.now() - timedelta(seconds=self.ctx.settings.lease_seconds)

    def __call__(self, owner: str | None) -> bool:
        if owner is None:
            return self.alone
        if owner in self.live:
            return False
        if owner not in self.dead:
            with self.ctx.session() as s:
                alive = s.scalar(
                    select(Server.id).where(
                        Server.id == owner, Server.heartbeat_at >= self._horizon()
                    )
                )
            (self.live if alive else self.dead).add(owner)
        return owner in self.dead


def recover(ctx: Context) -> list[str]:
    """Finish or roll back whatever a dead server left under way; remove its leftover files.

    Several servers may share the database and the store (PostgreSQL) and be at work right now:
    recovery acts only on the work of servers that are no longer alive (:class:`Liveness`) and
    on files no live server's work refers to. Their operations need nothing here: the runners
    take over the items of dead servers. The server registers (Runner.register) before it
    recovers, so the steps it takes over here are a live server's to the others."""
    from goldfleet.services import catalog, distribution, fleet, rollouts

    abandoned = Liveness(ctx)
    notes = catalog.recover_templates(ctx, abandoned)
    notes += rollouts.recover_operations(ctx)
    notes += fleet.recover_clones(ctx, abandoned)
    notes += distribution.recover_sync(ctx, abandoned)

    def overlays() -> set[str]:
        with ctx.session() as s:
            return {o for o in s.scalars(select(Template.overlay)) if o}

    leftovers = ctx.layers.remove_work_files(overlays, abandoned)
    leftovers += ctx.volumes.remove_cache_work_files(abandoned)
    notes += [f"removed leftover {f}" for f in leftovers]
    if abandoned.alone:
        # a layer sealed but not yet registered may be a live server's import under way
        notes += catalog.remove_leftover_layers(ctx)
    else:
        others = len(abandoned.live - {ctx.server_id})
        notes.append(f"{others} other server(s) alive on this database: their work is left to them")
    return notes
