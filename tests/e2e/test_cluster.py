"""Three replicas on one real PostgreSQL; one is killed (SIGKILL) mid-run. No event is lost
or counted twice, every breach is paged, and the dead replica's work is taken over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sla_monitor.adapters.sql import SqlStore
from sla_monitor.domain.timeutil import iso

from ..conftest import SHIPPED_CONFIG, PostgresServer, free_port
from ..helpers import stored_events
from ..promstack import AM_CONFIG, Alertmanager

SOURCES = ["pbx-a", "pbx-b", "pbx-c"]


def wait_for(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
        except (httpx.HTTPError, OSError):
            result = None
        if result:
            return result
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def total(samples: dict[Any, float], name: str, **labels: str) -> float:
    return sum(
        v
        for (n, ls), v in samples.items()
        if n == name and all(dict(ls).get(k) == want for k, want in labels.items())
    )


def write_calls(folder: Path, batch: int, now: datetime) -> int:
    """Per source: 4 calls answered in time and 2 left waiting (each breaches its 2 s target)."""
    n = 0
    for source in SOURCES:
        with (folder / f"{source}.jsonl").open("a") as fh:
            for i in range(6):
                conv = f"{source}-{batch}-{i}"
                rows = [
                    {
                        "event_id": f"{conv}-q",
                        "conversation_id": conv,
                        "kind": "call_queued",
                        "occurred_at": iso(now),
                        "channel": "phone",
                        "queue": "support-line",
                        "customer_id": f"+44{batch:03d}{i}{source[-1]}",
                    }
                ]
                if i < 4:
                    rows.append(
                        {
                            "event_id": f"{conv}-a",
                            "conversation_id": conv,
                            "kind": "call_answered",
                            "occurred_at": iso(now + timedelta(seconds=1)),
                            "channel": "phone",
                            "queue": "support-line",
                        }
                    )
                for r in rows:
                    fh.write(json.dumps(r) + "\n")
                    n += 1
    return n


@pytest.mark.postgres
def test_three_replicas_survive_a_sigkill(postgres: PostgresServer, tmp_path: Path) -> None:
    db = postgres.new_database()
    spool = tmp_path / "spool"
    spool.mkdir()
    for source in SOURCES:
        (spool / f"{source}.jsonl").touch()
    am = Alertmanager(AM_CONFIG)
    am.start()
    config = tmp_path / "cluster.yaml"
    sources = "".join(
        f"""  - name: {s}
    kind: jsonl
    interval: 300ms
    options: {{path: {spool / (s + ".jsonl")}}}
"""
        for s in SOURCES
    )
    config.write_text(
        SHIPPED_CONFIG.read_text()
        .replace("answer: {within: 20s, warn_before: 10s}", "answer: {within: 2s}")
        .split("sources:")[0]
        + "cluster: {enabled: true, lease_ttl: 3s}\n"
        + f"alerting: {{alertmanager_urls: [{am.url}]}}\n"
        + "sources:\n"
        + sources
    )
    SqlStore(db).migrate()
    replicas: dict[int, subprocess.Popen[bytes]] = {}
    logs = []
    for i in range(3):
        port = free_port()
        log = (tmp_path / f"replica-{i}.log").open("wb")
        logs.append(log)
        replicas[port] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sla_monitor.entrypoints.cli",
                "run",
                "--config",
                str(config),
                "--db",
                db,
                "--listen",
                f"127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:

        def owners() -> dict[str, int]:
            out: dict[str, int] = {}
            for port in replicas:
                for (name, labels), value in scrape(port).items():
                    if name == "sla_source_up" and value == 1:
                        out[dict(labels)["source"]] = port
            return out

        def leader() -> int | None:
            # only the leader exports contact metrics (the detection-delay histogram is
            # always there, even before any contact)
            leaders = [
                p
                for p in replicas
                if any(n == "sla_breach_detection_delay_seconds_count" for n, _ in scrape(p))
            ]
            return leaders[0] if len(leaders) == 1 else None

        wait_for("every source owned", lambda: len(owners()) == 3, 40)
        lead = wait_for("one leader", leader, 30)
        written = 0
        for batch in range(3):
            written += write_calls(spool, batch, datetime.now(UTC))
            time.sleep(0.5)
        # kill the leader (it also polls a source): no goodbye, leases just stop
        victim_sources = [s for s, p in owners().items() if p == lead]
        replicas[lead].send_signal(signal.SIGKILL)
        replicas[lead].wait()
        dead = replicas.pop(lead)
        del dead
        for batch in range(3, 6):
            written += write_calls(spool, batch, datetime.now(UTC))
            time.sleep(0.5)

        # the survivors take over every source, including the dead replica's
        def all_owned() -> dict[str, int] | None:
            o = owners()
            return o if len(o) == 3 and set(o.values()) <= set(replicas) else None

        owned = wait_for("sources taken over", all_owned, 40)
        assert set(owned.values()) <= set(replicas) and victim_sources
        new_lead = wait_for("a new leader", leader, 30)
        assert new_lead in replicas

        store = SqlStore(db)

        def all_in() -> bool:
            with store.begin() as conn:
                return stored_events(conn) == written

        wait_for("every event stored", all_in, 40)

        expected_breaches = {f"{s}:{s}-{b}-{i}" for s in SOURCES for b in range(6) for i in (4, 5)}

        def counted() -> bool:
            try:
                samples = [scrape(p) for p in replicas]
            except Exception as exc:
                last["error"] = repr(exc)
                raise
            ingested = sum(total(s, "sla_events_ingested_total") for s in samples)
            breached = sum(
                total(s, "sla_target_outcomes_total", outcome="breached") for s in samples
            )
            opened = sum(total(s, "sla_contacts_opened_total") for s in samples)
            last["sums"] = (ingested, written, breached, len(expected_breaches), opened)
            return (
                ingested == written and breached == len(expected_breaches) and opened == 6 * 6 * 3
            )

        last: dict[str, Any] = {}
        try:
            wait_for("metrics that sum to the truth across replicas", counted, 40)
        except AssertionError:
            with store.engine.connect() as conn:
                rows = conn.exec_driver_sql(
                    "SELECT t.conversation_id, t.state, t.outcome, t.is_open, t.deadline_us,"
                    " c.next_wake_us, c.awaiting_us FROM targets t JOIN contacts c USING"
                    " (source, conversation_id) WHERE t.outcome IS DISTINCT FROM 'met'"
                ).all()
                dirty = conn.exec_driver_sql("SELECT count(*) FROM dirty_contacts").scalar()
            raise AssertionError(
                f"ingested, written, breached, expected, opened, expected: {last}; "
                f"dirty {dirty}; not met: {rows}"
            ) from None

        # no event stored twice
        with store.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT count(*), count(DISTINCT (source, event_id)) FROM events"
            ).one()
        assert rows[0] == rows[1] == written

        # every breach paged: Alertmanager holds exactly the calls left waiting
        def paged() -> set[str]:
            return {
                a["labels"]["contact"]
                for a in am.alerts()
                if a["labels"]["alertname"] == "AcknowledgementLapsed"
            }

        wait_for("every breach in Alertmanager", lambda: paged() == expected_breaches, 40)
        store.close()
    finally:
        for proc in replicas.values():
            proc.send_signal(signal.SIGTERM)
        for proc in replicas.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs:
            log.close()
        am.cleanup()
