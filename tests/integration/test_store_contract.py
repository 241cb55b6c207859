"""One contract for every store (adapters/abc.py): in memory, on SQLite, on PostgreSQL.

Each test states what any implementation must do; the same body runs on all three."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sla_monitor.adapters import open_store
from sla_monitor.adapters.abc import LeaseLost, Store, Transaction
from sla_monitor.adapters.records import (
    NO_PRIORITY,
    Carried,
    CarriedCounts,
    CarriedResponses,
    ContactRecord,
    ResponseCounts,
    SourceState,
    TargetRecord,
    bucket_responses,
    carried_counts,
    decided_of,
    evaluation_rows,
    response_histograms,
    state_counts,
)
from sla_monitor.domain.engine import evaluate_contact
from sla_monitor.domain.events import ContactKey, Event, Rejected
from sla_monitor.domain.timeutil import to_micros

from ..conftest import PostgresServer
from ..helpers import T0, at, ev, policy, stored_events

US = to_micros(T0)
BOUNDS = (20.0, 60.0, 3600.0)


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "memory":
        url = "memory://"
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'contract.db'}"
    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        url = server.new_database()
    s = open_store(url)
    s.migrate()
    yield s
    s.close()


def contact(conv: str, customer: str | None = "cust-1", minutes: int = 0) -> list[Event]:
    return [
        ev(
            "customer_message",
            at(minutes=minutes),
            conv=conv,
            customer=customer,
            event_id=f"{conv}-1",
        ),
        ev(
            "auto_reply",
            at(minutes=minutes, seconds=20),
            conv=conv,
            customer=customer,
            event_id=f"{conv}-2",
        ),
    ]


def save(store: Store, events: list[Event], now_minutes: int = 30) -> None:
    """Store events and their contacts' records, as the monitor does."""
    now = at(minutes=now_minutes)
    by_contact: dict[tuple[str, str], list[Event]] = {}
    for e in events:
        by_contact.setdefault(e.contact_key, []).append(e)
    evaluations = [evaluate_contact(evs, policy(), now, now) for evs in by_contact.values()]
    with store.begin() as tx:
        tx.events.add(events, US)
        tx.state.delete(list(by_contact))
        tx.state.write(*evaluation_rows(evaluations))


def test_events_are_stored_once_per_source_and_id(store: Store) -> None:
    a = contact("A")
    with store.begin() as tx:
        assert tx.events.add(a, US) == a
    with store.begin() as tx:
        again = tx.events.add([*a, *contact("B")], US)
        assert [e.event_id for e in again] == ["B-1", "B-2"]
        assert stored_events(tx) == 4
        changed = replace(a[0], queue="sales")
        assert tx.events.stored_copies([changed]) == {a[0].dedup_key: a[0]}


def test_a_transaction_that_raises_leaves_nothing(store: Store) -> None:
    with pytest.raises(RuntimeError), store.begin() as tx:
        tx.events.add(contact("A"), US)
        tx.sources.save(SourceState("s", "jsonl", cursor="c1", watermark=T0))
        raise RuntimeError("rolled back")
    with store.begin() as tx:
        assert stored_events(tx) == 0
        assert tx.sources.load() == {}


def test_events_come_back_exactly_and_a_contact_at_a_time_in_key_order(store: Store) -> None:
    e = ev(
        "customer_message", T0 + timedelta(microseconds=123457), conv="Z", tags=frozenset({"vip"})
    )
    save(store, [*contact("B"), *contact("A"), e])
    with store.read() as tx:
        assert tx.events.for_contacts([("s", "Z"), ("s", "nope")]) == {("s", "Z"): [e]}
        keys = [evs[0].contact_key for evs in tx.events.by_contact()]
        assert keys == [("s", "A"), ("s", "B"), ("s", "Z")]
        ranged = [
            evs[0].contact_key for evs in tx.events.by_contact(start=("s", "B"), stop=("s", "Z"))
        ]
        assert ranged == [("s", "B")]
        early = list(tx.events.by_contact(until_us=to_micros(at(seconds=10))))
        assert [len(evs) for evs in early] == [1, 1, 1]
        assert tx.events.contacts_stored([("s", "A"), ("s", "Q")]) == {("s", "A")}
        assert tx.events.id_span() >= 5
        points = tx.events.split_points(2)
        assert len(points) <= 1 and all(p in {("s", "A"), ("s", "B"), ("s", "Z")} for p in points)


