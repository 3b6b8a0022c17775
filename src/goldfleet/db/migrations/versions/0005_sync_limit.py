"""a site's bandwidth limit for its syncs with HQ

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("upstream", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sync_limit", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("upstream", schema=None) as batch_op:
        batch_op.drop_column("sync_limit")
