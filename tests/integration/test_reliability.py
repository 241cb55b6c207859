"""Memory follows the commit; bad input, database outages and rotation never stall a source
or drop a deadline (issue 10). Fast cases here; whole-process rounds in test_faults.py."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError

from sla_monitor.adapters.sql import EVENTS, REJECTED, SqlStore
from sla_monitor.bootstrap import build_app
from sla_monitor.config import Config
from sla_monitor.domain.engine import ContactEvaluation, TargetResult
from sla_monitor.domain.timeutil import iso
from sla_monitor.entrypoints.http import MetricsServer
from sla_monitor.publishing.metrics import MonitorCollector
from sla_monitor.service_layer.clock import FixedClock
from sla_monitor.service_layer.monitor import Monitor
from sla_monitor.sources._tail import read_new_lines

from ..conftest import SHIPPED_CONFIG, PostgresServer
from ..helpers import ev

T = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


class Pages:
    """A listener that records what the publishers were told."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str | None]] = []

    def target_changed(
        self, evaluation: ContactEvaluation, result: TargetResult, previous: str | None
    ) -> None:
        self.seen.append((evaluation.key[1], result.state.value, previous))

    def breaches(self) -> list[str]:
        return [c for c, state, prev in self.seen if state == "breached" and prev != "breached"]


class FlakyStore(SqlStore):
    """A real store whose next `fail_commits` transactions fail at COMMIT (and roll back)."""

    fail_commits = 0

    @contextmanager
    def begin(self) -> Iterator[Any]:
        with super().begin() as tx:
            yield tx
            if self.fail_commits:
                self.fail_commits -= 1
                raise OperationalError("COMMIT", {}, Exception("server closed the connection"))


def counters(m: Monitor) -> dict[str, Any]:
    snap = m.snapshot()
    return {
        k: {key: n for key, n in snap[k].items() if n}
        for k in ("outcomes", "opened", "repeats", "ingested", "rejected", "polls")
    } | {"open": {k: v for k, v in snap["open_counts"].items() if v}}


def stored_counters(url: str, config: Config) -> dict[str, Any]:
    store = SqlStore(url)
    fresh = Monitor(store, config, FixedClock(T))
    fresh.load()
    store.close()
    return counters(fresh)


# -- defect 1: a deadline that falls due while the database is down --------------------------


@pytest.mark.postgres
def test_deadline_due_during_a_postgres_outage_is_judged_and_paged_when_it_returns(
    own_postgres: PostgresServer, shipped_config: Config
) -> None:
    url = own_postgres.new_database()
    store = SqlStore(url)
    store.migrate()
    clock = FixedClock(T)
    pages = Pages()
    m = Monitor(store, shipped_config, clock, [pages])
    m.load()
    call = ev("call_queued", T, conv="call-1", channel="phone", source="pbx")
    m.ingest("pbx", [call], watermark=T)
    assert m.next_wake() == T + timedelta(seconds=10)  # the warning point, then the deadline
    own_postgres.halt()
    try:
        for s in (12, 25, 30):  # wakes while the database is away: each one fails
            clock.at = T + timedelta(seconds=s)
            with pytest.raises(OperationalError):
                m.wake()
    finally:
        own_postgres.resume()
    clock.at = T + timedelta(seconds=31)
    m.ingest("pbx", [], watermark=clock.at)  # the next poll: read up to now
    m.wake()
    assert pages.breaches() == ["call-1"]
    assert counters(m)["outcomes"] == {("phone", "billing", "none", "answer", "breached"): 1}
    assert counters(m) == stored_counters(url, shipped_config)
    store.close()


# -- defect 2: in-memory counters move only with the commit ---------------------------------


