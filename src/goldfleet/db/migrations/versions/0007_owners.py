"""the home a server serves; the server doing a template's maintenance step or a clone's
single action

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("servers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("home_id", sa.String(length=36), nullable=True))
        batch_op.create_index("ix_servers_home_id", ["home_id"], unique=False)
    with op.batch_alter_table("templates", schema=None) as batch_op:
        batch_op.add_column(sa.Column("owner", sa.String(length=36), nullable=True))
    with op.batch_alter_table("clones", schema=None) as batch_op:
        batch_op.add_column(sa.Column("owner", sa.String(length=36), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("clones", schema=None) as batch_op:
        batch_op.drop_column("owner")
    with op.batch_alter_table("templates", schema=None) as batch_op:
        batch_op.drop_column("owner")
    with op.batch_alter_table("servers", schema=None) as batch_op:
        batch_op.drop_index("ix_servers_home_id")
        batch_op.drop_column("home_id")
