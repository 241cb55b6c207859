"""Calendar arithmetic, the same as `sla-monitor due` offers.

>>> from sla_monitor.calendar import load_calendars
>>> cal = load_calendars("config/sla-monitor.yaml")["support-hours"]
>>> cal.add(start, timedelta(hours=19))   # the deadline
>>> cal.between(t1, t2)                   # business time between two instants
"""

from sla_monitor.config import load_calendars
from sla_monitor.domain.calendar import (
    CONTINUOUS,
    BusinessCalendar,
    CalendarError,
    ContinuousClock,
    DailyHours,
    TargetClock,
)

__all__ = [
    "CONTINUOUS",
    "BusinessCalendar",
    "CalendarError",
    "ContinuousClock",
    "DailyHours",
    "TargetClock",
    "load_calendars",
]