def test_rejections_are_kept_once_by_key_newest_first(store: Store) -> None:
    bad = Rejected("bad_json", "events.jsonl:3: not valid JSON", "{oops")
    other = Rejected("too_long", "events.jsonl:9: line too long", "x" * 10)
    with store.begin() as tx:
        assert tx.events.reject("s", [bad, bad], US) == [bad]
    with store.begin() as tx:
        assert tx.events.reject("s", [bad, other], US) == [other]
        assert tx.events.reject("t", [bad], US) == [bad]  # another source's is its own
    with store.read() as tx:
        rows = tx.events.rejected(limit=2)
        assert [(r.source, r.reason) for r in rows] == [("t", "bad_json"), ("s", "too_long")]
        assert sorted(tx.counters.rejected()) == [
            (("s", "bad_json"), 1),
            (("s", "too_long"), 1),
            (("t", "bad_json"), 1),
        ]


def test_source_state_round_trips(store: Store) -> None:
    state = SourceState("s", "jsonl", "cursor-1", at(hours=1), at(hours=1, seconds=1))
    with store.begin() as tx:
        tx.sources.save(state)
        tx.sources.save(SourceState("t", "imap"))
    with store.begin() as tx:
        assert tx.sources.load() == {"s": state, "t": SourceState("t", "imap")}


def test_counters_add_up(store: Store) -> None:
    with store.begin() as tx:
        tx.counters.count_poll("s", "ok")
        tx.counters.count_poll("s", "ok", 2)
        tx.counters.count_poll("s", "error")
        tx.counters.count_skipped("s", {"bounce": 2, "auto_reply": 1})
        tx.counters.count_late("s", 3)
    with store.begin() as tx:
        tx.counters.count_skipped("s", {"bounce": 1})
        tx.counters.count_late("s", 1)
    with store.read() as tx:
        assert sorted(tx.counters.polls()) == [(("s", "error"), 1), (("s", "ok"), 3)]
        assert sorted(tx.counters.skipped()) == [(("s", "auto_reply"), 1), (("s", "bounce"), 3)]
        assert tx.counters.late() == [(("s",), 4)]
        counts = tx.counters.source_counts("s")
        assert sorted(counts.polls) == [(("s", "error"), 1), (("s", "ok"), 3)]
        assert counts.late == [(("s",), 4)] and tx.counters.source_counts("t").polls == []


def test_state_records_round_trip_and_feed_the_counters(store: Store) -> None:
    save(store, [*contact("A"), *contact("B", "cust-2")], now_minutes=90)
    with store.read() as tx:
        contacts = tx.state.contacts_for([("s", "A"), ("s", "B"), ("s", "nope")])
        assert set(contacts) == {("s", "A"), ("s", "B")}
        a = contacts[("s", "A")]
        assert isinstance(a, ContactRecord) and a.opened_us == US and a.priority == NO_PRIORITY
        targets = tx.state.targets_for([("s", "A")])[("s", "A")]
        assert all(isinstance(t, TargetRecord) for t in targets)
        assert {(t.target, t.outcome) for t in targets} == {
            ("auto_ack", "met"),
            ("first_reply", "breached"),
        }
        assert sorted(tx.counters.opened()) == [(("email", "billing", NO_PRIORITY), 2)]
        assert (
            ("email", "billing", NO_PRIORITY, "first_reply", "breached"),
            2,
        ) in tx.counters.outcomes()
        assert tx.counters.responses((10.0, 20.0, 30.0)) == [
            ResponseCounts("email", "billing", NO_PRIORITY, "auto_ack", (0, 2, 0, 0), 40.0)
        ]
        # other bounds (a `within` changed in the config): the same times, counted again
        assert tx.counters.responses((5.0, 19.5)) == [
            ResponseCounts("email", "billing", NO_PRIORITY, "auto_ack", (0, 0, 2), 40.0)
        ]
        assert tx.counters.queues_seen() == [("s", "email", "billing")]
        assert sorted(tx.counters.ingested()) == [
            (("s", "auto_reply"), 2),
            (("s", "customer_message"), 2),
        ]
        alerting = tx.state.alerting()
        assert {(r.conversation_id, r.target, r.state, r.customer_id) for r in alerting} == {
            ("A", "first_reply", "breached", "cust-1"),
            ("B", "first_reply", "breached", "cust-2"),
        }
        assert {(t.conversation_id, t.target) for t in tx.state.open_targets()} == {
            ("A", "first_reply"),
            ("B", "first_reply"),
        }
        assert list(tx.state.pending_wakes()) == []  # breached, nothing else to wait for
    save(store, contact("C", "cust-3"), now_minutes=30)
    with store.read() as tx:
        waits = [(w.conversation_id, w.wake_us) for w in tx.state.pending_wakes()]
        assert waits == [("C", to_micros(at(minutes=45)))]  # first_reply's warning point


