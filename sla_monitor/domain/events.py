"""Normalized events: the one shape every source produces (PRODUCT.md, 'event')."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from sla_monitor.domain.timeutil import iso, parse_instant


class EventKind(StrEnum):
    CUSTOMER_MESSAGE = "customer_message"
    AUTO_REPLY = "auto_reply"
    AGENT_REPLY = "agent_reply"
    CALL_QUEUED = "call_queued"
    CALL_ANSWERED = "call_answered"
    CALL_ABANDONED = "call_abandoned"
    CALLBACK_REQUESTED = "callback_requested"
    STATUS_CHANGED = "status_changed"
    PRIORITY_CHANGED = "priority_changed"


class Channel(StrEnum):
    EMAIL = "email"
    PHONE = "phone"
    SOCIAL = "social"
    CHAT = "chat"


class Status(StrEnum):
    OPEN = "open"
    PENDING = "pending"
    ON_HOLD = "on_hold"
    SOLVED = "solved"
    CLOSED = "closed"


# Events at the same instant are applied in this order, so that the outcome never depends
# on the order they arrived in: the customer's contact first, then replies, then status.
KIND_RANK: dict[EventKind, int] = {
    EventKind.CALL_QUEUED: 0,
    EventKind.CUSTOMER_MESSAGE: 1,
    EventKind.PRIORITY_CHANGED: 2,
    EventKind.AUTO_REPLY: 3,
    EventKind.AGENT_REPLY: 4,
    EventKind.CALL_ANSWERED: 5,
    EventKind.CALLBACK_REQUESTED: 6,
    EventKind.CALL_ABANDONED: 7,
    EventKind.STATUS_CHANGED: 8,
}

# Events by which a customer reaches out: they open a contact.
CUSTOMER_STARTS = frozenset({EventKind.CUSTOMER_MESSAGE, EventKind.CALL_QUEUED})
# A personal response: a person acknowledged the customer (repeat-contact rule).
PERSONAL_RESPONSES = frozenset({EventKind.AGENT_REPLY, EventKind.CALL_ANSWERED})

ContactKey = tuple[str, str]  # (source, conversation id)


class EventError(ValueError):
    """A raw event that cannot be normalized; `reason` is a short label for metrics."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Event:
    source: str
    event_id: str
    conversation_id: str
    kind: EventKind
    occurred_at: datetime
    channel: Channel
    queue: str
    customer_id: str | None = None
    priority: str | None = None
    tier: str | None = None
    tags: frozenset[str] = field(default_factory=frozenset)
    status: Status | None = None
    reason: str | None = None  # e.g. why a call was abandoned (EXITWITHTIMEOUT, ...)
    # who on the team wrote or took it, where the source knows: for reports per person,
    # never a metric label; not part of the fact (a re-read naming them is no conflict)
    agent: str | None = field(default=None, compare=False)
    team: str | None = field(default=None, compare=False)

    @property
    def contact_key(self) -> ContactKey:
        return (self.source, self.conversation_id)

    @property
    def dedup_key(self) -> tuple[str, str]:
        return (self.source, self.event_id)

    def sort_key(self) -> tuple[datetime, int, str]:
        return (self.occurred_at, KIND_RANK[self.kind], self.event_id)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "source": self.source,
            "event_id": self.event_id,
            "conversation_id": self.conversation_id,
            "kind": self.kind.value,
            "occurred_at": iso(self.occurred_at),
            "channel": self.channel.value,
            "queue": self.queue,
        }
        for name in ("customer_id", "priority", "tier", "reason", "agent", "team"):
            value = getattr(self, name)
            if value is not None:
                d[name] = value
        if self.tags:
            d["tags"] = sorted(self.tags)
        if self.status is not None:
            d["status"] = self.status.value
        return d


_REQUIRED = ("event_id", "conversation_id", "kind", "occurred_at", "channel", "queue")
_KNOWN = frozenset(
    (
        *_REQUIRED,
        *("source", "customer_id", "priority", "tier", "tags", "status", "reason"),
        *("agent", "team"),
    )
)


KIND_BY_VALUE = {k.value: k for k in EventKind}
CHANNEL_BY_VALUE = {c.value: c for c in Channel}
STATUS_BY_VALUE = {s.value: s for s in Status}


def _text(raw: Mapping[str, Any], name: str, required: bool) -> str | None:
    value = raw.get(name)
    if type(value) is str and value:  # the common case, first (ingest is a hot path)
        return value
    if value is None or value == "":
        if required:
            raise EventError("missing_field", f"missing required field {name!r}")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise EventError("bad_field", f"field {name!r} must be a string, got {value!r}")
    return str(value)


