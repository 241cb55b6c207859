"""`sla-monitor archive`: quiet contacts leave the database for a gzip file that `ingest`
reads back, and not one counter on /metrics moves (SQLite and a real PostgreSQL)."""

from __future__ import annotations

import gzip
import json
import tempfile
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sla_monitor.adapters import sql
from sla_monitor.adapters.sql import SqlStore
from sla_monitor.config import Config, load_config
from sla_monitor.domain.events import ContactKey, Event, event_from_dict
from sla_monitor.domain.timeutil import iso
from sla_monitor.entrypoints.cli import main
from sla_monitor.publishing.metrics import MonitorCollector
from sla_monitor.service_layer.archive import ArchiveError, ArchiveInterrupted, archive
from sla_monitor.service_layer.clock import FixedClock
from sla_monitor.service_layer.monitor import Monitor
from sla_monitor.service_layer.recompute import replay
from sla_monitor.sources.abc import PollResult

from ..conftest import SHIPPED_CONFIG
from ..helpers import T0, at, ev

BEFORE = T0 + timedelta(days=2)
NOW = BEFORE + timedelta(days=8)  # past the 7-day repeat window


def fresh_monitor(store: SqlStore, config: Config) -> Monitor:
    m = Monitor(store, config, FixedClock(NOW))
    m.load()
    return m


