"""A prometheus-client custom collector: every PRODUCT.md metric, read at scrape time from
the monitor's live aggregates (no stale series for finished contacts, no per-contact
labels, and a scrape cost that does not grow with the number of open contacts)."""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, TypeVar, cast

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from sla_monitor import __version__
from sla_monitor.adapters.records import NO_PRIORITY
from sla_monitor.domain.engine import OPEN_STATES
from sla_monitor.domain.events import Channel
from sla_monitor.domain.timeutil import from_micros
from sla_monitor.service_layer.monitor import Monitor

OPEN_STATE_NAMES = [s.value for s in OPEN_STATES]


K = TypeVar("K", bound=tuple[str, ...])
V = TypeVar("V")
Histo = tuple[list[tuple[str, float]], float]


def _fold(rows: dict[K, V], renamed: dict[str, str], add: Callable[[V, V], V]) -> dict[K, V]:
    """Series keyed (channel, queue, ...) with renamed queues merged into one."""
    out: dict[Any, V] = {}
    for key, value in rows.items():
        if (label := renamed.get(key[1])) is not None:
            key = cast(K, (key[0], label, *key[2:]))
        out[key] = add(out[key], value) if key in out else value
    return out


def _add_histograms(a: Histo, b: Histo) -> Histo:
    buckets = [(le, n + m) for (le, n), (_le, m) in zip(a[0], b[0], strict=True)]
    return buckets, a[1] + b[1]


