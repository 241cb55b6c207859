"""The monitor: applies polls to the store, re-evaluates only the contacts they touch, and
wakes exactly at the next warning point or deadline (an ordered index, never a scan).

All state changes happen under one lock; source I/O happens outside it.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any, ParamSpec, Protocol

from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    DisconnectionError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    StatementError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

from sla_monitor.adapters.abc import Store, Transaction
from sla_monitor.adapters.records import (
    ContactRecord,
    SourceState,
    decided_of,
    evaluation_rows,
    queues_of,
)
from sla_monitor.config import Config
from sla_monitor.domain.engine import (
    ContactEvaluation,
    Outcome,
    TargetResult,
    evaluate_contact,
    read_until,
)
from sla_monitor.domain.events import ContactKey, Event, Rejected, event_problem
from sla_monitor.domain.timeutil import from_micros, iso, to_micros
from sla_monitor.service_layer.aggregates import Labels, TargetChange, diff
from sla_monitor.service_layer.clock import Clock
from sla_monitor.service_layer.deadlines import DeadlineIndex
from sla_monitor.service_layer.live import LiveState, SourceHealth, response_buckets, resume
from sla_monitor.service_layer.queue_labels import OTHER_QUEUE, QueueLabels
from sla_monitor.service_layer.repeats import relink
from sla_monitor.sources.abc import PollResult

log = logging.getLogger(__name__)
P = ParamSpec("P")
# A large poll is stored and evaluated a chunk at a time, the lock freed in between, so a
# deadline falling due meanwhile waits for one chunk at most: chunks of at most POLL_CHUNK
# events, sized so that one holds the lock about CHUNK_SECONDS (it takes longer with more
# open targets and a busier machine), never fewer than MIN_CHUNK events.
POLL_CHUNK = 5_000
FIRST_CHUNK = 1_000
MIN_CHUNK = 100
CHUNK_SECONDS = 0.2


class TargetListener(Protocol):
    """Told of every target whose state changed (alerting hooks in here)."""

    def target_changed(
        self, evaluation: ContactEvaluation, result: TargetResult, previous_state: str | None
    ) -> None: ...


@dataclass
class IngestSummary:
    new: int = 0
    rejected: int = 0  # items set aside by this call (also ones already set aside before)
    contacts: int = 0
    reasons: Counter[str] = field(default_factory=Counter)  # rejected, by reason

    def add(self, other: IngestSummary) -> None:
        self.new += other.new
        self.rejected += other.rejected
        self.contacts += other.contacts
        self.reasons.update(other.reasons)


def store_unreachable(exc: BaseException) -> bool:
    """A failure of the database itself (down, restarting, connection killed, locked), as
    opposed to the database refusing one item: retried as a whole, never bisected."""
    if isinstance(exc, OperationalError | InterfaceError | PoolTimeout | DisconnectionError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def _item_error(exc: BaseException) -> bool:
    """A failure one item can cause (a value the database or the engine refuses): worth
    finding the item. Anything else (the store away, a full disk, a bug) fails the batch."""
    if store_unreachable(exc):
        return False
    if isinstance(exc, DBAPIError):
        return isinstance(exc, DataError | IntegrityError)
    return isinstance(exc, StatementError | ValueError | ArithmeticError | TypeError | LookupError)


def _reason(exc: BaseException) -> str:
    """One line naming the failure (never SQL parameters: they may hold anything)."""
    inner = getattr(exc, "orig", None) or exc
    text = str(inner).strip().splitlines()
    return f"{type(inner).__name__}: {text[0][:300] if text else ''}".rstrip(": ")


class _Probe(Exception):
    """Raised at the end of a trial transaction, to roll it back on purpose."""


@dataclass
class _Pending:
    """What a transaction will change in memory: applied after COMMIT, dropped on rollback
    (the unit-of-work rule: memory follows the store)."""

    on_commit: list[Callable[[], object]] = field(default_factory=list)
    on_rollback: list[Callable[[], Any]] = field(default_factory=list)


class Monitor:
    def __init__(
        self,
        store: Store,
        config: Config,
        clock: Clock,
        listeners: Sequence[TargetListener] = (),
    ) -> None:
        self.store = store
        self.config = config
        self.policy = config.policy
        self.clock = clock
        self.listeners = list(listeners)
        self.live = LiveState(response_buckets(self.policy))
        self.lock = threading.RLock()
        self.sources: dict[str, SourceState] = {}
        self.deadlines = DeadlineIndex()
        self.started_wall = time.time()  # breaches knowable before this are history
        self.ready = False
        self.on_wake_change: Callable[[datetime | None], None] | None = None
        # cluster mode (docs/scaling.md): polls only store events and mark their contacts;
        # the leader evaluates. Otherwise one process does everything inline.
        self.clustered = False
        self.poll_chunk = POLL_CHUNK
        self.timer: Callable[[], float] = time.perf_counter  # how long a chunk held the lock
        self.log_rejections = True  # a line per item set aside (`ingest` prints its own)
        self._waking = threading.Condition()  # wakes waiting for the lock (see wake)
        self._wakes_waiting = 0
        self.replica_id = ""
        self.exports_contacts = True  # the leader's (or the only process's) metrics
        self.owned_sources: set[str] | None = None  # sources whose metrics this replica exports
        limits = config.settings.limits
        self.earliest, self.future = limits.earliest, limits.future
        self._tx: _Pending | None = None
        # the store's health: None while reachable, else why not (readiness reports it)
        self.store_error: str | None = None
        self._store_down_since: float | None = None
        self._in_doubt = False  # a COMMIT failed: it may have happened; re-read memory
        self._unsaved_polls: Counter[tuple[str, str]] = Counter()  # failures to count
        self.on_resync: Callable[[], None] | None = None  # after memory is re-read
        self.queue_labels = QueueLabels(config)  # the bound on `queue` label values

    # -- start-up -------------------------------------------------------------------------

    def load(self) -> None:
        """Resume from the store: counters, open targets, deadlines. No recompute. Built
        aside and swapped in whole, so a failed load leaves the old state as it was."""
        deadlines = DeadlineIndex()
        with self.lock, self.store.begin() as tx:
            sources = tx.sources.load()
            live, contacts = resume(self.live, tx, sources)
            pending = list(tx.state.pending_wakes())
            labels = QueueLabels(self.config)
            labels.learn_all(tx.counters.queue_order())
            for name, state in self.sources.items():  # declared, not stored yet
                sources.setdefault(name, state)
            self.sources = sources
            self.live, self.deadlines = live, deadlines
            self.queue_labels = labels
            for src, conv, wake_us, awaiting_us in pending:
                ck = (sys.intern(src), conv)
                self._schedule(contacts.get(ck, ck), wake_us, awaiting_us)
            del contacts
        for source, n in sorted(labels.folded().items()):
            if n:
                log.warning(
                    "source %s: %d queues beyond its %d queue labels are exported under "
                    'queue="%s" (config: queue_labels)',
                    source,
                    n,
                    labels.bound(source),
                    OTHER_QUEUE,
                )
        self.ready = True

    def declare(self, source: str, kind: str, channel: str | None, queues: Iterable[str]) -> None:
        """A configured source: export zero series for its queues before it has any traffic,
        and its health (a source known only from the store has none to report)."""
        with self.lock:
            self.live.sources.setdefault(source, SourceHealth(source, kind)).configured = True
            if source not in self.sources:
                self.sources[source] = SourceState(source, kind)
            if channel:
                for q in queues:
                    self.live.series.add((channel, q))

    # -- transactions -----------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[Transaction]:
        """One store transaction whose in-memory consequences (registered with `_defer`)
        apply only once it has committed; on rollback, `_undo` actions restore memory."""
        assert self._tx is None, "transactions do not nest"
        pending = self._tx = _Pending()
        body_done = False
        try:
            with self.store.begin() as tx:
                yield tx
                body_done = True
        except BaseException as exc:
            self._tx = None
            for undo in reversed(pending.on_rollback):
                undo()
            if isinstance(exc, _Probe):
                raise
            if body_done:
                self._in_doubt = True  # the COMMIT itself failed: it may still have happened
            if store_unreachable(exc):
                self._store_failed(exc)
            raise
        self._tx = None
        self._store_reachable()
        for change in pending.on_commit:
            change()
        if self._in_doubt:
            try:
                self._resync()
            except Exception as exc:  # still in doubt: the next commit tries again
                log.warning("re-reading memory from the store failed (%s)", _reason(exc))

    def _defer(self, fn: Callable[P, object], *args: P.args, **kwargs: P.kwargs) -> None:
        """Change memory when the current transaction commits (at once outside one)."""
        if self._tx is None:
            fn(*args, **kwargs)
        else:
            self._tx.on_commit.append(partial(fn, *args, **kwargs))

    def _undo(self, fn: Callable[[], Any]) -> None:
        if self._tx is not None:
            self._tx.on_rollback.append(fn)

    def _store_failed(self, exc: BaseException) -> None:
        if self.store_error is None:  # logged once per outage, not once per retry
            self._store_down_since = time.monotonic()
            log.error(
                "database unavailable (%s); polls and deadlines wait, nothing is lost",
                _reason(exc),
            )
        self.store_error = _reason(exc)

    def _store_reachable(self) -> None:
        if self.store_error is not None:
            down = time.monotonic() - (self._store_down_since or time.monotonic())
            log.warning(
                "database reachable again after %.0fs; judging what fell due meanwhile", down
            )
            self.store_error = None

    def _resync(self) -> None:
        """A COMMIT failed without saying whether it happened: re-read memory from the store
        (counters, open targets, deadlines), and let the publishers re-read theirs."""
        log.warning("re-reading counters and deadlines from the store after a failed commit")
        self.load()
        self._in_doubt = False
        if self.on_resync is not None:
            self.on_resync()

    def _save_unsaved_polls(self, tx: Transaction) -> None:
        """Poll failures seen while the store was away are counted with the next commit."""
        if not self._unsaved_polls:
            return
        counted = dict(self._unsaved_polls)
        for (source, result), n in counted.items():
            tx.counters.count_poll(source, result, n)
        self._defer(self._polls_saved, counted)

    def _polls_saved(self, counted: dict[tuple[str, str], int]) -> None:
        for key, n in counted.items():
            self._unsaved_polls[key] -= n
            self.live.polls[key] += n
        self._unsaved_polls = +self._unsaved_polls  # drop zeros

    # -- polls ----------------------------------------------------------------------------

    def apply_poll(
        self, source: str, kind: str, result: PollResult, duration: float
    ) -> IngestSummary:
        """Store a successful poll (events, rejects, cursor, watermark) and re-evaluate what
        it touched. A large poll is stored and evaluated a chunk of contacts at a time, the
        lock released in between, so a deadline falling due meanwhile is judged at once, not
        after the whole batch; the cursor, the watermark and the poll's counts go with the
        last chunk (if the process stops before it, the poll is read again: the chunks
        already stored are duplicates then, stored once)."""
        summary = IngestSummary()
        size = min(self.poll_chunk, FIRST_CHUNK)
        last: Sequence[Event] = result.events
        if not self.clustered and len(last) > size:
            groups = deque(_by_contact(last))
            left = len(last)
            while left > size:
                part = _take(groups, size)
                left -= len(part)
                with self.lock:
                    started = self.timer()
                    state = self.sources.get(source) or SourceState(source, kind)
                    done = self._ingest(source, part, [], state, self.clock.now(), None)
                    took = self.timer() - started
                summary.add(done)
                smallest = min(MIN_CHUNK, self.poll_chunk)
                size = _next_chunk(len(part), took, smallest, self.poll_chunk)
                self._let_wakes_in()
            last = [e for group in groups for e in group]
        with self.lock:
            now = self.clock.now()
            state = replace(
                self.sources.get(source) or SourceState(source, kind),
                cursor=result.cursor,
                last_success=now,
            )
            # a source cannot vouch beyond the instants it may deliver (limits.future)
            mark = result.watermark
            if mark is not None:
                mark = min(mark, now + self.future)
            if mark is not None and (state.watermark is None or mark > state.watermark):
                state = replace(state, watermark=mark)
            summary.add(
                self._ingest(source, last, result.rejected, state, now, "ok", result.skipped)
            )
            health = self.live.sources.setdefault(source, SourceHealth(source, kind))
            health.up, health.last_success, health.last_duration = True, now, duration
            health.consecutive_failures = 0
            return summary

    def poll_failed(self, source: str, kind: str, duration: float, result: str = "error") -> None:
        """A poll that failed: the source reports down at once; the failure is counted in
        the store (and then on /metrics) as soon as the store takes it, even after an
        outage of the store itself."""
        with self.lock:
            health = self.live.sources.setdefault(source, SourceHealth(source, kind))
            health.up, health.last_duration = False, duration
            health.consecutive_failures += 1
            self._unsaved_polls[(source, result)] += 1
            if self.store_error is not None:
                return  # the store is away: counted with the first commit once it is back
            try:
                with self._transaction() as tx:
                    self._save_unsaved_polls(tx)
            except Exception as exc:
                if not store_unreachable(exc):
                    raise

    def ingest(
        self,
        source: str,
        events: Sequence[Event],
        rejected: Sequence[Rejected] = (),
        watermark: datetime | None = None,
    ) -> IngestSummary:
        """One-shot import (the `ingest` command): the same path as a poll."""
        with self.lock:
            state = self.sources.get(source) or SourceState(source, "ingest")
            if watermark is not None and (state.watermark is None or watermark > state.watermark):
                state = replace(state, watermark=watermark)
            return self._ingest(source, events, rejected, state, self.clock.now(), None)

    def _screen(
        self, source: str, events: Sequence[Event], now: datetime
    ) -> tuple[list[Event], list[Rejected]]:
        """Set aside, before anything is stored, every event the store or the engine would
        refuse, and later copies of an event id whose content differs (the first copy
        read stands); exact copies are dropped silently (re-reads are normal)."""
        latest = now + self.future
        ok: list[Event] = []
        aside: list[Rejected] = []
        first: dict[tuple[str, str], Event] = {}
        for e in events:
            problem = event_problem(e, self.earliest, latest)
            if problem is None:
                seen = first.setdefault(e.dedup_key, e)
                if seen is e:
                    ok.append(e)
                    continue
                if seen == e:
                    continue
                problem = ("conflicting_duplicate", _differs(seen, e))
            aside.append(_rejected(source, e, *problem))
        return ok, aside

    def _ingest(
        self,
        source: str,
        events: Sequence[Event],
        rejected: Sequence[Rejected],
        state: SourceState,
        now: datetime,
        poll_result: str | None,
        skipped: Counter[str] | None = None,
    ) -> IngestSummary:
        good, aside = self._screen(source, events, now)
        rejected = [*rejected, *aside]
        try:
            summary = self._store_batch(
                source, good, rejected, state, now, poll_result, skipped=skipped
            )
        except Exception as exc:
            if not _item_error(exc) or not good:
                raise
            # something in the batch was refused after all: find it (trial transactions,
            # each rolled back), set it aside with the store's reason, and store the rest
            refused = self._find_refused(source, good, state, now)
            if not refused or (len(refused) == len(good) > 1):
                raise  # not an item's fault (or every item's: then it is not theirs either)
            log.warning(
                "source %s: the store refused %d of %d events; storing the rest",
                source,
                len(refused),
                len(good),
            )
            keep = [e for e in good if e.dedup_key not in refused]
            set_aside = [_rejected(source, e, "store_refused", why) for e, why in refused.values()]
            summary = self._store_batch(
                source, keep, [*rejected, *set_aside], state, now, poll_result, skipped=skipped
            )
        return summary

    def _find_refused(
        self, source: str, events: list[Event], state: SourceState, now: datetime
    ) -> dict[tuple[str, str], tuple[Event, str]]:
        """The events that make a batch fail, by halving (about 2·k·log n trials for k)."""

        def fails(part: list[Event]) -> str | None:
            try:
                self._store_batch(source, part, [], state, now, None, probe=True)
            except _Probe:
                return None
            except Exception as exc:
                if not _item_error(exc):
                    raise
                return _reason(exc)
            return None  # pragma: no cover (a probe always ends in _Probe or an error)

        if fails([]) is not None:
            return {}  # not an event's fault
        out: dict[tuple[str, str], tuple[Event, str]] = {}
        todo = [events]
        while todo:
            part = todo.pop()
            why = fails(part)
            if why is None:
                continue
            if len(part) == 1:
                out[part[0].dedup_key] = (part[0], why)
                continue
            mid = len(part) // 2
            todo += [part[:mid], part[mid:]]
        return out

    def _store_batch(
        self,
        source: str,
        events: Sequence[Event],
        rejected: Sequence[Rejected],
        state: SourceState,
        now: datetime,
        poll_result: str | None,
        probe: bool = False,
        skipped: Counter[str] | None = None,
    ) -> IngestSummary:
        live = self.live
        arrived = time.time()
        now_us = to_micros(now)
        health = live.sources.setdefault(source, SourceHealth(source, state.kind))
        advanced = state.watermark is not None and (
            health.watermark is None or state.watermark > health.watermark
        )
        previous = self.sources.get(source)
        summary = IngestSummary()
        with self._transaction() as tx:
            # evaluation below reads the new watermark; a rollback puts the old one back
            self.sources[source] = state
            self._undo(lambda: self._restore_source(source, previous))
            if advanced:  # breaches this poll makes knowable are knowable from now
                self._defer(_watermark_advanced, health, state.watermark, arrived)
            self._save_unsaved_polls(tx)
            events, archived = self._set_aside_archived(tx, events)
            new = tx.events.add(events, now_us)
            read_before = previous.watermark if previous is not None else None
            late = [e for e in new if read_before is not None and e.occurred_at < read_before]
            if late and read_before is not None:  # it had vouched for everything up to there
                tx.counters.count_late(source, len(late))
                self._defer(self._late, source, late, read_before)
            conflicts = self._stored_conflicts(tx, source, events, new)
            all_rejected = [*rejected, *archived, *conflicts]
            fresh = tx.events.reject(source, all_rejected, now_us)
            tx.sources.save(state)
            if poll_result:
                tx.counters.count_poll(source, poll_result)
            if skipped:
                tx.counters.count_skipped(source, dict(skipped))
                self._defer(_count_all, self.live.skipped, source, dict(skipped))
            keys = {e.contact_key for e in new}
            if advanced:
                assert state.watermark is not None
                keys |= self._released(source, to_micros(state.watermark))
            if self.clustered and poll_result:
                # fenced: a replica that lost the source's lease stores nothing
                tx.cluster.fence(f"source:{source}", self.replica_id, to_micros(datetime.now(UTC)))
                tx.cluster.mark_dirty(keys)
                evaluated = 0
            else:
                evaluated = self._evaluate(tx, keys, now, new)
            self._defer(self._stored, source, new, fresh, poll_result)
            if probe:
                raise _Probe
        try:
            self.store.wrote(len(new))
        except Exception:  # only planner statistics: never worth failing a committed poll
            log.debug("refreshing planner statistics failed", exc_info=True)
        self._notify_wake()
        summary.new, summary.contacts = len(new), evaluated
        summary.rejected = len(all_rejected)
        summary.reasons.update(r.reason for r in all_rejected)
        return summary

    def _late(self, source: str, late: list[Event], read_before: datetime) -> None:
        self.live.late[(source,)] += len(late)
        oldest = min(e.occurred_at for e in late)
        log.warning(
            "source %s delivered %d events older than its watermark %s (the oldest at %s): "
            "they are stored, but outcomes already decided stand (only `replay` recomputes)",
            source,
            len(late),
            iso(read_before),
            iso(oldest),
        )

    def _restore_source(self, source: str, previous: SourceState | None) -> None:
        if previous is not None:
            self.sources[source] = previous
        else:
            self.sources.pop(source, None)

    def _stored(
        self, source: str, new: list[Event], fresh: list[Rejected], poll_result: str | None
    ) -> None:
        live = self.live
        for e in new:
            live.ingested[(e.source, e.kind.value)] += 1
        for r in fresh:  # each rejection logged and counted once, however often it is read
            live.rejected[(source, r.reason)] += 1
            if self.log_rejections:
                log.warning("rejected event from %s (%s): %s", source, r.reason, r.detail)
        if poll_result:
            live.polls[(source, poll_result)] += 1

    def _stored_conflicts(
        self, tx: Transaction, source: str, events: Sequence[Event], new: list[Event]
    ) -> list[Rejected]:
        """Events already stored under the same id with other content: the stored copy
        stands (outcomes may rest on it); the new one is set aside as a conflict."""
        if len(new) == len(events):
            return []
        fresh = {e.dedup_key for e in new}
        again = [e for e in events if e.dedup_key not in fresh]
        stored = tx.events.stored_copies(again)
        return [
            _rejected(source, e, "conflicting_duplicate", _differs(stored[e.dedup_key], e))
            for e in again
            if e.dedup_key in stored and stored[e.dedup_key] != e
        ]

    def _set_aside_archived(
        self, tx: Transaction, events: Sequence[Event]
    ) -> tuple[Sequence[Event], list[Rejected]]:
        """Events older than their source's archive horizon whose contact is not stored: a
        re-delivered event of an archived contact (storing it would count it again and judge
        the contact on part of its history) or history that arrived after the archive."""
        horizons = tx.archive.horizons()
        if not horizons:
            return events, []
        old = [
            e
            for e in events
            if e.source in horizons and to_micros(e.occurred_at) < horizons[e.source]
        ]
        if not old:
            return events, []
        stored = tx.events.contacts_stored({e.contact_key for e in old})
        aside = {e.dedup_key: e for e in old if e.contact_key not in stored}
        if not aside:
            return events, []
        return [e for e in events if e.dedup_key not in aside], [
            Rejected(
                "archived",
                f"event {e.event_id} of contact {e.source}:{e.conversation_id} at "
                f"{iso(e.occurred_at)} is older than the archive horizon "
                f"{iso(from_micros(horizons[e.source]))} of {e.source} and its contact is not "
                "stored; to report on archived periods, ingest the archive files into a "
                "separate database",
                json.dumps(e.to_dict()),
            )
            for e in aside.values()
        ]

    # -- cluster mode ---------------------------------------------------------------------

    def reset_contacts(self) -> None:
        """Forget contact state (a replica that is not, or no longer, the leader)."""
        with self.lock:
            self.live.forget_contacts()
            self.deadlines.clear()

    def adopt_source(self, source: str, kind: str) -> None:
        """This replica now polls `source`: resume from its stored cursor and counters."""
        assert self.clustered
        with self.lock, self.store.begin() as tx:
            state = tx.sources.load().get(source) or SourceState(source, kind)
            counts = tx.counters.source_counts(source)
        self.sources[source] = state
        live = self.live
        for counter, stored in (
            (live.ingested, counts.ingested),
            (live.rejected, counts.rejected),
            (live.polls, counts.polls),
            (live.skipped, counts.skipped),
            (live.late, counts.late),
        ):
            for key in [k for k in counter if k[0] == source]:
                del counter[key]
            for key, n in stored:
                counter[key] += n  # stored rows plus what archived rows carried
        health = live.sources.setdefault(source, SourceHealth(source, kind))
        health.watermark, health.last_success = state.watermark, state.last_success

    def sync(self) -> int:
        """The leader's loop: evaluate contacts other replicas stored events for, and those
        a source's advanced watermark makes judgeable (one fenced transaction)."""
        assert self.clustered
        with self.lock:
            now = self.clock.now()
            with self._transaction() as tx:
                tx.cluster.fence("leader", self.replica_id, to_micros(datetime.now(UTC)))
                keys: set[ContactKey] = set()
                for name, stored in tx.sources.load().items():
                    mine = self.sources.get(name)
                    if stored.watermark is None:
                        continue
                    if mine is None or mine.watermark is None or stored.watermark > mine.watermark:
                        health = self.live.sources.setdefault(name, SourceHealth(name, stored.kind))
                        self._defer(_watermark_advanced, health, stored.watermark, time.time())
                        self.sources[name] = (
                            stored if mine is None else replace(mine, watermark=stored.watermark)
                        )
                        self._undo(partial(self._restore_source, name, mine))
                        keys |= self._released(name, to_micros(stored.watermark))
                seen = tx.cluster.dirty(5000)
                keys |= set(seen)
                done = self._evaluate(tx, keys, now)
                tx.cluster.clear_dirty(seen)
            self.store.wrote(done)
            self._notify_wake()
            return done

    def _released(self, source: str, watermark_us: int) -> set[ContactKey]:
        popped = self.deadlines.release(source, watermark_us)
        if popped:
            self._undo(partial(self.deadlines.unrelease, source, popped))
        return {key for _at, key in popped}

    # -- deadlines ------------------------------------------------------------------------

    def next_wake(self) -> datetime | None:
        with self.lock:
            at = self.deadlines.next()
            return from_micros(at) if at is not None else None

    def wake(self) -> int:
        """Re-evaluate the contacts whose warning point or deadline has come. If the store
        fails, they stay due (and are judged by the next wake that reaches it). A large
        poll in progress lets it in between two of its chunks."""
        with self._waking:
            self._wakes_waiting += 1
        try:
            return self._wake()
        finally:
            with self._waking:
                self._wakes_waiting -= 1
                self._waking.notify_all()

    def _let_wakes_in(self) -> None:
        """Between two chunks of a poll: a wake waiting for the lock goes first (a lock is
        not fair: released and retaken at once, it would starve the wake)."""
        with self._waking:
            self._waking.wait_for(lambda: self._wakes_waiting == 0, timeout=10)

    def _wake(self) -> int:
        with self.lock:
            now = self.clock.now()
            due = self.deadlines.pop_due(to_micros(now))
            try:
                if due or self._unsaved_polls:
                    with self._transaction() as tx:
                        self._save_unsaved_polls(tx)
                        self._evaluate(tx, set(due), now)
            except Exception as exc:
                self.deadlines.put_back(due)  # still due: never dropped
                if store_unreachable(exc) or len(due) < 2:
                    raise
                self._wake_one_by_one(due, now)
            self._notify_wake()
            return len(due)

    def _wake_one_by_one(self, due: dict[ContactKey, int], now: datetime) -> None:
        """A wake whose batch failed for a reason other than the store: judge each contact
        on its own, so one contact that cannot be evaluated never holds up the others."""
        for key, at in sorted(due.items()):
            try:
                with self._transaction() as tx:
                    self._evaluate(tx, {key}, now)
            except Exception as exc:
                if store_unreachable(exc):
                    raise
                log.error(
                    "contact %s:%s cannot be evaluated (%s); retried in a minute",
                    key[0],
                    key[1],
                    _reason(exc),
                )
                self.deadlines.at(key, max(at, to_micros(now)) + 60_000_000)

    def _schedule(self, key: ContactKey, wake_us: int | None, awaiting_us: int | None) -> None:
        state = self.sources.get(key[0])
        wm = to_micros(state.watermark) if state and state.watermark else None
        self.deadlines.schedule(key, wake_us, awaiting_us, wm)

    def _notify_wake(self) -> None:
        if self.on_wake_change is not None:
            self.on_wake_change(self.next_wake())

    # -- evaluation -----------------------------------------------------------------------

    def watermark(self, source: str, now: datetime) -> datetime:
        state = self.sources.get(source)
        return read_until(state.watermark if state else None, now)

    def _evaluate(
        self,
        tx: Transaction,
        keys: set[ContactKey],
        now: datetime,
        new_events: Sequence[Event] = (),
    ) -> int:
        """Re-evaluate these contacts. `new_events` are the events just stored: a contact
        with no record yet has exactly those, so its events need not be read back."""
        if not keys:
            return 0
        ordered = sorted(keys)
        old_contacts = tx.state.contacts_for(ordered)
        known = [k for k in ordered if k in old_contacts]
        covered = {e.contact_key for e in new_events} - old_contacts.keys()
        events = tx.events.for_contacts([k for k in ordered if k not in covered])
        for e in new_events:
            if e.contact_key in covered:
                events.setdefault(e.contact_key, []).append(e)
        old_targets = tx.state.targets_for(known)
        evaluations = [
            evaluate_contact(
                events[k], self.policy, now, self.watermark(k[0], now), decided_of(old_targets, k)
            )
            for k in ordered
            if k in events
        ]
        labels = Labels.of(old_contacts, old_targets)
        tx.state.delete(known)
        contact_rows, target_rows = evaluation_rows(
            evaluations,
            labels.links,
            labels.contacts,
            labels.targets,
            labels.unmatched,
            labels.repeats_counted,
        )
        tx.state.write(contact_rows, target_rows)
        self._defer(self._queues_seen, queues_of(contact_rows))
        # live aggregates (once committed): each old record's contribution out, the new in
        change = diff(evaluations, old_contacts, old_targets, labels)
        self._defer(change.apply, self.live)
        for changed in change.changed:
            self._defer(self._changed, changed, now)
        for key, wake_us, awaiting_us in change.wakes:
            self._defer(self._schedule, key, wake_us, awaiting_us)
        self._update_repeats(tx, evaluations, old_contacts)
        return len(evaluations)

    def _queues_seen(self, seen: list[tuple[str, str]]) -> None:
        for source, queue in self.queue_labels.learn_all(seen):
            log.warning(
                'source %s: queue "%s" is beyond its %d queue labels: exported under queue="%s" '
                "(config: queue_labels)",
                source,
                queue,
                self.queue_labels.bound(source),
                OTHER_QUEUE,
            )

    def _changed(self, change: TargetChange, now: datetime) -> None:
        ev, t, before = change.evaluation, change.result, change.before
        if (
            t.outcome is Outcome.BREACHED
            and t.decided_at is not None
            and before is not None
            and before.outcome is None
        ):
            # on the real wall clock: from the moment the breach became knowable (its
            # deadline, or the arrival of the watermark that made it judgeable, whichever
            # is later) to now, just after the commit that hands it to the publishers
            health = self.live.sources.get(ev.key[0])
            knowable = self.clock.to_real(t.decided_at).timestamp()
            if (
                health
                and health.watermark_arrived_wall is not None
                and health.previous_watermark is not None
                and health.previous_watermark < t.decided_at
            ):
                knowable = max(knowable, health.watermark_arrived_wall)
            if knowable >= self.started_wall:  # not history read at start-up
                self.live.detection_delay.add(max(time.time() - knowable, 0.0))
        if (
            t.outcome is not None
            and before is not None
            and before.outcome not in (None, t.outcome.value)
        ):
            log.warning(
                "outcome of %s/%s %s changed from %s to %s after a late event",
                ev.key[0],
                ev.key[1],
                t.target.value,
                before.outcome,
                t.outcome.value,
            )
        for listener in self.listeners:
            try:
                listener.target_changed(ev, t, before.state if before else None)
            except Exception:
                log.exception("target listener failed")

    def _update_repeats(
        self,
        tx: Transaction,
        evaluations: Sequence[ContactEvaluation],
        old_contacts: dict[ContactKey, ContactRecord],
    ) -> None:
        for (channel, queue), n in relink(tx, evaluations, old_contacts, self.policy).items():
            self._defer(_count, self.live.repeats, (channel, queue), n)

    # -- read side ------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """A consistent copy of the aggregates, for the metrics collector."""
        live = self.live
        with self.lock:
            return {
                "open_counts": dict(live.open_counts),
                "oldest": live.oldest(),
                "outcomes": dict(live.outcomes),
                "opened": dict(live.opened),
                "repeats": dict(live.repeats),
                "callbacks": dict(live.callbacks),
                "unmatched": dict(live.unmatched),
                "responses": {k: (h.cumulative(), h.total) for k, h in live.responses.items()},
                "ingested": dict(live.ingested),
                "rejected": dict(live.rejected),
                "polls": dict(live.polls),
                "skipped": dict(live.skipped),
                "late": dict(live.late),
                "sources": {k: SourceHealth(**vars(v)) for k, v in live.sources.items()},
                "delay": (live.detection_delay.cumulative(), live.detection_delay.total),
                "series": set(live.series),
                "queue_labels": dict(self.queue_labels.renamed),
                "queues_folded": self.queue_labels.folded(),
                "now": self.clock.now(),
            }


