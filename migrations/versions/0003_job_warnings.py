"""jobs.warnings: what a job's user should know about how it ran (split without a group column,
degenerate sparsities left out of the score)

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


# Plain ALTER TABLE, not batch mode: on SQLite, batch mode copies and drops the jobs table, and the
# drop cascades to every row that references a job (scores, metrics, checkpoints).
def upgrade() -> None:
    op.add_column("jobs", sa.Column("warnings", JSONType, nullable=False, server_default=sa.text("'[]'")))


def downgrade() -> None:
    op.drop_column("jobs", "warnings")
