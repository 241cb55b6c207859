"""The store on SQL: SQLite (WAL) by default, PostgreSQL by URL.

Schema changes go through Alembic migrations, applied on start. Bulk paths use Core
statements on the ORM tables and driver-level batches (far cheaper than the ORM's unit of
work for tens of thousands of rows). Implements the protocols of `adapters/abc.py`.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Engine,
    Table,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    literal,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from sla_monitor.adapters.abc import LeaseLost
from sla_monitor.adapters.orm import (
    ArchiveHorizonRow,
    ArchiveRunRow,
    CarriedCountRow,
    CarriedResponseRow,
    ContactRow,
    DirtyContactRow,
    EventRow,
    IngestedCountRow,
    LateCountRow,
    LeaseRow,
    PollCountRow,
    QueueSeenRow,
    RejectedCountRow,
    RejectedRow,
    ReplicaRow,
    ResponseCountRow,
    SkippedCountRow,
    SourceStateRow,
    StateCountRow,
    TargetRow,
)
from sla_monitor.adapters.records import (
    CONTACT_FIELDS,
    CONTACTS_SEEN,
    RESPONSE_BOUNDS,
    TARGET_FIELDS,
    AlertingTarget,
    Carried,
    CarriedResponses,
    ContactRecord,
    Counts,
    PendingWake,
    QuietContact,
    RejectedRecord,
    ResponseBuckets,
    ResponseCounts,
    Row,
    SourceCounts,
    SourceState,
    StateCounts,
    TargetRecord,
    bucket_responses,
    carried_counts,
    queues_of,
    response_histograms,
    state_counts,
)
from sla_monitor.domain.engine import ContactSummary
from sla_monitor.domain.events import (
    CHANNEL_BY_VALUE,
    KIND_BY_VALUE,
    STATUS_BY_VALUE,
    ContactKey,
    Event,
    Rejected,
)
from sla_monitor.domain.timeutil import from_micros, to_micros

EVENTS = cast(Table, EventRow.__table__)
CONTACTS = cast(Table, ContactRow.__table__)
TARGETS = cast(Table, TargetRow.__table__)
SOURCES = cast(Table, SourceStateRow.__table__)
POLLS = cast(Table, PollCountRow.__table__)
SKIPPED = cast(Table, SkippedCountRow.__table__)
LATE = cast(Table, LateCountRow.__table__)
REJECTED = cast(Table, RejectedRow.__table__)
INGESTED = cast(Table, IngestedCountRow.__table__)
REJECTED_COUNTS = cast(Table, RejectedCountRow.__table__)
LEASES = cast(Table, LeaseRow.__table__)
REPLICAS = cast(Table, ReplicaRow.__table__)
QUEUES_SEEN = cast(Table, QueueSeenRow.__table__)
DIRTY = cast(Table, DirtyContactRow.__table__)
ARCHIVE_RUNS = cast(Table, ArchiveRunRow.__table__)
HORIZONS = cast(Table, ArchiveHorizonRow.__table__)
CARRIED = cast(Table, CarriedCountRow.__table__)
CARRIED_RESPONSES = cast(Table, CarriedResponseRow.__table__)
STATE_COUNTS = cast(Table, StateCountRow.__table__)
RESPONSE_COUNTS = cast(Table, ResponseCountRow.__table__)


def _printable(text: str) -> str:
    """Text any database accepts (PostgreSQL refuses NUL): a rejected item is kept as read,
    with NUL written out."""
    return text.replace("\x00", "\\u0000") if "\x00" in text else text


def _us(dt: datetime | None) -> int | None:
    return None if dt is None else to_micros(dt)


def _dt(us: int | None) -> datetime | None:
    return None if us is None else from_micros(us)


EVENT_ROW_COLUMNS = (
    "source",
    "event_id",
    "conversation_id",
    "kind",
    "occurred_us",
    "channel",
    "queue",
    "customer_id",
    "priority",
    "tier",
    "tags",
    "status",
    "reason",
    "agent",
    "team",
    "ingested_us",
)


def event_tuple(e: Event, ingested_us: int) -> tuple[Any, ...]:
    """An events row, in EVENT_ROW_COLUMNS order."""
    return (
        e.source,
        e.event_id,
        e.conversation_id,
        e.kind.value,
        to_micros(e.occurred_at),
        e.channel.value,
        e.queue,
        e.customer_id,
        e.priority,
        e.tier,
        json.dumps(sorted(e.tags)) if e.tags else None,
        e.status.value if e.status else None,
        e.reason,
        e.agent,
        e.team,
        ingested_us,
    )


_PG_TYPES = {"occurred_us": "bigint", "ingested_us": "bigint"}
_PG_ADD_EVENTS = text(
    f"INSERT INTO events ({', '.join(EVENT_ROW_COLUMNS)}) SELECT * FROM unnest("
    + ", ".join(f"CAST(:{c} AS {_PG_TYPES.get(c, 'text')}[])" for c in EVENT_ROW_COLUMNS)
    + ") ON CONFLICT (source, event_id) DO NOTHING RETURNING source, event_id"
)

_EVENT_COLUMNS = (
    EVENTS.c.source,
    EVENTS.c.event_id,
    EVENTS.c.conversation_id,
    EVENTS.c.kind,
    EVENTS.c.occurred_us,
    EVENTS.c.channel,
    EVENTS.c.queue,
    EVENTS.c.customer_id,
    EVENTS.c.priority,
    EVENTS.c.tier,
    EVENTS.c.tags,
    EVENTS.c.status,
    EVENTS.c.reason,
    EVENTS.c.agent,
    EVENTS.c.team,
)
_CONTACT_SELECT = tuple(CONTACTS.c[f] for f in CONTACT_FIELDS)
_TARGET_SELECT = tuple(TARGETS.c[f] for f in TARGET_FIELDS)


def _row_event(r: Sequence[Any]) -> Event:
    return Event(
        source=r[0],
        event_id=r[1],
        conversation_id=r[2],
        kind=KIND_BY_VALUE[r[3]],
        occurred_at=from_micros(r[4]),
        channel=CHANNEL_BY_VALUE[r[5]],
        queue=r[6],
        customer_id=r[7],
        priority=r[8],
        tier=r[9],
        tags=frozenset(json.loads(r[10])) if r[10] else frozenset(),
        status=STATUS_BY_VALUE[r[11]] if r[11] else None,
        reason=r[12],
        agent=r[13],
        team=r[14],
    )


class SqlStore:
    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:  # after a database restart, pooled connections are dead: test before use
            kwargs["pool_pre_ping"] = True
        self.engine: Engine = create_engine(url, **kwargs)
        self.dialect = self.engine.dialect.name
        # an in-memory SQLite lives and dies with its connection: no other process sees it
        self.shared = self.engine.url.database not in (None, "", ":memory:")
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._rows_since_analyze = 0
        self._rows_at_analyze = 0
        self._analyze_lock = threading.Lock()

    def migrate(self, revision: str = "head") -> None:
        """Bring the schema to the latest revision (idempotent); `revision`: to that one."""
        from alembic import command
        from alembic.config import Config as AlembicConfig

        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        with self.engine.begin() as conn:
            if self.dialect == "sqlite":
                # Python's sqlite3 opens no transaction before DDL, so each CREATE would
                # commit on its own: a process killed mid-migration left half a schema that
                # the next start could not migrate ("table already exists"). SQLite's DDL
                # is transactional once a transaction is open: open it.
                conn.exec_driver_sql("BEGIN")
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def begin(self) -> Iterator[SqlTransaction]:
        with self.engine.begin() as conn:
            conn.info.pop(_BOUNDS, None)  # read once per transaction (another may change it)
            yield SqlTransaction(conn, self.dialect)

    @contextmanager
    def read(self) -> Iterator[SqlTransaction]:
        # a connection without an explicit transaction: on SQLite (WAL) a long read never
        # holds the write lock, so the poller writes on beside a report or an archive scan
        with self.engine.connect() as conn:
            conn.info.pop(_BOUNDS, None)
            yield SqlTransaction(conn, self.dialect)

    def wrote(self, rows: int) -> None:
        """Note rows just committed. PostgreSQL plans from table statistics, and until
        autovacuum catches up after a burst of writes (a backfill, a first import) it takes a
        grown table for an empty one: contacts are then found by scanning a whole source
        instead of probing the primary key, and ingest slows quadratically. So refresh the
        statistics ourselves whenever the tables have grown by a quarter (and 5,000 rows)."""
        if self.dialect != "postgresql" or rows <= 0:
            return
        with self._analyze_lock:
            self._rows_since_analyze += rows
            if self._rows_since_analyze < max(5000, self._rows_at_analyze // 4):
                return
            self._rows_at_analyze += self._rows_since_analyze
            self._rows_since_analyze = 0
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE events, contacts, targets")


class SqlTransaction:
    def __init__(self, conn: Connection, dialect: str) -> None:
        self.events = _Events(conn, dialect)
        self.sources = _Sources(conn, dialect)
        self.counters = _Counters(conn, dialect)
        self.state = _State(conn, dialect)
        self.archive = _Archive(conn, dialect)
        self.cluster = _Cluster(conn, dialect)


class _Role:
    def __init__(self, conn: Connection, dialect: str) -> None:
        self.conn = conn
        self.dialect = dialect

    def _insert(self, table: Any) -> Any:
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)


class _Events(_Role):
    def add(self, events: Sequence[Event], now_us: int) -> list[Event]:
        if not events:
            return []
        conn = self.conn
        by_key = {e.dedup_key: e for e in events}
        if self.dialect == "postgresql":
            # one INSERT .. SELECT FROM unnest(arrays) per batch: a single statement whose
            # RETURNING names the new rows (several times faster than row-wise VALUES)
            new: list[Event] = []
            fresh = list(by_key.values())
            for i in range(0, len(fresh), 5000):
                rows = [event_tuple(e, now_us) for e in fresh[i : i + 5000]]
                arrays = {
                    c: list(col)
                    for c, col in zip(EVENT_ROW_COLUMNS, zip(*rows, strict=True), strict=True)
                }
                for src, eid in conn.execute(_PG_ADD_EVENTS, arrays):
                    new.append(by_key[(src, eid)])
            self._count(new)
            return new
        # SQLite: one writer at a time, so ids not found in this transaction are new; the
        # lookup runs on the unique index, the insert through the driver's executemany
        for where in _by_contact(EVENTS, list(by_key), id_column="event_id"):
            for src, eid in conn.execute(select(EVENTS.c.source, EVENTS.c.event_id).where(where)):
                del by_key[(src, eid)]
        fresh = list(by_key.values())
        insert_rows(conn, EVENTS, EVENT_ROW_COLUMNS, [event_tuple(e, now_us) for e in fresh])
        self._count(fresh)
        return fresh

    def _count(self, new: Sequence[Event]) -> None:
        """Count what was stored, in the same transaction (start-up reads the counts)."""
        counts = Counter((e.source, e.kind.value) for e in new)
        _add_counts(self, INGESTED, ("source", "kind"), counts)

    def stored_copies(self, events: Iterable[Event]) -> dict[tuple[str, str], Event]:
        out: dict[tuple[str, str], Event] = {}
        keys = [e.dedup_key for e in events]
        for where in _by_contact(EVENTS, keys, id_column="event_id"):
            for r in self.conn.execute(select(*_EVENT_COLUMNS).where(where)):
                out[(r[0], r[1])] = _row_event(r)
        return out

    def for_contacts(self, keys: Iterable[ContactKey]) -> dict[ContactKey, list[Event]]:
        out: dict[ContactKey, list[Event]] = {}
        for where in _by_contact(EVENTS, keys):
            for r in self.conn.execute(select(*_EVENT_COLUMNS).where(where)):
                out.setdefault((r[0], r[2]), []).append(_row_event(r))
        return out

    def by_contact(
        self,
        until_us: int | None = None,
        start: ContactKey | None = None,
        stop: ContactKey | None = None,
    ) -> Iterator[list[Event]]:
        q = select(*_EVENT_COLUMNS).order_by(EVENTS.c.source, EVENTS.c.conversation_id)
        if until_us is not None:
            q = q.where(EVENTS.c.occurred_us <= until_us)
        key = tuple_(EVENTS.c.source, EVENTS.c.conversation_id)
        if start is not None:
            q = q.where(key >= tuple_(literal(start[0]), literal(start[1])))
        if stop is not None:
            q = q.where(key < tuple_(literal(stop[0]), literal(stop[1])))
        current: list[Event] = []
        for r in self.conn.execute(q.execution_options(yield_per=10000)):
            e = _row_event(r)
            if current and current[0].contact_key != e.contact_key:
                yield current
                current = []
            current.append(e)
        if current:
            yield current

    def contacts_stored(self, keys: Iterable[ContactKey]) -> set[ContactKey]:
        out: set[ContactKey] = set()
        for where in _by_contact(EVENTS, keys):
            q = select(EVENTS.c.source, EVENTS.c.conversation_id).where(where).distinct()
            out.update((r[0], r[1]) for r in self.conn.execute(q))
        return out

    def id_span(self) -> int:
        q = select(func.min(EVENTS.c.id), func.max(EVENTS.c.id))
        low, high = self.conn.execute(q).one()
        return 0 if low is None else int(high) - int(low) + 1

    def split_points(self, parts: int) -> list[ContactKey]:
        # from a sample of event ids: primary-key lookups, no scan
        q = select(func.min(EVENTS.c.id), func.max(EVENTS.c.id))
        low, high = self.conn.execute(q).one()
        if low is None or parts <= 1:
            return []
        step = max((high - low) // (parts * 16), 1)
        ids = list(range(low, high + 1, step))
        sample: list[ContactKey] = []
        for i in range(0, len(ids), 900):
            q = select(EVENTS.c.source, EVENTS.c.conversation_id).where(
                EVENTS.c.id.in_(ids[i : i + 900])
            )
            sample.extend((r[0], r[1]) for r in self.conn.execute(q))
        return _split(sample, parts)

    def reject(self, source: str, items: Sequence[Rejected], now_us: int) -> list[Rejected]:
        if not items:
            return []
        by_key: dict[str, Rejected] = {}
        for r in items:
            by_key.setdefault(r.key, r)
        for i in range(0, len(by_key), 900):
            chunk = list(by_key)[i : i + 900]
            q = select(REJECTED.c.key).where(REJECTED.c.source == source, REJECTED.c.key.in_(chunk))
            for (known,) in self.conn.execute(q):
                by_key.pop(known, None)
        if by_key:
            self.conn.execute(
                REJECTED.insert(),
                [
                    {
                        "source": source,
                        "reason": r.reason,
                        "detail": _printable(r.detail[:4000]),
                        "payload": _printable(r.payload[:20000]),
                        "rejected_us": now_us,
                        "key": key,
                    }
                    for key, r in by_key.items()
                ],
            )
            counts = Counter((source, r.reason) for r in by_key.values())
            _add_counts(self, REJECTED_COUNTS, ("source", "reason"), counts)
        return list(by_key.values())

    def rejected(self, limit: int = 100) -> list[RejectedRecord]:
        c = REJECTED.c
        q = (
            select(c.id, c.source, c.reason, c.detail, c.payload, c.rejected_us, c.key)
            .order_by(c.id.desc())
            .limit(limit)
        )
        return [RejectedRecord._make(r) for r in self.conn.execute(q)]


def _split(sample: list[ContactKey], parts: int) -> list[ContactKey]:
    if not sample or parts <= 1:
        return []
    sample.sort()
    return sorted({sample[len(sample) * k // parts] for k in range(1, parts)})


class _Sources(_Role):
    def load(self) -> dict[str, SourceState]:
        return {
            r.name: SourceState(
                r.name, r.kind, r.cursor, _dt(r.watermark_us), _dt(r.last_success_us)
            )
            for r in self.conn.execute(select(SOURCES))
        }

    def save(self, state: SourceState) -> None:
        values = {
            "kind": state.kind,
            "cursor": state.cursor,
            "watermark_us": _us(state.watermark),
            "last_success_us": _us(state.last_success),
        }
        stmt = self._insert(SOURCES).values(name=state.name, **values)
        self.conn.execute(stmt.on_conflict_do_update(index_elements=["name"], set_=values))


class _Counters(_Role):
    def count_poll(self, source: str, result: str, n: int = 1) -> None:
        _add_counts(self, POLLS, ("source", "result"), Counter({(source, result): n}))

    def count_skipped(self, source: str, counts: dict[str, int]) -> None:
        found = Counter({(source, reason): n for reason, n in counts.items()})
        _add_counts(self, SKIPPED, ("source", "reason"), found)

    def count_late(self, source: str, n: int) -> None:
        stmt = self._insert(LATE).values(source=source, count=n)
        self.conn.execute(
            stmt.on_conflict_do_update(index_elements=["source"], set_={"count": LATE.c.count + n})
        )

    def _counts(self, q: Any) -> Counts:
        return [(tuple(r[:-1]), int(r[-1])) for r in self.conn.execute(q)]

    def late(self) -> Counts:
        return self._counts(select(LATE.c.source, LATE.c.count))

    def skipped(self) -> Counts:
        return self._counts(select(SKIPPED.c.source, SKIPPED.c.reason, SKIPPED.c.count))

    def polls(self) -> Counts:
        return self._counts(select(POLLS.c.source, POLLS.c.result, POLLS.c.count))

    def rejected(self) -> Counts:
        c = REJECTED_COUNTS.c
        return self._counts(select(c.source, c.reason, c.count))

    def outcomes(self) -> Counts:
        return self._plus_carried(Carried.OUTCOMES)

    def opened(self) -> Counts:
        return self._plus_carried(Carried.OPENED)

    def unmatched(self) -> Counts:
        return self._plus_carried(Carried.UNMATCHED)

    def repeats(self) -> Counts:
        return self._plus_carried(Carried.REPEATS)

    def callbacks(self) -> Counts:
        return [
            ((*labels, state), n)
            for counter, state in (
                (Carried.CALLBACKS_REQUESTED, "requested"),
                (Carried.CALLBACKS_HANDLED, "handled"),
            )
            for labels, n in self._plus_carried(counter)
        ]

    def queues_seen(self) -> list[tuple[str, str, str]]:
        seen = self._state_counts(CONTACTS_SEEN)
        return sorted((labels[0], labels[1], labels[2]) for labels, n in seen.items() if n > 0)

    def queue_order(self) -> list[tuple[str, str]]:
        q = select(QUEUES_SEEN.c.source, QUEUES_SEEN.c.queue).order_by(QUEUES_SEEN.c.seq)
        return [(r[0], r[1]) for r in self.conn.execute(q)]

    def _state_counts(self, metric: str) -> Counter[tuple[str, ...]]:
        c = STATE_COUNTS.c
        q = select(c.labels, c.value).where(c.metric == metric)
        return Counter({tuple(json.loads(r[0])): int(r[1]) for r in self.conn.execute(q)})

    def count_responses_in(self, bounds: tuple[float, ...]) -> None:
        if _response_bounds(self) != bounds:
            self._recount_responses(bounds)

    def responses(self, bounds: tuple[float, ...]) -> list[ResponseCounts]:
        self.count_responses_in(bounds)
        c = RESPONSE_COUNTS.c
        q = select(c.channel, c.queue, c.priority, c.target, c.bucket, c.count, c.total)
        buckets = {
            (r[0], r[1], r[2], r[3], r[4]): (int(r[5]), float(r[6])) for r in self.conn.execute(q)
        }
        return response_histograms(bounds, buckets, self.carried_responses())

    def _recount_responses(self, bounds: tuple[float, ...]) -> None:
        """Bucket every stored response time again, for new bounds (a `within` added to or
        changed in the config): the one start-up that reads the targets' history."""
        t = TARGETS.c
        q = select(*_TARGET_SELECT).where(t.response_seconds.is_not(None))
        buckets = bucket_responses(bounds, self.conn.execute(q.execution_options(yield_per=10000)))
        self.conn.execute(delete(RESPONSE_COUNTS))
        self.conn.execute(delete(STATE_COUNTS).where(STATE_COUNTS.c.metric == RESPONSE_BOUNDS))
        self.conn.execute(
            STATE_COUNTS.insert().values(
                metric=RESPONSE_BOUNDS, labels=json.dumps(list(bounds)), value=0
            )
        )
        self.conn.info[_BOUNDS] = bounds
        _add_responses(self, buckets)

    def ingested(self) -> Counts:
        c = INGESTED.c
        return self._counts(select(c.source, c.kind, c.count))

    def _plus_carried(self, counter: Carried) -> Counts:
        """What the stored rows count plus what archived rows carried."""
        totals = self._state_counts(counter.value)
        for labels, n in self._carried(counter):
            totals[labels] += n
        return list(totals.items())

    def _carried(self, counter: Carried) -> Counts:
        q = select(CARRIED.c.labels, CARRIED.c.value).where(CARRIED.c.metric == counter.value)
        return [(tuple(json.loads(r[0])), int(r[1])) for r in self.conn.execute(q)]

    def carried_responses(self) -> Iterator[CarriedResponses]:
        c = CARRIED_RESPONSES.c
        q = select(c.channel, c.queue, c.target, c.le_ms, c.count, c.total, c.priority)
        for r in self.conn.execute(q):
            yield CarriedResponses(r[0], r[1], r[2], r[3] / 1000, int(r[4]), float(r[5]), r[6])

    def source_counts(self, source: str) -> SourceCounts:
        ing = select(INGESTED.c.kind, INGESTED.c.count).where(INGESTED.c.source == source)
        rej = select(REJECTED_COUNTS.c.reason, REJECTED_COUNTS.c.count).where(
            REJECTED_COUNTS.c.source == source
        )
        pol = select(POLLS.c.result, POLLS.c.count).where(POLLS.c.source == source)
        skp = select(SKIPPED.c.reason, SKIPPED.c.count).where(SKIPPED.c.source == source)
        lat = select(LATE.c.count).where(LATE.c.source == source)
        conn = self.conn
        return SourceCounts(
            ingested=[((source, r[0]), int(r[1])) for r in conn.execute(ing)],
            rejected=[((source, r[0]), int(r[1])) for r in conn.execute(rej)],
            polls=[((source, r[0]), int(r[1])) for r in conn.execute(pol)],
            skipped=[((source, r[0]), int(r[1])) for r in conn.execute(skp)],
            late=[((source,), int(r[0])) for r in conn.execute(lat)],
        )


