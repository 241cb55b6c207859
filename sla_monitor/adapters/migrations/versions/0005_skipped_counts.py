"""skipped_counts: inbound items skipped on purpose (bounces, out-of-office replies)

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "skipped_counts",
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("source", "reason"),
    )


def downgrade() -> None:
    op.drop_table("skipped_counts")
