"""sites and their assigned templates

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "sites",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("token_name", sa.String(length=63), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("last_contact", sa.DateTime(), nullable=True),
        sa.Column("states", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
        sa.UniqueConstraint("token_name"),
    )
    op.create_table(
        "site_templates",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("site_id", ID, nullable=False),
        sa.Column("template_id", ID, nullable=False),
        sa.ForeignKeyConstraint(["site_id"], ["sites.id"]),
        sa.ForeignKeyConstraint(["template_id"], ["templates.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("site_id", "template_id"),
    )
    with op.batch_alter_table("site_templates", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_site_templates_site_id"), ["site_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_site_templates_template_id"), ["template_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("site_templates", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_site_templates_template_id"))
        batch_op.drop_index(batch_op.f("ix_site_templates_site_id"))
    op.drop_table("site_templates")
    op.drop_table("sites")