class _State(_Role):
    def targets_for(self, keys: Iterable[ContactKey]) -> dict[ContactKey, list[TargetRecord]]:
        out: dict[ContactKey, list[TargetRecord]] = {}
        make = TargetRecord._make
        for where in _by_contact(TARGETS, keys):
            for r in self.conn.execute(select(*_TARGET_SELECT).where(where)):
                out.setdefault((r[0], r[1]), []).append(make(r))
        return out

    def contacts_for(self, keys: Iterable[ContactKey]) -> dict[ContactKey, ContactRecord]:
        out: dict[ContactKey, ContactRecord] = {}
        make = ContactRecord._make
        for where in _by_contact(CONTACTS, keys):
            for r in self.conn.execute(select(*_CONTACT_SELECT).where(where)):
                out[(r[0], r[1])] = make(r)
        return out

    def delete(self, keys: Iterable[ContactKey]) -> None:
        # the deleted rows come back (RETURNING) to take their share out of the counts
        keys = list(keys)
        targets: list[Row] = []
        contacts: list[Row] = []
        for where in _by_contact(TARGETS, keys):
            targets += self.conn.execute(delete(TARGETS).where(where).returning(*_TARGET_SELECT))
        for where in _by_contact(CONTACTS, keys):
            found = self.conn.execute(delete(CONTACTS).where(where).returning(*_CONTACT_SELECT))
            contacts += found
        self._counted(contacts, targets, -1)

    def write(self, contacts: Sequence[Row], targets: Sequence[Row]) -> None:
        insert_rows(self.conn, CONTACTS, CONTACT_FIELDS, contacts)
        insert_rows(self.conn, TARGETS, TARGET_FIELDS, targets)
        self._counted(contacts, targets, +1)
        if queues := queues_of(contacts):  # in order, each queue a source has had once
            stmt = self._insert(QUEUES_SEEN).on_conflict_do_nothing()
            self.conn.execute(stmt, [{"source": s, "queue": q} for s, q in queues])

    def _counted(self, contacts: Sequence[Row], targets: Sequence[Row], sign: int) -> None:
        """Keep the counts beside the rows (start-up reads them, not the rows)."""
        _add_state_counts(self, state_counts(contacts, targets, sign))
        bounds = _response_bounds(self)
        if bounds is not None:
            _add_responses(self, bucket_responses(bounds, targets, sign))

    def set_repeats(self, links: dict[ContactKey, ContactKey | None]) -> None:
        if not links:
            return
        # contacts counted as repeats for the first time now (counted once, for good)
        c = CONTACTS.c
        first: StateCounts = Counter()
        for where in _by_contact(CONTACTS, [k for k, v in links.items() if v is not None]):
            q = select(c.channel, c.queue).where(where, c.repeat_counted.is_not(True))
            for channel, queue in self.conn.execute(q):
                first[(Carried.REPEATS, (channel, queue))] += 1
        stmt = (
            update(CONTACTS)
            .where(
                CONTACTS.c.source == bindparam("k_source"),
                CONTACTS.c.conversation_id == bindparam("k_conv"),
            )
            .values(
                repeat_of_source=bindparam("r_source"),
                repeat_of_conversation=bindparam("r_conv"),
                # counted once linked, for good (counters never go down)
                repeat_counted=CONTACTS.c.repeat_counted.is_(True) | bindparam("linked"),
            )
        )
        self.conn.execute(
            stmt,
            [
                {
                    "k_source": k[0],
                    "k_conv": k[1],
                    "r_source": v[0] if v else None,
                    "r_conv": v[1] if v else None,
                    "linked": v is not None,
                }
                for k, v in links.items()
            ],
        )
        _add_state_counts(self, first)

    def _summaries(
        self, customers: Iterable[str], where: Any = None
    ) -> Iterator[tuple[ContactSummary, ContactKey | None]]:
        c = CONTACTS.c
        cust = sorted(set(customers))
        for i in range(0, len(cust), 500):
            q = select(
                c.source,
                c.conversation_id,
                c.customer_id,
                c.opened_us,
                c.first_response_us,
                c.repeat_of_source,
                c.repeat_of_conversation,
            ).where(c.customer_id.in_(cust[i : i + 500]))
            if where is not None:
                q = q.where(where)
            for r in self.conn.execute(q):
                link = (r[5], r[6]) if r[5] is not None else None
                yield ContactSummary((r[0], r[1]), r[2], _dt(r[3]), _dt(r[4])), link

    def summaries_near(
        self, customers: Iterable[str], start_us: int, end_us: int
    ) -> list[tuple[ContactSummary, ContactKey | None]]:
        return list(self._summaries(customers, CONTACTS.c.opened_us.between(start_us, end_us)))

    def summaries_for_customers(self, customers: Iterable[str]) -> list[ContactSummary]:
        return [s for s, _link in self._summaries(customers)]

    def clear(self) -> None:
        self.conn.execute(delete(TARGETS))
        self.conn.execute(delete(CONTACTS))
        self.conn.execute(delete(STATE_COUNTS).where(STATE_COUNTS.c.metric != RESPONSE_BOUNDS))
        self.conn.execute(delete(RESPONSE_COUNTS))

    def open_targets(self) -> Iterator[TargetRecord]:
        q = select(*_TARGET_SELECT).where(TARGETS.c.is_open.is_(True))
        make = TargetRecord._make
        for r in self.conn.execute(q.execution_options(yield_per=10000)):
            yield make(r)

    def alerting(self) -> list[AlertingTarget]:
        t, c = TARGETS.c, CONTACTS.c
        q = (
            select(
                t.source,
                t.conversation_id,
                t.target,
                t.seq,
                t.channel,
                t.queue,
                t.priority,
                t.state,
                t.started_us,
                t.deadline_us,
                c.customer_id,
                c.rule,
            )
            .join(CONTACTS, (c.source == t.source) & (c.conversation_id == t.conversation_id))
            .where(t.is_open.is_(True), t.state.in_(["breached", "at_risk"]))
        )
        return [AlertingTarget._make(r) for r in self.conn.execute(q)]

    def pending_wakes(self) -> Iterator[PendingWake]:
        c = CONTACTS.c
        q = select(c.source, c.conversation_id, c.next_wake_us, c.awaiting_us).where(
            c.next_wake_us.is_not(None) | c.awaiting_us.is_not(None)
        )
        for r in self.conn.execute(q):
            yield PendingWake._make(r)


