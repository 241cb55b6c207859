"""The store: events (the source of truth), contact and target state, source cursors.

SQLite (WAL) by default, PostgreSQL by URL. Schema changes go through Alembic migrations,
applied on start. Bulk paths use Core statements on the ORM tables (far cheaper than
ORM unit-of-work for tens of thousands of rows).
"""

from __future__ import annotations

import json
import math
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
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

from sla_monitor.adapters.orm import (
    ArchiveHorizonRow,
    ArchiveRunRow,
    CarriedCountRow,
    CarriedResponseRow,
    ContactRow,
    DirtyContactRow,
    EventRow,
    LateCountRow,
    LeaseRow,
    PollCountRow,
    RejectedRow,
    ReplicaRow,
    SkippedCountRow,
    SourceStateRow,
    TargetRow,
)
from sla_monitor.domain.engine import ContactEvaluation, ContactSummary
from sla_monitor.domain.events import (
    CHANNEL_BY_VALUE,
    KIND_BY_VALUE,
    STATUS_BY_VALUE,
    ContactKey,
    Event,
)
from sla_monitor.domain.timeutil import from_micros, to_micros
from sla_monitor.sources.abc import Rejected

EVENTS = cast(Table, EventRow.__table__)
CONTACTS = cast(Table, ContactRow.__table__)
TARGETS = cast(Table, TargetRow.__table__)
SOURCES = cast(Table, SourceStateRow.__table__)
POLLS = cast(Table, PollCountRow.__table__)
SKIPPED = cast(Table, SkippedCountRow.__table__)
LATE = cast(Table, LateCountRow.__table__)
REJECTED = cast(Table, RejectedRow.__table__)
LEASES = cast(Table, LeaseRow.__table__)
REPLICAS = cast(Table, ReplicaRow.__table__)
DIRTY = cast(Table, DirtyContactRow.__table__)
ARCHIVE_RUNS = cast(Table, ArchiveRunRow.__table__)
HORIZONS = cast(Table, ArchiveHorizonRow.__table__)
CARRIED = cast(Table, CarriedCountRow.__table__)
CARRIED_RESPONSES = cast(Table, CarriedResponseRow.__table__)

NO_PRIORITY = "none"  # label for contacts whose source gives no priority


def _printable(text: str) -> str:
    """Text any database accepts (PostgreSQL refuses NUL): a rejected item is kept as read,
    with NUL written out."""
    return text.replace("\x00", "\\u0000") if "\x00" in text else text


def _us(dt: datetime | None) -> int | None:
    return None if dt is None else to_micros(dt)


def _dt(us: int | None) -> datetime | None:
    return None if us is None else from_micros(us)


@dataclass
class SourceState:
    name: str
    kind: str
    cursor: str | None = None
    watermark: datetime | None = None
    last_success: datetime | None = None


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
        ingested_us,
    )


_PG_TYPES = {"occurred_us": "bigint", "ingested_us": "bigint"}
_PG_ADD_EVENTS = text(
    f"INSERT INTO events ({', '.join(EVENT_ROW_COLUMNS)}) SELECT * FROM unnest("
    + ", ".join(f"CAST(:{c} AS {_PG_TYPES.get(c, 'text')}[])" for c in EVENT_ROW_COLUMNS)
    + ") ON CONFLICT (source, event_id) DO NOTHING RETURNING source, event_id"
)


