"""a sweep may name how its variants are chosen on validation (select: split and criterion)

Revision ID: 0011
Revises: 0010
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

JSONType = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sweeps", sa.Column("select_rule", JSONType, nullable=True))


def downgrade() -> None:
    op.drop_column("sweeps", "select_rule")