def test_a_failed_commit_changes_nothing_in_memory_and_the_retry_counts_once(
    tmp_path: Path, shipped_config: Config
) -> None:
    url = f"sqlite:///{tmp_path / 'sla.db'}"
    store = FlakyStore(url)
    store.migrate()
    clock = FixedClock(T)
    pages = Pages()
    m = Monitor(store, shipped_config, clock, [pages])
    m.load()
    first = [
        ev("customer_message", T, conv="m1", customer="ann", source="desk"),
        ev("call_queued", T, conv="c1", channel="phone", customer="ann", source="desk"),
    ]
    m.ingest("desk", first, watermark=T)
    before = counters(m)
    wake_before = m.next_wake()
    clock.at = T + timedelta(minutes=5)
    later = [
        ev("customer_message", clock.at, conv="m2", customer="ann", source="desk"),  # a repeat
        ev("agent_reply", clock.at, conv="m1", source="desk"),
    ]
    store.fail_commits = 1
    with pytest.raises(OperationalError):
        m.ingest("desk", later, watermark=clock.at)
    assert counters(m) == before == stored_counters(url, shipped_config)
    assert m.next_wake() == wake_before
    seen = len(pages.seen)
    # a wake whose commit fails: its contacts are not lost
    store.fail_commits = 1
    with pytest.raises(OperationalError):
        m.wake()
    assert counters(m) == before
    assert len(pages.seen) == seen  # nothing published from a rolled-back transaction
    assert m.next_wake() == wake_before
    m.ingest("desk", later, watermark=clock.at)
    m.wake()
    assert counters(m) == stored_counters(url, shipped_config)
    assert counters(m)["repeats"] == {("email", "billing"): 1}
    # the call's 20 s and the mail's 2 min auto-ack lapsed: each told once
    assert sorted(pages.breaches()) == ["c1", "m1"]
    store.close()


# -- defect 3 and 6: poison lines, duplicates, encodings, ranges -----------------------------


def _line(**kw: Any) -> str:
    row = {
        "source": "mail",
        "event_id": "e1",
        "conversation_id": "c1",
        "kind": "customer_message",
        "occurred_at": iso(T),
        "channel": "email",
        "queue": "billing",
        "customer_id": "ann",
    }
    row.update(kw)
    return json.dumps(row)


POISON = [
    _line(event_id="y9999", occurred_at="9999-12-31T23:59:59Z"),
    _line(event_id="x" * 600),
    _line(event_id="longq", queue="q" * 300),
    _line(event_id="nul", customer_id="ann\u0000bob"),
    _line(event_id="y1", occurred_at="0001-01-01T00:00:00Z"),
    _line(event_id="y1970", occurred_at="1970-01-01T00:00:00Z"),
    _line(event_id="y2100", occurred_at="2100-01-01T00:00:00Z"),
    _line(event_id="e1", customer_id="someone-else"),  # e1 again, different content
]
EXPECTED_REASONS = {
    "out_of_range": 4,
    "too_long": 2,
    "bad_field": 1,
    "conflicting_duplicate": 1,
    "bad_encoding": 1,
}


def poison_file(path: Path) -> Path:
    lines = [_line().encode()]
    lines += [p.encode() for p in POISON]
    lines.append(_line(event_id="bad-utf8").encode().replace(b'"ann"', b'"an\xff\xfen"'))
    lines.append(
        _line(event_id="e2", conversation_id="c2", occurred_at=iso(T + timedelta(1))).encode()
    )
    lines.append(_line().encode())  # an exact duplicate of the first line: not a conflict
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sla_monitor.entrypoints.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def rejected_by_reason(url: str) -> dict[tuple[str, str], int]:
    store = SqlStore(url)
    with store.engine.begin() as conn:
        rows = conn.execute(select(REJECTED.c.source, REJECTED.c.reason)).all()
    store.close()
    out: dict[tuple[str, str], int] = {}
    for s, r in rows:
        out[(s, r)] = out.get((s, r), 0) + 1
    return out


def stored_ids(url: str) -> set[str]:
    store = SqlStore(url)
    with store.engine.begin() as conn:
        ids = {r[0] for r in conn.execute(select(EVENTS.c.event_id))}
    store.close()
    return ids


def test_poison_lines_are_set_aside_once_and_never_stop_the_lines_around_them(
    tmp_path: Path, db_url: str
) -> None:
    path = poison_file(tmp_path / "events.jsonl")
    args = ["ingest", str(path), "--config", str(SHIPPED_CONFIG), "--db", db_url]
    done = cli(*args, "--source", "fallback")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert stored_ids(db_url) == {"e1", "e2"}
    want = {("mail", reason): n for reason, n in EXPECTED_REASONS.items()}
    assert rejected_by_reason(db_url) == want
    # the same file again (a crash and a re-run): nothing counted twice
    again = cli(*args, "--source", "fallback")
    assert again.returncode == 0, again.stderr
    assert rejected_by_reason(db_url) == want
    assert cli(*args, "--strict").returncode == 1


