"""The two vendor-free sources: jsonl (incremental file reading) and demo (simulated desk)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sla_monitor.domain.events import EventKind
from sla_monitor.domain.timeutil import iso
from sla_monitor.sources.abc import SourceContext
from sla_monitor.sources.demo import DemoOptions, DemoSource
from sla_monitor.sources.jsonl import JsonlOptions, JsonlSource

NOW = datetime(2026, 11, 2, 12, tzinfo=UTC)


def line(i: int, conv: str = "c") -> str:
    return (
        json.dumps(
            {
                "event_id": f"e{i}",
                "conversation_id": conv,
                "kind": "customer_message",
                "occurred_at": iso(NOW + timedelta(seconds=i)),
                "channel": "email",
                "queue": "q",
            }
        )
        + "\n"
    )


def jsonl(path: Path, **opts: object) -> JsonlSource:
    return JsonlSource(SourceContext("files", None, ()), JsonlOptions(path=str(path), **opts))  # type: ignore[arg-type]


class TestJsonl:
    def test_reads_growth_incrementally_and_waits_for_a_half_written_line(
        self, tmp_path: Path
    ) -> None:
        f = tmp_path / "events.jsonl"
        f.write_text(line(1) + line(2) + line(3)[:20])
        src = jsonl(f)
        r1 = src.poll(None, NOW)
        assert [e.event_id for e in r1.events] == ["e1", "e2"]
        assert r1.watermark == NOW
        with f.open("a") as fh:
            fh.write(line(3)[20:] + line(4))
        r2 = src.poll(r1.cursor, NOW)
        assert [e.event_id for e in r2.events] == ["e3", "e4"]
        assert src.poll(r2.cursor, NOW).events == []

    def test_truncation_reads_from_the_start(self, tmp_path: Path) -> None:
        f = tmp_path / "events.jsonl"
        f.write_text("".join(line(i) for i in range(5)))
        src = jsonl(f)
        r1 = src.poll(None, NOW)
        f.write_text(line(10))
        assert [e.event_id for e in src.poll(r1.cursor, NOW).events] == ["e10"]

    def test_rotation_reads_the_rest_of_the_old_file_then_the_new_one(self, tmp_path: Path) -> None:
        f = tmp_path / "events.jsonl"
        f.write_text(line(1))
        src = jsonl(f)
        r1 = src.poll(None, NOW)
        with f.open("a") as fh:
            fh.write(line(2))  # written just before rotation, not yet read
        os.rename(f, tmp_path / "events.jsonl.1")
        f.write_text(line(3))
        r2 = src.poll(r1.cursor, NOW)
        assert [e.event_id for e in r2.events] == ["e2", "e3"]

    def test_a_malformed_line_is_set_aside_with_its_place(self, tmp_path: Path) -> None:
        f = tmp_path / "events.jsonl"
        f.write_text(line(1) + '{"kind": "telepathy"}\n' + line(2))
        r = jsonl(f).poll(None, NOW)
        assert [e.event_id for e in r.events] == ["e1", "e2"]
        assert len(r.rejected) == 1 and r.rejected[0].detail.startswith(f"{f}:2:")

    def test_folder_of_files_and_a_budget_per_poll(self, tmp_path: Path) -> None:
        (tmp_path / "a.jsonl").write_text(line(1, "a") + line(2, "a"))
        (tmp_path / "b.jsonl").write_text(line(3, "b"))
        (tmp_path / "ignored.txt").write_text(line(4))
        src = jsonl(tmp_path, max_lines_per_poll=2)
        r1 = src.poll(None, NOW)
        assert len(r1.events) == 2 and r1.more and r1.watermark is None  # not read completely
        r2 = src.poll(r1.cursor, NOW)
        assert [e.event_id for e in r2.events] == ["e3"] and not r2.more and r2.watermark == NOW

    def test_latest_event_watermark(self, tmp_path: Path) -> None:
        f = tmp_path / "events.jsonl"
        f.write_text(line(1) + line(5))
        r = jsonl(f, watermark="latest_event").poll(None, NOW)
        assert r.watermark == NOW + timedelta(seconds=5)


def demo(**opts: object) -> DemoSource:
    return DemoSource(SourceContext("demo", None, ()), DemoOptions(**opts))  # type: ignore[arg-type]


class TestDemo:
    def test_same_seed_same_events_whatever_the_poll_timing(self) -> None:
        one = demo(seed=7).poll(None, NOW)
        src = demo(seed=7)
        cursor, events = None, []
        for minutes in range(0, 61, 7):  # many small polls ...
            r = src.poll(cursor, NOW - timedelta(hours=3) + timedelta(minutes=180 * minutes / 60))
            cursor = r.cursor
            events += r.events
        r = src.poll(cursor, NOW)
        events += r.events
        key = lambda e: (e.conversation_id, e.event_id)  # noqa: E731
        # ... give what one big poll gives (the first poll back-fills 3h of history)
        first_at = NOW - timedelta(hours=3)
        events = [e for e in events if e.occurred_at > first_at]
        assert len(events) > 100
        assert sorted(events, key=key) == sorted(one.events, key=key)
        assert len({e.event_id for e in events}) == len(events)
        assert demo(seed=8).poll(None, NOW).events != one.events

    def test_the_desk_shows_every_kind_of_traffic(self) -> None:
        r = demo(seed=42, contacts_per_hour=240).poll(None, NOW)
        kinds = {e.kind for e in r.events}
        assert kinds >= {
            EventKind.CUSTOMER_MESSAGE,
            EventKind.AUTO_REPLY,
            EventKind.AGENT_REPLY,
            EventKind.CALL_QUEUED,
            EventKind.CALL_ANSWERED,
            EventKind.CALL_ABANDONED,
            EventKind.STATUS_CHANGED,
        }
        assert {e.channel.value for e in r.events} == {"email", "phone", "social"}
        assert all(e.occurred_at <= NOW for e in r.events)
        assert r.watermark == NOW


@pytest.mark.parametrize(
    ("kind", "options", "secret"),
    [
        ("freshdesk", {"domain": "acme"}, "api_key"),
        ("helpscout", {"app_id": "app"}, "app_secret"),
        ("front", {}, "token"),
        ("intercom", {}, "token"),
    ],
)
def test_check_config_names_an_unreadable_helpdesk_secret(
    kind: str, options: dict[str, object], secret: str
) -> None:
    """`check-config` (preflight) finds what `run` would fail on, for every helpdesk."""
    from sla_monitor.sources import preflight_source

    problems = preflight_source(kind, {**options, secret: {"env": "SLA_TEST_UNSET_SECRET"}})
    assert problems == [
        (
            ("options", secret),
            "environment variable SLA_TEST_UNSET_SECRET is not set "
            f"(a secret {secret} is read from it)",
        )
    ]
    assert preflight_source(kind, {**options, "nonsense": 1})  # unknown keys are named too
