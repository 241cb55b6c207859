"""The monitor's clock. The engine never reads time; the shell passes this clock's `now`."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

from sla_monitor.adapters.abc import Store
from sla_monitor.config import Config
from sla_monitor.domain.timeutil import from_micros, to_micros

log = logging.getLogger(__name__)


class Clock(Protocol):
    speed: float

    def now(self) -> datetime: ...

    def to_real(self, at: datetime) -> datetime:
        """The wall-clock instant at which this clock will show `at`."""
        ...


class SystemClock:
    speed = 1.0

    def now(self) -> datetime:
        return datetime.now(UTC)

    def to_real(self, at: datetime) -> datetime:
        return at


class AcceleratedClock:
    """Runs `speed` times faster than real time from `origin` (for the demo desk)."""

    def __init__(self, speed: float, origin: datetime | None = None) -> None:
        self.speed = speed
        self._real0 = time.time()
        self._origin = origin or datetime.now(UTC)

    def now(self) -> datetime:
        return self._origin + timedelta(seconds=(time.time() - self._real0) * self.speed)

    def to_real(self, at: datetime) -> datetime:
        real = self._real0 + (at - self._origin).total_seconds() / self.speed
        return datetime.fromtimestamp(real, UTC)


class FixedClock:
    """A clock that only moves when told to (tests, one-shot commands)."""

    speed = 1.0

    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at

    def to_real(self, at: datetime) -> datetime:
        return at


def demo_speed(config: Config) -> float:
    """How much faster than real time the monitor's clock runs (the demo desk's `speed`)."""
    return max(
        (float(s.options.get("speed", 1.0)) for s in config.settings.sources if s.kind == "demo"),
        default=1.0,
    )


def database_now(config: Config, store: Store, within: float) -> datetime:
    """The instant a database's monitor is at: real time, except on a demo database whose
    clock runs ahead — there, while a monitor said it was alive in the last `within`
    seconds, its last clock reading moved on at its speed; once it has stopped, the reading
    it stopped at (or the latest watermark), until real time catches up. Tools judge "now"
    by this, so `report` counts what `/metrics` counts and `replay` keeps every event."""
    real = datetime.now(UTC)
    speed = demo_speed(config)
    if speed <= 1.0:
        return real
    with store.read() as tx:
        reading = tx.cluster.clock_reading()
        marks = [s.watermark for s in tx.sources.load().values() if s.watermark]
    at = max([real, *marks])
    if reading is not None:
        seen_us, clock_us = reading
        clock = from_micros(clock_us)
        if to_micros(real) - seen_us <= within * 1_000_000:  # running: its clock moved on
            clock += (real - from_micros(seen_us)) * speed
        at = max(at, clock)
    return at


def choose_clock(config: Config, store: Store, within: float) -> Clock:
    """The demo desk may run the monitor's clock faster than real time (speed > 1)."""
    speed = demo_speed(config)
    if speed <= 1.0:
        return SystemClock()
    if any(s.kind != "demo" for s in config.settings.sources):
        log.warning("demo speed %.0fx also speeds up the clock of the other sources", speed)
    origin = database_now(config, store, within)  # a restart never moves time backwards
    log.info("demo: the monitor's clock runs %.0fx faster than real time", speed)
    return AcceleratedClock(speed, origin)
