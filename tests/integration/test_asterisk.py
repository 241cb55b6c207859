"""Asterisk queue_log: tailing (rotation, truncation, half-written lines) and a day of calls."""

from __future__ import annotations

import os
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sla_monitor.adapters.sql import SqlStore
from sla_monitor.config import Config
from sla_monitor.domain.events import EventKind
from sla_monitor.service_layer.clock import FixedClock
from sla_monitor.service_layer.monitor import Monitor
from sla_monitor.service_layer.recompute import report
from sla_monitor.sources.abc import SourceContext
from sla_monitor.sources.asterisk import AsteriskOptions, AsteriskQueueLogSource

DAY = datetime(2026, 11, 2, tzinfo=UTC)
EPOCH = int(DAY.timestamp())


def source(path: Path) -> AsteriskQueueLogSource:
    return AsteriskQueueLogSource(SourceContext("pbx", None, ()), AsteriskOptions(path=str(path)))


def call(
    uid: str, t: int, wait: int, end: str, queue: str = "support", caller: str = "+4420"
) -> str:
    lines = [f"{t}|{uid}|{queue}|NONE|ENTERQUEUE||{caller}|1"]
    if end == "CONNECT":
        lines.append(f"{t + wait}|{uid}|{queue}|SIP/agent1|CONNECT|{wait}|{uid}.2|3")
        lines.append(f"{t + wait + 120}|{uid}|{queue}|SIP/agent1|COMPLETECALLER|{wait}|120|1")
    else:
        lines.append(f"{t + wait}|{uid}|{queue}|NONE|{end}|1|1|{wait}")
    return "".join(line + "\n" for line in lines)


def test_maps_events_and_keeps_the_caller_and_reason(tmp_path: Path) -> None:
    log = tmp_path / "queue_log"
    log.write_text(
        f"{EPOCH}|NONE|NONE|NONE|QUEUESTART|\n"
        + call("1.1", EPOCH, 8, "CONNECT", caller="+441234")
        + call("1.2", EPOCH + 60, 40, "EXITWITHTIMEOUT")
        + f"{EPOCH + 99}|1.3|support|SIP/a|RINGNOANSWER|2000\n"
        + "garbage line\n"
    )
    r = source(log).poll(None, DAY + timedelta(days=1))
    kinds = [(e.conversation_id, e.kind, e.reason) for e in r.events]
    assert kinds == [
        ("1.1", EventKind.CALL_QUEUED, None),
        ("1.1", EventKind.CALL_ANSWERED, None),
        ("1.1", EventKind.STATUS_CHANGED, None),
        ("1.2", EventKind.CALL_QUEUED, None),
        ("1.2", EventKind.CALL_ABANDONED, "EXITWITHTIMEOUT"),
    ]
    assert r.events[0].customer_id == "+441234" and r.events[0].queue == "support"
    assert [e.agent for e in r.events] == [None, "SIP/agent1", None, None, None]  # who took it
    assert [x.reason for x in r.rejected] == ["malformed"]
    assert r.rejected[0].detail.startswith(f"{log}:8:")


def test_rotation_truncation_and_a_partial_last_line(tmp_path: Path) -> None:
    log = tmp_path / "queue_log"
    src = source(log)
    first = call("2.1", EPOCH, 5, "CONNECT")
    second = call("2.2", EPOCH + 100, 30, "ABANDON")
    log.write_text(first + second[:25])  # Asterisk is mid-write
    r1 = src.poll(None, DAY)
    assert {e.conversation_id for e in r1.events} == {"2.1"}
    with log.open("a") as fh:
        fh.write(second[25:])
    os.rename(log, tmp_path / "queue_log.1")  # logrotate
    log.write_text(call("2.3", EPOCH + 200, 3, "ABANDON"))
    r2 = src.poll(r1.cursor, DAY)
    assert [e.conversation_id for e in r2.events] == ["2.2", "2.2", "2.3", "2.3"]
    log.write_text(call("2.4", EPOCH + 300, 3, "CONNECT")[:40])  # truncated (copytruncate)
    r3 = src.poll(r2.cursor, DAY)
    assert r3.events == []
    log.write_text(call("2.4", EPOCH + 300, 3, "CONNECT"))
    r4 = src.poll(r3.cursor, DAY)
    assert [e.kind for e in r4.events][:2] == [EventKind.CALL_QUEUED, EventKind.CALL_ANSWERED]
    assert src.poll(r4.cursor, DAY).events == []