class _Archive(_Role):
    def horizons(self) -> dict[str, int]:
        return {r[0]: int(r[1]) for r in self.conn.execute(select(HORIZONS))}

    def quiet_contacts(
        self, before_us: int, sources: Sequence[str], keys: Sequence[ContactKey] | None = None
    ) -> Iterator[QuietContact]:
        c = CONTACTS.c

        def same(t: Table) -> Any:
            return (t.c.source == c.source) & (t.c.conversation_id == c.conversation_id)

        later = select(EVENTS.c.id).where(same(EVENTS), EVENTS.c.occurred_us >= before_us)
        open_ = select(TARGETS.c.seq).where(same(TARGETS), TARGETS.c.is_open.is_(True))
        dirty = select(DIRTY.c.version).where(same(DIRTY))
        q = select(c.source, c.conversation_id, c.customer_id).where(
            c.next_wake_us.is_(None),
            c.awaiting_us.is_(None),
            ~later.exists(),
            ~open_.exists(),
            ~dirty.exists(),
        )
        if keys is not None:
            for where in _by_contact(CONTACTS, keys):
                for r in self.conn.execute(q.where(where)):
                    yield QuietContact._make(r)
            return
        q = q.where(c.source.in_(sources)).order_by(c.customer_id, c.source, c.conversation_id)
        for r in self.conn.execute(q.execution_options(yield_per=10000)):
            yield QuietContact._make(r)

    def start_run(self, before_us: int, file: str, now_us: int, sources: Sequence[str]) -> int:
        stmt = self._insert(HORIZONS)
        stmt = stmt.on_conflict_do_update(
            index_elements=["source"],
            set_={"before_us": func.max(HORIZONS.c.before_us, stmt.excluded.before_us)}
            if self.dialect == "sqlite"
            else {"before_us": func.greatest(HORIZONS.c.before_us, stmt.excluded.before_us)},
        )
        if sources:
            self.conn.execute(stmt, [{"source": s, "before_us": before_us} for s in sources])
        run = self.conn.execute(
            ARCHIVE_RUNS.insert()
            .values(before_us=before_us, file=file, started_us=now_us, contacts=0, events=0)
            .returning(ARCHIVE_RUNS.c.id)
        )
        return int(run.scalar_one())

    def finish_run(self, run_id: int, now_us: int) -> None:
        self.conn.execute(
            update(ARCHIVE_RUNS).where(ARCHIVE_RUNS.c.id == run_id).values(finished_us=now_us)
        )

    def archive(
        self, keys: Sequence[ContactKey], run_id: int, write: Callable[[list[Event]], None]
    ) -> tuple[int, int, int]:
        conn = self.conn
        events: list[Event] = []
        ids: list[int] = []
        for where in _by_contact(EVENTS, keys):
            q = select(EVENTS.c.id, *_EVENT_COLUMNS).where(where)
            for r in conn.execute(q):
                ids.append(r[0])
                events.append(_row_event(r[1:]))
        write(events)
        state = _State(conn, self.dialect)
        contacts = list(state.contacts_for(keys).values())
        targets = [t for rows in state.targets_for(keys).values() for t in rows]
        counts = carried_counts(contacts, targets)
        for counter, values in counts.counters.items():
            self._carry(counter, values)
        _add_response_sums(self, CARRIED_RESPONSES, "le_ms", counts.responses)
        # events by id: one stored after this transaction read them is never lost unseen
        for i in range(0, len(ids), 900):
            conn.execute(delete(EVENTS).where(EVENTS.c.id.in_(ids[i : i + 900])))
        state.delete(keys)
        conn.execute(
            update(ARCHIVE_RUNS)
            .where(ARCHIVE_RUNS.c.id == run_id)
            .values(
                contacts=ARCHIVE_RUNS.c.contacts + len(keys),
                events=ARCHIVE_RUNS.c.events + len(ids),
            )
        )
        return len(ids), len(targets), counts.opened

    def _carry(self, counter: Carried, counts: Counter[tuple[str, ...]]) -> None:
        _add_labelled(self, CARRIED, Counter({(counter.value, k): n for k, n in counts.items()}))

    def count_opened_before(self, before_us: int) -> int:
        q = select(func.count()).select_from(CONTACTS).where(CONTACTS.c.opened_us < before_us)
        return int(self.conn.execute(q).scalar_one())


