"""The demo's clock runs ahead of real time; every consumer of a demo database must still
see the same truth: `report`, `replay` and `explain` judge it at the instant its monitor is
at, not at the wall clock (which once hid most outcomes and made `replay` drop contacts)."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
from pathlib import Path

import httpx

from ..conftest import free_port
from .test_cli_errors import SCRIPT, with_sources
from .test_runtime import scrape, total, wait_for

FAST_DEMO = """\
  - name: demo
    kind: demo
    interval: 1s
    queues: []
    options: {seed: 7, speed: 3600, contacts_per_hour: 120, history: 1h}
"""


def run_monitor(config: Path, db: str, port: int) -> subprocess.Popen[bytes]:
    cmd = [SCRIPT, "run", "--config", str(config)]
    cmd += ["--db", db, "--listen", f"127.0.0.1:{port}"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def cli_json(*args: str) -> dict[str, object]:
    cmd = [SCRIPT, *args, "--format", "json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def outcomes(report: dict[str, object]) -> dict[str, int]:
    rows = report["targets"]
    assert isinstance(rows, list)
    return {o: sum(r[o] for r in rows) for o in ("met", "breached")}


def test_report_replay_and_explain_judge_a_demo_database_at_its_monitors_clock(
    tmp_path: Path,
) -> None:
    file = tmp_path / "sla.db"
    db = f"sqlite:///{file}"
    demo = with_sources(tmp_path, FAST_DEMO)
    port = free_port()
    proc = run_monitor(demo, db, port)
    try:
        # an hour of desk time a second: let it get a few hours ahead of the wall clock
        wait_for(
            lambda: (
                total(scrape(f"http://127.0.0.1:{port}/metrics"), "sla_contacts_opened_total") > 400
            ),
            60,
            "the demo desk to run a few hours ahead",
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()

    reported = outcomes(cli_json("report", "--config", str(demo), "--db", db))

    # what /metrics shows for this database, with nothing polled or decided since the stop
    # (the same policy, no source: the counts come from the store as the monitor left them)
    port = free_port()
    (tmp_path / "quiet").mkdir()
    quiet = run_monitor(with_sources(tmp_path / "quiet", "  []\n"), db, port)
    try:
        wait_for(
            lambda: httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200, 60, "readyz"
        )
        metrics = scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        quiet.send_signal(signal.SIGTERM)
        quiet.wait(timeout=30)
    shown = {
        o: int(total(metrics, "sla_target_outcomes_total", outcome=o)) for o in ("met", "breached")
    }
    assert shown["met"] > 100 and shown["breached"] > 10
    assert reported == shown

    # replay keeps every contact (it once cut them to those the wall clock had reached)
    with sqlite3.connect(file) as conn:
        contacts = conn.execute("SELECT count(*) FROM contacts").fetchone()[0]
        source, newest = conn.execute(
            "SELECT source, conversation_id FROM events ORDER BY occurred_us DESC LIMIT 1"
        ).fetchone()
        stored = conn.execute(
            "SELECT count(*) FROM events WHERE source = ? AND conversation_id = ?",
            (source, newest),
        ).fetchone()[0]
    cmd = [SCRIPT, "replay", "--config", str(demo)]
    done = subprocess.run([*cmd, "--db", db, "--workers", "1"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(file) as conn:
        assert conn.execute("SELECT count(*) FROM contacts").fetchone()[0] == contacts
    assert outcomes(cli_json("report", "--config", str(demo), "--db", db)) == shown

    # explain sees every event of the newest contact as having happened
    explained = cli_json("explain", f"{source}:{newest}", "--config", str(demo), "--db", db)
    events = explained["events"]
    assert isinstance(events, list) and len(events) == stored