def test_the_first_copy_of_an_event_stands_however_the_input_is_split(
    tmp_path: Path, shipped_config: Config
) -> None:
    first = ev("customer_message", T, conv="c1", event_id="dup", customer="ann")
    second = ev("customer_message", T, conv="c1", event_id="dup", customer="bob")
    for split in (False, True):
        store = SqlStore(f"sqlite:///{tmp_path / f'split{split}.db'}")
        store.migrate()
        m = Monitor(store, shipped_config, FixedClock(T))
        m.load()
        if split:
            m.ingest("s", [first])
            m.ingest("s", [second])
        else:
            m.ingest("s", [first, second])
        with store.engine.begin() as conn:
            customers = [r[0] for r in conn.execute(select(EVENTS.c.customer_id))]
        assert customers == ["ann"], split
        assert counters(m)["rejected"] == {("s", "conflicting_duplicate"): 1}
        store.close()


def _jsonl_config(tmp_path: Path, db_url: str, **options: Any) -> Path:
    cfg = (
        SHIPPED_CONFIG.read_text().split("\nsources:")[0]
        + "\nsources:\n  - name: mail\n    kind: jsonl\n    channel: email\n    interval: 1s\n"
        + "    options:\n"
        + "".join(f"      {k}: {json.dumps(v)}\n" for k, v in options.items())
    )
    path = tmp_path / "sla.yaml"
    path.write_text(cfg.replace("sqlite:///sla-monitor.db", db_url))
    return path


def test_run_stores_the_lines_after_a_poison_line_and_becomes_ready(
    tmp_path: Path, db_url: str
) -> None:
    path = poison_file(tmp_path / "events.jsonl")
    app = build_app(
        str(_jsonl_config(tmp_path, db_url, path=str(path))),
        listen="127.0.0.1:0",
        serve=MetricsServer,
    )
    try:
        app.monitor.load()
        app.poll("mail")
        assert app.readiness() == (True, "ready")
        assert stored_ids(db_url) == {"e1", "e2"}
        app.poll("mail")  # polling again moves nothing
        assert dict(counters(app.monitor)["rejected"]) == {
            ("mail", reason): n for reason, n in EXPECTED_REASONS.items()
        }
    finally:
        app.store.close()


# -- defect 4: an outage is visible, counted once it is back, logged once --------------------


