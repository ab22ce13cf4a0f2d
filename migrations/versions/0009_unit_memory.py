"""job units gain the memory their worker last saw them hold, and what that worker could use, so a
unit whose worker went silent near its memory limit (most likely the out-of-memory killer) is not
retried into the same death

Revision ID: 0009
Revises: 0008
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("job_units", sa.Column("memory_bytes", sa.BigInteger(), nullable=True))
    op.add_column("job_units", sa.Column("memory_limit_bytes", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    for column in ("memory_limit_bytes", "memory_bytes"):
        op.drop_column("job_units", column)
