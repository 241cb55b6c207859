"""Outcomes are facts, one rule everywhere (issue 12): over random event streams split into
random polls (time-ordered, honest watermarks), every counter only grows, every published
outcome stands through later polls, and live, `replay`, `report` and `explain` agree on
every target's state. On SQLite and on a real PostgreSQL."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select

from sla_monitor.adapters import sql as store_module
from sla_monitor.adapters.sql import TARGETS, SqlStore
from sla_monitor.config import Config, load_config
from sla_monitor.domain.events import Event
from sla_monitor.service_layer.clock import FixedClock
from sla_monitor.service_layer.monitor import Monitor
from sla_monitor.service_layer.recompute import explain, replay, report
from sla_monitor.sources.abc import PollResult

from ..conftest import SHIPPED_CONFIG
from ..helpers import T0, ev

COUNTERS = ("outcomes", "opened", "repeats", "ingested", "rejected", "unmatched")


def _config(tmp: Path) -> Config:
    text = (
        SHIPPED_CONFIG.read_text()
        .replace(
            "    - name: email\n",
            "    - name: urgent-email\n      match: {channel: email, priority: urgent}\n"
            "      targets:\n        auto_ack: {within: 2m}\n"
            "        first_reply: {within: 10m, warn_before: 5m}\n"
            "        next_reply: {within: 20m}\n    - name: email\n",
        )
        .replace("first_reply: {within: 1h, warn_before: 15m}", "first_reply: {within: 30m}")
        .replace(
            "next_reply: {within: 4h, clock: {business: support-hours}, warn_before: 0.25}",
            "next_reply: {within: 1h}",
        )
    )
    path = tmp / "agree.yaml"
    path.write_text(text)
    return load_config(path)


@st.composite
def streams(draw: st.DrawFn) -> list[Event]:
    out: list[Event] = []
    n = 0
    for conv in ("m1", "m2", "c1"):
        phone = conv.startswith("c")
        start = draw(st.integers(0, 60))
        kinds = (
            ["call_answered", "call_abandoned", "callback_requested"]
            if phone
            else [
                "customer_message",
                "auto_reply",
                "agent_reply",
                "priority_changed",
                "status_changed",
            ]
        )
        out.append(
            ev(
                "call_queued" if phone else "customer_message",
                T0 + timedelta(minutes=start),
                conv=conv,
                channel="phone" if phone else "email",
                customer="cust",
                event_id=f"e{n}",
                **({} if phone else {"priority": draw(st.sampled_from([None, "urgent"]))}),
            )
        )
        n += 1
        for _ in range(draw(st.integers(0, 5))):
            kind = draw(st.sampled_from(kinds))
            minute = start + draw(st.integers(0, 90)) + draw(st.sampled_from([0, 0.25, 0.5]))
            extra: dict[str, Any] = {}
            if kind == "priority_changed":
                extra["priority"] = draw(st.sampled_from(["urgent", "normal"]))
            if kind == "status_changed":
                extra["status"] = draw(st.sampled_from(["pending", "solved", "open"]))
            out.append(
                ev(
                    kind,
                    T0 + timedelta(minutes=minute),
                    conv=conv,
                    channel="phone" if phone else "email",
                    customer="cust",
                    event_id=f"e{n}",
                    **extra,
                )
            )
            n += 1
    return sorted(out, key=Event.sort_key)


def _rows(store: SqlStore) -> dict[tuple[str, str, int], tuple[str, str | None]]:
    with store.engine.begin() as conn:
        return {
            (r.conversation_id, r.target, r.seq): (r.state, r.outcome)
            for r in conn.execute(select(TARGETS))
        }


def _clear(store: SqlStore) -> None:
    with store.engine.begin() as conn:
        for table in reversed(store_module.EVENTS.metadata.sorted_tables):
            if table.name != "alembic_version":
                conn.execute(delete(table))


def check(
    store: SqlStore, config: Config, events: list[Event], cuts: list[int], chunk: int | None = None
) -> None:
    """`chunk`: feed the batches as polls stored `chunk` events at a time (as a large poll
    is); None: through `ingest`."""
    _clear(store)
    clock = FixedClock(T0)
    m = Monitor(store, config, clock)
    m.load()
    m.poll_chunk = chunk or m.poll_chunk
    before: dict[str, Counter[Any]] = {k: Counter() for k in COUNTERS}
    decided: dict[tuple[str, str, int], str] = {}
    bounds = sorted({min(c, len(events)) for c in cuts} | {len(events)})
    lo = 0
    for hi in bounds:
        batch = events[lo:hi]
        lo = hi
        if not batch:
            continue
        clock.at = max(e.occurred_at for e in batch)
        if chunk is None:  # honest: everything up to here is read
            m.ingest("s", batch, watermark=clock.at)
        else:
            m.apply_poll("s", "jsonl", PollResult(batch, cursor=str(hi), watermark=clock.at), 0)
        m.wake()
        snap = m.snapshot()
        for k in COUNTERS:
            grown = Counter(snap[k])
            assert all(grown[key] >= n for key, n in before[k].items()), k  # never down
            before[k] = grown
        for key, (_state, outcome) in _rows(store).items():
            if outcome is not None:
                assert decided.setdefault(key, outcome) == outcome, key  # stands
    end = max(e.occurred_at for e in events) + timedelta(hours=3)
    clock.at = end
    m.ingest("s", [], watermark=end)
    m.wake()
    live = _rows(store)
    # a restart reads the counts kept beside the records: exactly what live counted
    again = Monitor(store, config, clock)
    again.load()
    restarted, counted = again.snapshot(), m.snapshot()
    for k in COUNTERS:
        assert {key: n for key, n in restarted[k].items() if n} == {
            key: n for key, n in counted[k].items() if n
        }, k
    assert restarted["responses"].keys() == counted["responses"].keys()
    for key, (buckets, total) in counted["responses"].items():
        assert restarted["responses"][key][0] == buckets, key
        assert restarted["responses"][key][1] == pytest.approx(total), key
    for key, outcome in decided.items():
        assert live[key][1] == outcome
    for conv in {e.conversation_id for e in events}:
        ex = explain(store, config, ("s", conv), end)
        assert ex is not None
        for t in ex["targets"]:
            assert live[(conv, t["target"], t["seq"])] == (t["state"], t["outcome"]), conv
    counts = Counter(outcome for _s, outcome in live.values() if outcome)
    rep = report(store, config, end, None, None)["targets"]
    for outcome in ("met", "breached", "cancelled", "abandoned", "abandoned_short"):
        assert sum(r[outcome] for r in rep) == counts[outcome], outcome
    replay(store, config, end, workers=1)
    assert _rows(store) == live


def agree(url: str, config: Config, examples: int) -> None:
    """Random streams, cut into random polls (stored whole, or in chunks of 1-6 events),
    through a monitor on the store at `url`: live, replay, report and explain agree."""
    store = SqlStore(url)
    store.migrate()

    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(
        streams(),
        st.lists(st.booleans(), min_size=30, max_size=30),
        st.none() | st.integers(1, 6),
    )
    def run(events: list[Event], split: list[bool], chunk: int | None) -> None:
        check(store, config, events, [i + 1 for i, cut in enumerate(split) if cut], chunk)

    try:
        run()
    finally:
        store.close()


@pytest.mark.parametrize("examples", [40])
def test_live_replay_report_and_explain_agree_sqlite(tmp_path: Path, examples: int) -> None:
    agree(f"sqlite:///{tmp_path / 'agree.db'}", _config(tmp_path), examples)


@pytest.mark.postgres
def test_live_replay_report_and_explain_agree_postgresql(tmp_path: Path, postgres: Any) -> None:
    agree(postgres.new_database(), _config(tmp_path), 10)
