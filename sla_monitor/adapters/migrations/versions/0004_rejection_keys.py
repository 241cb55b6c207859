"""rejections keyed, so that re-reading the same input never counts it twice

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # rows from before this revision keep a NULL key (never equal to another)
    op.add_column("rejected_events", sa.Column("key", sa.String(64), nullable=True))
    op.create_index("ux_rejected_key", "rejected_events", ["source", "key"], unique=True)


def downgrade() -> None:
    op.drop_index("ux_rejected_key", table_name="rejected_events")
    op.drop_column("rejected_events", "key")
