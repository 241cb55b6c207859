"""The watermark a connector reports once it has read all there is: the one choice between
the time of the read and the newest event seen, for every connector that offers it."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from sla_monitor.domain.events import Event
from sla_monitor.domain.timeutil import from_micros, to_micros

# read_time: everything up to the read has been delivered (an API, a file written live);
# latest_event: the input is written in time order, possibly late (a file copied in batches)
WatermarkMode = Literal["read_time", "latest_event"]
FUTURE_TOLERANCE = timedelta(days=1)  # as the default limits.future


def completed_up_to(
    mode: WatermarkMode, state: dict[str, Any], events: list[Event], now: datetime
) -> datetime | None:
    """The instant the source vouches it has delivered everything up to, after a complete
    read. `state` is the connector's cursor state (it remembers the newest event seen)."""
    if mode == "read_time":
        return now
    return latest_event(state, events, now)


def latest_event(state: dict[str, Any], events: list[Event], now: datetime) -> datetime | None:
    """For input written in time order: complete up to the newest event seen so far. An
    event stamped more than a day after `now` does not count (the monitor rejects it too):
    one bad clock must not pin the watermark in the future."""
    limit = to_micros(now + FUTURE_TOLERANCE)
    latest = max((us for e in events if (us := to_micros(e.occurred_at)) <= limit), default=None)
    if latest is not None and latest > state.get("latest_us", latest - 1):
        state["latest_us"] = latest
    return from_micros(state["latest_us"]) if "latest_us" in state else None
