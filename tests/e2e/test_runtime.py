"""The monitor as a user runs it: a real process, real HTTP, the real scheduler."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from sla_monitor.bootstrap import build_app
from sla_monitor.domain.timeutil import iso
from sla_monitor.entrypoints.http import MetricsServer

from ..conftest import SHIPPED_CONFIG, free_port

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    text = httpx.get(url, timeout=5).text
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(
        v
        for (n, ls), v in samples.items()
        if n == name and all(dict(ls).get(k) == want for k, want in labels.items())
    )


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@contextmanager
def monitor_process(tmp: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    cmd = [
        sys.executable,
        "-m",
        "sla_monitor.entrypoints.cli",
        "run",
        "--config",
        str(SHIPPED_CONFIG),
        "--db",
        f"sqlite:///{tmp / 'sla.db'}",
        "--listen",
        f"127.0.0.1:{port}",
    ]
    proc = subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_quick_start_shows_every_metric_within_a_minute_and_survives_restart(
    tmp_path: Path,
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    needed = {}

    def all_moving() -> bool:
        s = scrape(base + "/metrics")
        needed.update(
            opened=total(s, "sla_contacts_opened_total"),
            met=total(s, "sla_target_outcomes_total", outcome="met"),
            breached=total(s, "sla_target_outcomes_total", outcome="breached"),
            open_targets=total(s, "sla_open_targets"),
            buckets=total(s, "sla_response_seconds_bucket"),
            up=total(s, "sla_source_up", source="demo"),
            repeats=total(s, "sla_repeat_contacts_total"),
        )
        return all(needed.values())

    with monitor_process(tmp_path, port) as proc:
        wait_for(all_moving, 60, "every metric to move")  # the README promises: within a minute
        assert httpx.get(base + "/healthz").status_code == 200
        wait_for(lambda: httpx.get(base + "/readyz").status_code == 200, 10, "/readyz")
        before = scrape(base + "/metrics")
        # timestamps are on the wall clock, though the demo's runs 60x faster: a wait or
        # a lag computed as time() - x on a dashboard is never negative
        stamps = {k: v for k, v in before.items() if k[0].endswith("_timestamp_seconds")}
        assert {k[0] for k in stamps} >= {
            "sla_oldest_open_target_start_timestamp_seconds",
            "sla_source_last_success_timestamp_seconds",
            "sla_source_watermark_timestamp_seconds",
        }
        scraped_at = time.time()
        assert all(v <= scraped_at for v in stamps.values()), stamps
        # series are complete: a zero for every configured target of every queue seen
        wanted = {"channel": "phone", "queue": "sales-line", "state": "paused", "target": "answer"}
        assert any(
            name == "sla_open_targets" and wanted.items() <= dict(labels).items()
            for name, labels in before
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    # counters come from the store: a restart does not reset them
    port2 = free_port()
    with monitor_process(tmp_path, port2):
        base2 = f"http://127.0.0.1:{port2}"
        wait_for(lambda: httpx.get(base2 + "/readyz").status_code == 200, 30, "restart")
        after = scrape(base2 + "/metrics")
        for name in (
            "sla_contacts_opened_total",
            "sla_target_outcomes_total",
            "sla_events_ingested_total",
            "sla_source_polls_total",
        ):
            assert total(after, name) >= total(before, name) > 0, name


def test_breach_is_published_at_its_deadline_without_a_poll(tmp_path: Path) -> None:
    """The monitor wakes at the deadline itself: the only poll happens long before it."""
    now = datetime.now(UTC)
    events = tmp_path / "events.jsonl"
    rows = [
        {
            "event_id": "q1",
            "conversation_id": "call-1",
            "kind": "call_queued",
            "occurred_at": iso(now),
            "channel": "phone",
            "queue": "support-line",
        },
        # the source vouches for everything up to a minute from now (latest_event watermark)
        {
            "event_id": "h1",
            "conversation_id": "other",
            "kind": "customer_message",
            "occurred_at": iso(now + timedelta(minutes=1)),
            "channel": "email",
            "queue": "billing",
        },
    ]
    events.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tmp_path / "c.yaml"
    config.write_text(
        SHIPPED_CONFIG.read_text()
        .replace("answer: {within: 20s, warn_before: 10s}", "answer: {within: 3s}")
        .split("sources:")[0]
        + f"""sources:
  - name: pbx
    kind: jsonl
    interval: 1h
    options: {{path: {events}, watermark: latest_event}}
"""
    )
    port = free_port()
    app = build_app(
        str(config), f"sqlite:///{tmp_path / 'db.sqlite'}", f"127.0.0.1:{port}", serve=MetricsServer
    )
    app.start()
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        wait_for(
            lambda: (
                total(scrape(url), "sla_target_outcomes_total", target="answer", outcome="breached")
                == 1
            ),
            30,
            "the breach",
        )
        s = scrape(url)
        assert total(s, "sla_source_polls_total") == 1  # found by the wake-up, not by polling
        assert total(s, "sla_open_targets", target="answer", state="breached") == 1
        assert total(s, "sla_breach_detection_delay_seconds_count") == 1
        # published within a second of becoming knowable
        assert total(s, "sla_breach_detection_delay_seconds_bucket", le="1") == 1
    finally:
        app.stop()


def test_run_refuses_a_broken_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(SHIPPED_CONFIG.read_text().replace("interval: 1s", "interval: often"))
    proc = subprocess.run(
        [sys.executable, "-m", "sla_monitor.entrypoints.cli", "run", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    assert proc.returncode == 2
    assert "sources[0].interval: not a duration: 'often'" in proc.stderr
