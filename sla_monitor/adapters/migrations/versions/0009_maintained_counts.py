"""ingested_counts, rejected_counts: counts kept as events are stored and items set aside,
so that start-up reads counts instead of the event and rejection history (restart time
must not grow with history). Archived events' counts, carried so far, move in.

Revision ID: 0009
Revises: 0008
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ingested_counts",
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("source", "kind"),
    )
    op.create_table(
        "rejected_counts",
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("source", "reason"),
    )
    bind = op.get_bind()
    ingested: dict[tuple[str, str], int] = {}
    for source, kind, n in bind.execute(
        sa.text("SELECT source, kind, count(*) FROM events GROUP BY source, kind")
    ):
        ingested[(source, kind)] = ingested.get((source, kind), 0) + int(n)
    for labels, n in bind.execute(
        sa.text("SELECT labels, value FROM carried_counts WHERE metric = 'sla_events_ingested'")
    ):
        source, kind = json.loads(labels)
        ingested[(source, kind)] = ingested.get((source, kind), 0) + int(n)
    bind.execute(sa.text("DELETE FROM carried_counts WHERE metric = 'sla_events_ingested'"))
    if ingested:
        bind.execute(
            sa.text("INSERT INTO ingested_counts (source, kind, count) VALUES (:s, :k, :n)"),
            [{"s": s, "k": k, "n": n} for (s, k), n in ingested.items()],
        )
    bind.execute(
        sa.text(
            "INSERT INTO rejected_counts (source, reason, count) "
            "SELECT source, reason, count(*) FROM rejected_events GROUP BY source, reason"
        )
    )


def downgrade() -> None:
    op.drop_table("rejected_counts")
    op.drop_table("ingested_counts")
