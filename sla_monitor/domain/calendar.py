"""Target clocks: continuous (24x7) time, and business calendars.

A business calendar is weekly open hours in an IANA time zone, minus holidays and one-off
breaks, plus extra shifts. All arithmetic converts each day's local hours to UTC instants
through zoneinfo, so it stays exact across DST changes: a 00:00-24:00 day lasts 23 h on the
spring-forward date and 25 h on the fall-back date, as the wall clock says.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

Interval = tuple[datetime, datetime]  # [start, end) in UTC

_ZERO = timedelta(0)
_DAY = timedelta(days=1)
_HORIZON = timedelta(days=3660)  # give up after ~10 years without enough open time
_CHUNK = timedelta(days=14)


class TargetClock(Protocol):
    """What a target's deadline is measured on."""

    name: str

    def add(self, start: datetime, duration: timedelta) -> datetime:
        """The instant at which `duration` of this clock's time has passed since `start`."""
        ...

    def between(self, start: datetime, end: datetime) -> timedelta:
        """This clock's time from `start` to `end` (negative if `end` is earlier)."""
        ...

    def is_open(self, instant: datetime) -> bool: ...


class ContinuousClock:
    """Calendar time: every second counts."""

    name = "calendar"

    def add(self, start: datetime, duration: timedelta) -> datetime:
        return start + duration

    def between(self, start: datetime, end: datetime) -> timedelta:
        return end - start

    def is_open(self, instant: datetime) -> bool:
        return True


CONTINUOUS = ContinuousClock()


class CalendarError(ValueError):
    pass