def metrics(
    store: SqlStore, config: Config
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample a freshly started monitor would serve on /metrics."""
    registry = CollectorRegistry()
    registry.register(MonitorCollector(fresh_monitor(store, config)))
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def assert_same_metrics(before: dict, after: dict) -> None:  # type: ignore[type-arg]
    assert before.keys() == after.keys()
    for key, value in before.items():
        if key[0].endswith("_sum"):  # float sums, added up in another order
            assert after[key] == pytest.approx(value, rel=1e-12), key
        else:
            assert after[key] == value, key


def email(
    conv: str,
    customer: str | None,
    opened: datetime,
    *,
    answered: timedelta | None,
    auto_reply: bool = True,
    closed: bool = True,
) -> list[Event]:
    """An e-mail contact: message, auto-reply, then maybe a personal reply and a close."""

    def at_(kind: str, when: datetime, **kw: str) -> Event:
        return ev(kind, when, conv=conv, customer=customer, source="desk", **kw)

    evs = [at_("customer_message", opened)]
    if auto_reply:
        evs.append(at_("auto_reply", opened + timedelta(seconds=30)))
    if answered is not None:
        evs.append(at_("agent_reply", opened + answered))
        if closed:
            evs.append(
                at_("status_changed", opened + answered + timedelta(minutes=1), status="closed")
            )
    return evs


def history() -> dict[str, list[Event]]:
    late = T0 + timedelta(days=2, hours=1)
    return {
        # quiet before BEFORE: archived
        "A": email("A", "cust-a", T0, answered=timedelta(minutes=20)),
        "C1": email("C1", "cust-c", T0, answered=timedelta(hours=3)),  # breached first_reply
        "C2": email("C2", "cust-c", at(hours=1), answered=timedelta(minutes=10)),  # repeat of C1
        "E": [
            ev("call_queued", at(hours=2), conv="E", channel="phone", queue="main", source="pbx"),
            ev(
                "call_answered",
                at(hours=2, seconds=12),
                conv="E",
                channel="phone",
                queue="main",
                source="pbx",
            ),
        ],
        # stay: never answered (open target), events after BEFORE, chained to one that stays
        "B": email("B", "cust-b", T0, answered=None),
        "G": [
            *email("G", "cust-g", T0, answered=None),
            ev("agent_reply", late, conv="G", customer="cust-g", source="desk"),
        ],
        # D2 is a repeat of D1 (opened before D1's reply) and stays open, so D1 stays too
        "D1": email("D1", "cust-d", at(days=1), answered=timedelta(hours=3)),
        "D2": email("D2", "cust-d", at(days=1, hours=2), answered=None),
        # H1 was answered before H2 opened: no link possible, H1 goes while H2 stays
        "H1": email("H1", "cust-h", T0, answered=timedelta(minutes=20)),
        "H2": email("H2", "cust-h", at(hours=5), answered=None),
        # from a source read completely only up to T0 + 1 day
        "L": [
            ev("customer_message", T0, conv="L", customer="cust-l", source="slow"),
            ev("agent_reply", at(minutes=5), conv="L", customer="cust-l", source="slow"),
        ],
    }


def load(store: SqlStore, config: Config, contacts: dict[str, list[Event]]) -> Monitor:
    m = fresh_monitor(store, config)
    by_source: dict[str, list[Event]] = {}
    for evs in contacts.values():
        for e in evs:
            by_source.setdefault(e.source, []).append(e)
    for source, evs in sorted(by_source.items()):
        watermark = at(days=1) if source == "slow" else NOW
        m.apply_poll(source, "jsonl", PollResult(evs, cursor="1", watermark=watermark), 0.0)
    return m


def read_archive(path: Path) -> list[Event]:
    with gzip.open(path, "rt") as fh:
        return [event_from_dict(json.loads(line)) for line in fh]


def stored(store: SqlStore, convs: list[str]) -> set[str]:
    keys: list[ContactKey] = [(s, c) for c in convs for s in ("desk", "pbx", "slow")]
    with store.begin() as conn:
        return {c for _, c in conn.events.contacts_stored(keys)}


def test_archive_moves_quiet_contacts_to_a_file_and_no_counter_moves(
    store: SqlStore, shipped_config: Config, tmp_path: Path
) -> None:
    contacts = history()
    load(store, shipped_config, contacts)
    before = metrics(store, shipped_config)
    assert before[("sla_repeat_contacts_total", (("channel", "email"), ("queue", "billing")))] == 2

    path = tmp_path / "2026-11.jsonl.gz"
    summary = archive(store, shipped_config, BEFORE, path, NOW)

    archived = {"A", "C1", "C2", "E", "H1"}
    assert (summary.contacts, summary.kept_linked) == (5, 1)  # D1 stays with D2
    assert summary.events == sum(len(contacts[c]) for c in archived)
    assert summary.behind == {"slow": at(days=1)}
    assert stored(store, list(contacts)) == set(contacts) - archived
    in_file = read_archive(path)
    assert {e.dedup_key for e in in_file} == {e.dedup_key for c in archived for e in contacts[c]}
    assert {e.occurred_at for e in in_file} == {
        e.occurred_at for c in archived for e in contacts[c]
    }

    # a restart serves exactly the same counters, histograms and gauges ...
    assert_same_metrics(before, metrics(store, shipped_config))
    # ... and so does a replay, which recomputes what is left from stored events
    replay(store, shipped_config, NOW)
    assert_same_metrics(before, metrics(store, shipped_config))


def test_a_redelivered_archived_event_is_set_aside_not_counted_again(
    store: SqlStore, shipped_config: Config, tmp_path: Path
) -> None:
    contacts = history()
    load(store, shipped_config, contacts)
    archive(store, shipped_config, BEFORE, tmp_path / "a.jsonl.gz", NOW)
    m = fresh_monitor(store, shipped_config)
    opened = dict(m.live.opened)
    ingested = dict(m.live.ingested)

    # the helpdesk re-sends conversation A (a cursor reset), and the customer writes again
    comeback = ev("customer_message", NOW, conv="A", customer="cust-a", source="desk")
    summary = m.apply_poll(
        "desk", "jsonl", PollResult([*contacts["A"], comeback], cursor="2", watermark=NOW), 0.0
    )
    assert (summary.new, summary.rejected) == (1, len(contacts["A"]))
    assert m.live.rejected[("desk", "archived")] == len(contacts["A"])
    assert (
        m.live.ingested[("desk", "customer_message")] == ingested[("desk", "customer_message")] + 1
    )
    # a conversation coming back after its archive starts a new contact
    assert m.live.opened[("email", "billing", "none")] == opened[("email", "billing", "none")] + 1
    with store.begin() as conn:
        rejected = conn.events.rejected()
    assert "older than the archive horizon" in rejected[0].detail
    # a new source (never archived) may still bring old history
    old = ev("customer_message", T0, conv="N", customer="cust-n", source="newdesk")
    assert m.apply_poll("newdesk", "jsonl", PollResult([old], watermark=NOW), 0.0).new == 1


def test_the_archive_file_restores_into_a_separate_database(
    store: SqlStore, shipped_config: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    load(store, shipped_config, history())
    report_before = _report(capsys, store.url, "2026-11-02T00:00:00Z", "2026-11-02T23:00:00Z")
    path = tmp_path / "a.jsonl.gz"
    archive(store, shipped_config, BEFORE, path, NOW)

    # the live database's report says what it no longer counts
    code = main(["report", "--config", str(SHIPPED_CONFIG), "--db", store.url])
    out = capsys.readouterr().out
    assert code == 0 and "Archived: contacts of desk quiet before" in out

    old = f"sqlite:///{tmp_path / 'restored.db'}"
    code = main(
        ["ingest", str(path), "--config", str(SHIPPED_CONFIG), "--db", old, "--watermark", iso(NOW)]
    )
    assert code == 0, capsys.readouterr().err
    assert "0 rejected" in capsys.readouterr().out
    restored = _report(capsys, old, "2026-11-02T00:00:00Z", "2026-11-02T23:00:00Z")
    rows = {(r["channel"], r["queue"], r["target"]): r for r in report_before["targets"]}
    for r in restored["targets"]:  # the archived contacts' outcomes, exactly as they were
        assert r["met"] <= rows[(r["channel"], r["queue"], r["target"])]["met"]
    by_target = {(r["queue"], r["target"]): (r["met"], r["breached"]) for r in restored["targets"]}
    assert by_target[("billing", "first_reply")] == (3, 1)  # A, C2, H1 met; C1 breached
    assert by_target[("main", "answer")] == (1, 0)  # E
    assert restored["repeat_contacts"] == [{"contact": "desk:C2", "repeat_of": "desk:C1"}]

    # restoring into the live database instead is refused event by event, and counted
    code = main(["ingest", str(path), "--config", str(SHIPPED_CONFIG), "--db", store.url])
    out = capsys.readouterr().out
    assert code == 0 and "18 set aside as older than the archive horizon" in out


def _report(capsys: pytest.CaptureFixture[str], db: str, start: str, end: str) -> dict:  # type: ignore[type-arg]
    args = ["report", "--config", str(SHIPPED_CONFIG), "--db", db, "--format", "json"]
    assert main([*args, "--from", start, "--to", end, "--as-of", iso(NOW)]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_refusals_name_the_problem_and_change_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], shipped_config: Config
) -> None:
    db = f"sqlite:///{tmp_path / 'sla.db'}"
    cfg = ["--config", str(SHIPPED_CONFIG), "--db", db]
    recent = "2999-01-01T00:00:00Z"
    assert main(["archive", *cfg, "--before", recent, "--to", str(tmp_path / "x.gz")]) == 2
    assert "within the repeat window (7d)" in capsys.readouterr().err
    assert not (tmp_path / "x.gz").exists()

    taken = tmp_path / "taken.jsonl.gz"
    taken.write_bytes(b"keep me")
    assert main(["archive", *cfg, "--before", "2026-01-01T00:00:00Z", "--to", str(taken)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert taken.read_bytes() == b"keep me"

    assert main(["archive", *cfg, "--before", "2026-01-01T00:00:00Z"]) == 2
    assert "--to FILE" in capsys.readouterr().err
    store = SqlStore(db)
    with store.begin() as conn:
        assert conn.archive.horizons() == {}  # no refusal set a horizon
    store.close()


def test_dry_run_says_what_would_go_and_changes_nothing(
    store: SqlStore, shipped_config: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    load(store, shipped_config, history())
    cfg = ["--config", str(SHIPPED_CONFIG), "--db", store.url, "--before", iso(BEFORE)]
    assert main(["archive", *cfg, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would archive 5 contacts (18 events" in out
    assert "6 contacts opened before 2026-11-04T09:00:00Z would stay stored" in out
    assert "1 of them because a contact that stays could be a repeat of them" in out
    assert "source slow skipped: read completely only up to 2026-11-03T09:00:00Z" in out
    assert stored(store, list(history())) == set(history())
    with store.begin() as conn:
        assert conn.archive.horizons() == {}


def test_a_cut_short_archive_file_gives_back_every_line_before_the_cut(
    store: SqlStore, shipped_config: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    contacts = history()
    load(store, shipped_config, contacts)
    path = tmp_path / "a.jsonl.gz"
    archive(store, shipped_config, BEFORE, path, NOW, batch=1)  # one flush per contact
    data = path.read_bytes()
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(data[: len(data) - 8])  # the trailer (CRC, size) never written
    db = f"sqlite:///{tmp_path / 'restored.db'}"
    code = main(["ingest", str(cut), "--config", str(SHIPPED_CONFIG), "--db", db])
    captured = capsys.readouterr()
    assert code == 1 and "stopped reading early" in captured.err
    assert "18 events (18 new" in captured.out and "watermark not advanced" in captured.out


def test_an_archive_that_fails_part_way_keeps_file_and_database_consistent(
    store: SqlStore, shipped_config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    contacts = history()
    load(store, shipped_config, contacts)
    before = metrics(store, shipped_config)
    real = sql._Archive.archive
    calls = []

    def fail_on_third(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 3:
            raise OSError("database connection lost")
        return real(*args, **kwargs)

    monkeypatch.setattr(sql._Archive, "archive", fail_on_third)
    path = tmp_path / "a.jsonl.gz"
    with pytest.raises(ArchiveInterrupted, match="stopped with 2 quiet contacts archived"):
        archive(store, shipped_config, BEFORE, path, NOW, batch=1)
    in_file = {e.conversation_id for e in read_archive(path)}
    assert len(in_file) == 2
    assert stored(store, list(contacts)) == set(contacts) - in_file
    assert_same_metrics(before, metrics(store, shipped_config))


# -- the property: whatever is archived, nothing a user sees changes ------------------------

contact_plans = st.lists(
    st.tuples(
        st.sampled_from(["c1", "c2", None]),  # customer
        st.integers(0, 5 * 24),  # opened, hours after T0
        st.sampled_from([None, 5, 90, 600, 3000]),  # minutes to the personal reply; None: never
        st.booleans(),  # closed after the reply
    ),
    max_size=12,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans=contact_plans, before_hours=st.integers(0, 6 * 24))
# a quiet contact whose unanswered follow-up (a repeat of it) stays: it must stay too
@example(plans=[("c1", 0, 600, True), ("c1", 1, None, False)], before_hours=24)
def test_archiving_never_changes_metrics_or_the_repeat_links_that_remain(
    plans: list[tuple[str | None, int, int | None, bool]], before_hours: int
) -> None:
    shipped_config = load_config(SHIPPED_CONFIG)
    with tempfile.TemporaryDirectory() as tmp:
        store = SqlStore(f"sqlite:///{tmp}/sla.db")
        store.migrate()
        now = T0 + timedelta(days=40)
        contacts: dict[str, list[Event]] = {}
        for i, (customer, opened_h, reply_m, closed) in enumerate(plans):
            conv = f"k{i}"
            contacts[conv] = email(
                conv,
                customer,
                at(hours=opened_h),
                answered=None if reply_m is None else timedelta(minutes=reply_m),
                auto_reply=False,
                closed=closed,
            )
        m = Monitor(store, shipped_config, FixedClock(now))
        m.load()
        every = [e for evs in contacts.values() for e in evs]
        m.apply_poll("desk", "jsonl", PollResult(every, cursor="1", watermark=now), 0.0)
        before = metrics(store, shipped_config)
        links_before = _links(store)
        summary = archive(
            store, shipped_config, at(hours=before_hours), Path(tmp) / "a.gz", now, batch=3
        )
        left = stored(store, list(contacts))
        assert summary.contacts == len(contacts) - len(left)
        assert_same_metrics(before, metrics(store, shipped_config))
        # links among the contacts that stay are untouched, and none points into the archive
        assert _links(store) == {k: v for k, v in links_before.items() if k[1] in left}
        assert all(v[1] in left for v in _links(store).values())
        replay(store, shipped_config, now)
        assert_same_metrics(before, metrics(store, shipped_config))
        store.close()


def _links(store: SqlStore) -> dict[ContactKey, ContactKey]:
    with store.engine.begin() as conn:
        keys = [
            (r[0], r[1])
            for r in conn.exec_driver_sql("SELECT source, conversation_id FROM contacts")
        ]
    with store.begin() as tx:
        return {k: c.repeat_of for k, c in tx.state.contacts_for(keys).items() if c.repeat_of}


def test_archive_error_is_raised_before_anything_is_written(
    store: SqlStore, shipped_config: Config, tmp_path: Path
) -> None:
    with pytest.raises(ArchiveError, match="no such folder"):
        archive(store, shipped_config, BEFORE, tmp_path / "missing" / "a.gz", NOW)
