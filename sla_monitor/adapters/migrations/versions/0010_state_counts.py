"""state_counts, response_counts: what the contact and target rows count, kept as they are
written, so that start-up reads counts instead of grouping the whole contact and target
history (restart time must not grow with history); an index for the contacts waiting on a
deadline or a watermark. The response buckets are filled at the first start (they depend
on the configured `within`s). Archived response times keep their priority (carried before:
"none").

Revision ID: 0010
Revises: 0009
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

WAITING = "next_wake_us IS NOT NULL OR awaiting_us IS NOT NULL"

# (metric, SQL grouping the rows it counts: label columns, then the count)
GROUPED = (
    ("contacts", "SELECT source, channel, queue, count(*) FROM contacts GROUP BY 1, 2, 3"),
    (
        "sla_contacts_opened",
        "SELECT channel, queue, priority, count(*) FROM contacts "
        "WHERE opened_us IS NOT NULL GROUP BY 1, 2, 3",
    ),
    (
        "sla_contacts_unmatched",
        "SELECT channel, queue, count(*) FROM contacts WHERE unmatched GROUP BY 1, 2",
    ),
    (
        "sla_repeat_contacts",
        "SELECT channel, queue, count(*) FROM contacts WHERE repeat_counted GROUP BY 1, 2",
    ),
    (
        "sla_target_outcomes",
        "SELECT channel, queue, priority, target, outcome, count(*) FROM targets "
        "WHERE outcome IS NOT NULL GROUP BY 1, 2, 3, 4, 5",
    ),
)


def upgrade() -> None:
    op.create_table(
        "state_counts",
        sa.Column("metric", sa.String(64), nullable=False),
        sa.Column("labels", sa.String(2000), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("metric", "labels"),
    )
    op.create_table(
        "response_counts",
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("queue", sa.String(200), nullable=False),
        sa.Column("priority", sa.String(64), nullable=False),
        sa.Column("target", sa.String(32), nullable=False),
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("total", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("channel", "queue", "priority", "target", "bucket"),
    )
    # archived response times keep their priority from now on (sla_response_seconds has
    # it); those carried before had it dropped: "none"
    op.create_table(
        "carried_responses_0010",
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("queue", sa.String(200), nullable=False),
        sa.Column("priority", sa.String(64), nullable=False),
        sa.Column("target", sa.String(32), nullable=False),
        sa.Column("le_ms", sa.BigInteger(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("total", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("channel", "queue", "priority", "target", "le_ms"),
    )
    op.execute(
        "INSERT INTO carried_responses_0010 (channel, queue, priority, target, le_ms, count, "
        "total) SELECT channel, queue, 'none', target, le_ms, count, total FROM carried_responses"
    )
    op.drop_table("carried_responses")
    op.rename_table("carried_responses_0010", "carried_responses")
    op.create_index(
        "ix_contacts_waiting",
        "contacts",
        ["source", "conversation_id"],
        sqlite_where=sa.text(WAITING),
        postgresql_where=sa.text(WAITING),
    )
    bind = op.get_bind()
    rows = [
        {"m": metric, "l": json.dumps([str(v) for v in r[:-1]]), "n": int(r[-1])}
        for metric, query in GROUPED
        for r in bind.execute(sa.text(query))
    ]
    if rows:
        bind.execute(
            sa.text("INSERT INTO state_counts (metric, labels, value) VALUES (:m, :l, :n)"),
            rows,
        )


def downgrade() -> None:
    op.create_table(
        "carried_responses_0009",
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("queue", sa.String(200), nullable=False),
        sa.Column("target", sa.String(32), nullable=False),
        sa.Column("le_ms", sa.BigInteger(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("total", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("channel", "queue", "target", "le_ms"),
    )
    op.execute(
        "INSERT INTO carried_responses_0009 (channel, queue, target, le_ms, count, total) "
        "SELECT channel, queue, target, le_ms, sum(count), sum(total) FROM carried_responses "
        "GROUP BY channel, queue, target, le_ms"
    )
    op.drop_table("carried_responses")
    op.rename_table("carried_responses_0009", "carried_responses")
    op.drop_index("ix_contacts_waiting", "contacts")
    op.drop_table("response_counts")
    op.drop_table("state_counts")
