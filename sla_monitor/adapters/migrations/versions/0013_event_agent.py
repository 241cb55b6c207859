"""events.agent, events.team: who on the team wrote the reply or took the call, where the
source knows (reports per person; never a metric label). Earlier events have none.

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("events", sa.Column("agent", sa.String(200), nullable=True))
    op.add_column("events", sa.Column("team", sa.String(200), nullable=True))


def downgrade() -> None:
    op.drop_column("events", "team")
    op.drop_column("events", "agent")
