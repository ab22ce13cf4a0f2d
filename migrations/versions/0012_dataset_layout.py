"""a dataset says the layout its upload came in (htl, isic, kvasir, coco)

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
    op.add_column("datasets", sa.Column("layout", sa.String(length=20), server_default="htl", nullable=False))


def downgrade() -> None:
    op.drop_column("datasets", "layout")
