"""The monitor on the in-memory store: ingest, deadlines, restarts, listeners, repeats.

The same tests run on SQLite and PostgreSQL from tests/integration/test_store.py.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from sla_monitor.adapters.abc import Store
from sla_monitor.config import Config
from sla_monitor.service_layer import monitor as monitor_module
from sla_monitor.service_layer.clock import FixedClock
from sla_monitor.service_layer.monitor import Monitor
from sla_monitor.sources.abc import PollResult, Rejected

from ..helpers import T0, at, ev, stored_events


def make_monitor(store: Store, config: Config, now: object = None) -> Monitor:
    m = Monitor(store, config, FixedClock(now or at(hours=3)))  # type: ignore[arg-type]
    m.load()
    return m


def email_contact(conv: str, customer: str = "cust-1") -> list:  # type: ignore[type-arg]
    return [
        ev(
            "customer_message",
            T0,
            conv=conv,
            customer=customer,
            event_id=f"{conv}-1",
            source="desk",
        ),
        ev(
            "auto_reply",
            at(seconds=20),
            conv=conv,
            customer=customer,
            event_id=f"{conv}-2",
            source="desk",
        ),
    ]


def test_duplicate_events_are_stored_once(store: Store, shipped_config: Config) -> None:
    m = make_monitor(store, shipped_config)
    events = email_contact("A")
    first = m.apply_poll(
        "desk", "jsonl", PollResult(events, cursor="1", watermark=at(hours=2)), 0.0
    )
    again = m.apply_poll(
        "desk", "jsonl", PollResult(events, cursor="2", watermark=at(hours=2)), 0.0
    )
    assert (first.new, again.new) == (2, 0)
    with store.begin() as conn:
        assert stored_events(conn) == 2
    assert m.live.ingested[("desk", "customer_message")] == 1


def test_cursor_is_saved_with_the_events_or_not_at_all(
    store: Store, shipped_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = make_monitor(store, shipped_config)
    m.apply_poll(
        "desk", "jsonl", PollResult(email_contact("A"), cursor="c1", watermark=at(hours=1)), 0.0
    )

    def boom(*_a: object, **_k: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(monitor_module, "evaluation_rows", boom)
    with pytest.raises(RuntimeError):
        m.apply_poll(
            "desk", "jsonl", PollResult(email_contact("B"), cursor="c2", watermark=at(hours=2)), 0.0
        )
    with store.begin() as conn:
        assert stored_events(conn) == 2  # B's events were rolled back ...
        assert conn.sources.load()["desk"].cursor == "c1"  # ... with the cursor
    assert m.sources["desk"].cursor == "c1"  # so the next poll reads B again


def test_restart_resumes_counters_and_open_targets_without_recompute(
    store: Store, shipped_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = make_monitor(store, shipped_config, at(minutes=30))
    m.apply_poll(
        "desk",
        "jsonl",
        PollResult(
            email_contact("A") + email_contact("B", "cust-2"), cursor="x", watermark=at(minutes=30)
        ),
        0.0,
    )
    before = m.snapshot()
    assert before["open_counts"][("email", "billing", "none", "first_reply", "on_track")] == 2

    def no_recompute(*_a: object, **_k: object) -> None:
        raise AssertionError("restart must not re-evaluate contacts")

    monkeypatch.setattr(monitor_module, "evaluate_contact", no_recompute)
    again = make_monitor(store, shipped_config, at(minutes=30))
    after = again.snapshot()
    for key in ("open_counts", "outcomes", "opened", "ingested", "polls", "oldest"):
        assert {k: v for k, v in after[key].items() if v} == {
            k: v for k, v in before[key].items() if v
        }, key
    assert again.next_wake() == at(minutes=45)  # the first warning point


def test_deadline_wake_breaches_only_after_the_watermark_passes(
    store: Store, shipped_config: Config
) -> None:
    clock = FixedClock(at(minutes=30))
    m = Monitor(store, shipped_config, clock)
    m.load()
    m.apply_poll(
        "desk", "jsonl", PollResult(email_contact("A"), cursor="x", watermark=at(minutes=30)), 0.0
    )
    clock.at = at(hours=1, seconds=1)
    m.wake()
    m.wake()
    assert m.live.outcomes.get(("email", "billing", "none", "first_reply", "breached"), 0) == 0
    assert m.snapshot()["open_counts"][("email", "billing", "none", "first_reply", "at_risk")] == 1
    # the poll that reads past the deadline makes the breach knowable
    m.apply_poll("desk", "jsonl", PollResult([], cursor="y", watermark=at(hours=1, seconds=1)), 0.0)
    assert m.live.outcomes[("email", "billing", "none", "first_reply", "breached")] == 1
    assert m.snapshot()["open_counts"][("email", "billing", "none", "first_reply", "breached")] == 1


def test_rejected_items_are_kept_with_their_reason(store: Store, shipped_config: Config) -> None:
    m = make_monitor(store, shipped_config)
    bad = Rejected("bad_json", "events.jsonl:3: not valid JSON", "{oops")
    m.apply_poll(
        "desk",
        "jsonl",
        PollResult(email_contact("A"), [bad], cursor="1", watermark=at(hours=1)),
        0.0,
    )
    with store.begin() as conn:
        rows = conn.events.rejected()
    assert [(r.source, r.reason, r.payload) for r in rows] == [("desk", "bad_json", "{oops")]
    assert m.live.rejected[("desk", "bad_json")] == 1


def test_repeat_contact_is_linked_and_counted(store: Store, shipped_config: Config) -> None:
    m = make_monitor(store, shipped_config)
    call = [
        ev(
            "call_queued",
            at(minutes=20),
            conv="P",
            channel="phone",
            queue="support-line",
            event_id="P-1",
            source="desk",
        ),
        ev(
            "call_answered",
            at(minutes=20, seconds=8),
            conv="P",
            channel="phone",
            queue="support-line",
            event_id="P-2",
            source="desk",
        ),
    ]
    m.apply_poll(
        "desk",
        "jsonl",
        PollResult(email_contact("A") + call, cursor="1", watermark=at(hours=1)),
        0.0,
    )
    with store.begin() as conn:
        assert conn.state.contacts_for([("desk", "P")])[("desk", "P")].repeat_of == ("desk", "A")
    assert m.live.repeats[("phone", "support-line")] == 1
    # the agent reply to A arriving later, dated before the call, unlinks it (the link says
    # what happened, as replay would) — but the contact stays counted: counters never go down
    reply = ev("agent_reply", at(minutes=10), conv="A", event_id="A-3", source="desk")
    m.apply_poll("desk", "jsonl", PollResult([reply], cursor="2", watermark=at(hours=1)), 0.0)
    with store.begin() as tx:
        assert tx.state.contacts_for([("desk", "P")])[("desk", "P")].repeat_of is None
    assert m.live.repeats[("phone", "support-line")] == 1
    again = make_monitor(store, shipped_config)  # and after a restart
    assert again.live.repeats[("phone", "support-line")] == 1


def test_timestamps_round_trip_exactly(store: Store, shipped_config: Config) -> None:
    m = make_monitor(store, shipped_config)
    e = ev("customer_message", T0 + timedelta(microseconds=123457), conv="Z", source="desk")
    m.apply_poll("desk", "jsonl", PollResult([e], cursor="1", watermark=at(hours=1)), 0.0)
    with store.begin() as conn:
        assert conn.events.for_contacts([("desk", "Z")])[("desk", "Z")] == [e]


def test_listeners_hear_a_breach_and_its_late_reply(store: Store, shipped_config: Config) -> None:
    heard: list[tuple[str, str, bool]] = []

    class Recorder:
        def target_changed(self, ev: object, t: object, previous: str | None) -> None:
            heard.append((t.target.value, t.state.value, t.is_open))  # type: ignore[attr-defined]

    clock = FixedClock(at(hours=2))
    m = Monitor(store, shipped_config, clock, [Recorder()])
    m.load()
    m.apply_poll(
        "desk", "jsonl", PollResult(email_contact("A"), cursor="1", watermark=at(hours=2)), 0.0
    )
    assert ("first_reply", "breached", True) in heard
    heard.clear()
    late = ev("agent_reply", at(hours=2), conv="A", event_id="A-9", source="desk")
    m.apply_poll("desk", "jsonl", PollResult([late], cursor="2", watermark=at(hours=2)), 0.0)
    assert heard == [("first_reply", "breached", False)]  # still breached, but answered: resolve


def test_metrics_tell_urgent_breaches_from_the_rest(shipped_config: Config) -> None:
    """`sla_open_targets` and `sla_response_seconds` carry the priority: a lead can ask for
    urgent contacts lapsed now, or urgent first replies within the hour."""
    from prometheus_client import CollectorRegistry, generate_latest

    from sla_monitor.adapters.memory import MemoryStore
    from sla_monitor.publishing.metrics import MonitorCollector

    m = Monitor(MemoryStore(), shipped_config, FixedClock(at(hours=2)))
    m.load()
    urgent = [
        ev("customer_message", T0, conv="U", source="desk", event_id="u1", priority="urgent"),
        ev("auto_reply", at(seconds=20), conv="U", source="desk", event_id="u2"),
    ]
    normal = [
        ev("customer_message", T0, conv="N", source="desk", event_id="n1", customer="c2"),
        ev("agent_reply", at(minutes=10), conv="N", source="desk", event_id="n2", customer="c2"),
    ]
    m.apply_poll("desk", "jsonl", PollResult(urgent + normal, cursor="x", watermark=at(hours=2)), 0)
    registry = CollectorRegistry()
    registry.register(MonitorCollector(m))
    text = generate_latest(registry).decode()
    urgent_breached = (
        'sla_open_targets{channel="email",priority="urgent",queue="billing",'
        'state="breached",target="first_reply"} 1.0'
    )
    assert urgent_breached in text
    none_breached = urgent_breached.replace('"urgent"', '"none"').replace("} 1.0", "} 0.0")
    assert none_breached in text  # the other priority of the queue: a 0, not a gap
    assert (
        'sla_response_seconds_bucket{channel="email",le="600",priority="none",'
        'queue="billing",target="first_reply"} 1.0'
    ) in text
    assert 'sla_response_seconds_count{channel="email",priority="urgent"' in text  # its auto-ack


def with_desk(config: Config, **queue_labels: object) -> Config:
    """The config with one `desk` source bounded by these queue_labels settings."""
    from dataclasses import replace

    from sla_monitor.config import QueueLabelsConfig, SourceConfig

    desk = SourceConfig(
        name="desk", kind="jsonl", queue_labels=QueueLabelsConfig.model_validate(queue_labels)
    )
    return replace(config, settings=config.settings.model_copy(update={"sources": [desk]}))


def exposition(m: Monitor) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from sla_monitor.publishing.metrics import MonitorCollector

    registry = CollectorRegistry()
    registry.register(MonitorCollector(m))
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def in_queues(*queues: str) -> PollResult:
    events = [
        ev("customer_message", T0, conv=q, source="desk", event_id=q, customer=q, queue=q)
        for q in queues
    ]
    return PollResult(events, cursor=queues[-1], watermark=at(hours=2))


def queue_values(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> set[str]:
    return {dict(labels)["queue"] for _n, labels in samples if "queue" in dict(labels)}


def opened(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], queue: str) -> float:
    return sum(
        v
        for (n, labels), v in samples.items()
        if n == "sla_contacts_opened_total" and dict(labels)["queue"] == queue
    )


def test_queue_label_values_are_bounded_per_source(shipped_config: Config) -> None:
    """Queue names come from source data (helpdesk groups, inboxes): past a source's bound,
    its further queues share one queue="other" series, counted; the first ones keep their
    label across a restart (the order is stored), and nothing is lost from the totals."""
    from sla_monitor.adapters.memory import MemoryStore

    store = MemoryStore()
    config = with_desk(shipped_config, max=2)
    m = make_monitor(store, config)
    for queue in ("zeta", "alpha", "mid", "beta"):  # first seen in this order
        m.apply_poll("desk", "jsonl", in_queues(queue), 0)
    samples = exposition(m)
    assert queue_values(samples) == {"zeta", "alpha", "other"}
    assert opened(samples, "other") == 2 and opened(samples, "zeta") == 1
    assert samples[("sla_source_queues_folded", (("source", "desk"),))] == 2
    restarted = make_monitor(store, config)
    restarted.apply_poll("desk", "jsonl", in_queues("aardvark"), 0)
    samples = exposition(restarted)
    assert queue_values(samples) == {"zeta", "alpha", "other"}
    assert opened(samples, "other") == 3
    assert samples[("sla_source_queues_folded", (("source", "desk"),))] == 3
    # an allow-list: only those, whatever came first
    allowed = make_monitor(store, with_desk(shipped_config, allow=["mid"]))
    samples = exposition(allowed)
    assert queue_values(samples) == {"mid", "other"}
    assert opened(samples, "other") == 4 and opened(samples, "mid") == 1
    assert samples[("sla_source_queues_folded", (("source", "desk"),))] == 4


def test_the_default_bound_leaves_a_usual_desk_alone(store: Store, shipped_config: Config) -> None:
    m = make_monitor(store, with_desk(shipped_config))
    queues = [f"group-{i:03d}" for i in range(101)]
    m.apply_poll("desk", "jsonl", in_queues(*queues), 0)
    samples = exposition(m)
    assert queue_values(samples) == {*queues[:100], "other"}
    assert samples[("sla_source_queues_folded", (("source", "desk"),))] == 1


def test_callbacks_requested_and_handled_are_counted_and_survive_a_restart(
    store: Store, shipped_config: Config
) -> None:
    """A caller who asks to be called back is counted once, and again as handled when the
    team reaches them; a restart reads the counts back, a re-read changes nothing."""
    m = make_monitor(store, shipped_config)
    phone = {"channel": "phone", "queue": "support-line", "source": "desk"}
    first = [
        ev("call_queued", T0, conv="K", event_id="k1", **phone),
        ev("callback_requested", at(seconds=45), conv="K", event_id="k2", **phone),
    ]
    m.apply_poll("desk", "jsonl", PollResult(first, cursor="1", watermark=at(hours=1)), 0)
    samples = exposition(m)
    key = (("channel", "phone"), ("queue", "support-line"))
    assert samples[("sla_callbacks_total", (*key, ("state", "requested")))] == 1
    assert ("sla_callbacks_total", (*key, ("state", "handled"))) not in samples
    back = ev("call_answered", at(minutes=20), conv="K", event_id="k3", **phone)
    m.apply_poll("desk", "jsonl", PollResult([back], cursor="2", watermark=at(hours=2)), 0)
    m.apply_poll("desk", "jsonl", PollResult([back], cursor="3", watermark=at(hours=2)), 0)
    samples = exposition(make_monitor(store, shipped_config))  # restarted
    assert samples[("sla_callbacks_total", (*key, ("state", "requested")))] == 1
    assert samples[("sla_callbacks_total", (*key, ("state", "handled")))] == 1
