"""checkpoints gain the seed of their model (typed results carry it; names no longer need parsing)

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain add_column: batch mode would rebuild the table on SQLite (see 0003)
    op.add_column("checkpoints", sa.Column("seed", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("checkpoints", "seed")