def event_from_dict(raw: Mapping[str, Any], source: str | None = None) -> Event:
    """Validate one raw mapping into an Event. Errors name the field and what is wrong."""
    if not isinstance(raw, Mapping):
        raise EventError("not_an_object", f"event must be a JSON object, got {type(raw).__name__}")
    if not _KNOWN.issuperset(raw):
        unknown = sorted(k for k in raw if k not in _KNOWN)
        raise EventError("unknown_field", f"unknown field(s): {', '.join(unknown)}")
    missing = [f for f in _REQUIRED if raw.get(f) in (None, "")]
    if source is None and raw.get("source") in (None, ""):
        missing.insert(0, "source")
    if missing:
        plural = "s" if len(missing) > 1 else ""
        raise EventError("missing_field", f"missing required field{plural}: {', '.join(missing)}")
    src = source or _text(raw, "source", True)
    assert src is not None
    if source is not None and raw.get("source") not in (None, source):
        raise EventError(
            "bad_field", f"event names source {raw.get('source')!r} but was read from {source!r}"
        )
    kind_text = _text(raw, "kind", True)
    assert kind_text is not None
    kind = KIND_BY_VALUE.get(kind_text)  # a dict lookup: Enum(value) is slow on hot paths
    if kind is None:
        allowed = ", ".join(k.value for k in EventKind)
        raise EventError("bad_kind", f"unknown kind {kind_text!r} (one of: {allowed})") from None
    channel_text = _text(raw, "channel", True)
    assert channel_text is not None
    channel = CHANNEL_BY_VALUE.get(channel_text)
    if channel is None:
        allowed = ", ".join(c.value for c in Channel)
        raise EventError(
            "bad_channel", f"unknown channel {channel_text!r} (one of: {allowed})"
        ) from None
    occurred = raw.get("occurred_at")
    if not isinstance(occurred, str):
        raise EventError("bad_timestamp", f"occurred_at must be an ISO-8601 string: {occurred!r}")
    try:
        occurred_at = parse_instant(occurred)
    except ValueError as exc:
        raise EventError("bad_timestamp", f"occurred_at: {exc}") from None
    status: Status | None = None
    status_text = _text(raw, "status", kind is EventKind.STATUS_CHANGED)
    if status_text is not None:
        status = STATUS_BY_VALUE.get(status_text)
        if status is None:
            allowed = ", ".join(s.value for s in Status)
            raise EventError(
                "bad_status", f"unknown status {status_text!r} (one of: {allowed})"
            ) from None
    priority = _text(raw, "priority", kind is EventKind.PRIORITY_CHANGED)
    tags_raw = raw.get("tags") or []
    if not isinstance(tags_raw, list) or not all(isinstance(t, str) for t in tags_raw):
        raise EventError("bad_field", f"tags must be a list of strings, got {tags_raw!r}")
    event_id = _text(raw, "event_id", True)
    conversation_id = _text(raw, "conversation_id", True)
    queue = _text(raw, "queue", True)
    assert event_id is not None and conversation_id is not None and queue is not None
    return Event(
        source=src,
        event_id=event_id,
        conversation_id=conversation_id,
        kind=kind,
        occurred_at=occurred_at,
        channel=channel,
        queue=queue,
        customer_id=_text(raw, "customer_id", False),
        priority=priority,
        tier=_text(raw, "tier", False),
        tags=frozenset(tags_raw),
        status=status,
        reason=_text(raw, "reason", False),
        agent=_text(raw, "agent", False),
        team=_text(raw, "team", False),
    )


def normalize(events: list[Event]) -> list[Event]:
    """De-duplicate by (source, event id) and order deterministically."""
    unique = {e.dedup_key: e for e in sorted(events, key=Event.sort_key, reverse=True)}
    return sorted(unique.values(), key=Event.sort_key)


# The longest value each field may have: the store's column widths (in characters).
FIELD_LIMITS: dict[str, int] = {
    "source": 200,
    "event_id": 500,
    "conversation_id": 500,
    "queue": 200,
    "customer_id": 500,
    "priority": 64,
    "tier": 64,
    "reason": 200,
}
MAX_TAGS_CHARS = 10_000


def event_problem(e: Event, earliest: datetime, latest: datetime) -> tuple[str, str] | None:
    """What makes a well-formed event unacceptable — a value the store cannot hold, or an
    instant outside [earliest, latest] — as (reason, message); None when it is fine.
    Checked before anything is stored, so that one item can never fail a whole batch."""
    for name, limit in FIELD_LIMITS.items():
        value = getattr(e, name)
        if value is None:
            continue
        if len(value) > limit:
            return "too_long", f"{name} has {len(value)} characters (at most {limit})"
        if "\x00" in value:
            return "bad_field", f"{name} contains a NUL character"
    if e.tags:
        if any("\x00" in t for t in e.tags):
            return "bad_field", "tags contain a NUL character"
        if sum(len(t) + 4 for t in e.tags) > MAX_TAGS_CHARS:
            return "too_long", f"tags have more than {MAX_TAGS_CHARS} characters"
    if not earliest <= e.occurred_at <= latest:
        return (
            "out_of_range",
            f"occurred_at {iso(e.occurred_at)} is outside the accepted range "
            f"{iso(earliest)} .. {iso(latest)} (settings: limits)",
        )
    return None


@dataclass(frozen=True)
class Rejected:
    """An item a source could not turn into an event: counted and set aside, never fatal."""

    reason: str  # short label, used in sla_events_rejected_total{reason}
    detail: str  # what was wrong, and where (file:line, page, item id)
    payload: str  # the raw item, kept for inspection
    source: str | None = None  # the source the item names, where it names a usable one
    ident: str | None = None  # what identifies the item, when `detail` varies between reads

    @property
    def key(self) -> str:
        """The same item read again (a re-run, an overlapping page) is the same rejection."""
        digest = hashlib.sha256()
        for part in (self.reason, self.ident or self.detail, self.payload):
            digest.update(part.encode("utf-8", "backslashreplace") + b"\x00")
        return digest.hexdigest()[:40]