def test_delete_write_and_clear_replace_records(store: Store) -> None:
    save(store, contact("A"))
    again = evaluation_rows([evaluate_contact(contact("A"), policy(), at(), at())])
    with pytest.raises(Exception), store.begin() as tx:  # noqa: B017 (any store error)
        tx.state.write(*again)  # records exist: `delete` first
    with store.begin() as tx:
        tx.state.delete([("s", "A")])
        assert tx.state.contacts_for([("s", "A")]) == {}
        assert tx.state.targets_for([("s", "A")]) == {}
    save(store, contact("B"))
    with store.begin() as tx:
        tx.state.clear()
    with store.read() as tx:
        assert tx.state.contacts_for([("s", "A"), ("s", "B")]) == {}
        assert tx.counters.opened() == []
        assert stored_events(tx) == 4  # events stay: replay rebuilds the records from them


def test_repeat_links_and_customer_summaries(store: Store) -> None:
    save(store, [*contact("A"), *contact("B", minutes=20), *contact("C", "cust-2")])
    with store.begin() as tx:
        tx.state.set_repeats({("s", "B"): ("s", "A")})
    with store.begin() as tx:
        assert tx.state.contacts_for([("s", "B")])[("s", "B")].repeat_of == ("s", "A")
        assert tx.counters.repeats() == [(("email", "billing"), 1)]
        near = tx.state.summaries_near(["cust-1"], US, to_micros(at(minutes=10)))
        assert [(s.key, link) for s, link in near] == [(("s", "A"), None)]
        everyone = tx.state.summaries_for_customers(["cust-1", "cust-2"])
        assert sorted(s.key for s in everyone) == [("s", "A"), ("s", "B"), ("s", "C")]
        tx.state.set_repeats({("s", "B"): None})  # unlinked: once counted, counted for good
        assert tx.state.contacts_for([("s", "B")])[("s", "B")].repeat_of is None
        assert tx.counters.repeats() == [(("email", "billing"), 1)]


def test_archive_moves_quiet_contacts_out_and_carries_their_counts(store: Store) -> None:
    save(store, [*contact("A"), *contact("B", minutes=40)], now_minutes=30)
    with store.begin() as tx:
        opened_before = sorted(tx.counters.opened())
        quiet = list(tx.archive.quiet_contacts(to_micros(at(minutes=35)), ["s"]))
        # B's events are after the cut; A's first reply is still open (breached)
        assert quiet == []
        tx.state.delete([("s", "A")])
        tx.state.write(
            *evaluation_rows(
                [
                    evaluate_contact(
                        [*contact("A"), ev("agent_reply", at(minutes=5), conv="A", event_id="A-3")],
                        policy(),
                        at(hours=9),
                        at(hours=9),
                    )
                ]
            )
        )
        tx.events.add([ev("agent_reply", at(minutes=5), conv="A", event_id="A-3")], US)
    before_us = to_micros(at(minutes=35))
    with store.begin() as tx:
        assert tx.archive.horizons() == {}
        responses_before = tx.counters.responses(BOUNDS)
        run = tx.archive.start_run(before_us, "a.jsonl.gz", US, ["s"])
        quiet = list(tx.archive.quiet_contacts(before_us, ["s"]))
        assert [(q.source, q.conversation_id, q.customer_id) for q in quiet] == [
            ("s", "A", "cust-1")
        ]
        written: list[Event] = []
        assert tx.archive.archive([("s", "A")], run, written.extend) == (3, 2, 1)
        assert sorted(e.event_id for e in written) == ["A-1", "A-2", "A-3"]
        tx.archive.finish_run(run, US)
        tx.archive.start_run(before_us - 1, "b.jsonl.gz", US, ["s"])  # never lowers it
    with store.read() as tx:
        assert tx.archive.horizons() == {"s": before_us}
        assert stored_events(tx) == 2 and tx.state.contacts_for([("s", "A")]) == {}
        assert sorted(tx.counters.opened()) == opened_before  # carried: no counter moves
        assert tx.counters.responses(BOUNDS) == responses_before
        assert (("s", "customer_message"), 2) in tx.counters.ingested()
        carried = list(tx.counters.carried_responses())
        assert {(c.target, c.le_seconds, c.how_many) for c in carried} >= {("auto_ack", 20.0, 1)}
        assert tx.archive.count_opened_before(before_us) == 0