class _Cluster(_Role):
    def try_lease(self, name: str, holder: str, now_us: int, ttl_us: int) -> bool:
        stmt = self._insert(LEASES).values(name=name, holder=holder, expires_us=now_us + ttl_us)
        stmt = stmt.on_conflict_do_update(
            index_elements=["name"],
            set_={"holder": holder, "expires_us": now_us + ttl_us},
            where=(LEASES.c.holder == holder) | (LEASES.c.expires_us < now_us),
        ).returning(LEASES.c.holder)
        return self.conn.execute(stmt).first() is not None

    def release(self, name: str, holder: str) -> None:
        self.conn.execute(delete(LEASES).where(LEASES.c.name == name, LEASES.c.holder == holder))

    def fence(self, name: str, holder: str, now_us: int) -> None:
        # the row locked on PostgreSQL, so it cannot change hands before this commits
        q = select(LEASES.c.holder, LEASES.c.expires_us).where(LEASES.c.name == name)
        if self.dialect == "postgresql":
            q = q.with_for_update()
        row = self.conn.execute(q).first()
        if row is None or row[0] != holder or row[1] < now_us:
            raise LeaseLost(name)

    def heartbeat(self, replica: str, now_us: int, clock_us: int | None = None) -> None:
        values: dict[str, int] = {"seen_us": now_us}
        if clock_us is not None:
            values["clock_us"] = clock_us
        stmt = self._insert(REPLICAS).values(replica_id=replica, **values)
        self.conn.execute(stmt.on_conflict_do_update(index_elements=["replica_id"], set_=values))

    def clock_reading(self) -> tuple[int, int] | None:
        q = (
            select(REPLICAS.c.seen_us, REPLICAS.c.clock_us)
            .where(REPLICAS.c.clock_us.is_not(None))
            .order_by(REPLICAS.c.clock_us.desc())
            .limit(1)
        )
        row = self.conn.execute(q).first()
        return None if row is None else (int(row[0]), int(row[1]))

    def live_replicas(self, since_us: int) -> list[str]:
        q = select(REPLICAS.c.replica_id).where(REPLICAS.c.seen_us >= since_us)
        return sorted(r[0] for r in self.conn.execute(q))

    def holders(self, now_us: int) -> dict[str, str]:
        q = select(LEASES.c.name, LEASES.c.holder).where(LEASES.c.expires_us >= now_us)
        return {r[0]: r[1] for r in self.conn.execute(q)}

    def mark_dirty(self, keys: Iterable[ContactKey]) -> None:
        rows = [{"source": k[0], "conversation_id": k[1], "version": 1} for k in set(keys)]
        if not rows:
            return
        stmt = self._insert(DIRTY)
        stmt = stmt.on_conflict_do_update(
            index_elements=["source", "conversation_id"],
            set_={"version": DIRTY.c.version + 1},
        )
        for i in range(0, len(rows), 5000):
            self.conn.execute(stmt, rows[i : i + 5000])

    def dirty(self, limit: int) -> dict[ContactKey, int]:
        q = select(DIRTY.c.source, DIRTY.c.conversation_id, DIRTY.c.version).limit(limit)
        return {(r[0], r[1]): int(r[2]) for r in self.conn.execute(q)}

    def clear_dirty(self, seen: dict[ContactKey, int]) -> None:
        if not seen:
            return
        stmt = delete(DIRTY).where(
            DIRTY.c.source == bindparam("s"),
            DIRTY.c.conversation_id == bindparam("c"),
            DIRTY.c.version == bindparam("v"),
        )
        self.conn.execute(stmt, [{"s": k[0], "c": k[1], "v": v} for k, v in seen.items()])


