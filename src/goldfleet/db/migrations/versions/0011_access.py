"""users with Argon2 passwords (and their failed logins, for throttling), custom roles,
grants of a role on a scope (held by users and tokens), login sessions; the tokens made before
grants get theirs: admin → admin on /, reader → auditor on /

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("disabled_at", sa.DateTime(), nullable=True),
        sa.Column("failed_logins", ID, nullable=False),
        sa.Column("last_failed_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "roles",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=16), nullable=False),
        sa.Column("permissions", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    grants = op.create_table(
        "grants",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("holder_kind", sa.String(length=8), nullable=False),
        sa.Column("holder", sa.String(length=63), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("scope", sa.String(length=80), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("holder_kind", "holder", "role", "scope"),
    )
    op.create_index("ix_grants_holder", "grants", ["holder"], unique=False)
    op.create_table(
        "login_sessions",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("user_name", sa.String(length=63), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_index("ix_login_sessions_user_name", "login_sessions", ["user_name"], unique=False)
    # the tokens made before grants keep what their role meant
    conn = op.get_bind()
    tokens = sa.table("tokens", sa.column("name", sa.String), sa.column("role", sa.String))
    now = sa.func.current_timestamp()
    for name, role in conn.execute(sa.select(tokens.c.name, tokens.c.role)):
        granted = {"admin": "admin", "reader": "auditor"}.get(role)
        if granted is not None:
            conn.execute(
                grants.insert().values(
                    holder_kind="token", holder=name, role=granted, scope="/", created_at=now
                )
            )


def downgrade() -> None:
    op.drop_index("ix_login_sessions_user_name", table_name="login_sessions")
    op.drop_table("login_sessions")
    op.drop_index("ix_grants_holder", table_name="grants")
    op.drop_table("grants")
    op.drop_table("roles")
    op.drop_table("users")
