"""distribution: site rights, version selection and publish times, activation, the site's link

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sites", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("local_patches", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("site_templates", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("versions", sa.String(length=16), nullable=False, server_default="all")
        )
        batch_op.add_column(sa.Column("publish_at", sa.DateTime(), nullable=True))
    with op.batch_alter_table("templates", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("activate", sa.String(length=24), nullable=False, server_default="on-verify")
        )
    op.create_table(
        "upstream",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("schedule", sa.String(length=100), nullable=True),
        sa.Column("next_sync_at", sa.DateTime(), nullable=True),
        sa.Column("sync_owner", sa.String(length=36), nullable=True),
        sa.Column("sync_started_at", sa.DateTime(), nullable=True),
        sa.Column("last_sync_at", sa.DateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("rights", sa.JSON(), nullable=False),
        sa.Column("managed", sa.JSON(), nullable=False),
        sa.Column("pending", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("upstream")
    with op.batch_alter_table("templates", schema=None) as batch_op:
        batch_op.drop_column("activate")
    with op.batch_alter_table("site_templates", schema=None) as batch_op:
        batch_op.drop_column("publish_at")
        batch_op.drop_column("versions")
    with op.batch_alter_table("sites", schema=None) as batch_op:
        batch_op.drop_column("local_patches")
