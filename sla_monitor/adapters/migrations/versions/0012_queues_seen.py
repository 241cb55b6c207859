"""queues_seen: every queue each source has had, in the order first seen, so that the bound
on queue label values (config `queue_labels`) keeps the same queues under their own label
across restarts. Queues stored before are taken in name order.

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
    op.create_table(
        "queues_seen",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("queue", sa.String(200), nullable=False),
        sa.UniqueConstraint("source", "queue", name="uq_queues_seen"),
    )
    op.execute(
        "INSERT INTO queues_seen (source, queue) SELECT DISTINCT source, queue FROM contacts "
        "ORDER BY source, queue"
    )


def downgrade() -> None:
    op.drop_table("queues_seen")
