"""Live aggregates behind /metrics, kept up to date as targets change.

Counters mirror the store's rows (so they survive restarts); gauges count open targets per
label set. A scrape reads these aggregates only: its cost grows with the number of label
combinations, never with the number of open contacts.
"""

from __future__ import annotations

import bisect
import heapq
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from sys import intern

from sla_monitor.adapters.abc import Transaction
from sla_monitor.adapters.records import SourceState
from sla_monitor.domain.events import ContactKey
from sla_monitor.domain.policy import Policy

DEFAULT_BUCKETS = (
    1,
    2,
    5,
    10,
    15,
    20,
    30,
    45,
    60,
    120,
    300,
    600,
    900,
    1800,
    3600,
    7200,
    14400,
    28800,
    43200,
    86400,
    172800,
    604800,
)

TargetKey = tuple[str, str, str, int]  # source, conversation id, target, seq


def response_buckets(policy: Policy) -> tuple[float, ...]:
    """The response-time histogram's bounds: the defaults and every configured `within`
    (so `le="3600"` answers "within the hour")."""
    return tuple(sorted(set(DEFAULT_BUCKETS) | policy.all_withins()))


@dataclass
class Histogram:
    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)  # per bucket (not cumulative); +Inf last
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def add(self, value: float, n: int = 1, total: float | None = None) -> None:
        """Count `n` observations of `value` (`total`: their exact sum, when `value` is
        only a representative, as for archived response times)."""
        self.counts[bisect.bisect_left(self.bounds, value)] += n
        self.total += value * n if total is None else total
        self.count += n

    def cumulative(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, c in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += c
            out.append(("+Inf" if bound == float("inf") else _fmt(bound), float(running)))
        return out


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(v)


@dataclass(frozen=True, slots=True)
class OpenTarget:
    """One open target's contribution to the gauges (kept small: there may be millions)."""

    channel: str
    queue: str
    priority: str
    target: str
    state: str
    started_us: int

    @staticmethod
    def of(
        channel: str, queue: str, priority: str, target: str, state: str, started_us: int
    ) -> OpenTarget:
        # label strings are shared by all targets of a queue: intern them, not copy them
        return OpenTarget(
            intern(channel), intern(queue), intern(priority), intern(target), intern(state),
            started_us,
        )  # fmt: skip


@dataclass
class SourceHealth:
    name: str
    kind: str
    up: bool = False
    last_success: datetime | None = None
    watermark: datetime | None = None
    last_duration: float | None = None
    previous_watermark: datetime | None = None
    watermark_arrived_wall: float | None = None  # time.time() when that watermark arrived
    consecutive_failures: int = 0
    configured: bool = False  # in the config (a source only in the store reports no health)


class LiveState:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.open: dict[TargetKey, OpenTarget] = {}
        # (channel, queue, priority, target, state) -> open targets
        self.open_counts: Counter[tuple[str, str, str, str, str]] = Counter()
        # per (channel, queue, target): a heap of (started, target) with lazy deletion, and
        # how many open targets it has (to compact the heap before stale entries pile up)
        self._oldest: dict[tuple[str, str, str], list[tuple[int, TargetKey]]] = {}
        self._open_per_labels: Counter[tuple[str, str, str]] = Counter()
        self.outcomes: Counter[tuple[str, ...]] = Counter()
        self.opened: Counter[tuple[str, ...]] = Counter()
        self.repeats: Counter[tuple[str, ...]] = Counter()
        self.callbacks: Counter[tuple[str, ...]] = Counter()  # (channel, queue, state)
        self.unmatched: Counter[tuple[str, ...]] = Counter()
        self.responses: dict[tuple[str, str, str, str], Histogram] = {}  # ch, q, prio, target
        self.ingested: Counter[tuple[str, ...]] = Counter()
        self.rejected: Counter[tuple[str, ...]] = Counter()
        self.polls: Counter[tuple[str, ...]] = Counter()
        self.skipped: Counter[tuple[str, ...]] = Counter()
        self.late: Counter[tuple[str, ...]] = Counter()  # (source,): events older than read
        self.sources: dict[str, SourceHealth] = {}
        self.detection_delay = Histogram(
            (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
        )
        self.series: set[tuple[str, str]] = set()  # (channel, queue) pairs to export zeros for

    def response(
        self,
        channel: str,
        queue: str,
        priority: str,
        target: str,
        value: float,
        n: int = 1,
        total: float | None = None,
    ) -> None:
        key = (channel, queue, priority, target)
        hist = self.responses.get(key)
        if hist is None:
            hist = self.responses[key] = Histogram(self.buckets)
        hist.add(value, n, total)

    def set_open(self, key: TargetKey, target: OpenTarget | None) -> None:
        old = self.open.pop(key, None)
        if old is not None:
            self.open_counts[(old.channel, old.queue, old.priority, old.target, old.state)] -= 1
            self._open_per_labels[(old.channel, old.queue, old.target)] -= 1
        if target is None:
            return
        self.open[key] = target
        t = target
        self.open_counts[(t.channel, t.queue, t.priority, t.target, t.state)] += 1
        labels = (target.channel, target.queue, target.target)
        self._open_per_labels[labels] += 1
        if (
            old is None
            or old.started_us != target.started_us
            or old.channel != target.channel
            or old.queue != target.queue
        ):
            heap = self._oldest.setdefault(labels, [])
            heapq.heappush(heap, (target.started_us, key))
            if len(heap) > 2 * self._open_per_labels[labels] + 64:
                self._compact(labels, heap)

    def _current(self, labels: tuple[str, str, str], started: int, key: TargetKey) -> bool:
        t = self.open.get(key)
        return (
            t is not None and t.started_us == started and (t.channel, t.queue, t.target) == labels
        )

    def _compact(self, labels: tuple[str, str, str], heap: list[tuple[int, TargetKey]]) -> None:
        """Drop the entries of targets that closed or moved: one long-open target must not
        keep every later one's entry (more than half are stale here: amortized O(1))."""
        seen: set[TargetKey] = set()
        kept = []
        for started, key in heap:
            if key not in seen and self._current(labels, started, key):
                seen.add(key)
                kept.append((started, key))
        heapq.heapify(kept)
        heap[:] = kept

    @property
    def oldest_index_entries(self) -> int:
        """Entries behind the oldest-open-target gauges (bounded by the open targets)."""
        return sum(len(h) for h in self._oldest.values())

    def forget_contacts(self) -> None:
        """Drop everything counted from contact state (a replica that does not lead)."""
        self.open.clear()
        self.open_counts.clear()
        self._oldest.clear()
        self._open_per_labels.clear()
        self.outcomes.clear()
        self.opened.clear()
        self.repeats.clear()
        self.callbacks.clear()
        self.unmatched.clear()
        self.responses.clear()

    def oldest(self) -> dict[tuple[str, str, str], int]:
        """Start of the longest-waiting open target per label set (amortized O(1) per scrape)."""
        out = {}
        for labels, heap in self._oldest.items():
            while heap:
                started, key = heap[0]
                if self._current(labels, started, key):
                    out[labels] = started
                    break
                heapq.heappop(heap)  # stale: that target closed or moved
        return out


def resume(
    previous: LiveState, tx: Transaction, sources: dict[str, SourceState]
) -> tuple[LiveState, dict[ContactKey, ContactKey]]:
    """The aggregates as the store says they stand (after a restart, or a commit of unknown
    fate): counters, open targets, source health; detection delays and configured series
    carry over from `previous`. Also the one key object per contact, for the deadlines."""
    live = LiveState(previous.buckets)
    live.detection_delay = previous.detection_delay
    live.series = set(previous.series)
    for name, h in previous.sources.items():  # configured sources keep their health
        live.sources[name] = SourceHealth(**vars(h))
    for name, s in sources.items():
        health = live.sources.setdefault(name, SourceHealth(name, s.kind))
        health.watermark = s.watermark
        health.last_success = s.last_success
    c = tx.counters
    for counter, stored in (
        (live.outcomes, c.outcomes()),
        (live.opened, c.opened()),
        (live.repeats, c.repeats()),
        (live.callbacks, c.callbacks()),
        (live.unmatched, c.unmatched()),
        (live.ingested, c.ingested()),
        (live.rejected, c.rejected()),
        (live.polls, c.polls()),
        (live.skipped, c.skipped()),
        (live.late, c.late()),
    ):
        counter.update(dict(stored))
    for rc in tx.counters.responses(live.buckets):
        live.responses[(rc.channel, rc.queue, rc.priority, rc.target)] = Histogram(
            live.buckets, list(rc.counts), rc.total, sum(rc.counts)
        )
    for ch, q, _p in live.opened:  # queues now only in archives keep their zeros
        live.series.add((ch, q))
    for _src, ch, q in tx.counters.queues_seen():
        live.series.add((ch, q))
    # share one key object per contact between the gauges and the deadline index:
    # with a million open targets, every copied string costs tens of megabytes
    contacts: dict[ContactKey, ContactKey] = {}
    for r in tx.state.open_targets():
        ck = (intern(r.source), r.conversation_id)
        ck = contacts.setdefault(ck, ck)
        live.set_open(
            (ck[0], ck[1], intern(r.target), r.seq),
            OpenTarget.of(r.channel, r.queue, r.priority, r.target, r.state, r.started_us),
        )
    return live, contacts
