"""The source protocol: what every connector implements.

A source is polled with the cursor it returned last time (persisted by the runtime in the
same transaction as the events it covers) and returns new events, rejected items, its next
cursor, and an honest watermark: the instant up to which it has seen everything.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, field_validator

from sla_monitor.domain.events import Channel, Event, Rejected
from sla_monitor.domain.timeutil import parse_duration
from sla_monitor.sources._secrets import SecretRef

Problems = list[tuple[tuple[int | str, ...], str]]  # (key path under the source, message)


class SourceOptions(BaseModel):
    """Base for each connector's `options:`; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def preflight(self) -> Problems:
        """What `run` will need and can be checked without side effects: every secret
        readable (its value never shown). Connectors add their own (files, folders)."""
        return secrets_unreadable(self, ("options",))


class ApiOptions(SourceOptions):
    """Options every connector reading a vendor API by time shares."""

    start: timedelta = timedelta(days=7)  # how far back the first poll reads
    overlap: timedelta = timedelta(minutes=2)  # read again before the last mark (ids dedupe)
    timeout: float = 30.0

    @field_validator("start", "overlap", mode="before")
    @classmethod
    def _durations(cls, v: Any) -> timedelta:
        return parse_duration(v)


def secrets_unreadable(model: BaseModel, at: tuple[int | str, ...] = ("options",)) -> Problems:
    """Every secret in these options that cannot be read (named, never its value)."""
    out: Problems = []
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, SecretRef):
            try:
                value.read()
            except ValueError as exc:
                out.append(((*at, name), f"{exc} (a secret {name} is read from it)"))
        elif isinstance(value, BaseModel):
            out += secrets_unreadable(value, (*at, name))
    return out


def path_problem(path: str, key: str = "path") -> Problems:
    """A configured file or folder that does not exist."""
    if Path(path).exists():
        return []
    return [(("options", key), f"{path}: no such file or folder")]


@dataclass(frozen=True)
class Skipped:
    """An item read and left out on purpose (a bounce, an out-of-office reply): counted in
    sla_events_skipped_total{reason}, never an event."""

    reason: str


@dataclass
class PollResult:
    events: list[Event] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)  # also gaps: input known lost
    skipped: Counter[str] = field(default_factory=Counter)  # read, left out on purpose, why
    cursor: str | None = None
    watermark: datetime | None = None
    more: bool = False  # more is ready right away: poll again without waiting
    next_poll_after: float | None = None  # seconds to wait before polling again (rate limits)


class SourceError(Exception):
    """A poll that failed; the runtime backs off and retries, losing and repeating nothing
    (the cursor only moves with stored events)."""

    result = "error"  # the label in sla_source_polls_total{result}

    def __init__(
        self, message: str, retry_after: float | None = None, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status  # the HTTP status, where there was one


class RateLimited(SourceError):
    result = "rate_limited"


class AuthFailed(SourceError):
    """Credentials refused: reported clearly, retried slowly (it needs a person to fix)."""

    result = "auth_error"


@dataclass(frozen=True)
class SourceContext:
    name: str
    channel: Channel | None
    queues: tuple[str, ...]


class Source(Protocol):
    name: str

    def poll(self, cursor: str | None, now: datetime) -> PollResult:
        """Read what is new since `cursor`. `now` is the monitor's clock."""
        ...

    def close(self) -> None: ...


class SourceFactory(Protocol):
    def __call__(self, ctx: SourceContext, options: Any) -> Source: ...


__all__ = ["Rejected"]
