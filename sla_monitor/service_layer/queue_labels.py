"""A bound on the values of the `queue` label. Queue names come from source data (helpdesk
groups, inboxes, call queues): left unbounded, one source can create thousands of series.
Per source, the configured `queues` and `queue_labels.allow` always keep their own label;
other queues do in the order the source first had them (stored: `queues_seen`), up to
`queue_labels.max`; the rest are exported under queue="other" and counted per source.
Stored records and `report`/`explain` keep the real queue: only the exposition folds."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from sla_monitor.config import Config

OTHER_QUEUE = "other"
DEFAULT_MAX_QUEUES = 100  # per source, when neither an allow-list nor a maximum is given


class QueueLabels:
    def __init__(self, config: Config) -> None:
        self._always: dict[str, frozenset[str]] = {}
        self._max: dict[str, int] = {}
        for s in config.settings.sources:
            always = frozenset(s.queues) | frozenset(s.queue_labels.allow or ())
            self._always[s.name] = always
            if s.queue_labels.max is not None:
                self._max[s.name] = s.queue_labels.max
            elif s.queue_labels.allow is not None:
                self._max[s.name] = len(always)  # an allow-list alone: only those
        self._kept: dict[str, set[str]] = {}
        self._folded: dict[str, set[str]] = {}
        self._keepers: Counter[str] = Counter()  # queue -> sources keeping its label
        self.renamed: dict[str, str] = {}  # queue -> the label it is exported under

    def learn(self, source: str, queue: str) -> bool:
        """A queue `source` has had (in the order first seen); True if it is newly folded."""
        kept = self._kept.setdefault(source, set())
        folded = self._folded.setdefault(source, set())
        if queue in kept or queue in folded:
            return False
        always = self._always.get(source, frozenset())
        room = self._max.get(source, DEFAULT_MAX_QUEUES) - len(kept | always)
        if queue in always or room > 0:
            kept.add(queue)
            self._keepers[queue] += 1
            self.renamed.pop(queue, None)
            return False
        folded.add(queue)
        if not self._keepers[queue]:  # a queue kept by another source keeps its label
            self.renamed[queue] = OTHER_QUEUE
        return True

    def learn_all(self, seen: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """Learn (source, queue) pairs in order; the ones newly folded."""
        return [(s, q) for s, q in seen if self.learn(s, q)]

    def bound(self, source: str) -> int:
        return self._max.get(source, DEFAULT_MAX_QUEUES)

    def folded(self) -> dict[str, int]:
        """Per source, how many of its queues are exported under queue="other"."""
        return {s: len(self._folded.get(s, ())) for s in self._always.keys() | self._folded.keys()}
