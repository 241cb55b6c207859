"""The store's seam: one narrow protocol per role, reached through a transaction.

    with store.begin() as tx:          # one unit of work: all or nothing
        new = tx.events.add(batch, now_us)
        tx.state.write(contacts, targets)

`adapters/sql.py` implements it on SQLite and PostgreSQL, `adapters/memory.py` in memory;
both pass one contract suite (tests/integration/test_store_contract.py). Methods take and
return the records of `adapters/records.py`, never rows or connections.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from sla_monitor.adapters.records import (
    AlertingTarget,
    CarriedResponses,
    ContactRecord,
    Counts,
    PendingWake,
    QuietContact,
    RejectedRecord,
    ResponseCounts,
    Row,
    SourceCounts,
    SourceState,
    TargetRecord,
)
from sla_monitor.domain.engine import ContactSummary
from sla_monitor.domain.events import ContactKey, Event, Rejected


class LeaseLost(Exception):
    """This replica no longer holds the lease it acted under: its work is rolled back."""


class EventRepository(Protocol):
    """Events (the source of truth) and the items set aside instead of stored."""

    def add(self, events: Sequence[Event], now_us: int) -> list[Event]:
        """Store events not stored before (by source and event id); returns the new ones.
        Each (source, event id) appears once in `events` (the monitor screens batches)."""
        ...

    def stored_copies(self, events: Iterable[Event]) -> dict[tuple[str, str], Event]:
        """The stored events with the same (source, event id) as these."""
        ...

    def for_contacts(self, keys: Iterable[ContactKey]) -> dict[ContactKey, list[Event]]: ...

    def by_contact(
        self,
        until_us: int | None = None,
        start: ContactKey | None = None,
        stop: ContactKey | None = None,
    ) -> Iterator[list[Event]]:
        """Every contact's events occurred by `until`, a contact at a time in key order;
        only contacts with `start <= key < stop` when given."""
        ...

    def contacts_stored(self, keys: Iterable[ContactKey]) -> set[ContactKey]:
        """Those of these contacts that have stored events."""
        ...

    def id_span(self) -> int:
        """About how many events are stored (cheap: no count)."""
        ...

    def split_points(self, parts: int) -> list[ContactKey]:
        """About `parts - 1` contact keys cutting the events into ranges of similar size."""
        ...

    def reject(self, source: str, items: Sequence[Rejected], now_us: int) -> list[Rejected]:
        """Set these aside, unless set aside before (by key); returns the new ones."""
        ...

    def rejected(self, limit: int = 100) -> list[RejectedRecord]:
        """The latest items set aside, newest first."""
        ...


class SourceRepository(Protocol):
    def load(self) -> dict[str, SourceState]: ...

    def save(self, state: SourceState) -> None: ...


class CounterRepository(Protocol):
    """What the monotonic counters start from after a restart: what the state tables
    count (kept as their rows are written), plus what archived rows carried, plus the
    counts only kept as counts. None of it reads the history behind it."""

    def count_poll(self, source: str, result: str, n: int = 1) -> None: ...

    def count_skipped(self, source: str, counts: dict[str, int]) -> None: ...

    def count_late(self, source: str, n: int) -> None: ...

    def polls(self) -> Counts: ...

    def skipped(self) -> Counts: ...

    def late(self) -> Counts: ...

    def rejected(self) -> Counts: ...

    def ingested(self) -> Counts: ...

    def opened(self) -> Counts: ...

    def unmatched(self) -> Counts: ...

    def repeats(self) -> Counts: ...

    def callbacks(self) -> Counts:
        """(channel, queue, "requested" | "handled") -> callbacks, archived ones included."""
        ...

    def outcomes(self) -> Counts: ...

    def count_responses_in(self, bounds: tuple[float, ...]) -> None:
        """Keep the response-time counts in the buckets of `bounds` from now on (counting
        the stored ones again if they were kept in other buckets)."""
        ...

    def responses(self, bounds: tuple[float, ...]) -> list[ResponseCounts]:
        """Every stored response time, archived ones included, in the buckets of `bounds`
        (counted as the rows were written, not read from them: unless the bounds changed)."""
        ...

    def carried_responses(self) -> Iterator[CarriedResponses]: ...

    def queues_seen(self) -> list[tuple[str, str, str]]:
        """(source, channel, queue) of every stored contact."""
        ...

    def queue_order(self) -> list[tuple[str, str]]:
        """(source, queue) of every queue ever written with a contact, in the order first
        written (kept through `clear` and archiving)."""
        ...

    def source_counts(self, source: str) -> SourceCounts: ...


class StateRepository(Protocol):
    """Contacts and targets as last evaluated, and the repeat links between contacts."""

    def contacts_for(self, keys: Iterable[ContactKey]) -> dict[ContactKey, ContactRecord]: ...

    def targets_for(self, keys: Iterable[ContactKey]) -> dict[ContactKey, list[TargetRecord]]: ...

    def delete(self, keys: Iterable[ContactKey]) -> None:
        """Remove these contacts' records (and their targets)."""
        ...

    def write(self, contacts: Sequence[Row], targets: Sequence[Row]) -> None:
        """Insert records of contacts that have none (`delete` first to replace): records,
        or plain tuples in their field order (`records.evaluation_rows`)."""
        ...

    def set_repeats(self, links: dict[ContactKey, ContactKey | None]) -> None:
        """Set (or clear) repeat links."""
        ...

    def summaries_near(
        self, customers: Iterable[str], start_us: int, end_us: int
    ) -> list[tuple[ContactSummary, ContactKey | None]]:
        """Contacts of these customers opened in [start, end], with their current link."""
        ...

    def summaries_for_customers(self, customers: Iterable[str]) -> list[ContactSummary]: ...

    def clear(self) -> None:
        """Remove every contact and target record (replay rebuilds them)."""
        ...

    def open_targets(self) -> Iterator[TargetRecord]: ...

    def alerting(self) -> list[AlertingTarget]:
        """Open targets that are breached or at risk (the pages to send)."""
        ...

    def pending_wakes(self) -> Iterator[PendingWake]: ...