def _add_counts(
    role: _Role, table: Table, labels: tuple[str, str], counts: Counter[tuple[str, str]]
) -> None:
    """Add to a (label, label, count) table's rows (created at zero)."""
    if not counts:
        return
    stmt = role._insert(table)
    stmt = stmt.on_conflict_do_update(
        index_elements=list(labels), set_={"count": table.c.count + stmt.excluded.count}
    )
    role.conn.execute(
        stmt, [{labels[0]: k[0], labels[1]: k[1], "count": n} for k, n in counts.items()]
    )


def _add_state_counts(role: _Role, counts: StateCounts) -> None:
    """Add to the counts kept beside the contact and target rows."""
    _add_labelled(role, STATE_COUNTS, counts)


def _add_labelled(role: _Role, table: Table, counts: StateCounts) -> None:
    """Add to a (metric, JSON labels) -> value table, in key order (so two writers never
    wait on each other's rows in opposite orders)."""
    rows = [
        {"metric": str(metric), "labels": json.dumps(list(labels)), "value": n}
        for (metric, labels), n in sorted(counts.items())
        if n
    ]
    if not rows:
        return
    stmt = role._insert(table)
    stmt = stmt.on_conflict_do_update(
        index_elements=["metric", "labels"],
        set_={"value": table.c.value + stmt.excluded.value},
    )
    role.conn.execute(stmt, rows)


