"""The live aggregates' diff: applied batch after batch, the counters and gauges always
equal a recount of the records as they now stand, however events arrive."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sla_monitor.adapters.records import ContactRecord, TargetRecord, decided_of, evaluation_rows
from sla_monitor.domain.engine import evaluate_contact
from sla_monitor.domain.events import ContactKey, Event
from sla_monitor.service_layer.aggregates import Labels, diff
from sla_monitor.service_layer.live import DEFAULT_BUCKETS, LiveState

from ..helpers import T0, ev, policy

POLICY = policy()
KINDS = ["customer_message", "auto_reply", "agent_reply", "priority_changed"]

event = st.tuples(
    st.sampled_from(["a", "b", "c"]),  # contact
    st.sampled_from(KINDS),
    st.integers(0, 300),  # minutes after T0
    st.sampled_from(["billing", "sales"]),  # queue: may change later
)


def build(spec: tuple[str, str, int, str], n: int) -> Event:
    conv, kind, minutes, queue = spec
    extra = {"priority": "high"} if kind == "priority_changed" else {}
    return ev(
        kind, T0 + timedelta(minutes=minutes), conv=conv, queue=queue, event_id=f"e{n}", **extra
    )


def records_of(*args: Any) -> tuple[list[ContactRecord], list[TargetRecord]]:
    contacts, targets = evaluation_rows(*args)
    return [ContactRecord._make(c) for c in contacts], [TargetRecord._make(t) for t in targets]


def recount(
    contacts: dict[ContactKey, ContactRecord], targets: dict[ContactKey, list[TargetRecord]]
) -> dict[str, Counter[tuple[str, ...]]]:
    rows = [t for ts in targets.values() for t in ts]
    return {
        "opened": Counter(
            (c.channel, c.queue, c.priority) for c in contacts.values() if c.opened_us is not None
        ),
        "outcomes": Counter(
            (t.channel, t.queue, t.priority, t.target, t.outcome) for t in rows if t.outcome
        ),
        "open": Counter(
            (t.channel, t.queue, t.priority, t.target, t.state) for t in rows if t.is_open
        ),
    }


def nonzero(c: Counter[tuple[str, ...]]) -> dict[tuple[str, ...], int]:
    return {k: n for k, n in c.items() if n}


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(event, min_size=1, max_size=5), min_size=1, max_size=6))
def test_applied_diffs_always_equal_a_recount_of_the_records(
    batches: list[list[tuple[str, str, int, str]]],
) -> None:
    live = LiveState(DEFAULT_BUCKETS)
    events: dict[ContactKey, list[Event]] = {}
    contacts: dict[ContactKey, ContactRecord] = {}
    targets: dict[ContactKey, list[TargetRecord]] = {}
    n = 0
    now = T0 + timedelta(hours=6)
    for batch in batches:
        for spec in batch:
            e = build(spec, n := n + 1)
            events.setdefault(e.contact_key, []).append(e)
        keys = sorted({("s", spec[0]) for spec in batch})
        old_c = {k: contacts[k] for k in keys if k in contacts}
        old_t = {k: targets[k] for k in keys if k in targets}
        evaluations = [
            evaluate_contact(events[k], POLICY, now, now, decided_of(old_t, k)) for k in keys
        ]
        labels = Labels.of(old_c, old_t)
        new_c, new_t = records_of(
            evaluations, labels.links, labels.contacts, labels.targets, labels.unmatched
        )
        diff(evaluations, old_c, old_t, labels).apply(live)
        for k in keys:
            contacts.pop(k, None)
            targets.pop(k, None)
        contacts.update((c.key, c) for c in new_c)
        for t in new_t:
            targets.setdefault((t.source, t.conversation_id), []).append(t)
        expected = recount(contacts, targets)
        assert nonzero(live.opened) == nonzero(expected["opened"])
        assert nonzero(live.outcomes) == nonzero(expected["outcomes"])
        assert nonzero(live.open_counts) == nonzero(expected["open"])
        assert all(v >= 0 for v in live.opened.values())


def test_a_contact_keeps_the_labels_it_opened_under() -> None:
    first = [ev("customer_message", T0, conv="x", queue="billing")]
    ev1 = evaluate_contact(first, POLICY, T0, T0)
    c1, t1 = records_of([ev1])
    moved = [*first, ev("customer_message", T0 + timedelta(minutes=1), conv="x", queue="sales")]
    old_c, old_t = {c1[0].key: c1[0]}, {c1[0].key: t1}
    ev2 = evaluate_contact(moved, POLICY, T0 + timedelta(minutes=1), T0 + timedelta(minutes=1))
    change = diff([ev2], old_c, old_t, Labels.of(old_c, old_t))
    assert +change.opened == Counter() and -change.opened == Counter()  # counted once, as then