def _count_all(counter: Counter[Any], source: str, counts: dict[str, int]) -> None:
    for reason, n in counts.items():
        counter[(source, reason)] += n


def _count(counter: Counter[Any], key: Any, n: int) -> None:
    counter[key] += n


def _watermark_advanced(health: SourceHealth, watermark: datetime | None, arrived: float) -> None:
    health.previous_watermark = health.watermark
    health.watermark_arrived_wall = arrived  # wall time the poll carrying it was handed over
    health.watermark = watermark


def _differs(first: Event, other: Event) -> str:
    a, b = first.to_dict(), other.to_dict()
    fields = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return (
        f"event {other.event_id[:200]!r} was read before with other content "
        f"(differs in {', '.join(fields)}); the first copy stands"
    )


def _rejected(source: str, e: Event, reason: str, message: str) -> Rejected:
    return Rejected(
        reason,
        f"{source}: event {e.event_id[:200]!r} of conversation {e.conversation_id[:200]!r}: "
        f"{message}",
        json.dumps(e.to_dict()),
        ident=f"event {e.event_id}",  # the payload holds the rest: the same event, once
    )


def _by_contact(events: Sequence[Event]) -> Iterable[list[Event]]:
    """The events grouped by contact, in order of first appearance (a contact goes in one
    chunk: it is evaluated once, on all it has)."""
    by_contact: dict[ContactKey, list[Event]] = {}
    for e in events:
        by_contact.setdefault(e.contact_key, []).append(e)
    return by_contact.values()


def _take(groups: deque[list[Event]], size: int) -> list[Event]:
    """The next chunk: whole contacts, about `size` events (one contact even if larger)."""
    part: list[Event] = []
    while groups and (not part or len(part) + len(groups[0]) <= size):
        part.extend(groups.popleft())
    return part


def _next_chunk(events: int, took: float, smallest: int, largest: int) -> int:
    """The next chunk's size: what fits in CHUNK_SECONDS at the rate the last one ran."""
    if took <= 0:
        return largest
    return max(smallest, min(largest, int(events * CHUNK_SECONDS / took)))


__all__ = ["IngestSummary", "Monitor", "TargetListener", "store_unreachable"]