@dataclass(frozen=True)
class DailyHours:
    """One open interval of a weekday, in seconds from local midnight (end may pass 24:00)."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < 86400 or not self.start < self.end <= self.start + 86400:
            raise CalendarError(f"bad open hours {self.start}-{self.end}")


def _merge(intervals: Iterable[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for start, end in sorted(intervals):
        if end <= start:
            continue
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def _subtract(intervals: list[Interval], holes: Sequence[Interval]) -> list[Interval]:
    if not holes:
        return intervals
    out: list[Interval] = []
    for start, end in intervals:
        cur = start
        for h_start, h_end in holes:
            if h_end <= cur or h_start >= end:
                continue
            if h_start > cur:
                out.append((cur, h_start))
            cur = max(cur, h_end)
            if cur >= end:
                break
        if cur < end:
            out.append((cur, end))
    return out


class BusinessCalendar:
    """Open hours of a team. All inputs and outputs are timezone-aware instants."""

    def __init__(
        self,
        name: str,
        timezone: str,
        weekly: Mapping[int, Sequence[DailyHours]],
        holiday_dates: Iterable[date] = (),
        holiday_country: str | None = None,
        holiday_subdivision: str | None = None,
        breaks: Iterable[Interval] = (),
        extra_shifts: Iterable[Interval] = (),
    ) -> None:
        self.name = name
        try:
            self.tz = ZoneInfo(timezone)
        except Exception:
            raise CalendarError(f"unknown time zone {timezone!r}") from None
        self.timezone = timezone
        self.weekly = {
            day: tuple(sorted(weekly.get(day, ()), key=lambda h: h.start)) for day in range(7)
        }
        self.holiday_dates = frozenset(holiday_dates)
        self._country_holidays = None
        if holiday_country:
            import holidays  # imported lazily: it is large and only business calendars need it

            try:
                self._country_holidays = holidays.country_holidays(
                    holiday_country, subdiv=holiday_subdivision
                )
            except NotImplementedError as exc:
                raise CalendarError(f"unknown holiday country/subdivision: {exc}") from None
        self.breaks = _merge(_utc_interval(i) for i in breaks)
        self.extra_shifts = _merge(_utc_interval(i) for i in extra_shifts)
        if not any(self.weekly.values()) and not self.extra_shifts:
            raise CalendarError(f"calendar {name!r} has no open hours")
        self._day_cache: dict[date, tuple[Interval, ...]] = {}
        # Days that never overlap (no hours past midnight, no breaks or shifts) can be
        # walked one by one without merging: deadlines are computed for every event.
        self._days_disjoint = (
            not self.breaks
            and not self.extra_shifts
            and all(
                hours[-1].end <= 86400
                and all(a.end <= b.start for a, b in itertools.pairwise(hours))
                for hours in self.weekly.values()
                if hours
            )
        )

    # -- building blocks ---------------------------------------------------------------

    def is_holiday(self, day: date) -> bool:
        if day in self.holiday_dates:
            return True
        return self._country_holidays is not None and day in self._country_holidays

    def _local_to_utc(self, day: date, seconds: int) -> datetime:
        local = datetime(day.year, day.month, day.day) + timedelta(seconds=seconds)
        # fold=0: a wall time skipped by spring-forward maps past the gap, an ambiguous one
        # (fall-back) to its first occurrence; so an interval always spans real elapsed time.
        return local.replace(tzinfo=self.tz).astimezone(UTC)

    def _day_intervals(self, day: date) -> tuple[Interval, ...]:
        cached = self._day_cache.get(day)
        if cached is None:
            if self.is_holiday(day):
                cached = ()
            else:
                spans = (
                    (self._local_to_utc(day, h.start), self._local_to_utc(day, h.end))
                    for h in self.weekly[day.weekday()]
                )
                # on a spring-forward day a wall time inside the gap maps past the gap: an
                # interval there can end before it starts (no open time) or overlap the
                # next one; sorted and merged, the day-by-day walk counts what the merging
                # path counts
                cached = tuple(_merge((s, e) for s, e in spans if e > s))
            if len(self._day_cache) > 20000:
                self._day_cache.clear()
            self._day_cache[day] = cached
        return cached

    def open_intervals(self, start: datetime, end: datetime) -> list[Interval]:
        """The open intervals within [start, end), clipped and merged."""
        start, end = start.astimezone(UTC), end.astimezone(UTC)
        if end <= start:
            return []
        first = start.astimezone(self.tz).date() - _DAY  # yesterday's overnight hours
        last = end.astimezone(self.tz).date()
        raw: list[Interval] = []
        day = first
        while day <= last:
            raw.extend(self._day_intervals(day))
            day += _DAY
        raw.extend(_overlapping(self.extra_shifts, start, end))
        merged = _subtract(_merge(raw), _overlapping(self.breaks, start, end))
        return [(max(s, start), min(e, end)) for s, e in merged if e > start and s < end]

    # -- the arithmetic --------------------------------------------------------------

    def is_open(self, instant: datetime) -> bool:
        instant = instant.astimezone(UTC)
        return bool(self.open_intervals(instant, instant + timedelta(microseconds=1)))

    def between(self, start: datetime, end: datetime) -> timedelta:
        if end < start:
            return -self.between(end, start)
        total = _ZERO
        for s, e in self.open_intervals(start, end):
            total += e - s
        return total

    def add(self, start: datetime, duration: timedelta) -> datetime:
        if duration < _ZERO:
            raise CalendarError("cannot add a negative duration")
        cursor = start.astimezone(UTC)
        if duration == _ZERO:
            return cursor
        if self._days_disjoint:
            return self._add_by_days(cursor, duration, start)
        remaining = duration
        limit = cursor + _HORIZON
        chunk = timedelta(days=2)  # most deadlines fall within days: look near first
        while cursor < limit:
            chunk_end = cursor + chunk
            for s, e in self.open_intervals(cursor, chunk_end):
                if e - s >= remaining:
                    return s + remaining
                remaining -= e - s
            cursor = chunk_end
            chunk = min(chunk * 2, _CHUNK)
        raise self._not_enough(start)

    def _not_enough(self, start: datetime) -> CalendarError:
        return CalendarError(
            f"calendar {self.name!r} has not enough open time within 10 years after {start}"
        )

    def _add_by_days(self, cursor: datetime, remaining: timedelta, start: datetime) -> datetime:
        day = cursor.astimezone(self.tz).date()
        last = day + _HORIZON
        while day <= last:
            for s, e in self._day_intervals(day):
                if e <= cursor:
                    continue
                if s < cursor:
                    s = cursor
                if e - s >= remaining:
                    return s + remaining
                remaining -= e - s
            day += _DAY
        raise self._not_enough(start)


def _utc_interval(i: Interval) -> Interval:
    s, e = i
    if s.tzinfo is None or e.tzinfo is None:
        raise CalendarError("break and shift times must be timezone-aware")
    if e <= s:
        raise CalendarError(f"interval ends before it starts: {s} - {e}")
    return (s.astimezone(UTC), e.astimezone(UTC))


def _overlapping(intervals: list[Interval], start: datetime, end: datetime) -> list[Interval]:
    # intervals are merged and sorted, so their ends are sorted too
    i = bisect.bisect_right(intervals, start, key=lambda iv: iv[1])
    out = []
    while i < len(intervals) and intervals[i][0] < end:
        out.append(intervals[i])
        i += 1
    return out