def test_leases_fence_and_the_dirty_queue(store: Store) -> None:
    with store.begin() as tx:
        assert tx.cluster.try_lease("leader", "r1", US, 10)
        assert not tx.cluster.try_lease("leader", "r2", US + 5, 10)
        assert tx.cluster.try_lease("leader", "r2", US + 11, 10)  # expired: taken over
        tx.cluster.fence("leader", "r2", US + 12)
        with pytest.raises(LeaseLost):
            tx.cluster.fence("leader", "r1", US + 12)
        assert tx.cluster.holders(US + 12) == {"leader": "r2"}
        tx.cluster.release("leader", "r1")  # not its holder: nothing happens
        assert tx.cluster.holders(US + 12) == {"leader": "r2"}
        tx.cluster.release("leader", "r2")
        assert tx.cluster.holders(US + 12) == {}
        assert tx.cluster.clock_reading() is None
        tx.cluster.heartbeat("r1", US)
        tx.cluster.heartbeat("r2", US + 100)
        assert tx.cluster.live_replicas(US + 50) == ["r2"]
        assert tx.cluster.clock_reading() is None  # no monitor said what its clock read
        tx.cluster.heartbeat("r1", US + 200, clock_us=US + 9_000)
        tx.cluster.heartbeat("r2", US + 300, clock_us=US + 5_000)
        tx.cluster.heartbeat("r1", 1)  # stopped: its last reading stays
        assert tx.cluster.clock_reading() == (1, US + 9_000)
        tx.cluster.mark_dirty([("s", "A"), ("s", "B")])
        seen = tx.cluster.dirty(10)
        assert seen == {("s", "A"): 1, ("s", "B"): 1}
        tx.cluster.mark_dirty([("s", "A")])  # marked again while being evaluated
        tx.cluster.clear_dirty(seen)
        assert tx.cluster.dirty(10) == {("s", "A"): 2}


def recounted(tx: Transaction, keys: list[ContactKey], archived: CarriedCounts) -> dict[str, Any]:
    """The counters as a recount of every stored record (plus what archiving carried)
    says they stand: what the kept counts must always equal."""
    contacts = list(tx.state.contacts_for(keys).values())
    targets = [t for rows in tx.state.targets_for(keys).values() for t in rows]
    counts = state_counts(contacts, targets)
    out: dict[str, Any] = {}
    for name, metric in (
        ("opened", Carried.OPENED),
        ("unmatched", Carried.UNMATCHED),
        ("repeats", Carried.REPEATS),
        ("outcomes", Carried.OUTCOMES),
    ):
        total = Counter({labels: n for (m, labels), n in counts.items() if m == metric})
        total.update(archived.counters.get(metric, Counter()))
        out[name] = sorted((k, n) for k, n in total.items() if n)
    out["queues"] = sorted({(c.source, c.channel, c.queue) for c in contacts})
    carried = [
        CarriedResponses(ch, q, tg, le / 1000, n, total, p)
        for (ch, q, p, tg, le), (n, total) in archived.responses.items()
    ]
    for bounds in (BOUNDS, (30.0, 600.0)):
        out[f"responses {bounds}"] = sorted(
            response_histograms(bounds, bucket_responses(bounds, targets), carried)
        )
    return out


def kept(tx: Transaction) -> dict[str, Any]:
    c = tx.counters
    out: dict[str, Any] = {
        "opened": sorted((k, n) for k, n in c.opened() if n),
        "unmatched": sorted((k, n) for k, n in c.unmatched() if n),
        "repeats": sorted((k, n) for k, n in c.repeats() if n),
        "outcomes": sorted((k, n) for k, n in c.outcomes() if n),
        "queues": sorted(c.queues_seen()),
    }
    for bounds in (BOUNDS, (30.0, 600.0)):
        out[f"responses {bounds}"] = sorted(c.responses(bounds))
    return out


