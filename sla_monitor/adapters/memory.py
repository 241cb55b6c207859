"""The store in memory: the twin of `adapters/sql.py`, for unit tests and trials.

It passes the same contract suite. A transaction works on a copy of the tables and swaps
it in on commit (copy-on-write: records are immutable, so copying a table copies only its
index), so a rollback leaves nothing behind, as on a database. Nothing survives the
process; `sla-monitor --db memory://` runs on it.
"""

from __future__ import annotations

import copy
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from sla_monitor.adapters.abc import LeaseLost
from sla_monitor.adapters.records import (
    AlertingTarget,
    Carried,
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
    bucket_responses,
    carried_counts,
    queues_of,
    response_histograms,
)
from sla_monitor.domain.engine import ContactSummary
from sla_monitor.domain.events import ContactKey, Event, Rejected
from sla_monitor.domain.timeutil import from_micros, to_micros


@dataclass
class _Tables:
    events: dict[tuple[str, str], tuple[int, Event]] = field(default_factory=dict)
    by_contact: dict[ContactKey, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    next_event_id: int = 1
    rejected: list[RejectedRecord] = field(default_factory=list)
    rejected_keys: set[tuple[str, str]] = field(default_factory=set)
    sources: dict[str, SourceState] = field(default_factory=dict)
    polls: Counter[tuple[str, ...]] = field(default_factory=Counter)
    ingested: Counter[tuple[str, ...]] = field(default_factory=Counter)  # as stored
    rejected_counts: Counter[tuple[str, ...]] = field(default_factory=Counter)
    skipped: Counter[tuple[str, ...]] = field(default_factory=Counter)
    late: Counter[tuple[str, ...]] = field(default_factory=Counter)
    contacts: dict[ContactKey, ContactRecord] = field(default_factory=dict)
    targets: dict[ContactKey, tuple[TargetRecord, ...]] = field(default_factory=dict)
    carried: dict[Carried, Counter[tuple[str, ...]]] = field(default_factory=dict)
    carried_responses: dict[tuple[str, str, str, str, int], tuple[int, float]] = field(
        default_factory=dict
    )
    horizons: dict[str, int] = field(default_factory=dict)
    runs: dict[int, dict[str, int | str | None]] = field(default_factory=dict)
    leases: dict[str, tuple[str, int]] = field(default_factory=dict)
    replicas: dict[str, int] = field(default_factory=dict)
    clocks: dict[str, int] = field(default_factory=dict)
    queue_order: dict[tuple[str, str], None] = field(default_factory=dict)  # insertion order
    dirty: dict[ContactKey, int] = field(default_factory=dict)

    def copy(self) -> _Tables:
        # one level deep: every value held is immutable or is replaced, never changed
        out = copy.copy(self)
        for name, value in vars(self).items():
            if isinstance(value, dict | list | set):
                setattr(out, name, copy.copy(value))
        out.carried = {k: Counter(v) for k, v in self.carried.items()}
        out.runs = {k: dict(v) for k, v in self.runs.items()}
        return out


class MemoryStore:
    url = "memory://"
    dialect = "memory"
    shared = False  # another process cannot open it

    def __init__(self) -> None:
        self._tables = _Tables()
        self._lock = threading.RLock()

    def migrate(self) -> None:
        pass

    def close(self) -> None:
        pass

    @contextmanager
    def begin(self) -> Iterator[MemoryTransaction]:
        with self._lock:  # one writer at a time, as on SQLite
            tx = MemoryTransaction(self._tables.copy())
            yield tx
            self._tables = tx.tables  # commit: only if the block did not raise

    @contextmanager
    def read(self) -> Iterator[MemoryTransaction]:
        with self._lock:
            snapshot = self._tables.copy()
        yield MemoryTransaction(snapshot)  # what was committed when the read began

    def wrote(self, rows: int) -> None:
        pass


class MemoryTransaction:
    def __init__(self, tables: _Tables) -> None:
        self.tables = tables
        self.events = _Events(tables)
        self.sources = _Sources(tables)
        self.counters = _Counters(tables)
        self.state = _State(tables)
        self.archive = _Archive(tables)
        self.cluster = _Cluster(tables)


class _Role:
    def __init__(self, tables: _Tables) -> None:
        self.t = tables


class _Events(_Role):
    def add(self, events: Sequence[Event], now_us: int) -> list[Event]:
        new = []
        t = self.t
        for e in events:
            if e.dedup_key in t.events:
                continue
            t.events[e.dedup_key] = (t.next_event_id, e)
            t.next_event_id += 1
            t.by_contact[e.contact_key] = (*t.by_contact.get(e.contact_key, ()), e.dedup_key)
            t.ingested[(e.source, e.kind.value)] += 1
            new.append(e)
        return new

    def stored_copies(self, events: Iterable[Event]) -> dict[tuple[str, str], Event]:
        stored = (self.t.events.get(e.dedup_key) for e in events)
        return {s[1].dedup_key: s[1] for s in stored if s is not None}

    def for_contacts(self, keys: Iterable[ContactKey]) -> dict[ContactKey, list[Event]]:
        out = {}
        for key in keys:
            ids = self.t.by_contact.get(key)
            if ids:
                out[key] = [self.t.events[i][1] for i in ids]
        return out

    def by_contact(
        self,
        until_us: int | None = None,
        start: ContactKey | None = None,
        stop: ContactKey | None = None,
    ) -> Iterator[list[Event]]:
        for key in sorted(self.t.by_contact):
            if (start is not None and key < start) or (stop is not None and key >= stop):
                continue
            events = [self.t.events[i][1] for i in self.t.by_contact[key]]
            if until_us is not None:
                events = [e for e in events if to_micros(e.occurred_at) <= until_us]
            if events:
                yield events

    def contacts_stored(self, keys: Iterable[ContactKey]) -> set[ContactKey]:
        return {k for k in keys if self.t.by_contact.get(k)}

    def id_span(self) -> int:
        ids = [i for i, _e in self.t.events.values()]
        return max(ids) - min(ids) + 1 if ids else 0

    def split_points(self, parts: int) -> list[ContactKey]:
        if parts <= 1 or not self.t.events:
            return []
        sample = sorted(e.contact_key for _i, e in self.t.events.values())
        return sorted({sample[len(sample) * k // parts] for k in range(1, parts)})

    def reject(self, source: str, items: Sequence[Rejected], now_us: int) -> list[Rejected]:
        t = self.t
        new = []
        for r in items:
            if (source, r.key) in t.rejected_keys:
                continue
            t.rejected_keys.add((source, r.key))
            rid = len(t.rejected) + 1
            record = RejectedRecord(
                rid, source, r.reason, r.detail[:4000], r.payload[:20000], now_us, r.key
            )
            t.rejected.append(record)
            t.rejected_counts[(source, r.reason)] += 1
            new.append(r)
        return new

    def rejected(self, limit: int = 100) -> list[RejectedRecord]:
        return list(reversed(self.t.rejected[-limit:])) if limit > 0 else []


class _Sources(_Role):
    def load(self) -> dict[str, SourceState]:
        return dict(self.t.sources)

    def save(self, state: SourceState) -> None:
        self.t.sources[state.name] = state


def _plus(counts: Counter[tuple[str, ...]], carried: Counter[tuple[str, ...]] | None) -> Counts:
    total = Counter(counts)
    total.update(carried or {})
    return [(k, n) for k, n in total.items() if n or k in counts]


class _Counters(_Role):
    def count_poll(self, source: str, result: str, n: int = 1) -> None:
        self.t.polls[(source, result)] += n

    def count_skipped(self, source: str, counts: dict[str, int]) -> None:
        for reason, n in counts.items():
            self.t.skipped[(source, reason)] += n

    def count_late(self, source: str, n: int) -> None:
        self.t.late[(source,)] += n

    def polls(self) -> Counts:
        return list(self.t.polls.items())

    def skipped(self) -> Counts:
        return list(self.t.skipped.items())

    def late(self) -> Counts:
        return list(self.t.late.items())

    def rejected(self) -> Counts:
        return list(self.t.rejected_counts.items())

    def ingested(self) -> Counts:
        return list(self.t.ingested.items())

    def opened(self) -> Counts:
        counts: Counter[tuple[str, ...]] = Counter(
            (c.channel, c.queue, c.priority)
            for c in self.t.contacts.values()
            if c.opened_us is not None
        )
        return _plus(counts, self.t.carried.get(Carried.OPENED))

    def unmatched(self) -> Counts:
        counts: Counter[tuple[str, ...]] = Counter(
            (c.channel, c.queue) for c in self.t.contacts.values() if c.unmatched
        )
        return _plus(counts, self.t.carried.get(Carried.UNMATCHED))

    def repeats(self) -> Counts:
        counts: Counter[tuple[str, ...]] = Counter(
            (c.channel, c.queue) for c in self.t.contacts.values() if c.repeat_counted
        )
        return _plus(counts, self.t.carried.get(Carried.REPEATS))

    def callbacks(self) -> Counts:
        out: Counts = []
        for counter, state, flag in (
            (Carried.CALLBACKS_REQUESTED, "requested", "callback_requested"),
            (Carried.CALLBACKS_HANDLED, "handled", "callback_handled"),
        ):
            counts: Counter[tuple[str, ...]] = Counter(
                (c.channel, c.queue) for c in self.t.contacts.values() if getattr(c, flag)
            )
            out += [((*k, state), n) for k, n in _plus(counts, self.t.carried.get(counter))]
        return out

    def outcomes(self) -> Counts:
        counts: Counter[tuple[str, ...]] = Counter(
            (t.channel, t.queue, t.priority, t.target, t.outcome)
            for rows in self.t.targets.values()
            for t in rows
            if t.outcome is not None
        )
        return _plus(counts, self.t.carried.get(Carried.OUTCOMES))

    def count_responses_in(self, bounds: tuple[float, ...]) -> None:
        pass  # counted from the records when asked

    def responses(self, bounds: tuple[float, ...]) -> list[ResponseCounts]:
        rows = [t for targets in self.t.targets.values() for t in targets]
        return response_histograms(bounds, bucket_responses(bounds, rows), self.carried_responses())

    def carried_responses(self) -> Iterator[CarriedResponses]:
        for (ch, q, p, target, le_ms), (n, total) in list(self.t.carried_responses.items()):
            yield CarriedResponses(ch, q, target, le_ms / 1000, n, total, p)

    def queues_seen(self) -> list[tuple[str, str, str]]:
        return sorted({(c.source, c.channel, c.queue) for c in self.t.contacts.values()})

    def queue_order(self) -> list[tuple[str, str]]:
        return list(self.t.queue_order)

    def source_counts(self, source: str) -> SourceCounts:
        def mine(counts: Counts) -> Counts:
            return [(k, n) for k, n in counts if k[0] == source]

        return SourceCounts(
            ingested=mine(self.ingested()),
            rejected=mine(self.rejected()),
            polls=mine(self.polls()),
            skipped=mine(self.skipped()),
            late=mine(self.late()),
        )


class _State(_Role):
    def contacts_for(self, keys: Iterable[ContactKey]) -> dict[ContactKey, ContactRecord]:
        contacts = self.t.contacts
        return {k: contacts[k] for k in keys if k in contacts}

    def targets_for(self, keys: Iterable[ContactKey]) -> dict[ContactKey, list[TargetRecord]]:
        targets = self.t.targets
        return {k: list(targets[k]) for k in keys if targets.get(k)}

    def delete(self, keys: Iterable[ContactKey]) -> None:
        for k in keys:
            self.t.contacts.pop(k, None)
            self.t.targets.pop(k, None)

    def write(self, contacts: Sequence[Row], targets: Sequence[Row]) -> None:
        for row in contacts:
            c = ContactRecord._make(row)
            if c.key in self.t.contacts:
                raise ValueError(f"contact {c.source}:{c.conversation_id} is already stored")
            self.t.contacts[c.key] = c
        for seen in queues_of(contacts):
            self.t.queue_order.setdefault(seen, None)
        by_contact: dict[ContactKey, list[TargetRecord]] = {}
        for values in targets:
            r = TargetRecord._make(values)
            by_contact.setdefault((r.source, r.conversation_id), []).append(r)
        for key, rows in by_contact.items():
            self.t.targets[key] = (*self.t.targets.get(key, ()), *rows)

    def set_repeats(self, links: dict[ContactKey, ContactKey | None]) -> None:
        for key, link in links.items():
            c = self.t.contacts.get(key)
            if c is not None:
                self.t.contacts[key] = c._replace(
                    repeat_of_source=link[0] if link else None,
                    repeat_of_conversation=link[1] if link else None,
                    repeat_counted=bool(c.repeat_counted) or link is not None,
                )

    def _summaries(
        self, customers: Iterable[str], start_us: int | None = None, end_us: int | None = None
    ) -> list[tuple[ContactSummary, ContactKey | None]]:
        wanted = set(customers)
        out = []
        for c in self.t.contacts.values():
            if c.customer_id not in wanted:
                continue
            if start_us is not None and (c.opened_us is None or c.opened_us < start_us):
                continue
            if end_us is not None and (c.opened_us is None or c.opened_us > end_us):
                continue
            summary = ContactSummary(
                c.key,
                c.customer_id,
                from_micros(c.opened_us) if c.opened_us is not None else None,
                from_micros(c.first_response_us) if c.first_response_us is not None else None,
            )
            out.append((summary, c.repeat_of))
        return out

    def summaries_near(
        self, customers: Iterable[str], start_us: int, end_us: int
    ) -> list[tuple[ContactSummary, ContactKey | None]]:
        return self._summaries(customers, start_us, end_us)

    def summaries_for_customers(self, customers: Iterable[str]) -> list[ContactSummary]:
        return [s for s, _link in self._summaries(customers)]

    def clear(self) -> None:
        self.t.contacts.clear()
        self.t.targets.clear()

    def open_targets(self) -> Iterator[TargetRecord]:
        for rows in list(self.t.targets.values()):
            yield from (r for r in rows if r.is_open)

    def alerting(self) -> list[AlertingTarget]:
        out = []
        for key, rows in self.t.targets.items():
            c = self.t.contacts.get(key)
            if c is None:
                continue
            for r in rows:
                if r.is_open and r.state in ("breached", "at_risk"):
                    out.append(
                        AlertingTarget(
                            r.source,
                            r.conversation_id,
                            r.target,
                            r.seq,
                            r.channel,
                            r.queue,
                            r.priority,
                            r.state,
                            r.started_us,
                            r.deadline_us,
                            c.customer_id,
                            c.rule,
                        )
                    )
        return out

    def pending_wakes(self) -> Iterator[PendingWake]:
        for c in list(self.t.contacts.values()):
            if c.next_wake_us is not None or c.awaiting_us is not None:
                yield PendingWake(c.source, c.conversation_id, c.next_wake_us, c.awaiting_us)


class _Archive(_Role):
    def horizons(self) -> dict[str, int]:
        return dict(self.t.horizons)

    def _quiet(self, c: ContactRecord, before_us: int) -> bool:
        t = self.t
        if c.next_wake_us is not None or c.awaiting_us is not None or c.key in t.dirty:
            return False
        if any(r.is_open for r in t.targets.get(c.key, ())):
            return False
        events = (t.events[i][1] for i in t.by_contact.get(c.key, ()))
        return all(to_micros(e.occurred_at) < before_us for e in events)

    def quiet_contacts(
        self, before_us: int, sources: Sequence[str], keys: Sequence[ContactKey] | None = None
    ) -> Iterator[QuietContact]:
        contacts = self.t.contacts
        if keys is not None:
            chosen = [contacts[k] for k in keys if k in contacts]
        else:
            chosen = sorted(
                (c for c in contacts.values() if c.source in sources),
                key=lambda c: (c.customer_id is not None, c.customer_id or "", c.key),
            )
        for c in chosen:
            if self._quiet(c, before_us):
                yield QuietContact(c.source, c.conversation_id, c.customer_id)

    def start_run(self, before_us: int, file: str, now_us: int, sources: Sequence[str]) -> int:
        for s in sources:
            self.t.horizons[s] = max(self.t.horizons.get(s, before_us), before_us)
        run_id = len(self.t.runs) + 1
        self.t.runs[run_id] = {
            "before_us": before_us,
            "file": file,
            "started_us": now_us,
            "finished_us": None,
            "contacts": 0,
            "events": 0,
        }
        return run_id

    def finish_run(self, run_id: int, now_us: int) -> None:
        self.t.runs[run_id]["finished_us"] = now_us

    def archive(
        self, keys: Sequence[ContactKey], run_id: int, write: Callable[[list[Event]], None]
    ) -> tuple[int, int, int]:
        t = self.t
        ids = [i for k in keys for i in t.by_contact.get(k, ())]
        events = [t.events[i][1] for i in ids]
        write(events)
        contacts = [t.contacts[k] for k in keys if k in t.contacts]
        targets = [r for k in keys for r in t.targets.get(k, ())]
        counts = carried_counts(contacts, targets)
        for counter, values in counts.counters.items():
            t.carried.setdefault(counter, Counter()).update(values)
        for bucket, (n, total) in counts.responses.items():
            was_n, was_total = t.carried_responses.get(bucket, (0, 0.0))
            t.carried_responses[bucket] = (was_n + n, was_total + total)
        for i in ids:
            del t.events[i]
        for k in keys:
            t.by_contact.pop(k, None)
            t.contacts.pop(k, None)
            t.targets.pop(k, None)
        run = t.runs[run_id]
        run["contacts"] = int(run["contacts"] or 0) + len(keys)
        run["events"] = int(run["events"] or 0) + len(ids)
        return len(ids), len(targets), counts.opened

    def count_opened_before(self, before_us: int) -> int:
        return sum(
            1
            for c in self.t.contacts.values()
            if c.opened_us is not None and c.opened_us < before_us
        )


class _Cluster(_Role):
    def try_lease(self, name: str, holder: str, now_us: int, ttl_us: int) -> bool:
        current = self.t.leases.get(name)
        if current is not None and current[0] != holder and current[1] >= now_us:
            return False
        self.t.leases[name] = (holder, now_us + ttl_us)
        return True

    def release(self, name: str, holder: str) -> None:
        if self.t.leases.get(name, ("", 0))[0] == holder:
            del self.t.leases[name]

    def fence(self, name: str, holder: str, now_us: int) -> None:
        current = self.t.leases.get(name)
        if current is None or current[0] != holder or current[1] < now_us:
            raise LeaseLost(name)

    def heartbeat(self, replica: str, now_us: int, clock_us: int | None = None) -> None:
        self.t.replicas[replica] = now_us
        if clock_us is not None:
            self.t.clocks[replica] = clock_us

    def clock_reading(self) -> tuple[int, int] | None:
        if not self.t.clocks:
            return None
        replica = max(self.t.clocks, key=lambda r: self.t.clocks[r])
        return self.t.replicas[replica], self.t.clocks[replica]

    def live_replicas(self, since_us: int) -> list[str]:
        return sorted(r for r, seen in self.t.replicas.items() if seen >= since_us)

    def holders(self, now_us: int) -> dict[str, str]:
        return {n: h for n, (h, exp) in self.t.leases.items() if exp >= now_us}

    def mark_dirty(self, keys: Iterable[ContactKey]) -> None:
        for k in set(keys):
            self.t.dirty[k] = self.t.dirty.get(k, 0) + 1

    def dirty(self, limit: int) -> dict[ContactKey, int]:
        return dict(list(self.t.dirty.items())[:limit])

    def clear_dirty(self, seen: dict[ContactKey, int]) -> None:
        for k, version in seen.items():
            if self.t.dirty.get(k) == version:
                del self.t.dirty[k]
