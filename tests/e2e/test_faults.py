"""Fault injection against the real process, real SQLite and PostgreSQL, a real Alertmanager.

Every scenario asserts the same four things: no event lost, none counted twice, live
counters equal the store's, every due breach paged exactly once (Alertmanager holds one
alert per breached, unanswered call, and none for any other). `make test` runs a few
rounds of each; `SLA_MONITOR_FAULT_ROUNDS=full` runs the rounds docs/reliability.md reports
(`pytest -m faults` runs this module alone). Each round prints one line of figures.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from sla_monitor.adapters.sql import EVENTS, REJECTED, TARGETS, SqlStore
from sla_monitor.config import load_config
from sla_monitor.domain.timeutil import iso
from sla_monitor.service_layer.clock import SystemClock
from sla_monitor.service_layer.monitor import Monitor

from ..conftest import PostgresServer, free_port
from ..promstack import Alertmanager
from .test_runtime import wait_for

pytestmark = pytest.mark.faults

FULL = os.environ.get("SLA_MONITOR_FAULT_ROUNDS") == "full"
RNG = random.Random(int(os.environ.get("SLA_MONITOR_FAULT_SEED", "20261124")))
ANSWER_S = 2.0  # the phone answer target in these rounds: short, so breaches happen often

CONFIG = """
database: {{url: "{db}"}}
listen: 127.0.0.1:{port}
alerting:
  alertmanager_urls: [{am}]
  resend_interval: 2s
policy:
  rules:
    - name: phone
      match: {{channel: phone}}
      targets:
        answer: {{within: {answer}s}}
sources:
  - name: calls
    kind: jsonl
    channel: phone
    interval: 0.2
    options: {{path: "{path}", max_line_bytes: 4096}}