CONVERSATIONS = ["A", "B", "C", "D"]
step = st.one_of(
    st.tuples(
        st.just("evaluate"),
        st.sampled_from(CONVERSATIONS),
        st.integers(1, 4),  # how many of its events are in
        st.sampled_from(["billing", "sales"]),
        st.sampled_from([100, 150, 200, 4000]),  # seconds to the agent's reply
        st.integers(0, 300),  # minutes from the start to "now"
    ),
    st.tuples(
        st.just("link"), st.sampled_from(CONVERSATIONS), st.sampled_from([None, *CONVERSATIONS])
    ),
    st.tuples(st.just("archive"), st.sampled_from(CONVERSATIONS)),
    st.tuples(st.just("clear")),
    st.tuples(st.just("bounds")),  # start-up with other bounds (a `within` changed)
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=st.lists(step, max_size=14))
def test_kept_counts_always_equal_a_recount_of_the_records(
    store: Store, steps: list[tuple[Any, ...]]
) -> None:
    """Start-up reads counts kept beside the records, not the records: whatever sequence
    of writes, deletes, links, archiving and replays (clear) ran, they agree with a recount."""
    with store.begin() as tx:  # each example starts empty (records; carried counts stay)
        tx.state.clear()
        carried = list(tx.counters.carried_responses())
    archived = CarriedCounts({c: Counter() for c in Carried}, {}, 0)
    for c in carried:  # archived by earlier examples: carried for good
        key = (c.channel, c.queue, c.priority, c.target, round(c.le_seconds * 1000))
        archived.responses[key] = (
            c.how_many,
            c.total,
        )
    with store.read() as tx:
        for name, counts in (
            ("opened", tx.counters.opened()),
            ("unmatched", tx.counters.unmatched()),
            ("repeats", tx.counters.repeats()),
            ("outcomes", tx.counters.outcomes()),
        ):
            metric = {"opened": Carried.OPENED, "unmatched": Carried.UNMATCHED}.get(
                name, Carried.REPEATS if name == "repeats" else Carried.OUTCOMES
            )
            archived.counters[metric].update(dict(counts))
    keys = [("s", conv) for conv in CONVERSATIONS]
    for s in steps:
        with store.begin() as tx:
            if s[0] == "evaluate":
                _, conv, n, queue, reply_s, now_min = s
                events = [
                    ev("customer_message", at(), conv=conv, queue=queue, event_id=f"{conv}-1"),
                    ev("auto_reply", at(seconds=30), conv=conv, queue=queue, event_id=f"{conv}-2"),
                    ev(
                        "agent_reply",
                        at(seconds=reply_s),
                        conv=conv,
                        queue=queue,
                        event_id=f"{conv}-3",
                    ),
                    ev(
                        "customer_message",
                        at(hours=3),
                        conv=conv,
                        queue=queue,
                        event_id=f"{conv}-4",
                    ),
                ][:n]
                now = at(minutes=now_min)
                old = tx.state.targets_for([("s", conv)])
                evaluation = evaluate_contact(
                    events, policy(), now, now, decided_of(old, ("s", conv))
                )
                tx.state.delete([("s", conv)])
                tx.state.write(*evaluation_rows([evaluation]))
            elif s[0] == "link":
                _, conv, to = s
                if tx.state.contacts_for([("s", conv)]):
                    tx.state.set_repeats({("s", conv): ("s", to) if to else None})
            elif s[0] == "archive":
                key = ("s", s[1])
                contacts = list(tx.state.contacts_for([key]).values())
                targets = tx.state.targets_for([key]).get(key, [])
                if contacts:
                    moved = carried_counts(contacts, targets)
                    for metric, counts in moved.counters.items():
                        archived.counters[metric].update(counts)
                    for bucket, (n, total) in moved.responses.items():
                        was_n, was_total = archived.responses.get(bucket, (0, 0.0))
                        archived.responses[bucket] = (was_n + n, was_total + total)
                    run = tx.archive.start_run(US, "a.jsonl.gz", US, [])
                    tx.archive.archive([key], run, lambda _events: None)
            elif s[0] == "clear":
                tx.state.clear()
            else:
                tx.counters.responses((1.0, 2.0))
        with store.read() as tx:
            assert kept(tx) == recounted(tx, keys, archived)


def test_queues_are_kept_in_the_order_first_seen(store: Store) -> None:
    """The bound on queue labels keeps the first queues a source had under their own label:
    that order is stored, written with the contacts, and survives a replay's clear."""

    def in_queue(conv: str, queue: str) -> list[Event]:
        return [replace(e, queue=queue) for e in contact(conv)]

    save(store, [*in_queue("A", "zeta"), *in_queue("B", "alpha")])
    save(store, [*in_queue("C", "mid"), *in_queue("A", "zeta")])
    with store.begin() as tx:
        assert tx.counters.queue_order() == [("s", "zeta"), ("s", "alpha"), ("s", "mid")]
        tx.state.clear()
    save(store, [*in_queue("D", "new"), *in_queue("B", "alpha")])
    with store.read() as tx:
        assert tx.counters.queue_order() == [
            ("s", "zeta"),
            ("s", "alpha"),
            ("s", "mid"),
            ("s", "new"),
        ]