def event_row(e: Event, ingested_us: int) -> dict[str, Any]:
    return dict(zip(EVENT_ROW_COLUMNS, event_tuple(e, ingested_us), strict=True))


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
)


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
    )


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:  # after a database restart, pooled connections are dead: test before use
            kwargs["pool_pre_ping"] = True
        self.engine: Engine = create_engine(url, **kwargs)
        self.dialect = self.engine.dialect.name
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._rows_since_analyze = 0
        self._rows_at_analyze = 0
        self._analyze_lock = threading.Lock()

    def migrate(self) -> None:
        """Bring the schema to the latest revision (idempotent)."""
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
            command.upgrade(cfg, "head")

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

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

    def _insert(self, table: Any) -> Any:
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)

    # -- events -------------------------------------------------------------------------

    def add_events(self, conn: Connection, events: Sequence[Event], now_us: int) -> list[Event]:
        """Insert, skipping ones already stored; returns the events that were new. Each
        (source, event id) must appear once in `events` (the monitor screens batches)."""
        if not events:
            return []
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
            return new
        # SQLite: one writer at a time, so ids not found in this transaction are new; the
        # lookup runs on the unique index, the insert through the driver's executemany
        for where in _by_contact(EVENTS, list(by_key), id_column="event_id"):
            for src, eid in conn.execute(select(EVENTS.c.source, EVENTS.c.event_id).where(where)):
                del by_key[(src, eid)]
        fresh = list(by_key.values())
        insert_rows(conn, EVENTS, EVENT_ROW_COLUMNS, [event_tuple(e, now_us) for e in fresh])
        return fresh

    def stored_copies(
        self, conn: Connection, events: Iterable[Event]
    ) -> dict[tuple[str, str], Event]:
        """The stored events with the same (source, event id) as these."""
        out: dict[tuple[str, str], Event] = {}
        keys = [e.dedup_key for e in events]
        for where in _by_contact(EVENTS, keys, id_column="event_id"):
            for r in conn.execute(select(*_EVENT_COLUMNS).where(where)):
                out[(r[0], r[1])] = _row_event(r)
        return out

    def add_rejected(
        self, conn: Connection, source: str, items: Sequence[Rejected], now_us: int
    ) -> list[Rejected]:
        """Store rejections not stored before (by their key); returns those that are new."""
        if not items:
            return []
        by_key: dict[str, Rejected] = {}
        for r in items:
            by_key.setdefault(r.key, r)
        for i in range(0, len(by_key), 900):
            chunk = list(by_key)[i : i + 900]
            q = select(REJECTED.c.key).where(REJECTED.c.source == source, REJECTED.c.key.in_(chunk))
            for (known,) in conn.execute(q):
                by_key.pop(known, None)
        if by_key:
            conn.execute(
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
        return list(by_key.values())

    def events_for(
        self, conn: Connection, keys: Iterable[ContactKey]
    ) -> dict[ContactKey, list[Event]]:
        out: dict[ContactKey, list[Event]] = {}
        for where in _by_contact(EVENTS, keys):
            for r in conn.execute(select(*_EVENT_COLUMNS).where(where)):
                out.setdefault((r[0], r[2]), []).append(_row_event(r))
        return out

    def iter_contacts(
        self,
        conn: Connection,
        until_us: int | None = None,
        start: ContactKey | None = None,
        stop: ContactKey | None = None,
    ) -> Iterator[list[Event]]:
        """Every contact's events, one contact at a time (for replay and report); only
        contacts with `start <= (source, conversation id) < stop` when given."""
        q = select(*_EVENT_COLUMNS).order_by(EVENTS.c.source, EVENTS.c.conversation_id)
        if until_us is not None:
            q = q.where(EVENTS.c.occurred_us <= until_us)
        key = tuple_(EVENTS.c.source, EVENTS.c.conversation_id)
        if start is not None:
            q = q.where(key >= tuple_(literal(start[0]), literal(start[1])))
        if stop is not None:
            q = q.where(key < tuple_(literal(stop[0]), literal(stop[1])))
        current: list[Event] = []
        for r in conn.execution_options(yield_per=10000).execute(q):
            e = _row_event(r)
            if current and current[0].contact_key != e.contact_key:
                yield current
                current = []
            current.append(e)
        if current:
            yield current

    def event_id_span(self, conn: Connection) -> int:
        """About how many events are stored (ids, not a count: no table scan)."""
        low, high = conn.execute(select(func.min(EVENTS.c.id), func.max(EVENTS.c.id))).one()
        return 0 if low is None else int(high) - int(low) + 1

    def contact_split_points(self, conn: Connection, parts: int) -> list[ContactKey]:
        """About `parts - 1` contact keys that cut the stored events into `parts` ranges of
        similar size, from a sample of event ids (cheap: primary-key lookups, no scan)."""
        low, high = conn.execute(select(func.min(EVENTS.c.id), func.max(EVENTS.c.id))).one()
        if low is None or parts <= 1:
            return []
        step = max((high - low) // (parts * 16), 1)
        ids = list(range(low, high + 1, step))
        sample: list[ContactKey] = []
        for i in range(0, len(ids), 900):
            q = select(EVENTS.c.source, EVENTS.c.conversation_id).where(
                EVENTS.c.id.in_(ids[i : i + 900])
            )
            sample.extend((r[0], r[1]) for r in conn.execute(q))
        sample.sort()
        points = {sample[len(sample) * k // parts] for k in range(1, parts)}
        return sorted(points)

    def count_events(self, conn: Connection) -> int:
        return int(conn.execute(select(func.count()).select_from(EVENTS)).scalar_one())

    # -- sources -----------------------------------------------------------------------

    def load_sources(self, conn: Connection) -> dict[str, SourceState]:
        return {
            r.name: SourceState(
                r.name, r.kind, r.cursor, _dt(r.watermark_us), _dt(r.last_success_us)
            )
            for r in conn.execute(select(SOURCES))
        }

    def save_source(self, conn: Connection, s: SourceState) -> None:
        values = {
            "kind": s.kind,
            "cursor": s.cursor,
            "watermark_us": _us(s.watermark),
            "last_success_us": _us(s.last_success),
        }
        stmt = self._insert(SOURCES).values(name=s.name, **values)
        conn.execute(stmt.on_conflict_do_update(index_elements=["name"], set_=values))

    def count_poll(self, conn: Connection, source: str, result: str, n: int = 1) -> None:
        stmt = self._insert(POLLS).values(source=source, result=result, count=n)
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["source", "result"], set_={"count": POLLS.c.count + n}
            )
        )

    def count_skipped(self, conn: Connection, source: str, counts: dict[str, int]) -> None:
        for reason, n in counts.items():
            stmt = self._insert(SKIPPED).values(source=source, reason=reason, count=n)
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["source", "reason"], set_={"count": SKIPPED.c.count + n}
                )
            )

    def count_late(self, conn: Connection, source: str, n: int) -> None:
        stmt = self._insert(LATE).values(source=source, count=n)
        conn.execute(
            stmt.on_conflict_do_update(index_elements=["source"], set_={"count": LATE.c.count + n})
        )

    def late_counts(self, conn: Connection) -> list[tuple[tuple[str, ...], int]]:
        return [((r[0],), int(r[1])) for r in conn.execute(select(LATE.c.source, LATE.c.count))]

    def skipped_counts(self, conn: Connection) -> list[tuple[tuple[str, ...], int]]:
        q = select(SKIPPED.c.source, SKIPPED.c.reason, SKIPPED.c.count)
        return [((r[0], r[1]), int(r[2])) for r in conn.execute(q)]

    # -- contact and target state -------------------------------------------------------

    def targets_for(
        self, conn: Connection, keys: Sequence[ContactKey]
    ) -> dict[ContactKey, list[Any]]:
        out: dict[ContactKey, list[Any]] = {}
        for where in _by_contact(TARGETS, keys):
            for r in conn.execute(select(TARGETS).where(where)):
                out.setdefault((r.source, r.conversation_id), []).append(r)
        return out

    def contacts_for(self, conn: Connection, keys: Sequence[ContactKey]) -> dict[ContactKey, Any]:
        out: dict[ContactKey, Any] = {}
        for where in _by_contact(CONTACTS, keys):
            for r in conn.execute(select(CONTACTS).where(where)):
                out[(r.source, r.conversation_id)] = r
        return out

    def save_evaluations(
        self,
        conn: Connection,
        evaluations: Sequence[ContactEvaluation],
        repeat_links: dict[ContactKey, ContactKey] | None = None,
        replace: bool | Iterable[ContactKey] = True,
        contact_labels: dict[ContactKey, tuple[str, str, str]] | None = None,
        target_labels: dict[tuple[str, str, str, int], tuple[str, str, str]] | None = None,
        unmatched_before: set[ContactKey] | None = None,
    ) -> None:
        """Write contact and target rows for these evaluations (replacing what was there).

        `contact_labels` and `target_labels` keep the labels a contact was counted under when
        it opened, and a target when its outcome was decided, so counters never move between
        series when a contact's priority or queue changes later.
        """
        if not evaluations:
            return
        existing = [ev.key for ev in evaluations] if replace is True else list(replace or ())
        for where in _by_contact(TARGETS, existing):
            conn.execute(delete(TARGETS).where(where))
        for where in _by_contact(CONTACTS, existing):
            conn.execute(delete(CONTACTS).where(where))
        contact_rows, target_rows = evaluation_rows(
            evaluations, repeat_links, contact_labels, target_labels, unmatched_before
        )
        self.write_state_rows(conn, contact_rows, target_rows)

    def write_state_rows(
        self,
        conn: Connection,
        contact_rows: list[tuple[Any, ...]],
        target_rows: list[tuple[Any, ...]],
    ) -> None:
        """Insert rows built by `evaluation_rows`."""
        insert_rows(conn, CONTACTS, _CONTACT_COLUMNS, contact_rows)
        insert_rows(conn, TARGETS, _TARGET_COLUMNS, target_rows)

    def set_repeats(self, conn: Connection, links: dict[ContactKey, ContactKey | None]) -> None:
        """Set (or clear) many contacts' repeat links in one statement."""
        if not links:
            return
        stmt = (
            update(CONTACTS)
            .where(
                CONTACTS.c.source == bindparam("k_source"),
                CONTACTS.c.conversation_id == bindparam("k_conv"),
            )
            .values(
                repeat_of_source=bindparam("r_source"), repeat_of_conversation=bindparam("r_conv")
            )
        )
        conn.execute(
            stmt,
            [
                {
                    "k_source": k[0],
                    "k_conv": k[1],
                    "r_source": v[0] if v else None,
                    "r_conv": v[1] if v else None,
                }
                for k, v in links.items()
            ],
        )

    def summaries_near(
        self, conn: Connection, customers: Iterable[str], start_us: int, end_us: int
    ) -> list[tuple[ContactSummary, ContactKey | None]]:
        """Contacts of these customers opened in [start, end], with their current link."""
        out = []
        cust = sorted(set(customers))
        for i in range(0, len(cust), 500):
            q = select(
                CONTACTS.c.source,
                CONTACTS.c.conversation_id,
                CONTACTS.c.customer_id,
                CONTACTS.c.opened_us,
                CONTACTS.c.first_response_us,
                CONTACTS.c.repeat_of_source,
                CONTACTS.c.repeat_of_conversation,
            ).where(
                CONTACTS.c.customer_id.in_(cust[i : i + 500]),
                CONTACTS.c.opened_us.between(start_us, end_us),
            )
            for r in conn.execute(q):
                link = (r[5], r[6]) if r[5] is not None else None
                out.append((ContactSummary((r[0], r[1]), r[2], _dt(r[3]), _dt(r[4])), link))
        return out

    def summaries_for_customers(
        self, conn: Connection, customers: Iterable[str]
    ) -> list[ContactSummary]:
        out: list[ContactSummary] = []
        cust = sorted(set(customers))
        for i in range(0, len(cust), 500):
            q = select(
                CONTACTS.c.source,
                CONTACTS.c.conversation_id,
                CONTACTS.c.customer_id,
                CONTACTS.c.opened_us,
                CONTACTS.c.first_response_us,
                CONTACTS.c.repeat_of_source,
                CONTACTS.c.repeat_of_conversation,
            ).where(CONTACTS.c.customer_id.in_(cust[i : i + 500]))
            for r in conn.execute(q):
                out.append(ContactSummary((r[0], r[1]), r[2], _dt(r[3]), _dt(r[4])))
        return out

    def repeat_links(
        self, conn: Connection, keys: Iterable[ContactKey]
    ) -> dict[ContactKey, ContactKey]:
        out = {}
        for k, r in self.contacts_for(conn, list(keys)).items():
            if r.repeat_of_source is not None:
                out[k] = (r.repeat_of_source, r.repeat_of_conversation)
        return out

    def clear_state(self, conn: Connection) -> None:
        conn.execute(delete(TARGETS))
        conn.execute(delete(CONTACTS))

    # -- archive (service_layer/archive.py) ----------------------------------------------

    def archive_horizons(self, conn: Connection) -> dict[str, int]:
        return {r[0]: int(r[1]) for r in conn.execute(select(HORIZONS))}

    def stored_contacts(self, conn: Connection, keys: Iterable[ContactKey]) -> set[ContactKey]:
        """Those of these contacts that have stored events."""
        out: set[ContactKey] = set()
        for where in _by_contact(EVENTS, keys):
            q = select(EVENTS.c.source, EVENTS.c.conversation_id).where(where).distinct()
            out.update((r[0], r[1]) for r in conn.execute(q))
        return out

    def quiet_contacts(
        self,
        conn: Connection,
        before_us: int,
        sources: Sequence[str],
        keys: Sequence[ContactKey] | None = None,
    ) -> Iterator[tuple[str, str, str | None]]:
        """(source, conversation id, customer) of contacts that can be archived: no event at
        or after `before`, no open target, no deadline or watermark wait pending, not waiting
        for the leader's evaluation. Ordered by customer, so a customer's contacts come
        together. `keys`: only among these (re-checked in the archiving transaction)."""
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
                for r in conn.execute(q.where(where)):
                    yield (r[0], r[1], r[2])
            return
        q = q.where(c.source.in_(sources)).order_by(c.customer_id, c.source, c.conversation_id)
        for r in conn.execution_options(yield_per=10000).execute(q):
            yield (r[0], r[1], r[2])

    def start_archive_run(
        self, conn: Connection, before_us: int, file: str, now_us: int, sources: Sequence[str]
    ) -> int:
        """Record the run and raise the horizons of `sources` to `before` (never lower)."""
        stmt = self._insert(HORIZONS)
        stmt = stmt.on_conflict_do_update(
            index_elements=["source"],
            set_={"before_us": func.max(HORIZONS.c.before_us, stmt.excluded.before_us)}
            if self.dialect == "sqlite"
            else {"before_us": func.greatest(HORIZONS.c.before_us, stmt.excluded.before_us)},
        )
        if sources:
            conn.execute(stmt, [{"source": s, "before_us": before_us} for s in sources])
        run = conn.execute(
            ARCHIVE_RUNS.insert()
            .values(before_us=before_us, file=file, started_us=now_us, contacts=0, events=0)
            .returning(ARCHIVE_RUNS.c.id)
        )
        return int(run.scalar_one())

    def finish_archive_run(self, conn: Connection, run_id: int, now_us: int) -> None:
        conn.execute(
            update(ARCHIVE_RUNS).where(ARCHIVE_RUNS.c.id == run_id).values(finished_us=now_us)
        )

    def archive_contacts(
        self,
        conn: Connection,
        keys: Sequence[ContactKey],
        run_id: int,
        write: Callable[[list[Event]], None],
    ) -> tuple[int, int, int]:
        """Hand these contacts' events to `write` (which must make them durable), fold their
        rows' contribution to every counter into the carried totals, and delete the rows.
        Returns (events, targets, contacts that had opened)."""
        events: list[Event] = []
        ids: list[int] = []
        ingested: Counter[tuple[str, ...]] = Counter()
        for where in _by_contact(EVENTS, keys):
            for r in conn.execute(select(EVENTS.c.id, *_EVENT_COLUMNS).where(where)):
                ids.append(r[0])
                events.append(_row_event(r[1:]))
                ingested[(r[1], r[4])] += 1
        write(events)
        opened: Counter[tuple[str, ...]] = Counter()
        repeats: Counter[tuple[str, ...]] = Counter()
        unmatched: Counter[tuple[str, ...]] = Counter()
        for where in _by_contact(CONTACTS, keys):
            q = select(
                CONTACTS.c.channel,
                CONTACTS.c.queue,
                CONTACTS.c.priority,
                CONTACTS.c.opened_us,
                CONTACTS.c.repeat_of_source,
                CONTACTS.c.unmatched,
            ).where(where)
            for ch, q_, p, opened_us, repeat_of, no_rule in conn.execute(q):
                if opened_us is not None:
                    opened[(ch, q_, p)] += 1
                if repeat_of is not None:
                    repeats[(ch, q_)] += 1
                if no_rule:
                    unmatched[(ch, q_)] += 1
        outcomes: Counter[tuple[str, ...]] = Counter()
        responses: dict[tuple[str, str, str, int], list[float]] = {}
        targets = 0
        for where in _by_contact(TARGETS, keys):
            q = select(
                TARGETS.c.channel,
                TARGETS.c.queue,
                TARGETS.c.priority,
                TARGETS.c.target,
                TARGETS.c.outcome,
                TARGETS.c.response_seconds,
            ).where(where)
            for t in conn.execute(q):
                ch, q_, p = t[0], t[1], t[2]
                target: str = t[3]
                outcome: str | None = t[4]
                seconds: float | None = t[5]
                targets += 1
                if outcome is not None:
                    outcomes[(ch, q_, p, target, outcome)] += 1
                if seconds is not None:
                    # rounded up: v <= b exactly when ceil_ms(v) <= b, for any bound b in ms
                    le_ms = math.ceil(round(float(seconds) * 1000, 3))
                    acc = responses.setdefault((ch, q_, target, le_ms), [0, 0.0])
                    acc[0] += 1
                    acc[1] += float(seconds)
        for metric, counts in (
            ("sla_events_ingested", ingested),
            ("sla_contacts_opened", opened),
            ("sla_repeat_contacts", repeats),
            ("sla_contacts_unmatched", unmatched),
            ("sla_target_outcomes", outcomes),
        ):
            self._carry(conn, metric, counts)
        if responses:
            stmt = self._insert(CARRIED_RESPONSES)
            stmt = stmt.on_conflict_do_update(
                index_elements=["channel", "queue", "target", "le_ms"],
                set_={
                    "count": CARRIED_RESPONSES.c.count + stmt.excluded.count,
                    "total": CARRIED_RESPONSES.c.total + stmt.excluded.total,
                },
            )
            conn.execute(
                stmt,
                [
                    {
                        "channel": k[0],
                        "queue": k[1],
                        "target": k[2],
                        "le_ms": k[3],
                        "count": int(v[0]),
                        "total": v[1],
                    }
                    for k, v in responses.items()
                ],
            )
        # events by id: one stored after this transaction read them is never lost unseen
        for i in range(0, len(ids), 900):
            conn.execute(delete(EVENTS).where(EVENTS.c.id.in_(ids[i : i + 900])))
        for where in _by_contact(TARGETS, keys):
            conn.execute(delete(TARGETS).where(where))
        for where in _by_contact(CONTACTS, keys):
            conn.execute(delete(CONTACTS).where(where))
        conn.execute(
            update(ARCHIVE_RUNS)
            .where(ARCHIVE_RUNS.c.id == run_id)
            .values(
                contacts=ARCHIVE_RUNS.c.contacts + len(keys),
                events=ARCHIVE_RUNS.c.events + len(ids),
            )
        )
        return len(ids), targets, sum(opened.values())

    def _carry(self, conn: Connection, metric: str, counts: Counter[tuple[str, ...]]) -> None:
        rows = [
            {"metric": metric, "labels": json.dumps(list(k)), "value": n}
            for k, n in counts.items()
            if n
        ]
        if not rows:
            return
        stmt = self._insert(CARRIED)
        stmt = stmt.on_conflict_do_update(
            index_elements=["metric", "labels"],
            set_={"value": CARRIED.c.value + stmt.excluded.value},
        )
        conn.execute(stmt, rows)

    def count_opened_before(self, conn: Connection, before_us: int) -> int:
        q = select(func.count()).select_from(CONTACTS).where(CONTACTS.c.opened_us < before_us)
        return int(conn.execute(q).scalar_one())

    # -- what counters start from after a restart ----------------------------------------

    def open_targets(self, conn: Connection) -> Iterator[Any]:
        q = select(TARGETS).where(TARGETS.c.is_open.is_(True))
        yield from conn.execution_options(yield_per=10000).execute(q)

    def alerting_targets(self, conn: Connection) -> list[Any]:
        """Open targets that are breached or at risk, with their customer (for alerts)."""
        q = (
            select(
                TARGETS.c.source,
                TARGETS.c.conversation_id,
                TARGETS.c.target,
                TARGETS.c.seq,
                TARGETS.c.channel,
                TARGETS.c.queue,
                TARGETS.c.priority,
                TARGETS.c.state,
                TARGETS.c.started_us,
                TARGETS.c.deadline_us,
                CONTACTS.c.customer_id,
                CONTACTS.c.rule,
            )
            .join(
                CONTACTS,
                (CONTACTS.c.source == TARGETS.c.source)
                & (CONTACTS.c.conversation_id == TARGETS.c.conversation_id),
            )
            .where(TARGETS.c.is_open.is_(True), TARGETS.c.state.in_(["breached", "at_risk"]))
        )
        return list(conn.execute(q))

    def pending_wakes(self, conn: Connection) -> Iterator[tuple[str, str, int | None, int | None]]:
        q = select(
            CONTACTS.c.source,
            CONTACTS.c.conversation_id,
            CONTACTS.c.next_wake_us,
            CONTACTS.c.awaiting_us,
        ).where((CONTACTS.c.next_wake_us.is_not(None)) | (CONTACTS.c.awaiting_us.is_not(None)))
        for r in conn.execute(q):
            yield (r[0], r[1], r[2], r[3])

    def outcome_counts(self, conn: Connection) -> list[tuple[tuple[str, ...], int]]:
        q = (
            select(
                TARGETS.c.channel,
                TARGETS.c.queue,
                TARGETS.c.priority,
                TARGETS.c.target,
                TARGETS.c.outcome,
                func.count(),
            )
            .where(TARGETS.c.outcome.is_not(None))
            .group_by(
                TARGETS.c.channel,
                TARGETS.c.queue,
                TARGETS.c.priority,
                TARGETS.c.target,
                TARGETS.c.outcome,
            )
        )
        return self._plus_carried(conn, "sla_target_outcomes", q)

    def response_times(self, conn: Connection) -> Iterator[tuple[str, str, str, float]]:
        q = select(
            TARGETS.c.channel, TARGETS.c.queue, TARGETS.c.target, TARGETS.c.response_seconds
        ).where(TARGETS.c.response_seconds.is_not(None))
        for r in conn.execution_options(yield_per=10000).execute(q):
            yield (r[0], r[1], r[2], float(r[3]))

    def opened_counts(self, conn: Connection) -> list[tuple[tuple[str, ...], int]]:
        q = (
            select(CONTACTS.c.channel, CONTACTS.c.queue, CONTACTS.c.priority, func.count())
            .where(CONTACTS.c.opened_us.is_not(None))
            .group_by(CONTACTS.c.channel, CONTACTS.c.queue, CONTACTS.c.priority)
        )
        return self._plus_carried(conn, "sla_contacts_opened", q)

    def unmatched_counts(self, conn: Connection) -> list[tuple[tuple[str, ...], int]]:
        q = (
            select(CONTACTS.c.channel, CONTACTS.c.queue, func.count())
            .where(CONTACTS.c.unmatched.is_(True))
            .group_by(CONTACTS.c.channel, CONTACTS.c.queue)
        )
        return self._plus_carried(conn, "sla_contacts_unmatched", q)

    def repeat_counts(self, conn: Connection) -> list[tuple[tuple[str, ...], int]]:
        q = (
            select(CONTACTS.c.channel, CONTACTS.c.queue, func.count())
            .where(CONTACTS.c.repeat_of_source.is_not(None))
            .group_by(CONTACTS.c.channel, CONTACTS.c.queue)
        )
        return self._plus_carried(conn, "sla_repeat_contacts", q)

    def queues_seen(self, conn: Connection) -> list[tuple[str, str, str]]:
        q = select(CONTACTS.c.source, CONTACTS.c.channel, CONTACTS.c.queue).distinct()
        return [(r[0], r[1], r[2]) for r in conn.execute(q)]

    def ingested_counts(self, conn: Connection) -> list[tuple[tuple[str, ...], int]]:
        q = select(EVENTS.c.source, EVENTS.c.kind, func.count()).group_by(
            EVENTS.c.source, EVENTS.c.kind
        )
        return self._plus_carried(conn, "sla_events_ingested", q)

    def _plus_carried(
        self, conn: Connection, metric: str, grouped: Any
    ) -> list[tuple[tuple[str, ...], int]]:
        """A grouped count (label columns, then the count) plus what archived rows carried."""
        totals: Counter[tuple[str, ...]] = Counter()
        for r in conn.execute(grouped):
            totals[tuple(r[:-1])] += int(r[-1])
        for labels, n in self.carried(conn, metric):
            totals[labels] += n
        return list(totals.items())

    def carried(self, conn: Connection, metric: str) -> list[tuple[tuple[str, ...], int]]:
        q = select(CARRIED.c.labels, CARRIED.c.value).where(CARRIED.c.metric == metric)
        return [(tuple(json.loads(r[0])), int(r[1])) for r in conn.execute(q)]

    def carried_responses(
        self, conn: Connection
    ) -> Iterator[tuple[str, str, str, float, int, float]]:
        """Archived response times: (channel, queue, target, value rounded up to the
        millisecond, how many, their exact sum)."""
        c = CARRIED_RESPONSES.c
        for r in conn.execute(select(c.channel, c.queue, c.target, c.le_ms, c.count, c.total)):
            yield (r[0], r[1], r[2], r[3] / 1000, int(r[4]), float(r[5]))

    def rejected_counts(self, conn: Connection) -> list[tuple[tuple[str, ...], int]]:
        q = select(REJECTED.c.source, REJECTED.c.reason, func.count()).group_by(
            REJECTED.c.source, REJECTED.c.reason
        )
        return [(tuple(r[:2]), int(r[2])) for r in conn.execute(q)]

    def poll_counts(self, conn: Connection) -> list[tuple[tuple[str, ...], int]]:
        q = select(POLLS.c.source, POLLS.c.result, POLLS.c.count)
        return [((r[0], r[1]), int(r[2])) for r in conn.execute(q)]

    def rejected(self, conn: Connection, limit: int = 100) -> list[Any]:
        q = select(REJECTED).order_by(REJECTED.c.id.desc()).limit(limit)
        return list(conn.execute(q))