"""


def rounds(quick: int, full: int) -> int:
    return full if FULL else quick


# -- the parts -------------------------------------------------------------------------------


class Writer:
    """Appends calls to a jsonl file as a phone system would, with poison lines among them;
    knows what it wrote. Rotates the file as logrotate does when asked."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.ids: list[str] = []
        self.poison = 0
        self.answered: set[str] = set()
        self.calls: dict[str, datetime] = {}
        self._n = 0
        self._fh = path.open("ab", buffering=0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending_answers: list[tuple[float, str]] = []

    def _write(self, row: dict[str, Any] | bytes) -> None:
        data = row if isinstance(row, bytes) else json.dumps(row).encode()
        with self.lock:
            self._fh.write(data + b"\n")

    def call(self, answer: bool = True) -> str:
        self._n += 1
        conv = f"call-{self._n}"
        now = datetime.now(UTC)
        self.calls[conv] = now
        self.ids.append(f"{conv}-q")
        self._write(self._row(f"{conv}-q", conv, "call_queued", now))
        if answer and RNG.random() < 0.6:  # most are answered, some in time, some late
            delay = RNG.choice([0.3, 0.8, 1.2, ANSWER_S + 1.0])
            self._pending_answers.append((time.monotonic() + delay, conv))
        if RNG.random() < 0.1:
            self.poison += 1
            self._write(RNG.choice(POISON)(self._n))
        return conv

    def _row(self, eid: str, conv: str, kind: str, at: datetime) -> dict[str, Any]:
        return {
            "event_id": eid,
            "conversation_id": conv,
            "kind": kind,
            "occurred_at": iso(at),
            "channel": "phone",
            "queue": "support",
            "customer_id": f"+4420{self._n % 97:08d}",
        }

    def _answer_due(self) -> None:
        now = time.monotonic()
        due = [c for at, c in self._pending_answers if at <= now]
        self._pending_answers = [(at, c) for at, c in self._pending_answers if at > now]
        for conv in due:
            self.ids.append(f"{conv}-a")
            self.answered.add(conv)
            self._write(self._row(f"{conv}-a", conv, "call_answered", datetime.now(UTC)))

    def run(self, rate: float) -> None:
        def loop() -> None:
            while not self._stop.is_set():
                self.call()
                self._answer_due()
                self._stop.wait(1.0 / rate)

        self._stop.clear()
        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        while self._pending_answers:  # finish what was started
            time.sleep(0.05)
            self._answer_due()

    def copytruncate(self) -> None:
        # logrotate's copytruncate; the writer waits while it runs (the lines written between
        # the copy and the truncation are lost to any reader: docs/reliability.md)
        with self.lock:
            shutil.copy(self.path, self.path.with_name(self.path.name + ".1"))
            with self.path.open("r+b") as fh:
                fh.truncate(0)

    def rename(self) -> None:
        # logrotate's default: move the file aside, the writer finishes a few lines in the
        # old one, then reopens the path (its postrotate signal)
        with self.lock:
            self.path.rename(self.path.with_name(self.path.name + f".{time.time_ns()}"))
        time.sleep(0.3)
        with self.lock:
            self._fh.close()
            self._fh = self.path.open("ab", buffering=0)

    def close(self) -> None:
        self._fh.close()


POISON: list[Callable[[int], bytes]] = [
    lambda n: (
        b'{"event_id": "p%d", "kind": "call_queued", "occurred_at": "9999-12-31T23:59:59Z"'
        b', "conversation_id": "x", "queue": "support"}' % n
    ),
    lambda n: json.dumps(
        {
            "event_id": f"p{n}",
            "kind": "call_queued",
            "occurred_at": iso(datetime.now(UTC)),
            "conversation_id": "y" * 600,
            "queue": "support",
        }
    ).encode(),
    lambda n: json.dumps(
        {
            "event_id": f"p{n}",
            "kind": "call_queued",
            "occurred_at": iso(datetime.now(UTC)),
            "conversation_id": "nul\u0000",
            "queue": "support",
        }
    ).encode(),
    lambda n: b'{"event_id": "p%d", "queue": "caf\xe9"}' % n,
    lambda n: b'{"event_id": "p%d", "pad": "' % n + b"z" * 5000 + b'"}',
    lambda n: b"not json %d" % n,
]


class MonitorProcess:
    def __init__(self, tmp: Path, db: str, am: Alertmanager, events: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = tmp / "sla.yaml"
        self.config.write_text(
            CONFIG.format(db=db, port=self.port, am=am.url, answer=ANSWER_S, path=events)
        )
        self.log = tmp / "monitor.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "sla_monitor.entrypoints.cli",
                    "run",
                    "--config",
                    str(self.config),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def ready(self) -> tuple[int, str]:
        try:
            r = httpx.get(self.url + "/readyz", timeout=2)
            return r.status_code, r.text
        except httpx.HTTPError as exc:
            return 0, str(exc)

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = httpx.get(self.url + "/metrics", timeout=5).text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


# -- what every round checks -----------------------------------------------------------------

COUNTERS = (
    "sla_contacts_opened_total",
    "sla_target_outcomes_total",
    "sla_events_ingested_total",
    "sla_events_rejected_total",
    "sla_repeat_contacts_total",
)


def stored_view(db: str, config_path: Path) -> dict[str, Any]:
    """What the store holds, and the counters a monitor started on it would export."""
    store = SqlStore(db)
    try:
        m = Monitor(store, load_config(config_path), SystemClock())
        m.load()
        snap = m.snapshot()
        with store.engine.begin() as conn:
            ids = [r[0] for r in conn.execute(select(EVENTS.c.event_id))]
            rejected = int(conn.execute(select(func.count()).select_from(REJECTED)).scalar_one())
            breached_open = {
                r[0]
                for r in conn.execute(
                    select(TARGETS.c.conversation_id).where(
                        TARGETS.c.state == "breached", TARGETS.c.is_open.is_(True)
                    )
                )
            }
    finally:
        store.close()
    return {
        "ids": ids,
        "rejected": rejected,
        "breached_open": breached_open,
        "counters": {
            "sla_contacts_opened_total": sum(snap["opened"].values()),
            "sla_target_outcomes_total": sum(snap["outcomes"].values()),
            "sla_events_ingested_total": sum(snap["ingested"].values()),
            "sla_events_rejected_total": sum(snap["rejected"].values()),
            "sla_repeat_contacts_total": sum(snap["repeats"].values()),
        },
    }


def live_counters(m: MonitorProcess) -> dict[str, float]:
    samples = m.scrape()
    return {name: sum(v for (n, _), v in samples.items() if n == name) for name in COUNTERS}


def paged(am: Alertmanager) -> Counter[str]:
    return Counter(
        a["labels"]["contact"].split(":", 1)[1]
        for a in am.alerts(active="true", silenced="false", inhibited="false")
        if a["labels"]["alertname"] == "AcknowledgementLapsed"
    )


def settle_and_check(
    m: MonitorProcess, writer: Writer, am: Alertmanager, db: str, label: str
) -> dict[str, int]:
    """Let the monitor catch up, then compare what was written, stored, counted and paged."""
    written = set(writer.ids)
    last_call = max(writer.calls.values())
    wait_for(lambda: m.ready()[0] == 200, 60, f"{label}: /readyz")

    def caught_up() -> bool:
        live = live_counters(m)
        return live["sla_events_ingested_total"] >= len(written) and datetime.now(
            UTC
        ) > last_call + timedelta(seconds=ANSWER_S + 1.5)

    try:
        wait_for(caught_up, 90, f"{label}: every event ingested")
    finally:
        view = stored_view(db, m.config)
        missing = sorted(written - set(view["ids"]))
        if missing:
            print(f"\n{label}: {len(missing)} not stored, e.g. {missing[:10]}")
            print(m.log.read_text()[-3000:])
    lost = len(written - set(view["ids"]))
    doubled = len(view["ids"]) - len(set(view["ids"])) + len(set(view["ids"]) - written)
    # the same poison line read twice (a re-read after a kill) is still one rejection
    rejected_doubled = max(view["rejected"] - writer.poison, 0)
    rejected_lost = max(writer.poison - view["rejected"], 0)
    # unanswered calls are breached and open; late answers resolved their page
    should_page = {c for c in writer.calls if c not in writer.answered}
    assert view["breached_open"] == should_page, label

    def pages_settled() -> bool:
        return set(paged(am)) == should_page

    wait_for(pages_settled, 30, f"{label}: Alertmanager holds exactly the due pages")
    pages = paged(am)
    missed = len(should_page - set(pages))
    invented = len(set(pages) - should_page)
    pages_doubled = sum(n - 1 for n in pages.values())
    live = live_counters(m)
    drift = {k: (live[k], view["counters"][k]) for k in COUNTERS if live[k] != view["counters"][k]}
    figures = {
        "events": len(written),
        "lost": lost,
        "doubled": doubled,
        "poison": writer.poison,
        "rejected_doubled": rejected_doubled,
        "rejected_lost": rejected_lost,
        "pages": len(should_page),
        "missed": missed,
        "invented": invented,
        "pages_doubled": pages_doubled,
        "counter_drift": len(drift),
    }
    print(f"\n{label}: " + ", ".join(f"{k} {v}" for k, v in figures.items()))
    assert (lost, doubled, rejected_doubled, rejected_lost) == (0, 0, 0, 0), figures
    assert (missed, invented, pages_doubled) == (0, 0, 0), figures
    assert not drift, drift
    return figures


# -- the scenarios ---------------------------------------------------------------------------


def _db(kind: str, tmp: Path, request: pytest.FixtureRequest) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp / 'sla.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.new_database()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_sigkill_during_run_with_rotation_and_an_alertmanager_outage(
    kind: str, tmp_path: Path, alertmanager: Alertmanager, request: pytest.FixtureRequest
) -> None:
    db = _db(kind, tmp_path, request)
    n = rounds(3, 30) if kind == "sqlite" else rounds(2, 10)
    events = tmp_path / "calls.jsonl"
    writer = Writer(events)
    m = MonitorProcess(tmp_path, db, alertmanager, events)
    try:
        writer.run(rate=25)
        for i in range(n):
            m.start()
            if i == 0:  # the monitor tails the file before anything rotates it: what was
                # rotated away before its first read is history it never claimed to read
                wait_for(lambda: m.ready()[0] == 200, 60, "the first poll")
            time.sleep(RNG.uniform(0.5, 3.0))
            fault = i % 4
            if fault == 1:
                writer.copytruncate()
            elif fault == 2:
                writer.rename()
            elif fault == 3:  # Alertmanager down across a breach and the restart
                alertmanager.stop()
            time.sleep(RNG.uniform(0.0, 1.5))
            m.kill()
            if fault == 3:
                time.sleep(ANSWER_S)
                alertmanager.start()
        writer.stop()
        m.start()
        settle_and_check(m, writer, alertmanager, db, f"run {kind}, {n} SIGKILLs")
    finally:
        m.stop()
        writer.close()


def test_sigkill_during_ingest(
    tmp_path: Path, request: pytest.FixtureRequest, alertmanager: Alertmanager
) -> None:
    """`ingest` killed at random moments and run again: nothing lost, nothing twice."""
    for kind, n in (("sqlite", rounds(3, 30)), ("postgresql", rounds(2, 10))):
        tmp = tmp_path / kind
        tmp.mkdir()
        db = _db(kind, tmp, request)
        path = tmp / "history.jsonl"
        writer = Writer(path)
        for _ in range(4000):
            writer.call()
        writer.stop()
        writer.close()
        cfg = MonitorProcess(tmp, db, alertmanager, path).config
        cmd = [sys.executable, "-m", "sla_monitor.entrypoints.cli", "ingest", str(path)]
        cmd += ["--config", str(cfg), "--source", "calls"]
        for _ in range(n):
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(RNG.uniform(0.3, 2.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        view = stored_view(db, cfg)
        written = set(writer.ids)
        figures = {
            "events": len(written),
            "lost": len(written - set(view["ids"])),
            "doubled": len(view["ids"]) - len(written),
            "poison": writer.poison,
            "rejected": view["rejected"],
        }
        print(
            f"\ningest {kind}, {n} SIGKILLs: " + ", ".join(f"{k} {v}" for k, v in figures.items())
        )
        assert figures["lost"] == figures["doubled"] == 0, figures
        assert view["rejected"] == writer.poison, figures


@pytest.fixture
def on_own_postgres(
    tmp_path: Path, own_postgres: PostgresServer, alertmanager: Alertmanager
) -> Iterator[tuple[PostgresServer, str, Writer, MonitorProcess]]:
    """A monitor process and a writer on a PostgreSQL of the test's own (to kill or stop)."""
    db = own_postgres.new_database()
    events = tmp_path / "calls.jsonl"
    writer = Writer(events)
    m = MonitorProcess(tmp_path, db, alertmanager, events)
    try:
        yield own_postgres, db, writer, m
    finally:
        m.stop()
        writer.close()


@pytest.mark.postgres
def test_backend_kills_under_load_leave_live_counters_equal_to_the_store(
    on_own_postgres: tuple[PostgresServer, str, Writer, MonitorProcess],
    alertmanager: Alertmanager,
) -> None:
    server, db, writer, m = on_own_postgres
    import psycopg

    admin = f"host=127.0.0.1 port={server.port} user=postgres dbname=postgres"
    name = db.rsplit("/", 1)[1]
    kills = 0
    try:
        m.start()
        wait_for(lambda: m.ready()[0] == 200, 60, "/readyz")
        writer.run(rate=60)
        until = time.monotonic() + (60 if FULL else 12)
        with psycopg.connect(admin, autocommit=True) as conn:
            while time.monotonic() < until:
                time.sleep(RNG.uniform(0.05, 0.5))
                kills += len(
                    conn.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()",
                        (name,),
                    ).fetchall()
                )
        writer.stop()
        figures = settle_and_check(m, writer, alertmanager, db, f"backend kills ({kills})")
        assert kills > 0 and figures["events"] > 0
    finally:
        writer.stop()


@pytest.mark.postgres
def test_postgres_stopped_across_a_deadline_pages_once_it_is_back(
    on_own_postgres: tuple[PostgresServer, str, Writer, MonitorProcess],
    alertmanager: Alertmanager,
) -> None:
    server, db, writer, m = on_own_postgres
    try:
        m.start()
        wait_for(lambda: m.ready()[0] == 200, 60, "/readyz")
        for _ in range(rounds(1, 3)):
            call = writer.call(answer=False)
            time.sleep(0.6)  # stored, its deadline ANSWER_S away
            server.halt()
            try:
                wait_for(lambda: m.ready()[0] == 503 and "database" in m.ready()[1], 20, "503")
                samples = m.scrape()
                assert samples[("sla_source_up", (("source", "calls"),))] == 0.0
                time.sleep(ANSWER_S + 1)  # the deadline passes while the database is away
            finally:
                server.resume()
            back = time.monotonic()
            wait_for(lambda: m.ready()[0] == 200, 30, "ready again")
            wait_for(lambda c=call: c in paged(alertmanager), 30, "the page")
            print(f"\npaged {time.monotonic() - back:.1f}s after the database came back")
        writer.stop()
        settle_and_check(m, writer, alertmanager, db, "postgres outage")
        polls = m.scrape()
        assert polls[("sla_source_polls_total", (("result", "error"), ("source", "calls")))] > 0
        log = m.log.read_text()
        assert "Traceback" not in log
        assert log.count("database unavailable") == log.count("database reachable again") >= 1
    finally:
        writer.stop()
