"""Database schema (SQLAlchemy 2 declarative models). Migrations live in ./migrations.

Instants are stored as integer microseconds since the epoch: exact, portable between
SQLite and PostgreSQL, and cheap to compare and index.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

WAITING = "next_wake_us IS NOT NULL OR awaiting_us IS NOT NULL"

# SQLite only auto-increments an INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class EventRow(Base):
    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("source", "event_id", name="uq_events_source_event_id"),
        Index("ix_events_contact", "source", "conversation_id"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(200))
    event_id: Mapped[str] = mapped_column(String(500))
    conversation_id: Mapped[str] = mapped_column(String(500))
    kind: Mapped[str] = mapped_column(String(32))
    occurred_us: Mapped[int] = mapped_column(BigInteger)
    channel: Mapped[str] = mapped_column(String(16))
    queue: Mapped[str] = mapped_column(String(200))
    customer_id: Mapped[str | None] = mapped_column(String(500))
    priority: Mapped[str | None] = mapped_column(String(64))
    tier: Mapped[str | None] = mapped_column(String(64))
    tags: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str | None] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(200))
    agent: Mapped[str | None] = mapped_column(String(200))  # 0013: who wrote or took it
    team: Mapped[str | None] = mapped_column(String(200))
    ingested_us: Mapped[int] = mapped_column(BigInteger)


class ContactRow(Base):
    __tablename__ = "contacts"
    __table_args__ = (
        Index("ix_contacts_customer", "customer_id", "opened_us"),
        # start-up reads the contacts waiting for a deadline or a watermark: a few among
        # millions, found without a scan
        Index(
            "ix_contacts_waiting",
            "source",
            "conversation_id",
            sqlite_where=text(WAITING),
            postgresql_where=text(WAITING),
        ),
    )
    source: Mapped[str] = mapped_column(String(200), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(String(500), primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))
    queue: Mapped[str] = mapped_column(String(200))
    priority: Mapped[str] = mapped_column(String(64))
    customer_id: Mapped[str | None] = mapped_column(String(500))
    rule: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    opened_us: Mapped[int | None] = mapped_column(BigInteger)
    first_response_us: Mapped[int | None] = mapped_column(BigInteger)
    repeat_of_source: Mapped[str | None] = mapped_column(String(200))
    repeat_of_conversation: Mapped[str | None] = mapped_column(String(500))
    events: Mapped[int] = mapped_column(Integer)
    next_wake_us: Mapped[int | None] = mapped_column(BigInteger)
    awaiting_us: Mapped[int | None] = mapped_column(BigInteger)
    # opened while no rule matched it (sla_contacts_unmatched_total): kept from the opening,
    # like the labels it was counted under
    unmatched: Mapped[bool | None] = mapped_column(Boolean)
    # counted in sla_repeat_contacts_total: stays true when a later event unlinks it
    repeat_counted: Mapped[bool | None] = mapped_column(Boolean)
    callback_requested: Mapped[bool | None] = mapped_column(Boolean)  # 0014
    callback_handled: Mapped[bool | None] = mapped_column(Boolean)


class TargetRow(Base):
    __tablename__ = "targets"
    __table_args__ = (Index("ix_targets_open", "is_open"),)
    source: Mapped[str] = mapped_column(String(200), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(String(500), primary_key=True)
    target: Mapped[str] = mapped_column(String(32), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))
    queue: Mapped[str] = mapped_column(String(200))
    priority: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    outcome: Mapped[str | None] = mapped_column(String(16))
    is_open: Mapped[bool] = mapped_column(Boolean)
    started_us: Mapped[int] = mapped_column(BigInteger)
    deadline_us: Mapped[int | None] = mapped_column(BigInteger)
    warn_us: Mapped[int | None] = mapped_column(BigInteger)
    ended_us: Mapped[int | None] = mapped_column(BigInteger)
    decided_us: Mapped[int | None] = mapped_column(BigInteger)
    response_seconds: Mapped[float | None] = mapped_column(Float)


class SourceStateRow(Base):
    __tablename__ = "source_state"
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))
    cursor: Mapped[str | None] = mapped_column(Text)
    watermark_us: Mapped[int | None] = mapped_column(BigInteger)
    last_success_us: Mapped[int | None] = mapped_column(BigInteger)


class IngestedCountRow(Base):
    """Events stored, kept as they are stored (start-up reads this, not the events)."""

    __tablename__ = "ingested_counts"
    source: Mapped[str] = mapped_column(String(200), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)


class RejectedCountRow(Base):
    """Items set aside, kept as they are set aside."""

    __tablename__ = "rejected_counts"
    source: Mapped[str] = mapped_column(String(200), primary_key=True)
    reason: Mapped[str] = mapped_column(String(64), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)


class PollCountRow(Base):
    __tablename__ = "poll_counts"
    source: Mapped[str] = mapped_column(String(200), primary_key=True)
    result: Mapped[str] = mapped_column(String(32), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)


class SkippedCountRow(Base):
    """Inbound items a source read and skipped on purpose (a bounce, an out-of-office)."""

    __tablename__ = "skipped_counts"
    source: Mapped[str] = mapped_column(String(200), primary_key=True)
    reason: Mapped[str] = mapped_column(String(64), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)


class LateCountRow(Base):
    """Events a source delivered older than its own watermark (it broke its promise)."""

    __tablename__ = "late_counts"
    source: Mapped[str] = mapped_column(String(200), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)


class RejectedRow(Base):
    __tablename__ = "rejected_events"
    __table_args__ = (
        Index("ix_rejected_source", "source", "reason"),
        Index("ux_rejected_key", "source", "key", unique=True),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text)
    payload: Mapped[str] = mapped_column(Text)
    rejected_us: Mapped[int] = mapped_column(BigInteger)
    # what the rejection is about (reason, where, payload): the same input read again is
    # the same rejection, counted once
    key: Mapped[str | None] = mapped_column(String(64))


class LeaseRow(Base):
    """Who does what among replicas: `source:<name>` (polling) and `leader` (evaluation,
    deadlines, contact metrics, alerts). A lease not renewed by `expires_us` is free."""

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(250), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    expires_us: Mapped[int] = mapped_column(BigInteger)


class QueueSeenRow(Base):
    """Every queue each source has had, in the order first seen (`seq`): the first ones of
    a source keep their own `queue` label in metrics, up to its bound (config
    `queue_labels`); the order must survive restarts, or series would change hands."""

    __tablename__ = "queues_seen"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(200))
    queue: Mapped[str] = mapped_column(String(200))
    __table_args__ = (UniqueConstraint("source", "queue", name="uq_queues_seen"),)


class ReplicaRow(Base):
    __tablename__ = "replicas"
    replica_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    seen_us: Mapped[int] = mapped_column(BigInteger)
    clock_us: Mapped[int | None] = mapped_column(BigInteger)  # 0011: the monitor's clock then


class DirtyContactRow(Base):
    """Contacts with new events, stored by a polling replica for the leader to evaluate."""

    __tablename__ = "dirty_contacts"
    source: Mapped[str] = mapped_column(String(200), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(String(500), primary_key=True)
    # bumped by each poll that touches the contact again, so the leader only clears the
    # mark for the version it evaluated (events stored meanwhile are never skipped)
    version: Mapped[int] = mapped_column(BigInteger)


class ArchiveRunRow(Base):
    """One `sla-monitor archive` run: what it moved, where to, and when."""

    __tablename__ = "archive_runs"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    before_us: Mapped[int] = mapped_column(BigInteger)
    file: Mapped[str] = mapped_column(Text)
    started_us: Mapped[int] = mapped_column(BigInteger)
    finished_us: Mapped[int | None] = mapped_column(BigInteger)
    contacts: Mapped[int] = mapped_column(BigInteger)
    events: Mapped[int] = mapped_column(BigInteger)


class ArchiveHorizonRow(Base):
    """Per source: events before this instant were archived. An event older than the
    horizon whose contact is not stored is set aside, not taken for a new contact."""

    __tablename__ = "archive_horizons"
    source: Mapped[str] = mapped_column(String(200), primary_key=True)
    before_us: Mapped[int] = mapped_column(BigInteger)


class CarriedCountRow(Base):
    """Archived rows' contribution to a counter (`metric` + JSON label values), added to
    what the remaining rows count, so archiving never moves a counter."""

    __tablename__ = "carried_counts"
    metric: Mapped[str] = mapped_column(String(64), primary_key=True)
    labels: Mapped[str] = mapped_column(String(2000), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class CarriedResponseRow(Base):
    """Archived response times, grouped by their value rounded up to the millisecond: exact
    for any bucket bound in whole milliseconds, so bounds added to the config later still
    count archived values right."""

    __tablename__ = "carried_responses"
    channel: Mapped[str] = mapped_column(String(16), primary_key=True)
    queue: Mapped[str] = mapped_column(String(200), primary_key=True)
    priority: Mapped[str] = mapped_column(String(64), primary_key=True)  # 0010: "none" before
    target: Mapped[str] = mapped_column(String(32), primary_key=True)
    le_ms: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)
    total: Mapped[float] = mapped_column(Float)


class StateCountRow(Base):
    """What the contact and target rows count (`metric` + JSON label values), kept in the
    same transaction as every write and delete of those rows, so start-up reads these
    instead of grouping the whole history. Archived rows' share is in `carried_counts`."""

    __tablename__ = "state_counts"
    metric: Mapped[str] = mapped_column(String(64), primary_key=True)
    labels: Mapped[str] = mapped_column(String(2000), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class ResponseCountRow(Base):
    """The targets' response times as histogram buckets (their count and exact sum), for
    the bucket bounds recorded in `state_counts` (metric `response_bounds`); other bounds
    (a config with another `within`) are counted again from the targets once."""

    __tablename__ = "response_counts"
    channel: Mapped[str] = mapped_column(String(16), primary_key=True)
    queue: Mapped[str] = mapped_column(String(200), primary_key=True)
    priority: Mapped[str] = mapped_column(String(64), primary_key=True)
    target: Mapped[str] = mapped_column(String(32), primary_key=True)
    bucket: Mapped[int] = mapped_column(Integer, primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)
    total: Mapped[float] = mapped_column(Float)
