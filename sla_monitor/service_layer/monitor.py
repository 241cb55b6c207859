"""The monitor: applies polls to the store, re-evaluates only the contacts they touch, and
wakes exactly at the next warning point or deadline (an ordered index, never a scan).

All state changes happen under one lock; source I/O happens outside it.
"""

from __future__ import annotations

import heapq
import json
import logging
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import Connection

from sla_monitor.adapters.store import NO_PRIORITY, ClusterStore, SourceState, Store
from sla_monitor.config import Config
from sla_monitor.domain.engine import (
    ContactEvaluation,
    Outcome,
    TargetResult,
    TargetState,
    evaluate_contact,
    find_repeats,
)
from sla_monitor.domain.events import ContactKey, Event
from sla_monitor.domain.timeutil import from_micros, iso, to_micros
from sla_monitor.service_layer.clock import Clock
from sla_monitor.service_layer.live import (
    DEFAULT_BUCKETS,
    LiveState,
    OpenTarget,
    SourceHealth,
    TargetKey,
)
from sla_monitor.sources.abc import PollResult, Rejected

log = logging.getLogger(__name__)


class TargetListener(Protocol):
    """Told of every target whose state changed (alerting hooks in here)."""

    def target_changed(
        self, evaluation: ContactEvaluation, result: TargetResult, previous_state: str | None
    ) -> None: ...


@dataclass(frozen=True)
class _Row:
    """A target row's contribution to the live aggregates."""

    channel: str
    queue: str
    priority: str
    target: str
    state: str
    outcome: str | None
    is_open: bool
    started_us: int
    response_seconds: float | None