@pytest.mark.postgres
def test_a_database_outage_shows_in_readiness_and_source_health(
    own_postgres: PostgresServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = own_postgres.new_database()
    events = tmp_path / "events.jsonl"
    events.write_text(_line(occurred_at=iso(datetime.now(UTC))) + "\n")
    app = build_app(
        str(_jsonl_config(tmp_path, url, path=str(events))),
        listen="127.0.0.1:0",
        serve=MetricsServer,
    )
    collector = MonitorCollector(app.monitor)

    def up() -> float:
        for family in collector.collect():
            for s in family.samples:
                if s.name == "sla_source_up" and s.labels == {"source": "mail"}:
                    return s.value
        raise AssertionError("no sla_source_up{source=mail}")

    try:
        app.monitor.load()
        app.poll("mail")
        assert app.readiness() == (True, "ready") and up() == 1.0
        own_postgres.halt()
        caplog.clear()
        with caplog.at_level(logging.INFO):
            try:
                for _ in range(3):
                    app.poll("mail")
                    app.wake()
                ready, why = app.readiness()
                assert not ready and "database" in why, why
                assert up() == 0.0
            finally:
                own_postgres.resume()
            app.poll("mail")
        assert app.readiness() == (True, "ready") and up() == 1.0
        outage_lines = [r for r in caplog.records if "database" in r.getMessage().lower()]
        assert len(outage_lines) == 2, [r.getMessage() for r in outage_lines]  # down, back
        assert not any(r.exc_info for r in caplog.records)
        polls = {k: n for k, n in counters(app.monitor)["polls"].items()}
        assert polls[("mail", "error")] == 3  # counted once the database was back
        assert counters(app.monitor) == stored_counters(url, app.config)
    finally:
        app.store.close()


# -- defect 5: rotation without loss ---------------------------------------------------------


def _lines(n0: int, n1: int) -> str:
    return "".join(f'{{"n": {i}, "pad": "{"x" * 70}"}}\n' for i in range(n0, n1))


def _numbers(read: Any) -> list[int]:
    return [json.loads(line.text)["n"] for line in read.lines]


def test_copytruncate_rotation_reads_the_rotated_copy_s_tail(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    log.write_text(_lines(0, 10))
    state: dict[str, Any] = {}
    got = _numbers(read_new_lines([log], state, 10_000))
    with log.open("a") as fh:
        fh.write(_lines(10, 20))  # written after our read, before the rotation
    shutil.copy(log, tmp_path / "events.jsonl.1")  # logrotate's copytruncate
    with log.open("r+") as fh:
        fh.truncate(0)
    with log.open("a") as fh:
        fh.write(_lines(20, 25))
    read = read_new_lines([log], state, 10_000)
    got += _numbers(read)
    assert got == list(range(25))
    assert not read.gaps


def test_copytruncate_without_the_copy_is_a_counted_gap(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    log.write_text(_lines(0, 10))
    state: dict[str, Any] = {}
    read_new_lines([log], state, 10_000)
    with log.open("a") as fh:
        fh.write(_lines(10, 20))
    with log.open("r+") as fh:
        fh.truncate(0)  # rotated copy compressed or deleted at once: lines 10-19 are gone
    with log.open("a") as fh:
        fh.write(_lines(20, 25))
    read = read_new_lines([log], state, 10_000)
    assert _numbers(read) == list(range(20, 25))
    assert len(read.gaps) == 1 and "events.jsonl" in read.gaps[0] and "byte" in read.gaps[0]


def test_rename_rotation_keeps_reading_the_old_file_while_the_writer_finishes(
    tmp_path: Path,
) -> None:
    log = tmp_path / "queue_log"
    log.write_text(_lines(0, 10))
    state: dict[str, Any] = {}
    got = _numbers(read_new_lines([log], state, 10_000))
    old = log.rename(tmp_path / "queue_log.1")
    log.write_text(_lines(20, 22))  # the new file appears ...
    with old.open("a") as fh:
        fh.write(_lines(10, 15))  # ... while the writer still appends to the old one
    got += _numbers(read_new_lines([log], state, 10_000))
    with old.open("a") as fh:
        fh.write(_lines(15, 20))  # and keeps at it a little longer (until it reopens)
    got += _numbers(read_new_lines([log], state, 10_000))
    with log.open("a") as fh:
        fh.write(_lines(22, 25))
    got += _numbers(read_new_lines([log], state, 10_000))
    assert sorted(got) == list(range(25)) and len(got) == 25


def test_an_unterminated_huge_line_is_rejected_once_and_skipped(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    with log.open("wb") as fh:
        fh.write(_lines(0, 2).encode())
        fh.write(b'{"n": "' + b"x" * 3_000_000)  # a writer gone mad, no newline yet
    state: dict[str, Any] = {}
    first = read_new_lines([log], state, 10_000, max_line_bytes=1_000_000)
    assert _numbers(first) == [0, 1] and len(first.too_long) == 1
    with log.open("ab") as fh:
        fh.write(b"y" * 2_000_000)
    second = read_new_lines([log], state, 10_000, max_line_bytes=1_000_000)
    assert second.lines == [] and second.too_long == []  # still the same line: not again
    with log.open("ab") as fh:
        fh.write(b'"}\n' + _lines(2, 4).encode())
    third = read_new_lines([log], state, 10_000, max_line_bytes=1_000_000)
    assert _numbers(third) == [2, 3] and third.too_long == []


def test_invalid_utf8_is_rejected_not_repaired(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    log.write_bytes(b'{"n": 0, "id": "caf\xe9"}\n{"n": 1, "id": "caf\xef\xbf\xbd"}\n')
    read = read_new_lines([log], {}, 10_000)
    assert _numbers(read) == [1]
    assert len(read.bad_encoding) == 1 and ":1" in read.bad_encoding[0].where


# -- defect 6: a watermark pinned in the future ----------------------------------------------


def test_an_event_far_in_the_future_does_not_pin_a_latest_event_watermark(
    tmp_path: Path, db_url: str
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    path = tmp_path / "events.jsonl"
    path.write_text(
        _line(event_id="a", occurred_at=iso(now - timedelta(hours=1)))
        + "\n"
        + _line(event_id="z", occurred_at="2100-01-01T00:00:00Z")
        + "\n"
    )
    cfg = _jsonl_config(tmp_path, db_url, path=str(path), watermark="latest_event")
    app = build_app(str(cfg), listen="127.0.0.1:0", serve=MetricsServer)
    try:
        app.monitor.load()
        app.poll("mail")
        wm = app.monitor.sources["mail"].watermark
        assert wm == now - timedelta(hours=1)
    finally:
        app.store.close()


# -- defect 7: sources only in the store ----------------------------------------------------


def test_a_source_only_in_the_store_is_not_reported_down(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sla.db'}"
    path = tmp_path / "events.jsonl"
    path.write_text("")
    once = tmp_path / "once.jsonl"
    once.write_text(_line(source="oneoff", occurred_at=iso(datetime.now(UTC))) + "\n")
    assert cli("ingest", str(once), "--config", str(SHIPPED_CONFIG), "--db", url).returncode == 0
    app = build_app(
        str(_jsonl_config(tmp_path, url, path=str(path))), listen="127.0.0.1:0", serve=MetricsServer
    )
    try:
        app.monitor.load()
        app.poll("mail")
        names = {
            s.labels["source"]
            for family in MonitorCollector(app.monitor).collect()
            for s in family.samples
            if s.name == "sla_source_up"
        }
        assert names == {"mail"}
        ingested = {
            s.labels["source"]
            for family in MonitorCollector(app.monitor).collect()
            for s in family.samples
            if s.name == "sla_events_ingested_total"
        }
        assert "oneoff" in ingested  # its counters still count
    finally:
        app.store.close()


def test_the_store_refusing_one_event_sets_only_that_event_aside(
    tmp_path: Path, shipped_config: Config
) -> None:
    """Whatever validation misses, the store's refusal isolates one item, not the batch."""
    url = f"sqlite:///{tmp_path / 'sla.db'}"
    store = SqlStore(url)
    store.migrate()
    with store.engine.begin() as conn:  # a constraint validation cannot know about
        conn.execute(
            text(
                "CREATE TRIGGER no_x BEFORE INSERT ON events WHEN NEW.event_id = 'x' "
                "BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        )
    m = Monitor(store, shipped_config, FixedClock(T))
    m.load()
    batch = [ev("customer_message", T, conv=f"c{i}", event_id=e) for i, e in enumerate("axb")]
    summary = m.ingest("s", batch, watermark=T)
    assert summary.new == 2
    assert stored_ids(url) == {"a", "b"}
    assert counters(m)["rejected"] == {("s", "store_refused"): 1}
    store.close()


def test_rename_rotation_with_nothing_at_the_path_yet(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    log.write_text(_lines(0, 5))
    state: dict[str, Any] = {}
    got = _numbers(read_new_lines([log], state, 10_000))
    old = log.rename(tmp_path / "events.jsonl.1")
    with old.open("a") as fh:
        fh.write(_lines(5, 8))
    got += _numbers(read_new_lines([], state, 10_000))  # the path is empty for a moment
    with old.open("a") as fh:
        fh.write(_lines(8, 10))
    log.write_text(_lines(10, 12))
    got += _numbers(read_new_lines([log], state, 10_000))
    assert got == list(range(12))


def test_a_file_truncated_then_renamed_while_the_monitor_was_away(tmp_path: Path) -> None:
    """copytruncate, new lines, then a rename rotation, all between two polls."""
    log = tmp_path / "events.jsonl"
    log.write_text(_lines(0, 10))
    state: dict[str, Any] = {}
    got = _numbers(read_new_lines([log], state, 10_000))
    with log.open("a") as fh:
        fh.write(_lines(10, 12))
    shutil.copy(log, tmp_path / "events.jsonl.1")
    with log.open("r+") as fh:
        fh.truncate(0)
    with log.open("a") as fh:
        fh.write(_lines(12, 15))  # shorter than what had been read
    log.rename(tmp_path / "events.jsonl.2")
    log.write_text(_lines(15, 17))
    got += _numbers(read_new_lines([log], state, 10_000))
    assert got == list(range(17))


def test_commands_on_an_unreachable_database_say_so_in_one_line(tmp_path: Path) -> None:
    url = "postgresql+psycopg://sla@127.0.0.1:1/sla"  # nothing listens on port 1
    done = cli("report", "--config", str(SHIPPED_CONFIG), "--db", url)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = [x for x in done.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "database unavailable" in lines[0], done.stderr