class MonitorCollector(Collector):
    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def _real(self, at: datetime) -> float:
        """An instant as a Unix timestamp on the wall clock Prometheus compares it with
        (`time() - x`): the demo's faster clock is mapped back, so no wait reads negative."""
        return self.monitor.clock.to_real(at).timestamp()

    def collect(self) -> Iterator[Metric]:
        snap = self.monitor.snapshot()
        owned = self.monitor.owned_sources
        if owned is not None:  # cluster mode: only the sources this replica polls
            snap["sources"] = {k: v for k, v in snap["sources"].items() if k in owned}
            for key in ("polls", "ingested", "rejected", "skipped", "late"):
                snap[key] = {k: v for k, v in snap[key].items() if k[0] in owned}
        if self.monitor.exports_contacts:
            yield from self._contacts(snap)
        yield from self._sources(snap)
        info = GaugeMetricFamily("sla_build_info", "Build information.", labels=["version"])
        info.add_metric([__version__], 1.0)
        yield info

    def _contacts(self, snap: dict[str, Any]) -> Iterator[Metric]:
        policy = self.monitor.policy
        renamed: dict[str, str] = snap["queue_labels"]
        if renamed:  # queues beyond their source's bound: one series under queue="other"
            for name in ("opened", "outcomes", "open_counts", "unmatched", "repeats", "callbacks"):
                snap[name] = _fold(snap[name], renamed, operator.add)
            snap["responses"] = _fold(snap["responses"], renamed, _add_histograms)
            snap["oldest"] = _fold(snap["oldest"], renamed, min)
            snap["series"] = {(ch, renamed.get(q, q)) for ch, q in snap["series"]}

        opened = CounterMetricFamily(
            "sla_contacts_opened",
            "Contacts opened by customers.",
            labels=["channel", "queue", "priority"],
        )
        for (ch, q, p), n in sorted(snap["opened"].items()):
            opened.add_metric([ch, q, p], n)
        yield opened

        outcomes = CounterMetricFamily(
            "sla_target_outcomes",
            "Targets that reached an outcome.",
            labels=["channel", "queue", "priority", "target", "outcome"],
        )
        for (ch, q, p, t, o), n in sorted(snap["outcomes"].items()):
            outcomes.add_metric([ch, q, p, t, o], n)
        yield outcomes

        response = HistogramMetricFamily(
            "sla_response_seconds",
            "Time to fulfilment on the target's clock, pauses excluded; a bucket bound sits "
            "at every configured `within`.",
            labels=["channel", "queue", "priority", "target"],
        )
        for (ch, q, p, t), (buckets, total) in sorted(snap["responses"].items()):
            response.add_metric([ch, q, p, t], buckets, total)
        yield response

        open_targets = GaugeMetricFamily(
            "sla_open_targets",
            "Open targets by state (0 for every configured combination, for every priority "
            "seen in the queue).",
            labels=["channel", "queue", "priority", "target", "state"],
        )
        counts = snap["open_counts"]
        keys = set(k for k, v in counts.items() if v)
        priorities: dict[tuple[str, str], set[str]] = {}
        for ch, q, p in snap["opened"]:  # every priority a queue's contacts have had
            priorities.setdefault((ch, q), set()).add(p)
        for ch, q in snap["series"]:
            for t in policy.targets_for_channel(Channel(ch)):
                for st in OPEN_STATE_NAMES:
                    for p in priorities.get((ch, q)) or {NO_PRIORITY}:
                        keys.add((ch, q, p, t.value, st))
        for key in sorted(keys):
            open_targets.add_metric(list(key), counts.get(key, 0))
        yield open_targets

        oldest = GaugeMetricFamily(
            "sla_oldest_open_target_start_timestamp_seconds",
            "When the longest-waiting open target started (absent when none is open).",
            labels=["channel", "queue", "target"],
        )
        for (ch, q, t), started_us in sorted(snap["oldest"].items()):
            oldest.add_metric([ch, q, t], self._real(from_micros(started_us)))
        yield oldest

        unmatched = CounterMetricFamily(
            "sla_contacts_unmatched",
            "Contacts opened that no policy rule matched: they have no targets at all.",
            labels=["channel", "queue"],
        )
        for (ch, q), n in sorted(snap["unmatched"].items()):
            unmatched.add_metric([ch, q], n)
        yield unmatched

        repeats = CounterMetricFamily(
            "sla_repeat_contacts",
            "Contacts opened while an earlier one of the same customer "
            "had no personal response yet.",
            labels=["channel", "queue"],
        )
        for (ch, q), n in sorted(snap["repeats"].items()):
            repeats.add_metric([ch, q], n)
        yield repeats

        callbacks = CounterMetricFamily(
            "sla_callbacks",
            "Callers who asked to be called back (state=requested), and those the team got "
            "back to (state=handled).",
            labels=["channel", "queue", "state"],
        )
        for (ch, q, st), n in sorted(snap["callbacks"].items()):
            callbacks.add_metric([ch, q, st], n)
        yield callbacks

        folded = GaugeMetricFamily(
            "sla_source_queues_folded",
            "Queues of this source beyond its bound on queue label values (config "
            'queue_labels), exported under queue="other".',
            labels=["source"],
        )
        for name, n in sorted(snap["queues_folded"].items()):
            folded.add_metric([name], n)
        yield folded

        delay = HistogramMetricFamily(
            "sla_breach_detection_delay_seconds",
            "From the moment a breach was knowable to the moment the monitor published it.",
        )
        buckets, total = snap["delay"]
        delay.add_metric([], buckets, total)
        yield delay

    def _sources(self, snap: dict[str, Any]) -> Iterator[Metric]:
        up = GaugeMetricFamily("sla_source_up", "1 if the last poll succeeded.", labels=["source"])
        last = GaugeMetricFamily(
            "sla_source_last_success_timestamp_seconds",
            "When the last poll succeeded.",
            labels=["source"],
        )
        watermark = GaugeMetricFamily(
            "sla_source_watermark_timestamp_seconds",
            "Up to when the source has been read completely (its lag: time() minus this).",
            labels=["source"],
        )
        duration = GaugeMetricFamily(
            "sla_source_poll_duration_seconds", "Duration of the last poll.", labels=["source"]
        )
        for name, h in sorted(snap["sources"].items()):
            if not h.configured:  # removed from the config, or a one-off `ingest`: no poller
                continue
            up.add_metric([name], 1.0 if h.up else 0.0)
            if h.last_success is not None:
                last.add_metric([name], self._real(h.last_success))
            if h.watermark is not None:
                watermark.add_metric([name], self._real(h.watermark))
            if h.last_duration is not None:
                duration.add_metric([name], h.last_duration)
        yield from (up, last, watermark, duration)

        polls = CounterMetricFamily(
            "sla_source_polls", "Polls by result.", labels=["source", "result"]
        )
        for (s, r), n in sorted(snap["polls"].items()):
            polls.add_metric([s, r], n)
        yield polls

        ingested = CounterMetricFamily(
            "sla_events_ingested",
            "New events stored (duplicates excluded).",
            labels=["source", "kind"],
        )
        for (s, k), n in sorted(snap["ingested"].items()):
            ingested.add_metric([s, k], n)
        yield ingested

        rejected = CounterMetricFamily(
            "sla_events_rejected", "Items set aside as malformed.", labels=["source", "reason"]
        )
        for (s, r), n in sorted(snap["rejected"].items()):
            rejected.add_metric([s, r], n)
        yield rejected

        skipped = CounterMetricFamily(
            "sla_events_skipped",
            "Items read and left out on purpose: automatic mail from outside the team "
            "(bounces, out-of-office replies, receipts, bulk), and the team's bounced replies.",
            labels=["source", "reason"],
        )
        for (s, r), n in sorted(snap["skipped"].items()):
            skipped.add_metric([s, r], n)
        yield skipped

        late = CounterMetricFamily(
            "sla_late_events",
            "Events a source delivered older than its own watermark (read after it said it "
            "was complete up to then). Stored, but outcomes already decided stand.",
            labels=["source"],
        )
        for (s,), n in sorted(snap["late"].items()):
            late.add_metric([s], n)
        yield late