@dataclass
class IngestSummary:
    received: int = 0
    new: int = 0
    rejected: int = 0
    contacts: int = 0


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
        buckets = tuple(sorted(set(DEFAULT_BUCKETS) | self.policy.all_withins()))
        self.live = LiveState(buckets)
        self.lock = threading.RLock()
        self.sources: dict[str, SourceState] = {}
        self._wake_heap: list[tuple[int, ContactKey]] = []
        self._wake_at: dict[ContactKey, int] = {}
        self._awaiting: dict[str, list[tuple[int, ContactKey]]] = {}
        self.started_at = clock.now()
        self.ready = False
        self.on_wake_change: Callable[[datetime | None], None] | None = None
        # cluster mode (docs/scaling.md): polls only store events and mark their contacts;
        # the leader evaluates. None: one process does everything inline.
        self.cluster: ClusterStore | None = None
        self.replica_id = ""
        self.exports_contacts = True  # the leader's (or the only process's) metrics
        self.owned_sources: set[str] | None = None  # sources whose metrics this replica exports

    # -- start-up -------------------------------------------------------------------------

    def load(self) -> None:
        """Resume from the store: counters, open targets, deadlines. No recompute."""
        live = self.live
        with self.lock, self.store.begin() as conn:
            self.sources = self.store.load_sources(conn)
            for name, s in self.sources.items():
                live.sources.setdefault(name, SourceHealth(name, s.kind))
                live.sources[name].watermark = s.watermark
                live.sources[name].last_success = s.last_success
            for key, n in self.store.outcome_counts(conn):
                live.outcomes[key] = n
            for key, n in self.store.opened_counts(conn):
                live.opened[key] = n
            for key, n in self.store.repeat_counts(conn):
                live.repeats[key] = n
            for key, n in self.store.ingested_counts(conn):
                live.ingested[key] = n
            for key, n in self.store.rejected_counts(conn):
                live.rejected[key] = n
            for key, n in self.store.poll_counts(conn):
                live.polls[key] = n
            for ch, q, tg, v in self.store.response_times(conn):
                live.response(ch, q, tg, v)
            for ch, q, tg, v, n, total in self.store.carried_responses(conn):
                live.response(ch, q, tg, v, n, total)
            for ch, q, _p in live.opened:  # queues now only in archives keep their zeros
                live.series.add((ch, q))
            for _src, ch, q in self.store.queues_seen(conn):
                live.series.add((ch, q))
            # share one key object per contact between the gauges and the deadline index:
            # with a million open targets, every copied string costs tens of megabytes
            contacts: dict[ContactKey, ContactKey] = {}
            for r in self.store.open_targets(conn):
                ck = (sys.intern(r.source), r.conversation_id)
                ck = contacts.setdefault(ck, ck)
                live.set_open(
                    (ck[0], ck[1], sys.intern(r.target), r.seq),
                    OpenTarget.of(r.channel, r.queue, r.target, r.state, r.started_us),
                )
            for src, conv, wake_us, awaiting_us in self.store.pending_wakes(conn):
                ck = (sys.intern(src), conv)
                self._schedule(contacts.get(ck, ck), wake_us, awaiting_us)
            del contacts
        self.ready = True

    def declare(self, source: str, kind: str, channel: str | None, queues: Iterable[str]) -> None:
        """A configured source: export zero series for its queues before it has any traffic."""
        with self.lock:
            self.live.sources.setdefault(source, SourceHealth(source, kind))
            if source not in self.sources:
                self.sources[source] = SourceState(source, kind)
            if channel:
                for q in queues:
                    self.live.series.add((channel, q))

    # -- polls ----------------------------------------------------------------------------

    def apply_poll(
        self, source: str, kind: str, result: PollResult, duration: float
    ) -> IngestSummary:
        """Store a successful poll (events, rejects, cursor, watermark: one transaction) and
        re-evaluate what it touched."""
        with self.lock:
            now = self.clock.now()
            state = replace(self.sources.get(source) or SourceState(source, kind))
            state.cursor = result.cursor
            state.last_success = now
            if result.watermark is not None and (
                state.watermark is None or result.watermark > state.watermark
            ):
                state.watermark = result.watermark
            summary = self._ingest(source, result.events, result.rejected, state, now, "ok")
            health = self.live.sources.setdefault(source, SourceHealth(source, kind))
            health.up, health.last_success, health.last_duration = True, now, duration
            health.last_error, health.consecutive_failures = None, 0
            return summary

    def poll_failed(
        self, source: str, kind: str, error: str, duration: float, result: str = "error"
    ) -> None:
        with self.lock:
            with self.store.begin() as conn:
                self.store.count_poll(conn, source, result)
            self.live.polls[(source, result)] += 1
            health = self.live.sources.setdefault(source, SourceHealth(source, kind))
            health.up, health.last_duration, health.last_error = False, duration, error
            health.consecutive_failures += 1

    def ingest(
        self,
        source: str,
        events: Sequence[Event],
        rejected: Sequence[Rejected] = (),
        watermark: datetime | None = None,
    ) -> IngestSummary:
        """One-shot import (the `ingest` command): the same path as a poll."""
        with self.lock:
            state = replace(self.sources.get(source) or SourceState(source, "ingest"))
            if watermark is not None and (state.watermark is None or watermark > state.watermark):
                state.watermark = watermark
            return self._ingest(source, events, rejected, state, self.clock.now(), None)

    def _ingest(
        self,
        source: str,
        events: Sequence[Event],
        rejected: Sequence[Rejected],
        state: SourceState,
        now: datetime,
        poll_result: str | None,
    ) -> IngestSummary:
        live = self.live
        now_us = to_micros(now)
        health = live.sources.setdefault(source, SourceHealth(source, state.kind))
        advanced = state.watermark is not None and (
            health.watermark is None or state.watermark > health.watermark
        )
        previous = self.sources.get(source)
        previous_health = (
            health.watermark,
            health.previous_watermark,
            health.watermark_advanced_at,
        )
        self.sources[source] = state  # evaluation below reads the new watermark
        if advanced:  # breaches this poll makes knowable are knowable from now
            health.previous_watermark = health.watermark
            health.watermark_advanced_at = now
            health.watermark = state.watermark
        try:
            with self.store.begin() as conn:
                events, archived = self._set_aside_archived(conn, events)
                if archived:
                    rejected = [*rejected, *archived]
                new = self.store.add_events(conn, events, now_us)
                self.store.add_rejected(conn, source, rejected, now_us)
                self.store.save_source(conn, state)
                if poll_result:
                    self.store.count_poll(conn, source, poll_result)
                keys = {e.contact_key for e in new}
                if advanced:
                    assert state.watermark is not None
                    keys |= self._released(source, to_micros(state.watermark))
                if self.cluster is not None and poll_result:
                    # fenced: a replica that lost the source's lease stores nothing
                    self.cluster.fence(
                        conn, f"source:{source}", self.replica_id, to_micros(datetime.now(UTC))
                    )
                    self.cluster.mark_dirty(conn, keys)
                    evaluated = 0
                else:
                    evaluated = self._evaluate(conn, keys, now, new)
        except Exception:
            # nothing was stored: keep the old cursor so the next poll reads the same items
            if previous is not None:
                self.sources[source] = previous
            else:
                del self.sources[source]
            health.watermark, health.previous_watermark, health.watermark_advanced_at = (
                previous_health
            )
            raise
        self.store.wrote(len(new))
        for e in new:
            live.ingested[(e.source, e.kind.value)] += 1
        for r in rejected:
            live.rejected[(source, r.reason)] += 1
            log.warning("rejected event from %s (%s): %s", source, r.reason, r.detail)
        if poll_result:
            live.polls[(source, poll_result)] += 1
        self._notify_wake()
        return IngestSummary(len(events), len(new), len(rejected), evaluated)

    def _set_aside_archived(
        self, conn: Connection, events: Sequence[Event]
    ) -> tuple[Sequence[Event], list[Rejected]]:
        """Events older than their source's archive horizon whose contact is not stored: a
        re-delivered event of an archived contact (storing it would count it again and judge
        the contact on part of its history) or history that arrived after the archive."""
        horizons = self.store.archive_horizons(conn)
        if not horizons:
            return events, []
        old = [
            e
            for e in events
            if e.source in horizons and to_micros(e.occurred_at) < horizons[e.source]
        ]
        if not old:
            return events, []
        stored = self.store.stored_contacts(conn, {e.contact_key for e in old})
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
            live = self.live
            live.open.clear()
            live.open_counts.clear()
            live._oldest.clear()
            live.outcomes.clear()
            live.opened.clear()
            live.repeats.clear()
            live.responses.clear()
            self._wake_heap.clear()
            self._wake_at.clear()
            self._awaiting.clear()

    def adopt_source(self, source: str, kind: str) -> None:
        """This replica now polls `source`: resume from its stored cursor and counters."""
        assert self.cluster is not None
        with self.lock, self.store.begin() as conn:
            state = self.store.load_sources(conn).get(source) or SourceState(source, kind)
            counts = self.cluster.source_counts(conn, source)
        self.sources[source] = state
        live = self.live
        for counter, name in (
            (live.ingested, "ingested"),
            (live.rejected, "rejected"),
            (live.polls, "polls"),
        ):
            for key in [k for k in counter if k[0] == source]:
                del counter[key]
            for key, n in counts[name]:
                counter[key] += n  # stored rows plus what archived rows carried
        health = live.sources.setdefault(source, SourceHealth(source, kind))
        health.watermark, health.last_success = state.watermark, state.last_success

    def sync(self) -> int:
        """The leader's loop: evaluate contacts other replicas stored events for, and those
        a source's advanced watermark makes judgeable (one fenced transaction)."""
        assert self.cluster is not None
        with self.lock:
            now = self.clock.now()
            with self.store.begin() as conn:
                self.cluster.fence(conn, "leader", self.replica_id, to_micros(datetime.now(UTC)))
                keys: set[ContactKey] = set()
                for name, stored in self.store.load_sources(conn).items():
                    mine = self.sources.get(name)
                    if stored.watermark is None:
                        continue
                    if mine is None or mine.watermark is None or stored.watermark > mine.watermark:
                        health = self.live.sources.setdefault(name, SourceHealth(name, stored.kind))
                        health.previous_watermark = health.watermark
                        health.watermark_advanced_at = now
                        health.watermark = stored.watermark
                        if mine is None:
                            self.sources[name] = stored
                        else:
                            mine.watermark = stored.watermark
                        keys |= self._released(name, to_micros(stored.watermark))
                seen = self.cluster.dirty(conn, 5000)
                keys |= set(seen)
                done = self._evaluate(conn, keys, now)
                self.cluster.clear_dirty(conn, seen)
            self.store.wrote(done)
            self._notify_wake()
            return done

    def _released(self, source: str, watermark_us: int) -> set[ContactKey]:
        heap = self._awaiting.get(source, [])
        out = set()
        while heap and heap[0][0] <= watermark_us:
            out.add(heapq.heappop(heap)[1])
        return out

    # -- deadlines ------------------------------------------------------------------------

    def next_wake(self) -> datetime | None:
        with self.lock:
            heap = self._wake_heap
            while heap and self._wake_at.get(heap[0][1]) != heap[0][0]:
                heapq.heappop(heap)  # superseded entry
            return from_micros(heap[0][0]) if heap else None

    def wake(self) -> int:
        """Re-evaluate the contacts whose warning point or deadline has come."""
        with self.lock:
            now = self.clock.now()
            now_us = to_micros(now)
            due: set[ContactKey] = set()
            heap = self._wake_heap
            while heap and heap[0][0] <= now_us:
                at, key = heapq.heappop(heap)
                if self._wake_at.get(key) == at:
                    del self._wake_at[key]
                    due.add(key)
            if due:
                with self.store.begin() as conn:
                    self._evaluate(conn, due, now)
            self._notify_wake()
            return len(due)

    def _schedule(self, key: ContactKey, wake_us: int | None, awaiting_us: int | None) -> None:
        if wake_us is None:
            self._wake_at.pop(key, None)
        elif self._wake_at.get(key) != wake_us:
            self._wake_at[key] = wake_us
            heapq.heappush(self._wake_heap, (wake_us, key))
        if awaiting_us is not None:
            state = self.sources.get(key[0])
            wm = to_micros(state.watermark) if state and state.watermark else None
            heapq.heappush(self._awaiting.setdefault(key[0], []), (awaiting_us, key))
            if wm is not None and wm >= awaiting_us:
                # watermark already past: evaluate at once
                self._wake_at[key] = awaiting_us
                heapq.heappush(self._wake_heap, (awaiting_us, key))

    def _notify_wake(self) -> None:
        if self.on_wake_change is not None:
            self.on_wake_change(self.next_wake())

    # -- evaluation -----------------------------------------------------------------------

    def watermark(self, source: str, now: datetime) -> datetime:
        state = self.sources.get(source)
        if state is None or state.watermark is None:
            return datetime.min.replace(tzinfo=now.tzinfo)  # never read: nothing is knowable
        return state.watermark

    def _evaluate(
        self,
        conn: Connection,
        keys: set[ContactKey],
        now: datetime,
        new_events: Sequence[Event] = (),
    ) -> int:
        """Re-evaluate these contacts. `new_events` are the events just stored: a contact
        with no row yet has exactly those, so its events need not be read back."""
        if not keys:
            return 0
        ordered = sorted(keys)
        store, live = self.store, self.live
        old_contacts = store.contacts_for(conn, ordered)
        known = [k for k in ordered if k in old_contacts]
        covered = {e.contact_key for e in new_events} - old_contacts.keys()
        events = store.events_for(conn, [k for k in ordered if k not in covered])
        for e in new_events:
            if e.contact_key in covered:
                events.setdefault(e.contact_key, []).append(e)
        old_targets = store.targets_for(conn, known)
        evaluations = [
            evaluate_contact(events[k], self.policy, now, self.watermark(k[0], now))
            for k in ordered
            if k in events
        ]
        contact_labels = {
            k: (r.channel, r.queue, r.priority)
            for k, r in old_contacts.items()
            if r.opened_us is not None
        }
        target_labels = {
            (k[0], k[1], r.target, r.seq): (r.channel, r.queue, r.priority)
            for k, rows in old_targets.items()
            for r in rows
            if r.outcome is not None
        }
        links = {
            k: (r.repeat_of_source, r.repeat_of_conversation)
            for k, r in old_contacts.items()
            if r.repeat_of_source is not None
        }
        store.save_evaluations(
            conn,
            evaluations,
            links,
            replace=known,
            contact_labels=contact_labels,
            target_labels=target_labels,
        )
        # live aggregates: remove each old row's contribution, add the new one's
        for ev in evaluations:
            key = ev.key
            old_c = old_contacts.get(key)
            labels = contact_labels.get(key)
            if old_c is not None and old_c.opened_us is not None:
                live.opened[(old_c.channel, old_c.queue, old_c.priority)] -= 1
            if ev.opened_at is not None:
                a = ev.attributes
                ch, q, p = labels or (a.channel.value, a.queue, a.priority or NO_PRIORITY)
                live.opened[(ch, q, p)] += 1
            live.series.add((ev.attributes.channel.value, ev.attributes.queue))
            previous: dict[tuple[str, int], _Row] = {}
            for r in old_targets.get(key, []):
                row = _Row(
                    r.channel,
                    r.queue,
                    r.priority,
                    r.target,
                    r.state,
                    r.outcome,
                    r.is_open,
                    r.started_us,
                    r.response_seconds,
                )
                previous[(r.target, r.seq)] = row
                self._apply(key, r.seq, row, -1)
            for t in ev.targets:
                a = ev.attributes
                tk = (key[0], key[1], t.target.value, t.seq)
                ch, q, p = target_labels.get(tk) or (
                    a.channel.value,
                    a.queue,
                    a.priority or NO_PRIORITY,
                )
                row = _Row(
                    ch,
                    q,
                    p,
                    t.target.value,
                    t.state.value,
                    t.outcome.value if t.outcome else None,
                    t.is_open,
                    to_micros(t.started_at),
                    t.response_seconds,
                )
                self._apply(key, t.seq, row, +1)
                before = previous.pop((t.target.value, t.seq), None)
                if before is None or (before.state, before.is_open) != (row.state, row.is_open):
                    self._changed(ev, t, before, now)
            for (tname, seq), _row in previous.items():  # targets that no longer exist
                live.set_open((key[0], key[1], tname, seq), None)
            self._schedule(
                key,
                to_micros(ev.next_wake) if ev.next_wake else None,
                to_micros(ev.awaiting_watermark) if ev.awaiting_watermark else None,
            )
        self._update_repeats(conn, evaluations, old_contacts)
        return len(evaluations)

    def _apply(self, key: ContactKey, seq: int, row: _Row, sign: int) -> None:
        live = self.live
        if row.outcome is not None:
            live.outcomes[(row.channel, row.queue, row.priority, row.target, row.outcome)] += sign
        if row.response_seconds is not None:
            live.response(row.channel, row.queue, row.target, row.response_seconds, sign)
        tk: TargetKey = (key[0], key[1], row.target, seq)
        if sign > 0:
            live.set_open(
                tk,
                OpenTarget.of(row.channel, row.queue, row.target, row.state, row.started_us)
                if row.is_open
                else None,
            )

    def _changed(
        self, ev: ContactEvaluation, t: TargetResult, before: _Row | None, now: datetime
    ) -> None:
        if (
            t.outcome is Outcome.BREACHED
            and t.decided_at is not None
            and before is not None
            and before.outcome is None
        ):
            health = self.live.sources.get(ev.key[0])
            knowable = t.decided_at
            if (
                health
                and health.watermark_advanced_at
                and health.previous_watermark is not None
                and health.previous_watermark < t.decided_at
            ):
                knowable = max(knowable, health.watermark_advanced_at)
            if knowable >= self.started_at:
                delay = (now - knowable).total_seconds() / self.clock.speed
                self.live.detection_delay.add(max(delay, 0.0))
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
        conn: Connection,
        evaluations: Sequence[ContactEvaluation],
        old_contacts: dict[ContactKey, Any],
    ) -> None:
        """Re-link repeat contacts around the contacts whose opening or first personal
        response changed (only those can change a link), within the repeat window."""
        window_us = int(self.policy.repeat_window.total_seconds() * 1_000_000)
        customers: set[str] = set()
        lo = hi = None
        for ev in evaluations:
            a = ev.attributes
            if not a.customer_id or ev.opened_at is None:
                continue
            old = old_contacts.get(ev.key)
            opened, response = (
                to_micros(ev.opened_at),
                (to_micros(ev.first_response_at) if ev.first_response_at else None),
            )
            if old is not None and (old.customer_id, old.opened_us, old.first_response_us) == (
                a.customer_id,
                opened,
                response,
            ):
                continue
            customers.add(a.customer_id)
            lo = opened if lo is None else min(lo, opened)
            hi = opened if hi is None else max(hi, opened)
        if not customers or lo is None or hi is None:
            return
        rows = self.store.summaries_near(conn, customers, lo - 2 * window_us, hi + 2 * window_us)
        current = {s.key: link for s, link in rows if link is not None}
        wanted = find_repeats([s for s, _ in rows], self.policy.repeat_window)
        inside = {
            s.key
            for s, _ in rows
            if s.opened_at is not None
            and lo - window_us <= to_micros(s.opened_at) <= hi + window_us
        }
        changed = {k: wanted.get(k) for k in inside if current.get(k) != wanted.get(k)}
        if not changed:
            return
        self.store.set_repeats(conn, changed)
        labels = self.store.contacts_for(conn, list(changed))
        for key, link in changed.items():
            r = labels[key]
            self.live.repeats[(r.channel, r.queue)] += 1 if link else -1

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
                "responses": {k: (h.cumulative(), h.total) for k, h in live.responses.items()},
                "ingested": dict(live.ingested),
                "rejected": dict(live.rejected),
                "polls": dict(live.polls),
                "sources": {k: SourceHealth(**vars(v)) for k, v in live.sources.items()},
                "delay": (live.detection_delay.cumulative(), live.detection_delay.total),
                "series": set(live.series),
                "now": self.clock.now(),
            }


__all__ = ["IngestSummary", "Monitor", "TargetListener", "TargetState"]
