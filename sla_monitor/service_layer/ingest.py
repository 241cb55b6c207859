"""`ingest`: a one-shot import of events, through the same path as a poll.

Events are stored in batches per source; rejected lines are set aside under the source
they name. The watermark applies only once the whole input is in (`advance`): every source
named in it has then been read completely up to that instant, so deadlines before it can
be judged.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from sla_monitor.domain.events import Event, Rejected
from sla_monitor.service_layer.monitor import Monitor

BATCH = 20_000  # items per store transaction


@dataclass
class ImportSummary:
    events: int = 0  # events read
    new: int = 0  # of which stored for the first time
    rejected: int = 0  # items set aside while reading (before the store saw them)
    reasons: Counter[str] = field(default_factory=Counter)  # everything set aside, by reason
    sources: set[str] = field(default_factory=set)

    @property
    def set_aside(self) -> int:
        return sum(self.reasons.values())


def import_events(
    monitor: Monitor,
    items: Iterable[Event | Rejected],
    default_source: str,
    on_rejected: Callable[[Rejected], None] | None = None,
    progress: Callable[[ImportSummary, int], None] | None = None,
) -> ImportSummary:
    """Store these events; set aside the rejected items (counted under the source they
    name, else `default_source`). `progress(summary, items read)` after each batch."""
    summary = ImportSummary()
    events: dict[str, list[Event]] = {}
    rejected: dict[str, list[Rejected]] = {}

    def flush() -> None:
        for source in sorted(set(events) | set(rejected)):
            summary.sources.add(source)
            stored = monitor.ingest(source, events.get(source, []), rejected.get(source, []))
            summary.new += stored.new
            summary.reasons.update(stored.reasons)
        events.clear()
        rejected.clear()

    read = 0
    for read, item in enumerate(items, 1):
        if isinstance(item, Event):
            events.setdefault(item.source, []).append(item)
            summary.events += 1
        else:
            rejected.setdefault(item.source or default_source, []).append(item)
            summary.rejected += 1
            if on_rejected is not None:
                on_rejected(item)
        if read % BATCH == 0:
            flush()
            if progress is not None:
                progress(summary, read)
    flush()
    return summary


def advance(monitor: Monitor, sources: Iterable[str], watermark: datetime) -> None:
    """These sources have been read completely up to `watermark`."""
    for source in sorted(sources):
        monitor.ingest(source, [], [], watermark)