_BOUNDS = "sla_monitor.response_bounds"  # where a transaction keeps them once read


def _response_bounds(role: _Role) -> tuple[float, ...] | None:
    """The bounds the kept response buckets are counted in (None: not counted yet)."""
    info = role.conn.info
    if _BOUNDS not in info:
        q = select(STATE_COUNTS.c.labels).where(STATE_COUNTS.c.metric == RESPONSE_BOUNDS)
        found = role.conn.execute(q).scalar()
        info[_BOUNDS] = None if found is None else tuple(float(b) for b in json.loads(found))
    bounds: tuple[float, ...] | None = info[_BOUNDS]
    return bounds


def _add_responses(role: _Role, buckets: ResponseBuckets) -> None:
    _add_response_sums(role, RESPONSE_COUNTS, "bucket", buckets)


def _add_response_sums(
    role: _Role,
    table: Table,
    last: str,
    sums: dict[tuple[str, str, str, str, int], tuple[int, float]],
) -> None:
    """Add (how many, sum) per (channel, queue, priority, target, `last`) to a table of
    response times: the kept buckets, or the archived values carried on."""
    names = ("channel", "queue", "priority", "target", last)
    rows = [
        {**dict(zip(names, k, strict=True)), "count": n, "total": t}
        for k, (n, t) in sorted(sums.items())
        if n
    ]
    if not rows:
        return
    stmt = role._insert(table)
    stmt = stmt.on_conflict_do_update(
        index_elements=list(names),
        set_={
            "count": table.c.count + stmt.excluded.count,
            "total": table.c.total + stmt.excluded.total,
        },
    )
    role.conn.execute(stmt, rows)


