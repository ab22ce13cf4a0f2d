"""evaluations: each model's metrics on each held-out image, per split

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "evaluations",
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("model", sa.String(length=60), nullable=False),
        sa.Column("split", sa.String(length=20), nullable=False),
        sa.Column("image_id", sa.String(length=200), nullable=False),
        sa.Column("metrics", JSONType, nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_evaluations_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "model", "split", "image_id", name=op.f("pk_evaluations")),
    )


def downgrade() -> None:
    op.drop_table("evaluations")
