"""The deadline index: which contact is due to be judged next, without scanning any.

Two kinds of wait: a contact due at an instant (its next warning point or deadline), and a
contact waiting for its source's watermark to pass an instant (a deadline it cannot judge
until the source vouches it has read past it). Both are heaps with lazy deletion: a
superseded entry stays in the heap and is skipped when it surfaces.
"""

from __future__ import annotations

import heapq

from sla_monitor.domain.events import ContactKey

Entry = tuple[int, ContactKey]  # (µs since the epoch, contact)


class DeadlineIndex:
    def __init__(self) -> None:
        self._heap: list[Entry] = []
        self._due_at: dict[ContactKey, int] = {}  # the one live entry per contact
        self._awaiting: dict[str, list[Entry]] = {}  # per source: watermark waits

    def __len__(self) -> int:
        return len(self._due_at)

    def schedule(
        self,
        key: ContactKey,
        wake_us: int | None,
        awaiting_us: int | None = None,
        watermark_us: int | None = None,
    ) -> None:
        """Set when `key` is next due (None: not at all), and what watermark it awaits.
        `watermark_us`: where its source has been read to (a wait it has already passed
        makes the contact due at once)."""
        if wake_us is None:
            self._due_at.pop(key, None)
        elif self._due_at.get(key) != wake_us:
            self.at(key, wake_us)
        if awaiting_us is not None:
            heapq.heappush(self._awaiting.setdefault(key[0], []), (awaiting_us, key))
            if watermark_us is not None and watermark_us > awaiting_us:
                self.at(key, awaiting_us)

    def at(self, key: ContactKey, at_us: int) -> None:
        """Make `key` due at `at_us` (replacing when it was due)."""
        self._due_at[key] = at_us
        heapq.heappush(self._heap, (at_us, key))

    def next(self) -> int | None:
        """The earliest instant a contact is due, if any."""
        heap = self._heap
        while heap and self._due_at.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)  # superseded entry
        return heap[0][0] if heap else None

    def pop_due(self, now_us: int) -> dict[ContactKey, int]:
        """Take out every contact due at or before `now_us` (with when it was due)."""
        due: dict[ContactKey, int] = {}
        heap = self._heap
        while heap and heap[0][0] <= now_us:
            at, key = heapq.heappop(heap)
            if self._due_at.get(key) == at:
                del self._due_at[key]
                due[key] = at
        return due

    def put_back(self, due: dict[ContactKey, int]) -> None:
        """Undo `pop_due` (the store did not take the evaluation): still due, never dropped;
        a contact rescheduled meanwhile keeps its new time."""
        for key, at in due.items():
            if key not in self._due_at:
                self.at(key, at)

    def release(self, source: str, watermark_us: int) -> list[Entry]:
        """Take out the contacts waiting for `source` to be read past an instant before
        `watermark_us` (strictly: a watermark at the deadline does not vouch for it)."""
        heap = self._awaiting.get(source, [])
        popped = []
        while heap and heap[0][0] < watermark_us:
            popped.append(heapq.heappop(heap))
        return popped

    def unrelease(self, source: str, popped: list[Entry]) -> None:
        """Undo `release` (the transaction that would have judged them rolled back)."""
        heap = self._awaiting.setdefault(source, [])
        for entry in popped:
            heapq.heappush(heap, entry)

    def clear(self) -> None:
        self._heap.clear()
        self._due_at.clear()
        self._awaiting.clear()
