"""The store and the monitor's use of it, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from sla_monitor.adapters import sql
from sla_monitor.adapters.sql import SqlStore
from sla_monitor.config import Config
from sla_monitor.service_layer import monitor as monitor_module
from sla_monitor.service_layer.clock import FixedClock
from sla_monitor.service_layer.monitor import Monitor
from sla_monitor.sources.abc import PollResult, Rejected

from .helpers import T0, at, ev


def make_monitor(store: SqlStore, config: Config, now: object = None) -> Monitor:
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


def test_migrations_are_idempotent(store: SqlStore) -> None:
    store.migrate()
    store.migrate()
    with store.begin() as conn:
        assert conn.events.count() == 0


def test_duplicate_events_are_stored_once(store: SqlStore, shipped_config: Config) -> None:
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
        assert conn.events.count() == 2
    assert m.live.ingested[("desk", "customer_message")] == 1


def test_cursor_is_saved_with_the_events_or_not_at_all(
    store: SqlStore, shipped_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = make_monitor(store, shipped_config)
    m.apply_poll(
        "desk", "jsonl", PollResult(email_contact("A"), cursor="c1", watermark=at(hours=1)), 0.0
    )

    def boom(*_a: object, **_k: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(sql._State, "write", boom)
    with pytest.raises(RuntimeError):
        m.apply_poll(
            "desk", "jsonl", PollResult(email_contact("B"), cursor="c2", watermark=at(hours=2)), 0.0
        )
    with store.begin() as conn:
        assert conn.events.count() == 2  # B's events were rolled back ...
        assert conn.sources.load()["desk"].cursor == "c1"  # ... with the cursor
    assert m.sources["desk"].cursor == "c1"  # so the next poll reads B again


def test_restart_resumes_counters_and_open_targets_without_recompute(
    store: SqlStore, shipped_config: Config, monkeypatch: pytest.MonkeyPatch
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
    assert before["open_counts"][("email", "billing", "first_reply", "on_track")] == 2

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
    store: SqlStore, shipped_config: Config
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
    assert m.snapshot()["open_counts"][("email", "billing", "first_reply", "at_risk")] == 1
    # the poll that reads past the deadline makes the breach knowable
    m.apply_poll("desk", "jsonl", PollResult([], cursor="y", watermark=at(hours=1, seconds=1)), 0.0)
    assert m.live.outcomes[("email", "billing", "none", "first_reply", "breached")] == 1
    assert m.snapshot()["open_counts"][("email", "billing", "first_reply", "breached")] == 1


def test_rejected_items_are_kept_with_their_reason(store: SqlStore, shipped_config: Config) -> None:
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


def test_repeat_contact_is_linked_and_counted(store: SqlStore, shipped_config: Config) -> None:
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
    # order does not matter: the agent reply to A arriving later, dated before the call, unlinks it
    reply = ev("agent_reply", at(minutes=10), conv="A", event_id="A-3", source="desk")
    m.apply_poll("desk", "jsonl", PollResult([reply], cursor="2", watermark=at(hours=1)), 0.0)
    assert m.live.repeats[("phone", "support-line")] == 0


def test_timestamps_round_trip_exactly(store: SqlStore, shipped_config: Config) -> None:
    m = make_monitor(store, shipped_config)
    e = ev("customer_message", T0 + timedelta(microseconds=123457), conv="Z", source="desk")
    m.apply_poll("desk", "jsonl", PollResult([e], cursor="1", watermark=at(hours=1)), 0.0)
    with store.begin() as conn:
        assert conn.events.for_contacts([("desk", "Z")])[("desk", "Z")] == [e]


def test_listeners_hear_a_breach_and_its_late_reply(
    store: SqlStore, shipped_config: Config
) -> None:
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


def test_migrations_build_exactly_the_schema_the_models_declare(store: SqlStore) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from sla_monitor.adapters.orm import Base

    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_parallel_replay_writes_exactly_what_a_single_process_replay_writes(
    store: SqlStore, shipped_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    import random

    from sla_monitor.service_layer import recompute

    rng = random.Random(5)
    events = []
    for i in range(300):  # e-mail and calls, customers coming back, some never answered
        opened = at(minutes=rng.randrange(0, 3 * 24 * 60))
        customer = f"cust-{rng.randrange(60)}"
        if rng.random() < 0.6:
            events.append(ev("customer_message", opened, conv=f"m{i}", customer=customer))
            if rng.random() < 0.8:
                reply = opened + timedelta(minutes=rng.randrange(1, 180))
                events.append(ev("agent_reply", reply, conv=f"m{i}", customer=customer))
        else:
            kw = {"conv": f"p{i}", "channel": "phone", "queue": "line", "customer": customer}
            events.append(ev("call_queued", opened, **kw))
            outcome = rng.choice(["call_answered", "call_abandoned"])
            events.append(ev(outcome, opened + timedelta(seconds=rng.randrange(1, 60)), **kw))
    m = make_monitor(store, shipped_config, at(days=4))
    m.apply_poll("s", "jsonl", PollResult(events, cursor="1", watermark=at(days=4)), 0.0)

    def state() -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
        with store.engine.begin() as conn:
            contacts = conn.exec_driver_sql("SELECT * FROM contacts").fetchall()
            targets = conn.exec_driver_sql("SELECT * FROM targets").fetchall()
        return sorted(map(tuple, contacts), key=repr), sorted(map(tuple, targets), key=repr)

    monkeypatch.setattr(recompute, "PARALLEL_FROM_EVENTS", 0)  # parallel even for 600 events
    alone = recompute.replay(store, shipped_config, at(days=4), workers=1)
    single = state()
    together = recompute.replay(store, shipped_config, at(days=4), workers=3)
    assert together == alone and alone.repeats > 0
    assert state() == single


def test_a_migration_that_stops_half_way_leaves_nothing_behind_on_sqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process killed during its first migration must not leave half a schema that the
    next start cannot migrate (found by the fault suite: `table contacts already exists`)."""
    import sqlalchemy as sa
    from alembic.operations import Operations

    url = f"sqlite:///{tmp_path / 'half.db'}"
    real = Operations.create_table
    made: list[str] = []

    def create_then_die(self: Any, name: str, *cols: Any, **kw: Any) -> Any:
        if made:
            raise KeyboardInterrupt("killed")  # as abrupt as a signal, mid-migration
        made.append(name)
        return real(self, name, *cols, **kw)

    monkeypatch.setattr(Operations, "create_table", create_then_die)
    with pytest.raises(KeyboardInterrupt):
        SqlStore(url).migrate()
    monkeypatch.setattr(Operations, "create_table", real)
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert sa.inspect(conn).get_table_names() == []  # rolled back whole
    engine.dispose()
    store = SqlStore(url)
    store.migrate()  # and the next start migrates cleanly
    store.close()
