"""Memory follows the commit: what a transaction would change in the monitor's memory
(counters, gauges, deadlines, cursor, pages) changes only once the store has committed it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from sla_monitor.adapters.memory import MemoryStore, MemoryTransaction
from sla_monitor.config import Config
from sla_monitor.service_layer.clock import FixedClock
from sla_monitor.service_layer.monitor import Monitor
from sla_monitor.sources.abc import PollResult

from ..helpers import at
from .test_monitor import email_contact


class RefusingStore(MemoryStore):
    """Fails the next `refuse` transactions at their end (so they roll back)."""

    refuse = 0

    @contextmanager
    def begin(self) -> Iterator[MemoryTransaction]:
        with super().begin() as tx:
            yield tx
            if self.refuse:
                self.refuse -= 1
                raise RuntimeError("disk full")


def test_a_poll_the_store_refuses_changes_nothing_in_memory(shipped_config: Config) -> None:
    store = RefusingStore()
    m = Monitor(store, shipped_config, FixedClock(at(minutes=30)))
    m.load()
    m.apply_poll("desk", "jsonl", PollResult(email_contact("A"), cursor="1", watermark=at()), 0.0)
    before = m.snapshot()
    wake = m.next_wake()
    store.refuse = 1
    with pytest.raises(RuntimeError):
        m.apply_poll(
            "desk",
            "jsonl",
            PollResult(email_contact("B", "cust-2"), cursor="2", watermark=at(minutes=30)),
            0.0,
        )
    after = m.snapshot()
    for key in ("open_counts", "outcomes", "opened", "ingested", "polls", "rejected"):
        assert after[key] == before[key], key
    assert m.sources["desk"].cursor == "1" and m.next_wake() == wake
    # the same poll, once the store takes it, counts exactly once
    m.apply_poll(
        "desk",
        "jsonl",
        PollResult(email_contact("B", "cust-2"), cursor="2", watermark=at(minutes=30)),
        0.0,
    )
    assert m.live.ingested[("desk", "customer_message")] == 2


def test_a_wake_the_store_refuses_leaves_the_contact_due(shipped_config: Config) -> None:
    store = RefusingStore()
    clock = FixedClock(at(minutes=30))
    m = Monitor(store, shipped_config, clock)
    m.load()
    m.apply_poll(
        "desk", "jsonl", PollResult(email_contact("A"), cursor="1", watermark=at(hours=2)), 0.0
    )
    due = m.next_wake()
    assert due is not None
    clock.at = due
    store.refuse = 1
    with pytest.raises(RuntimeError):
        m.wake()
    assert m.next_wake() == due  # never dropped
    assert m.wake() == 1
    assert m.next_wake() != due


def test_a_large_poll_lets_a_waiting_wake_in_between_its_chunks(shipped_config: Config) -> None:
    """A deadline falling due during a 50k-line poll is judged at once, not after it."""
    order: list[str] = []
    waker: list[threading.Thread] = []

    class Recording(MemoryStore):
        @contextmanager
        def begin(self) -> Iterator[MemoryTransaction]:
            if threading.current_thread() is not (waker[0] if waker else None):
                order.append("poll chunk")
                if len(order) == 1:  # a wake comes while the first chunk holds the lock
                    waker.append(threading.Thread(target=m.wake))
                    waker[0].start()
                    while m._wakes_waiting == 0:
                        time.sleep(0.001)
            with super().begin() as tx:
                yield tx

    m = Monitor(Recording(), shipped_config, FixedClock(at(minutes=30)))
    m.poll_chunk = 2
    m.on_wake_change = lambda _at: (
        order.append("wake") if threading.current_thread() is waker[0] else None
    )
    events = [e for c in "ABC" for e in email_contact(c, f"cust-{c}")]  # 3 chunks of 2
    m.apply_poll("desk", "jsonl", PollResult(events, cursor="1", watermark=at()), 0.0)
    waker[0].join()
    assert order == ["poll chunk", "wake", "poll chunk", "poll chunk"]
    assert m.live.ingested[("desk", "customer_message")] == 3  # and nothing lost


@pytest.mark.parametrize(("seconds_per_chunk", "expected"), [(10.0, 100), (0.0, 5000)])
def test_a_large_poll_holds_the_lock_a_bounded_time_per_chunk(
    shipped_config: Config, seconds_per_chunk: float, expected: int
) -> None:
    """Chunks are sized by how long the last one held the lock (more open targets or a
    busier machine: smaller chunks), so a deadline waits for about CHUNK_SECONDS at most."""
    sizes: list[int] = []

    class Recording(MemoryStore):
        @contextmanager
        def begin(self) -> Iterator[MemoryTransaction]:
            with super().begin() as tx:
                add = tx.events.add
                tx.events.add = lambda events, now_us: (
                    sizes.append(len(events))
                    or add(  # type: ignore[method-assign]
                        events, now_us
                    )
                )
                yield tx

    m = Monitor(Recording(), shipped_config, FixedClock(at(minutes=30)))
    ticks = iter(range(10_000))
    m.timer = lambda: next(ticks) * seconds_per_chunk  # each chunk "takes" this long
    events = [e for i in range(7_000) for e in email_contact(f"c{i}", f"cust-{i}")]
    m.apply_poll("desk", "jsonl", PollResult(events, cursor="1", watermark=at()), 0.0)
    assert sizes[0] == 1000  # the first chunk, before any rate is known
    assert max(sizes[1:-1]) == min(sizes[1:-1]) == expected  # then what the rate allows
    assert sum(sizes) == len(events)
    assert m.live.ingested[("desk", "customer_message")] == 7_000  # nothing lost
