"""per image: other hardness scores and whether it was labeled; job reports (subgroups, summary)

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("scores", schema=None) as batch_op:
        batch_op.add_column(sa.Column("other_scores", JSONType, nullable=False, server_default=sa.text("'{}'")))
        batch_op.add_column(sa.Column("labeled", sa.Boolean(), nullable=False, server_default=sa.true()))
    op.create_table(
        "job_reports",
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("body", JSONType, nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_reports_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "kind", name=op.f("pk_job_reports")),
    )


def downgrade() -> None:
    op.drop_table("job_reports")
    with op.batch_alter_table("scores", schema=None) as batch_op:
        batch_op.drop_column("labeled")
        batch_op.drop_column("other_scores")