class LeaseLost(Exception):
    """This replica no longer holds the lease it acted under: its work is rolled back."""


class ClusterStore:
    """Leases, replica heartbeats and the queue of contacts to evaluate (several replicas
    sharing one PostgreSQL; works on SQLite too, for one process)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def try_lease(self, conn: Connection, name: str, holder: str, now_us: int, ttl_us: int) -> bool:
        """Take or renew a lease; True if `holder` has it until now + ttl."""
        stmt = self.store._insert(LEASES).values(
            name=name, holder=holder, expires_us=now_us + ttl_us
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["name"],
            set_={"holder": holder, "expires_us": now_us + ttl_us},
            where=(LEASES.c.holder == holder) | (LEASES.c.expires_us < now_us),
        ).returning(LEASES.c.holder)
        return conn.execute(stmt).first() is not None

    def release(self, conn: Connection, name: str, holder: str) -> None:
        conn.execute(delete(LEASES).where(LEASES.c.name == name, LEASES.c.holder == holder))

    def fence(self, conn: Connection, name: str, holder: str, now_us: int) -> None:
        """Inside a transaction: fail unless `holder` still holds the lease (row locked on
        PostgreSQL, so it cannot change hands before this transaction commits)."""
        q = select(LEASES.c.holder, LEASES.c.expires_us).where(LEASES.c.name == name)
        if self.store.dialect == "postgresql":
            q = q.with_for_update()
        row = conn.execute(q).first()
        if row is None or row[0] != holder or row[1] < now_us:
            raise LeaseLost(name)

    def heartbeat(self, conn: Connection, replica: str, now_us: int) -> None:
        stmt = self.store._insert(REPLICAS).values(replica_id=replica, seen_us=now_us)
        conn.execute(
            stmt.on_conflict_do_update(index_elements=["replica_id"], set_={"seen_us": now_us})
        )

    def live_replicas(self, conn: Connection, since_us: int) -> list[str]:
        q = select(REPLICAS.c.replica_id).where(REPLICAS.c.seen_us >= since_us)
        return sorted(r[0] for r in conn.execute(q))

    def holders(self, conn: Connection, now_us: int) -> dict[str, str]:
        q = select(LEASES.c.name, LEASES.c.holder).where(LEASES.c.expires_us >= now_us)
        return {r[0]: r[1] for r in conn.execute(q)}

    def mark_dirty(self, conn: Connection, keys: Iterable[ContactKey]) -> None:
        rows = [{"source": k[0], "conversation_id": k[1], "version": 1} for k in set(keys)]
        if not rows:
            return
        stmt = self.store._insert(DIRTY)
        stmt = stmt.on_conflict_do_update(
            index_elements=["source", "conversation_id"],
            set_={"version": DIRTY.c.version + 1},
        )
        for i in range(0, len(rows), 5000):
            conn.execute(stmt, rows[i : i + 5000])

    def dirty(self, conn: Connection, limit: int) -> dict[ContactKey, int]:
        q = select(DIRTY.c.source, DIRTY.c.conversation_id, DIRTY.c.version).limit(limit)
        return {(r[0], r[1]): int(r[2]) for r in conn.execute(q)}

    def clear_dirty(self, conn: Connection, seen: dict[ContactKey, int]) -> None:
        if not seen:
            return
        stmt = delete(DIRTY).where(
            DIRTY.c.source == bindparam("s"),
            DIRTY.c.conversation_id == bindparam("c"),
            DIRTY.c.version == bindparam("v"),
        )
        conn.execute(stmt, [{"s": k[0], "c": k[1], "v": v} for k, v in seen.items()])

    def source_counts(
        self, conn: Connection, source: str
    ) -> dict[str, list[tuple[tuple[str, ...], int]]]:
        """A source's counters, for the replica that takes it over."""
        ing = (
            select(EVENTS.c.kind, func.count())
            .where(EVENTS.c.source == source)
            .group_by(EVENTS.c.kind)
        )
        rej = (
            select(REJECTED.c.reason, func.count())
            .where(REJECTED.c.source == source)
            .group_by(REJECTED.c.reason)
        )
        pol = select(POLLS.c.result, POLLS.c.count).where(POLLS.c.source == source)
        skp = select(SKIPPED.c.reason, SKIPPED.c.count).where(SKIPPED.c.source == source)
        lat = select(LATE.c.count).where(LATE.c.source == source)
        carried = [
            (k, n) for k, n in self.store.carried(conn, "sla_events_ingested") if k[0] == source
        ]
        return {
            "ingested": [((source, r[0]), int(r[1])) for r in conn.execute(ing)] + carried,
            "rejected": [((source, r[0]), int(r[1])) for r in conn.execute(rej)],
            "polls": [((source, r[0]), int(r[1])) for r in conn.execute(pol)],
            "skipped": [((source, r[0]), int(r[1])) for r in conn.execute(skp)],
            "late": [((source,), int(r[0])) for r in conn.execute(lat)],
        }