def _by_contact(
    table: Table,
    keys: Iterable[tuple[str, str]],
    chunk: int = 900,
    id_column: str = "conversation_id",
) -> Iterator[Any]:
    """WHERE clauses selecting these (source, id) keys — contacts, or events by `event_id`:
    per source, ids in chunks (a plain IN is far cheaper to compile and run than a tuple IN)."""
    by_source: dict[str, list[str]] = {}
    for source, ident in keys:
        by_source.setdefault(source, []).append(ident)
    column = table.c[id_column]
    for source, idents in by_source.items():
        for i in range(0, len(idents), chunk):
            yield (table.c.source == source) & column.in_(idents[i : i + chunk])


def insert_rows(
    conn: Connection,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
) -> None:
    """Bulk insert. On SQLite straight through the driver's executemany: SQLAlchemy's
    per-row parameter processing costs more than SQLite's own work there. On PostgreSQL,
    SQLAlchemy batches rows into multi-row VALUES ("insertmanyvalues")."""
    if not rows:
        return
    if conn.dialect.name == "sqlite":
        marks = ", ".join("?" * len(columns))
        conn.exec_driver_sql(
            f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({marks})", list(rows)
        )
        return
    for i in range(0, len(rows), 5000):
        conn.execute(
            table.insert(), [dict(zip(columns, r, strict=True)) for r in rows[i : i + 5000]]
        )


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers (scrapes, reports) never block the poller
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()
