"""Event validation: clear errors that name the field and what is wrong."""

from __future__ import annotations

from typing import Any

import pytest

from sla_monitor.domain.events import EventError, EventKind, Status, event_from_dict, normalize

from ..helpers import T0, ev

GOOD: dict[str, Any] = {
    "source": "desk",
    "event_id": "1",
    "conversation_id": "c",
    "kind": "status_changed",
    "status": "pending",
    "occurred_at": "2026-11-02T10:00:00+01:00",
    "channel": "email",
    "queue": "billing",
    "tags": ["vip"],
}


def test_a_valid_event_is_normalized_to_utc() -> None:
    e = event_from_dict(GOOD)
    assert e.kind is EventKind.STATUS_CHANGED and e.status is Status.PENDING
    assert e.occurred_at.isoformat() == "2026-11-02T09:00:00+00:00"
    assert e.tags == frozenset({"vip"})
    assert event_from_dict(e.to_dict()) == e


@pytest.mark.parametrize(
    ("change", "reason", "message"),
    [
        ({"kind": "telepathy"}, "bad_kind", "unknown kind 'telepathy'"),
        ({"channel": "fax"}, "bad_channel", "unknown channel 'fax'"),
        ({"occurred_at": "2026-11-02T10:00:00"}, "bad_timestamp", "no time zone offset"),
        ({"occurred_at": "yesterday"}, "bad_timestamp", "not an ISO-8601 timestamp"),
        ({"status": None}, "missing_field", "missing required field 'status'"),
        ({"status": "asleep"}, "bad_status", "unknown status 'asleep'"),
        ({"colour": "red"}, "unknown_field", "unknown field(s): colour"),
        ({"tags": "vip"}, "bad_field", "tags must be a list of strings"),
    ],
)
def test_bad_events_say_what_is_wrong(change: dict[str, Any], reason: str, message: str) -> None:
    with pytest.raises(EventError) as exc:
        event_from_dict({**GOOD, **change})
    assert exc.value.reason == reason
    assert message in str(exc.value)


def test_normalize_drops_duplicates_and_orders_ties_by_kind() -> None:
    reply = ev("agent_reply", T0, event_id="r")
    message = ev("customer_message", T0, event_id="m")
    assert normalize([reply, message, reply]) == [message, reply]
