"""guests: quarantine policies per template, what goldfleet learnt from inside each clone
(tool version, descriptor, access), and the sim driver's guest files and network filters

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("guest_tool_version", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("quarantine_version", sa.String(length=63), nullable=True))
    op.create_table(
        "quarantine_policies",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("template_id", ID, nullable=False),
        sa.Column("number", ID, nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=63), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["template_id"], ["templates.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("template_id", "number"),
    )
    op.create_index(
        op.f("ix_quarantine_policies_template_id"), "quarantine_policies", ["template_id"]
    )
    op.create_table(
        "guest_states",
        sa.Column("clone_id", ID, autoincrement=False, nullable=False),
        sa.Column("tool_version", sa.String(length=32), nullable=True),
        sa.Column("descriptor", sa.String(length=300), nullable=True),
        sa.Column("version", sa.String(length=63), nullable=True),
        sa.Column("access", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("filter", sa.String(length=120), nullable=True),
        sa.Column("policy_number", ID, nullable=True),
        sa.Column("since", sa.DateTime(), nullable=False),
        sa.Column("checked_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("clone_id"),
    )
    op.create_table(
        "sim_guest_files",
        sa.Column("disk", sa.String(length=80), nullable=False),
        sa.Column("path", sa.String(length=255), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("disk", "path"),
    )
    op.create_table(
        "agent_updates",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("template_id", ID, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("recreate_full", sa.Boolean(), nullable=False),
        sa.Column("rollout", sa.JSON(), nullable=True),
        sa.Column("actor", sa.String(length=63), nullable=False),
        sa.Column("operation_id", ID, nullable=True),
        sa.Column("version", ID, nullable=True),
        sa.Column("pushed", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["template_id"], ["templates.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_agent_updates_template_id"), "agent_updates", ["template_id"])
    op.create_index(op.f("ix_agent_updates_status"), "agent_updates", ["status"])
    op.create_table(
        "sim_filters",
        sa.Column("name", sa.String(length=120), nullable=False),
        sa.Column("xml", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("sim_filters")
    op.drop_index(op.f("ix_agent_updates_status"), table_name="agent_updates")
    op.drop_index(op.f("ix_agent_updates_template_id"), table_name="agent_updates")
    op.drop_table("agent_updates")
    op.drop_table("sim_guest_files")
    op.drop_table("guest_states")
    op.drop_index(op.f("ix_quarantine_policies_template_id"), table_name="quarantine_policies")
    op.drop_table("quarantine_policies")
    with op.batch_alter_table("versions", schema=None) as batch_op:
        batch_op.drop_column("quarantine_version")
        batch_op.drop_column("guest_tool_version")
