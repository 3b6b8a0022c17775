"""clusters of hypervisor hosts and their hosts: channel, proxy, sync schedule, last sync, and
each host's state, capacity and installed packages (issue 11, docs/hosts.md)

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "clusters",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("coordinator", sa.String(length=63), nullable=False),
        sa.Column("channel", sa.JSON(), nullable=True),
        sa.Column("proxy", sa.JSON(), nullable=True),
        sa.Column("sync_schedule", sa.String(length=100), nullable=True),
        sa.Column("next_sync_at", sa.DateTime(), nullable=True),
        sa.Column("sync_owner", sa.String(length=36), nullable=True),
        sa.Column("sync_started_at", sa.DateTime(), nullable=True),
        sa.Column("last_update_sync", sa.DateTime(), nullable=True),
        sa.Column("last_sync", sa.JSON(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("guidance_rules", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "cluster_hosts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("cluster_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column(
            "memory_mib", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("vcpus", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("installed", sa.JSON(), nullable=False),
        sa.Column("booted_kernel", sa.String(length=100), nullable=True),
        sa.Column("installed_at", sa.DateTime(), nullable=True),
        sa.Column("last_software_update", sa.DateTime(), nullable=True),
        sa.Column("last_update_hash", sa.String(length=71), nullable=True),
        sa.ForeignKeyConstraint(["cluster_id"], ["clusters.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    with op.batch_alter_table("cluster_hosts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_cluster_hosts_cluster_id"), ["cluster_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("cluster_hosts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_cluster_hosts_cluster_id"))
    op.drop_table("cluster_hosts")
    op.drop_table("clusters")
