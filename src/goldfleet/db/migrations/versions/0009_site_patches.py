"""site patches held for HQ's validation (versions.status), the time of a site's last
successful sync, and the feeds of edge stores with each newly current version

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("versions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("status", sa.String(length=24), server_default="enabled", nullable=False)
        )
    with op.batch_alter_table("upstream", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_success_at", sa.DateTime(), nullable=True))
    op.create_table(
        "edge_feeds",
        sa.Column("host", sa.String(length=63), nullable=False),
        sa.Column("template", sa.String(length=63), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("top_layer", sa.String(length=71), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("done", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("total", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("copied", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("host", "template"),
    )


def downgrade() -> None:
    op.drop_table("edge_feeds")
    with op.batch_alter_table("upstream", schema=None) as batch_op:
        batch_op.drop_column("last_success_at")
    with op.batch_alter_table("versions", schema=None) as batch_op:
        batch_op.drop_column("status")
