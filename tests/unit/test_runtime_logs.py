"""Logs say when something changes, once: a source that stays down for an hour is one
line when it goes down and one when it comes back, not a line per retry."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest

from sla_monitor.adapters.abc import Store
from sla_monitor.config import Config
from sla_monitor.service_layer.clock import FixedClock
from sla_monitor.service_layer.monitor import Monitor
from sla_monitor.service_layer.runtime import Runtime
from sla_monitor.sources.abc import PollResult, SourceError

from ..helpers import at


class Flaky:
    """A source that fails with the errors it is given, then answers."""

    name = "desk"

    def __init__(self, errors: list[Exception]) -> None:
        self.errors = errors

    def poll(self, cursor: str | None, now: object) -> PollResult:
        if self.errors:
            raise self.errors.pop(0)
        return PollResult([], cursor="1", watermark=at(hours=1))


def test_a_source_down_for_many_polls_is_logged_when_it_changes(
    store: Store, shipped_config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    source = shipped_config.settings.sources[0].model_copy(
        update={"name": "desk", "interval": timedelta(seconds=30)}
    )
    monitor = Monitor(store, shipped_config, FixedClock(at(hours=2)))
    monitor.load()
    refused = [SourceError("HTTP 503 from desk.example.com") for _ in range(6)]
    timeout = [SourceError("timed out after 10s") for _ in range(3)]
    flaky = Flaky([*refused, *timeout])
    runtime = Runtime(shipped_config, store, monitor.clock, monitor, {"desk": (flaky, source)})  # type: ignore[dict-item]
    caplog.set_level(logging.INFO, logger="sla_monitor")
    for _ in range(10):
        runtime.poll("desk")
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if "desk" in r.getMessage()]
    assert [level for level, _ in lines] == ["ERROR", "WARNING", "INFO"], lines
    assert "source desk is down" in lines[0][1] and "HTTP 503" in lines[0][1]
    assert "timed out" in lines[1][1]  # still down, for another reason
    assert "source desk is up again after 9 failed polls" in lines[2][1]
