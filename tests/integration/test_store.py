"""The store and the monitor's use of it, on SQLite and on a real PostgreSQL (the monitor's
unit tests, tests/unit/test_monitor.py, run here on both)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from sla_monitor.adapters.records import CONTACT_FIELDS, TARGET_FIELDS, evaluation_rows
from sla_monitor.adapters.sql import SqlStore
from sla_monitor.config import Config
from sla_monitor.domain.engine import evaluate_contact
from sla_monitor.sources.abc import PollResult

from ..helpers import at, ev, stored_events
from ..unit.test_monitor import *  # noqa: F403 (the same tests, on SQL stores)
from ..unit.test_monitor import email_contact, make_monitor


def test_migrations_are_idempotent(store: SqlStore) -> None:
    store.migrate()
    store.migrate()
    with store.begin() as conn:
        assert stored_events(conn) == 0


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


def test_start_up_reads_no_history(store: SqlStore, shipped_config: Config) -> None:
    """Restart time must not grow with history: loading reads counts, not the events, the
    items set aside or the contact and target records behind them."""
    from sqlalchemy import event

    from sla_monitor.sources.abc import Rejected

    m = make_monitor(store, shipped_config)
    bad = Rejected("bad_json", "events.jsonl:3: not valid JSON", "{oops")
    m.apply_poll(
        "desk", "jsonl", PollResult(email_contact("A"), [bad], cursor="1", watermark=at()), 0.0
    )
    statements: list[str] = []

    def record(_c: object, _cur: object, statement: str, *_: object) -> None:
        statements.append(statement)

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        again = make_monitor(store, shipped_config)
    finally:
        event.remove(store.engine, "before_cursor_execute", record)
    read = [s for s in statements if " events" in s or "rejected_events" in s]
    assert read == []
    # nor the contact and target history: only the open and the waiting among them
    history = [
        s
        for s in statements
        if ("FROM contacts" in s and "next_wake_us IS NOT NULL" not in s)
        or ("FROM targets" in s and "is_open" not in s)
    ]
    assert history == []
    assert again.live.ingested[("desk", "customer_message")] == 1  # counted all the same
    assert again.live.rejected[("desk", "bad_json")] == 1
    assert again.live.opened == m.live.opened and sum(again.live.opened.values()) == 1
    assert again.live.outcomes == m.live.outcomes and again.live.outcomes
    assert {k: (h.counts, h.total) for k, h in again.live.responses.items()} == {
        k: (h.counts, h.total) for k, h in m.live.responses.items()
    }
    assert again.live.series == m.live.series


def test_migration_0010_counts_what_an_earlier_version_stored(
    db_url: str, shipped_config: Config
) -> None:
    """A database written before the counts were kept (and archived from: carried response
    times without a priority) starts with the same counters after the upgrade."""
    import sqlalchemy as sa

    old = SqlStore(db_url)
    old.migrate("0009")
    contacts = [*email_contact("A"), *email_contact("B", "cust-2")]
    evaluations = [
        evaluate_contact(contacts[:2], shipped_config.policy, at(hours=3), at(hours=3)),
        evaluate_contact(contacts[2:], shipped_config.policy, at(hours=3), at(hours=3)),
    ]
    contact_rows, target_rows = evaluation_rows(evaluations)
    columns = {  # as 0009 had them: no kept counts yet, no callback flags (0014)
        "contacts": CONTACT_FIELDS[: CONTACT_FIELDS.index("callback_requested")],
        "targets": TARGET_FIELDS,
    }
    with old.engine.begin() as conn:
        for table, rows in (("contacts", contact_rows), ("targets", target_rows)):
            names = columns[table]
            conn.execute(
                sa.text(
                    f"INSERT INTO {table} ({', '.join(names)}) "
                    f"VALUES ({', '.join(':' + n for n in names)})"
                ),
                [dict(zip(names, r[: len(names)], strict=True)) for r in rows],
            )
        conn.execute(
            sa.text(
                "INSERT INTO carried_responses (channel, queue, target, le_ms, count, total) "
                "VALUES ('email', 'billing', 'first_reply', 600000, 3, 1500.0)"
            )
        )
    old.close()
    store = SqlStore(db_url)
    store.migrate()
    try:
        m = make_monitor(store, shipped_config, at(hours=3))
        assert sum(m.live.opened.values()) == 2
        assert m.live.outcomes[("email", "billing", "none", "first_reply", "breached")] == 2
        carried = m.live.responses[("email", "billing", "none", "first_reply")]
        assert carried.count == 3 and carried.total == 1500.0  # carried, now under "none"
        auto = m.live.responses[("email", "billing", "none", "auto_ack")]
        assert auto.count == 2  # counted again once from the targets (new bounds)
        with store.read() as tx:
            assert tx.counters.queues_seen() == [("desk", "email", "billing")]
    finally:
        store.close()