class ArchiveRepository(Protocol):
    """Moving quiet contacts out (service_layer/archive.py), their counts carried on."""

    def horizons(self) -> dict[str, int]:
        """Per source: contacts quiet before this instant (µs) may have been archived."""
        ...

    def quiet_contacts(
        self, before_us: int, sources: Sequence[str], keys: Sequence[ContactKey] | None = None
    ) -> Iterator[QuietContact]:
        """Contacts that can be archived: no event at or after `before`, no open target, no
        deadline or watermark wait pending, not waiting for the leader's evaluation. In
        customer order, so a customer's contacts come together. `keys`: only among these
        (re-checked in the archiving transaction)."""
        ...

    def start_run(self, before_us: int, file: str, now_us: int, sources: Sequence[str]) -> int:
        """Record a run; raise the horizons of `sources` to `before` (never lower)."""
        ...

    def finish_run(self, run_id: int, now_us: int) -> None: ...

    def archive(
        self, keys: Sequence[ContactKey], run_id: int, write: Callable[[list[Event]], None]
    ) -> tuple[int, int, int]:
        """Hand these contacts' events to `write` (which makes them durable), carry their
        records' contribution to every counter, delete them. Returns (events, targets,
        contacts that had opened)."""
        ...

    def count_opened_before(self, before_us: int) -> int: ...


class ClusterRepository(Protocol):
    """Leases, replica heartbeats and the queue of contacts the leader is to evaluate."""

    def try_lease(self, name: str, holder: str, now_us: int, ttl_us: int) -> bool:
        """Take or renew a lease; True if `holder` has it until now + ttl."""
        ...

    def release(self, name: str, holder: str) -> None: ...

    def fence(self, name: str, holder: str, now_us: int) -> None:
        """Raise LeaseLost unless `holder` holds the lease (until this transaction ends)."""
        ...

    def heartbeat(self, replica: str, now_us: int, clock_us: int | None = None) -> None:
        """`replica` is alive at `now_us` (wall clock); its monitor's clock read `clock_us`."""
        ...

    def clock_reading(self) -> tuple[int, int] | None:
        """(seen_us, clock_us) of the latest monitor's clock reading stored, if any."""
        ...

    def live_replicas(self, since_us: int) -> list[str]: ...

    def holders(self, now_us: int) -> dict[str, str]: ...

    def mark_dirty(self, keys: Iterable[ContactKey]) -> None: ...

    def dirty(self, limit: int) -> dict[ContactKey, int]:
        """Contacts to evaluate, with the version marked (cleared only if unchanged)."""
        ...

    def clear_dirty(self, seen: dict[ContactKey, int]) -> None: ...


class Transaction(Protocol):
    """One unit of work on the store: every role, committed together or not at all."""

    @property
    def events(self) -> EventRepository: ...

    @property
    def sources(self) -> SourceRepository: ...

    @property
    def counters(self) -> CounterRepository: ...

    @property
    def state(self) -> StateRepository: ...

    @property
    def archive(self) -> ArchiveRepository: ...

    @property
    def cluster(self) -> ClusterRepository: ...


class Store(Protocol):
    @property
    def url(self) -> str:
        """How another process opens this same store (`open_store(url)`)."""
        ...

    @property
    def dialect(self) -> str:
        """ "sqlite", "postgresql" or "memory"."""
        ...

    @property
    def shared(self) -> bool:
        """Whether other processes (replay workers, replicas) can open it by its url."""
        ...

    def migrate(self) -> None:
        """Bring the schema to the latest revision (idempotent)."""
        ...

    def begin(self) -> AbstractContextManager[Transaction]:
        """A transaction: committed when the block ends, rolled back if it raises."""
        ...

    def read(self) -> AbstractContextManager[Transaction]:
        """A long read that does not hold up writers (reports, archive scans)."""
        ...

    def wrote(self, rows: int) -> None:
        """Note rows just committed (the SQL store refreshes planner statistics)."""
        ...

    def close(self) -> None: ...
