"""The monitor's clock. The engine never reads time; the shell passes this clock's `now`."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

from sla_monitor.adapters.abc import Store
from sla_monitor.config import Config

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


def choose_clock(config: Config, store: Store) -> Clock:
    """The demo desk may run the monitor's clock faster than real time (speed > 1)."""
    speed = max(
        (float(s.options.get("speed", 1.0)) for s in config.settings.sources if s.kind == "demo"),
        default=1.0,
    )
    if speed <= 1.0:
        return SystemClock()
    if any(s.kind != "demo" for s in config.settings.sources):
        log.warning("demo speed %.0fx also speeds up the clock of the other sources", speed)
    with store.begin() as tx:
        marks = [s.watermark for s in tx.sources.load().values() if s.watermark]
    origin = max([datetime.now(UTC), *marks])  # never let a restart move time backwards
    log.info("demo: the monitor's clock runs %.0fx faster than real time", speed)
    return AcceleratedClock(speed, origin)
