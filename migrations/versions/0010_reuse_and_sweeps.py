"""jobs re-use what another job of the same owner computed (contract.reuse): jobs and units say
what they re-used; sweeps are named sets of jobs that share their dense units

Revision ID: 0010
Revises: 0009
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

JSONType = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("owner_id", sa.Uuid(), sa.ForeignKey("owners.id", ondelete="CASCADE"), nullable=False),
        sa.Column("dataset_id", sa.Uuid(), sa.ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("spec", JSONType, nullable=False),
        sa.Column("vary", JSONType, nullable=False),
    )
    op.create_index("ix_sweeps_owner_created", "sweeps", ["owner_id", "created_at"])
    op.add_column("jobs", sa.Column("reuse_key", sa.String(64), nullable=True))
    op.add_column("jobs", sa.Column("reused_from", sa.Uuid(), nullable=True))
    # no foreign key: SQLite adds one only by rebuilding the table, and dropping the old jobs table
    # would cascade to every row that references it
    op.add_column("jobs", sa.Column("sweep_id", sa.Uuid(), nullable=True))
    op.create_index("ix_jobs_reuse", "jobs", ["owner_id", "dataset_id", "reuse_key"])
    op.create_index("ix_jobs_sweep_id", "jobs", ["sweep_id"])
    op.add_column("job_units", sa.Column("reused_from", sa.Uuid(), nullable=True))
    op.create_table(
        "sweep_variants",
        sa.Column("sweep_id", sa.Uuid(), sa.ForeignKey("sweeps.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("position", sa.Integer(), primary_key=True),
        sa.Column("overrides", JSONType, nullable=False),
        sa.Column("spec", JSONType, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("job_id", sa.Uuid(), sa.ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True),
        sa.Column("lead_job_id", sa.Uuid(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
    )
    op.create_index("ix_sweep_variants_state", "sweep_variants", ["state"])


def downgrade() -> None:
    op.drop_table("sweep_variants")
    op.drop_column("job_units", "reused_from")
    op.drop_index("ix_jobs_sweep_id", "jobs")
    op.drop_index("ix_jobs_reuse", "jobs")
    op.drop_column("jobs", "sweep_id")
    op.drop_column("jobs", "reused_from")
    op.drop_column("jobs", "reuse_key")
    op.drop_table("sweeps")
