"""Calendar arithmetic: exact across DST, midnight-spanning hours and holidays."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sla_monitor.domain.calendar import BusinessCalendar, CalendarError, DailyHours

LA = ZoneInfo("America/Los_Angeles")
LONDON = ZoneInfo("Europe/London")
H = 3600


def z(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def weekdays(start: int, end: int, days: range = range(5)) -> dict[int, list[DailyHours]]:
    return {d: [DailyHours(start * H, end * H)] for d in days}


ALL_DAY = {d: [DailyHours(0, 24 * H)] for d in range(7)}


class TestDst:
    @pytest.mark.parametrize(
        ("tz", "day", "hours"),
        [
            ("America/Los_Angeles", date(2026, 3, 8), 23),
            ("America/Los_Angeles", date(2026, 11, 1), 25),
            ("Europe/London", date(2026, 3, 29), 23),
            ("Europe/London", date(2026, 10, 25), 25),
            ("Europe/London", date(2026, 6, 1), 24),
        ],
    )
    def test_a_whole_day_lasts_as_long_as_the_wall_clock_says(
        self, tz: str, day: date, hours: int
    ) -> None:
        cal = BusinessCalendar("c", tz, ALL_DAY)
        start = datetime(day.year, day.month, day.day, tzinfo=ZoneInfo(tz))
        end = start.replace(day=day.day + 1)
        assert cal.between(start, end) == timedelta(hours=hours)
        assert cal.add(start, timedelta(hours=hours)) == end.astimezone(UTC)

    def test_overnight_shift_across_spring_forward_in_los_angeles(self) -> None:
        cal = BusinessCalendar(
            "night",
            "America/Los_Angeles",
            {d: [DailyHours(22 * H, 6 * H + 86400)] for d in range(7)},
        )
        # Sat 22:00 PST -> Sun 06:00 PDT is 7 real hours (02:00-03:00 does not exist)
        start = datetime(2026, 3, 7, 21, tzinfo=LA)
        end = datetime(2026, 3, 8, 12, tzinfo=LA)
        assert cal.between(start, end) == timedelta(hours=7)
        assert cal.add(start, timedelta(hours=7)) == z("2026-03-08T13:00:00Z")
        assert cal.is_open(z("2026-03-08T10:30:00Z"))  # 03:30 PDT
        assert not cal.is_open(z("2026-03-08T14:00:00Z"))  # 07:00 PDT

    def test_overnight_shift_across_fall_back_in_london(self) -> None:
        cal = BusinessCalendar(
            "night", "Europe/London", {d: [DailyHours(22 * H, 6 * H + 86400)] for d in range(7)}
        )
        # Sat 24 Oct 22:00 BST (21:00Z) -> Sun 06:00 GMT (06:00Z): 9 real hours
        assert cal.between(z("2026-10-24T12:00:00Z"), z("2026-10-25T12:00:00Z")) == timedelta(
            hours=9
        )

    def test_deadline_over_a_weekend_when_london_springs_forward(self) -> None:
        cal = BusinessCalendar("uk", "Europe/London", weekdays(9, 17))
        # Fri 27 Mar 16:00 GMT + 3h: 1h on Friday, then Mon 30 Mar 09:00 BST (08:00Z) + 2h
        assert cal.add(z("2026-03-27T16:00:00Z"), timedelta(hours=3)) == z("2026-03-30T10:00:00Z")

    def test_deadline_over_a_weekend_when_los_angeles_falls_back(self) -> None:
        cal = BusinessCalendar("us", "America/Los_Angeles", weekdays(9, 17))
        # Fri 30 Oct 16:00 PDT (23:00Z) + 2h: 1h Friday, Mon 2 Nov 09:00 PST (17:00Z) + 1h
        assert cal.add(z("2026-10-30T23:00:00Z"), timedelta(hours=2)) == z("2026-11-02T18:00:00Z")

    def test_the_example_in_the_readme(self) -> None:
        cal = BusinessCalendar(
            "support-hours",
            "Europe/London",
            {**weekdays(8, 18), 5: [DailyHours(10 * H, 14 * H)]},
            holiday_country="GB",
            holiday_subdivision="ENG",
        )
        # Fri 17:00 GMT: 1h Fri + 4h Sat + 10h Mon (BST) + 4h Tue -> Tue 12:00 BST
        assert cal.add(z("2026-03-27T17:00:00Z"), timedelta(hours=19)) == z("2026-03-31T11:00:00Z")


class TestHolidays:
    def test_country_holidays_england_christmas(self) -> None:
        cal = BusinessCalendar(
            "uk", "Europe/London", weekdays(9, 17), holiday_country="GB", holiday_subdivision="ENG"
        )
        # Thu 24 Dec 16:00 + 2h: 1h Thu; Fri 25 Christmas; weekend; Mon 28 Boxing Day (observed)
        assert cal.add(z("2026-12-24T16:00:00Z"), timedelta(hours=2)) == z("2026-12-29T10:00:00Z")
        assert cal.is_holiday(date(2026, 12, 28))

    def test_country_holidays_us_thanksgiving(self) -> None:
        cal = BusinessCalendar("us", "America/Los_Angeles", weekdays(9, 17), holiday_country="US")
        assert cal.add(z("2026-11-26T00:00:00Z"), timedelta(hours=2)) == z("2026-11-27T18:00:00Z")

    def test_explicit_dates(self) -> None:
        cal = BusinessCalendar("c", "UTC", weekdays(9, 17), holiday_dates=[date(2026, 11, 3)])
        assert cal.add(z("2026-11-02T16:00:00Z"), timedelta(hours=2)) == z("2026-11-04T10:00:00Z")

    def test_unknown_country_is_an_error(self) -> None:
        with pytest.raises(CalendarError, match="holiday"):
            BusinessCalendar("c", "UTC", weekdays(9, 17), holiday_country="XX")


class TestBreaksAndShifts:
    def test_break_removes_open_time(self) -> None:
        cal = BusinessCalendar(
            "c",
            "UTC",
            weekdays(9, 17),
            breaks=[(z("2026-11-02T12:00:00Z"), z("2026-11-02T14:00:00Z"))],
        )
        assert cal.between(z("2026-11-02T09:00:00Z"), z("2026-11-02T17:00:00Z")) == timedelta(
            hours=6
        )
        assert cal.add(z("2026-11-02T11:00:00Z"), timedelta(hours=2)) == z("2026-11-02T15:00:00Z")

    def test_extra_shift_adds_open_time(self) -> None:
        cal = BusinessCalendar(
            "c",
            "UTC",
            weekdays(9, 17),
            extra_shifts=[(z("2026-11-07T10:00:00Z"), z("2026-11-07T12:00:00Z"))],
        )
        # Fri 16:00 + 2h: 1h Friday, 1h in Saturday's extra shift
        assert cal.add(z("2026-11-06T16:00:00Z"), timedelta(hours=2)) == z("2026-11-07T11:00:00Z")

    def test_several_intervals_a_day(self) -> None:
        cal = BusinessCalendar(
            "c",
            "UTC",
            {d: [DailyHours(9 * H, 12 * H), DailyHours(13 * H, 17 * H)] for d in range(5)},
        )
        assert cal.add(z("2026-11-02T11:00:00Z"), timedelta(hours=2)) == z("2026-11-02T14:00:00Z")
        assert not cal.is_open(z("2026-11-02T12:30:00Z"))

    def test_start_in_closed_time_counts_from_the_next_opening(self) -> None:
        cal = BusinessCalendar("c", "UTC", weekdays(9, 17))
        assert cal.add(z("2026-11-07T08:00:00Z"), timedelta(minutes=30)) == z(
            "2026-11-09T09:30:00Z"
        )

    def test_calendar_without_hours_is_rejected(self) -> None:
        with pytest.raises(CalendarError, match="no open hours"):
            BusinessCalendar("c", "UTC", {})


_CAL = BusinessCalendar(
    "p",
    "Europe/London",
    {**weekdays(9, 17), 5: [DailyHours(22 * H, 2 * H + 86400)]},
    holiday_country="GB",
)
_instants = st.datetimes(datetime(2025, 1, 1), datetime(2027, 12, 31)).map(
    lambda d: d.replace(tzinfo=UTC)
)


@settings(max_examples=150, deadline=None)
@given(_instants, st.integers(1, 200 * 3600))
def test_between_inverts_add(start: datetime, seconds: int) -> None:
    d = timedelta(seconds=seconds)
    end = _CAL.add(start, d)
    assert _CAL.between(start, end) == d
    assert _CAL.is_open(end - timedelta(microseconds=1))


@settings(max_examples=150, deadline=None)
@given(_instants, _instants, _instants)
def test_between_is_additive(a: datetime, b: datetime, c: datetime) -> None:
    a, b, c = sorted((a, b, c))
    assert _CAL.between(a, c) == _CAL.between(a, b) + _CAL.between(b, c)
    assert _CAL.between(c, a) == -_CAL.between(a, c)


_HOURS = {**weekdays(9, 17), 5: [DailyHours(8 * H, 12 * H), DailyHours(13 * H, 15 * H)]}
_DAYWISE = BusinessCalendar("d", "America/Los_Angeles", _HOURS, holiday_country="US")
# the same open time, but a (long past) break sends it down the general, merging path
_MERGING = BusinessCalendar(
    "m",
    "America/Los_Angeles",
    _HOURS,
    holiday_country="US",
    breaks=[(datetime(2000, 1, 1, tzinfo=UTC), datetime(2000, 1, 2, tzinfo=UTC))],
)


@settings(max_examples=300, deadline=None)
@given(_instants, st.integers(1, 400 * 3600))
def test_day_by_day_deadlines_agree_with_merged_intervals(start: datetime, seconds: int) -> None:
    """The fast path for calendars whose days never overlap gives the same deadlines."""
    d = timedelta(seconds=seconds)
    assert _DAYWISE.add(start, d) == _MERGING.add(start, d)


# -- generated calendars around DST changes: the fast path must agree with the merging one --
_TRANSITIONS = [
    datetime(2006, 4, 2, tzinfo=UTC),  # Los Angeles springs forward (old rules)
    datetime(2026, 3, 8, tzinfo=UTC),  # Los Angeles springs forward
    datetime(2026, 11, 1, tzinfo=UTC),  # ... and falls back
    datetime(2026, 3, 29, tzinfo=UTC),  # London springs forward
    datetime(2026, 10, 25, tzinfo=UTC),  # ... and falls back
]


@st.composite
def _day(draw: st.DrawFn, night: bool) -> list[DailyHours]:
    """Disjoint intervals of a day, in quarter hours; `night`: within 01:00-04:00, where the
    clocks change."""
    low, top = (4, 16) if night else (0, 96)
    cuts = sorted(draw(st.lists(st.integers(low, top), min_size=0, max_size=6, unique=True)))
    return [DailyHours(a * 900, b * 900) for a, b in zip(cuts[::2], cuts[1::2], strict=False)]


@st.composite
def _calendars(draw: st.DrawFn) -> tuple[BusinessCalendar, BusinessCalendar]:
    zone = draw(st.sampled_from(["America/Los_Angeles", "Europe/London"]))
    weekly = {d: draw(_day(night=draw(st.booleans()))) for d in range(7)}
    weekly[0] = [*weekly[0], DailyHours(23 * H, 24 * H)] if not weekly[0] else weekly[0]
    fast = BusinessCalendar("f", zone, weekly)
    merging = BusinessCalendar(
        "m",
        zone,
        weekly,
        breaks=[(datetime(2000, 1, 1, tzinfo=UTC), datetime(2000, 1, 2, tzinfo=UTC))],
    )
    return fast, merging


@settings(max_examples=300, deadline=None)
@given(
    _calendars(),
    st.sampled_from(_TRANSITIONS),
    st.integers(-3 * 86400, 3 * 86400),
    st.integers(1, 30 * 3600),
)
def test_fast_and_merging_paths_agree_across_dst_gaps(
    cals: tuple[BusinessCalendar, BusinessCalendar], day: datetime, offset: int, seconds: int
) -> None:
    fast, merging = cals
    start, d = day + timedelta(seconds=offset), timedelta(seconds=seconds)
    assert fast._days_disjoint and not merging._days_disjoint
    assert fast.add(start, d) == merging.add(start, d)
    assert fast.between(start, start + d) == merging.between(start, start + d)


def test_an_interval_inside_a_spring_forward_gap_adds_no_time() -> None:
    """Issue 12: sun 02:30-03:15 in Los Angeles on 2006-04-02 does not exist on the wall
    clock's terms (02:00 jumps to 03:00; 02:30 maps past 03:15)."""
    hours = {6: [DailyHours(int(2.5 * H), int(3.25 * H))], 0: [DailyHours(9 * H, 17 * H)]}
    cal = BusinessCalendar("la", "America/Los_Angeles", hours)
    start = datetime(2006, 4, 2, 8, tzinfo=UTC)
    assert cal.add(start, timedelta(hours=1)) == datetime(2006, 4, 3, 17, tzinfo=UTC)
