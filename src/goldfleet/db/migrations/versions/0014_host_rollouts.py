"""host rollouts: a cluster's HA/balancing commands, pending guidance per host, the durable
rolling updates of clusters (docs/host-updates.md), and the sim driver's host state

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("clusters", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ha", sa.JSON(), nullable=True))
    with op.batch_alter_table("cluster_hosts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pending", sa.JSON(), nullable=True))
    op.create_table(
        "cluster_updates",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("cluster_id", ID, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("hash", sa.String(length=71), nullable=True),
        sa.Column("level", sa.String(length=16), nullable=False),
        sa.Column("max_hosts", ID, nullable=False),
        sa.Column("policy", sa.JSON(), nullable=False),
        sa.Column("plan", sa.JSON(), nullable=False),
        sa.Column("progress", sa.JSON(), nullable=False),
        sa.Column("actor", sa.String(length=63), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["cluster_id"], ["clusters.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_cluster_updates_cluster_id"), "cluster_updates", ["cluster_id"])
    op.create_table(
        "sim_hosts",
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("up_at", sa.DateTime(), nullable=True),
        sa.Column("reboots", ID, nullable=False),
        sa.Column("toolstack_restarts", ID, nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("sim_hosts")
    op.drop_index(op.f("ix_cluster_updates_cluster_id"), table_name="cluster_updates")
    op.drop_table("cluster_updates")
    with op.batch_alter_table("cluster_hosts", schema=None) as batch_op:
        batch_op.drop_column("pending")
    with op.batch_alter_table("clusters", schema=None) as batch_op:
        batch_op.drop_column("ha")
