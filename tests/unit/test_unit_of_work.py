"""Memory follows the commit: what a transaction would change in the monitor's memory
(counters, gauges, deadlines, cursor, pages) changes only once the store has committed it."""

from __future__ import annotations

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
