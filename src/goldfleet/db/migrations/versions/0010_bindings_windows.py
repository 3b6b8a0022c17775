"""a template's bound bundle key (the key that signed its first imported bundle), and a pool
window's logoff policy and when its users were told of the window in progress

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("templates", schema=None) as batch_op:
        batch_op.add_column(sa.Column("bundle_key", sa.String(length=64), nullable=True))
    with op.batch_alter_table("pools", schema=None) as batch_op:
        batch_op.add_column(sa.Column("window_policy", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("window_notified_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pools", schema=None) as batch_op:
        batch_op.drop_column("window_notified_at")
        batch_op.drop_column("window_policy")
    with op.batch_alter_table("templates", schema=None) as batch_op:
        batch_op.drop_column("bundle_key")
