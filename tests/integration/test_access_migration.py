"""Migration 0011: the tokens made before grants keep what their role meant (admin → admin on
/, reader → auditor on /, site → no grant), and authenticate to those grants."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from sqlalchemy import text

from goldfleet.db.engine import MIGRATIONS, make_engine, migrate


def test_old_tokens_get_the_grants_their_role_meant(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0008")
    with engine.begin() as conn:
        for name, role in (("admin", "admin"), ("dash", "reader"), ("paris", "site")):
            conn.execute(
                text(
                    "INSERT INTO tokens (name, token_hash, role, created_at)"
                    " VALUES (:n, :h, :r, CURRENT_TIMESTAMP)"
                ),
                {"n": name, "h": name.ljust(64, "0"), "r": role},
            )
    migrate(engine)
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT holder_kind, holder, role, scope FROM grants ORDER BY holder")
        ).all()
    assert [tuple(r) for r in rows] == [
        ("token", "admin", "admin", "/"),
        ("token", "dash", "auditor", "/"),
    ]
