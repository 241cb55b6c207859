"""replicas.clock_us: what the monitor's clock read at its last sign of life, so that tools
(`report`, `explain`, `replay`, `archive`) judge a demo database at the instant its monitor
is at — the demo's clock runs ahead of real time — and a restart continues from there.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("replicas", sa.Column("clock_us", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    op.drop_column("replicas", "clock_us")
