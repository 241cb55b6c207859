"""Every contact can end (issue 11), end to end through the real `ingest` and
`check-config` commands: idle contacts close, calls end with a callback, and contacts no
rule takes are counted and warned about."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sla_monitor.adapters.sql import SqlStore
from sla_monitor.config import load_config
from sla_monitor.domain.timeutil import iso
from sla_monitor.service_layer.clock import FixedClock
from sla_monitor.service_layer.monitor import Monitor

from ..conftest import SHIPPED_CONFIG

T = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)  # a Monday


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sla_monitor.entrypoints.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def config(tmp: Path) -> Path:
    text = (
        SHIPPED_CONFIG.read_text()
        .replace(
            "match: {channel: [email, chat]}", "match: {channel: email}\n      close_after: 2d"
        )
        .split("\nsources:")[0]
        + "\nsources:\n  - name: desk\n    kind: jsonl\n    channel: chat\n    queues: [sales]\n"
        + f"    options: {{path: {tmp / 'none.jsonl'}}}\n"
    )
    (tmp / "none.jsonl").touch()  # check-config finds a missing file (issue 15)
    path = tmp / "sla.yaml"
    path.write_text(text)
    return path


def row(eid: str, conv: str, kind: str, at: datetime, channel: str, **kw: Any) -> str:
    return json.dumps(
        {
            "source": "desk",
            "event_id": eid,
            "conversation_id": conv,
            "kind": kind,
            "occurred_at": iso(at),
            "channel": channel,
            "queue": kw.pop("queue", "support"),
            "customer_id": kw.pop("customer", f"cust-{conv}"),
            **kw,
        }
    )


def test_contacts_end_and_unmatched_ones_are_counted(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    check = cli("check-config", "--config", str(cfg))
    assert check.returncode == 0
    assert "sources[0] (desk): no policy rule matches queue 'sales' of channel 'chat'" in (
        check.stderr
    )
    m = timedelta(minutes=1)
    lines = [
        # a mail answered, then "thanks!": next_reply starts, nobody answers a thank-you
        row("e1", "mail-1", "customer_message", T, "email"),
        row("e2", "mail-1", "agent_reply", T + 30 * m, "email"),
        row("e3", "mail-1", "customer_message", T + 40 * m, "email"),
        # a call the caller leaves for a callback after the 20 s deadline
        row("p1", "call-1", "call_queued", T, "phone"),
        row("p2", "call-1", "callback_requested", T + timedelta(seconds=35), "phone"),
        # a call that chose a callback before its deadline
        row("p3", "call-2", "call_queued", T, "phone"),
        row("p4", "call-2", "callback_requested", T + timedelta(seconds=8), "phone"),
        # a chat no rule takes
        row("c1", "chat-1", "customer_message", T, "chat", queue="sales"),
    ]
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(lines) + "\n")
    db = f"sqlite:///{tmp_path / 'sla.db'}"
    done = cli(
        "ingest",
        str(events),
        "--config",
        str(cfg),
        "--db",
        db,
        "--watermark",
        iso(T + 3 * 24 * 60 * m),
    )
    assert done.returncode == 0, done.stderr

    store = SqlStore(db)
    monitor = Monitor(store, load_config(cfg), FixedClock(T + timedelta(days=3)))
    monitor.load()
    snap = monitor.snapshot()
    assert not any(snap["open_counts"].values())  # nothing stays open once contacts ended
    outcomes = {k: n for k, n in snap["outcomes"].items() if n}
    assert outcomes[("phone", "support", "none", "answer", "breached")] == 1
    assert outcomes[("phone", "support", "none", "answer", "cancelled")] == 1
    assert outcomes[("email", "support", "none", "first_reply", "met")] == 1
    # 4 business hours from 09:40 lapsed at 13:40, before the close two days later
    assert outcomes[("email", "support", "none", "next_reply", "breached")] == 1
    assert snap["unmatched"] == {("chat", "sales"): 1}
    assert snap["opened"][("chat", "sales", "none")] == 1
    store.close()