def test_service_level_for_a_day_of_calls(tmp_path: Path, shipped_config: Config) -> None:
    rnd = random.Random(2026)
    log = tmp_path / "queue_log"
    answered_in_time = answered_late = abandoned_late = abandoned_early = short = 0
    with log.open("w") as fh:
        for i in range(600):
            t = EPOCH + 8 * 3600 + i * 60 + rnd.randrange(30)
            wait = rnd.randrange(1, 60)
            end = rnd.choices(
                ["CONNECT", "ABANDON", "EXITWITHTIMEOUT", "EXITEMPTY"], [75, 15, 5, 5]
            )[0]
            fh.write(call(f"{t}.{i}", t, wait, end, caller=f"+44{i:07d}"))
            if end == "CONNECT":
                answered_in_time += wait <= 20
                answered_late += wait > 20
            elif wait <= 5:
                short += 1
            elif wait < 20:
                abandoned_early += 1
            else:
                abandoned_late += 1
    db = SqlStore(f"sqlite:///{tmp_path / 'pbx.db'}")
    db.migrate()
    monitor = Monitor(db, shipped_config, FixedClock(DAY + timedelta(days=1)))
    monitor.load()
    src = AsteriskQueueLogSource(
        SourceContext("pbx", None, ()), AsteriskOptions(path=str(log), max_lines_per_poll=500)
    )
    cursor = None
    while True:  # small pages, as a long-running monitor would read them
        result = src.poll(cursor, DAY + timedelta(days=1))
        monitor.apply_poll("pbx", "asterisk_queue_log", result, 0.0)
        cursor = result.cursor
        if not result.more:
            break
    r = report(db, shipped_config, DAY + timedelta(days=1), DAY, DAY + timedelta(days=1))
    row = next(x for x in r["targets"] if x["target"] == "answer")
    assert (row["met"], row["breached"], row["abandoned"], row["abandoned_short"]) == (
        answered_in_time,
        answered_late + abandoned_late,
        abandoned_early,
        short,
    )
    expected = answered_in_time / (answered_in_time + answered_late + abandoned_late)
    assert r["service_level"][0]["value"] == round(expected, 4)
    db.close()


def test_a_wrong_path_is_a_failed_poll_not_silence(tmp_path: Path, shipped_config: Config) -> None:
    """A queue_log path that does not exist reads as "no calls" unless it is reported: the
    poll fails (the source goes down, its watermark stays); the same for a jsonl path."""
    import pytest

    from sla_monitor.sources.abc import SourceError
    from sla_monitor.sources.jsonl import JsonlOptions, JsonlSource

    wrong = tmp_path / "asterisk" / "queue_log"
    with pytest.raises(SourceError, match="no such file or folder"):
        source(wrong).poll(None, DAY)
    jsonl = JsonlSource(SourceContext("files", None, ()), JsonlOptions(path=str(tmp_path / "x")))
    with pytest.raises(SourceError, match="no such file or folder"):
        jsonl.poll(None, DAY)
    # once read, a file gone for a moment (a rename rotation) is not an error
    wrong.parent.mkdir()
    wrong.write_text(call("1.1", EPOCH, 8, "CONNECT"))
    first = source(wrong).poll(None, DAY + timedelta(days=1))
    assert len(first.events) == 3
    wrong.rename(tmp_path / "asterisk" / "queue_log.1")
    assert source(wrong).poll(first.cursor, DAY + timedelta(days=1)).events == []
