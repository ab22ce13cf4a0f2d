"""scores gain the label check's verdict on each training image's mask, and whether attention boosted it

Revision ID: 0008
Revises: 0007
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain add_column: batch mode would rebuild the table on SQLite (see 0003)
    op.add_column("scores", sa.Column("label_quality", sa.Double(), nullable=True))
    op.add_column("scores", sa.Column("label_issue", sa.Boolean(), nullable=True))
    op.add_column("scores", sa.Column("attended", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    for column in ("attended", "label_issue", "label_quality"):
        op.drop_column("scores", column)
