"""Durations and instants, parsed strictly so configuration errors are caught early."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, tzinfo

_UNIT_SECONDS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|w|d|h|m|s)")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_duration(text: str | int | float | timedelta) -> timedelta:
    """Parse '90s', '2m', '1h30m', '4h', '7d' (or a number of seconds) into a timedelta."""
    if isinstance(text, timedelta):
        return text
    if isinstance(text, bool):
        raise ValueError(f"not a duration: {text!r}")
    if isinstance(text, int | float):
        if text < 0:
            raise ValueError(f"duration must not be negative: {text!r}")
        return timedelta(seconds=text)
    s = str(text).strip().replace(" ", "")
    if not s:
        raise ValueError("empty duration")
    pos = 0
    total = 0.0
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos != len(s):
        raise ValueError(
            f"not a duration: {text!r} (use a number with a unit: 20s, 2m, 1h30m, 4h, 7d)"
        )
    return timedelta(seconds=total)


def format_duration(d: timedelta) -> str:
    """Shortest readable form: 3600s -> '1h', 5400s -> '1h30m'."""
    micros = round(d.total_seconds() * 1_000_000)
    sign = "-" if micros < 0 else ""
    micros = abs(micros)
    secs, frac = divmod(micros, 1_000_000)
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        n, secs = divmod(secs, size)
        if n:
            out.append(f"{n}{unit}")
    if secs or frac or not out:
        out.append(f"{secs}.{frac:06d}".rstrip("0").rstrip(".") + "s")
    return sign + "".join(out)


def parse_instant(text: str | datetime) -> datetime:
    """Parse an ISO-8601 instant; it must carry a UTC offset (or 'Z')."""
    if isinstance(text, datetime):
        dt = text
    else:
        s = str(text).strip()
        if s.endswith(("Z", "z")):
            s = s[:-1] + "+00:00"
        try:
            dt = datetime.fromisoformat(s)
        except ValueError:
            raise ValueError(f"not an ISO-8601 timestamp: {text!r}") from None
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"timestamp has no time zone offset: {text!r} (add 'Z' or '+01:00')")
    return dt.astimezone(UTC)


_LOCAL = re.compile(r"\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?")


def parse_human_instant(text: str, tz: tzinfo, now: datetime) -> datetime:
    """An instant as a person types it: ISO-8601 with an offset ('2026-11-24T09:00Z'), a
    local date or date and time in `tz` ('2026-11-24', '2026-11-24 09:00'), or a duration
    ago ('7d', '90m': that long before `now`)."""
    s = text.strip()
    if _LOCAL.fullmatch(s):
        try:
            return datetime.fromisoformat(s).replace(tzinfo=tz).astimezone(UTC)
        except ValueError as exc:
            raise ValueError(f"not a valid date or time: {text!r} ({exc})") from None
    try:
        return parse_instant(s)
    except ValueError:
        pass
    try:
        return now - parse_duration(s)
    except ValueError:
        raise ValueError(
            f"not an instant: {text!r} (use 2026-11-24, '2026-11-24 09:00', "
            "2026-11-24T09:00:00Z, or how long ago: 7d, 90m)"
        ) from None


def to_micros(dt: datetime) -> int:
    """Exact microseconds since the epoch (integers keep replay bit-for-bit deterministic)."""
    delta = dt - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def iso(dt: datetime) -> str:
    """ISO-8601 in UTC with a 'Z', the form every CLI output uses."""
    s = dt.astimezone(UTC).isoformat()
    return s.replace("+00:00", "Z")