def decided_of(
    rows: dict[ContactKey, list[Any]], key: ContactKey
) -> dict[tuple[str, int], tuple[str, datetime]]:
    """The outcomes already decided for a contact's targets (stored target rows)."""
    return {
        (r.target, r.seq): (r.outcome, from_micros(r.decided_us if r.decided_us else r.started_us))
        for r in rows.get(key, [])
        if r.outcome is not None
    }


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


_CONTACT_COLUMNS = (
    "source",
    "conversation_id",
    "channel",
    "queue",
    "priority",
    "customer_id",
    "rule",
    "status",
    "opened_us",
    "first_response_us",
    "repeat_of_source",
    "repeat_of_conversation",
    "events",
    "next_wake_us",
    "awaiting_us",
    "unmatched",
)
_TARGET_COLUMNS = (
    "source",
    "conversation_id",
    "target",
    "seq",
    "channel",
    "queue",
    "priority",
    "state",
    "outcome",
    "is_open",
    "started_us",
    "deadline_us",
    "warn_us",
    "ended_us",
    "decided_us",
    "response_seconds",
)


def evaluation_rows(
    evaluations: Iterable[ContactEvaluation],
    repeat_links: dict[ContactKey, ContactKey] | None = None,
    contact_labels: dict[ContactKey, tuple[str, str, str]] | None = None,
    target_labels: dict[tuple[str, str, str, int], tuple[str, str, str]] | None = None,
    unmatched_before: set[ContactKey] | None = None,
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Contact and target rows (in _CONTACT_COLUMNS, _TARGET_COLUMNS order) for these
    evaluations: plain tuples, so a replay worker process can build them."""
    links = repeat_links or {}
    contact_rows: list[tuple[Any, ...]] = []
    target_rows: list[tuple[Any, ...]] = []
    for ev in evaluations:
        a = ev.attributes
        prio = a.priority or NO_PRIORITY
        link = links.get(ev.key)
        kept = (contact_labels or {}).get(ev.key)
        ch, q, p = kept or (a.channel.value, a.queue, prio)
        if kept is not None:  # opened before: counted then, as it was then
            unmatched = ev.key in (unmatched_before or ())
        else:
            unmatched = ev.rule is None and ev.opened_at is not None
        contact_rows.append(
            (  # in _CONTACT_COLUMNS order
                ev.key[0],
                ev.key[1],
                ch,
                q,
                p,
                a.customer_id,
                ev.rule,
                ev.status.value,
                _us(ev.opened_at),
                _us(ev.first_response_at),
                link[0] if link else None,
                link[1] if link else None,
                ev.events,
                _us(ev.next_wake),
                _us(ev.awaiting_watermark),
                unmatched,
            )
        )
        for t in ev.targets:
            tk = (ev.key[0], ev.key[1], t.target.value, t.seq)
            ch, q, p = (target_labels or {}).get(tk) or (a.channel.value, a.queue, prio)
            target_rows.append(
                (  # in _TARGET_COLUMNS order
                    ev.key[0],
                    ev.key[1],
                    t.target.value,
                    t.seq,
                    ch,
                    q,
                    p,
                    t.state.value,
                    t.outcome.value if t.outcome else None,
                    t.is_open,
                    to_micros(t.started_at),
                    _us(t.deadline),
                    _us(t.warn_at),
                    _us(t.ended_at),
                    _us(t.decided_at),
                    t.response_seconds,
                )
            )
    return contact_rows, target_rows


def insert_rows(
    conn: Connection,
    table: Table,
    columns: Sequence[str],
    rows: list[tuple[Any, ...]],
) -> None:
    """Bulk insert. On SQLite straight through the driver's executemany: SQLAlchemy's
    per-row parameter processing costs more than SQLite's own work there. On PostgreSQL,
    SQLAlchemy batches rows into multi-row VALUES ("insertmanyvalues")."""
    if not rows:
        return
    if conn.dialect.name == "sqlite":
        marks = ", ".join("?" * len(columns))
        conn.exec_driver_sql(
            f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({marks})", rows
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
