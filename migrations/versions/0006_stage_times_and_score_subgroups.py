"""job_stages: when each stage of each attempt of a job started and ended (for /metrics); scores
gain the subgroup labels the enrichment analysis gave each training image (for the gallery filter)

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "job_stages",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(length=40), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_stages_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_stages")),
    )
    op.create_index("ix_job_stages_job_id", "job_stages", ["job_id"])
    # plain add_column: batch mode would rebuild the table on SQLite (see 0003)
    op.add_column("scores", sa.Column("subgroups", JSONType, nullable=False, server_default=sa.text("'{}'")))


def downgrade() -> None:
    op.drop_column("scores", "subgroups")
    op.drop_index("ix_job_stages_job_id", table_name="job_stages")
    op.drop_table("job_stages")
