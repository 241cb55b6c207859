"""Long commands say how far they are and how long is left (ingest, replay)."""

from __future__ import annotations

import gzip
from pathlib import Path

from sla_monitor.entrypoints import render
from sla_monitor.service_layer.ingest import ImportSummary
from sla_monitor.sources.jsonl import EventFile


def test_share_done_and_time_left_at_the_rate_so_far() -> None:
    assert render.progress(25, 100, 10.0) == "25%, about 30s left"
    assert render.progress(3, 4, 90.0) == "75%, about 30s left"
    assert render.progress(0, 100, 0.0) == "starting"
    line = render.ingest_progress(1200, ImportSummary(), 50, 200, 60.0)
    assert line.startswith("ingest: 25%, about 3m left — 1,200 lines")


def test_an_event_file_says_how_far_it_has_read_even_compressed(tmp_path: Path) -> None:
    line = b'{"event_id": "e", "conversation_id": "c", "kind": "customer_message", '
    line += b'"occurred_at": "2026-11-02T09:00:00Z", "channel": "email", "queue": "q"}\n'
    for name, opener in (("a.jsonl", open), ("a.jsonl.gz", gzip.open)):
        path = tmp_path / name
        with opener(path, "wb") as fh:
            for i in range(2000):
                fh.write(line.replace(b'"e"', f'"e{i}"'.encode()))
        events = EventFile(path, "s", 10_000)
        seen = []
        for i, _item in enumerate(events):
            if i in (0, 999):
                seen.append(events.position)
        assert events.position == events.size == path.stat().st_size, name
        assert 0 < seen[0] <= seen[1] <= events.size
        if name.endswith(".jsonl"):  # compressed, it is read in blocks: no finer than those
            assert seen[1] < events.size
