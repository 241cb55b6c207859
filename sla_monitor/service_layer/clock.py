"""The monitor's clock. The engine never reads time; the shell passes this clock's `now`."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


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
