"""Small builders for events and policies used across tests."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from sla_monitor.domain.events import Channel, Event, EventKind, Status
from sla_monitor.domain.policy import Match, Policy, Rule, TargetName, TargetSpec

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)  # a Monday
_ids = itertools.count()


def at(**kw: float) -> datetime:
    return T0 + timedelta(**kw)


def ev(
    kind: str,
    when: datetime,
    conv: str = "c1",
    channel: str = "email",
    queue: str = "billing",
    source: str = "s",
    customer: str | None = "cust-1",
    **kw: Any,
) -> Event:
    status = kw.pop("status", None)
    return Event(
        source=source,
        event_id=kw.pop("event_id", f"e{next(_ids)}"),
        conversation_id=conv,
        kind=EventKind(kind),
        occurred_at=when,
        channel=Channel(channel),
        queue=queue,
        customer_id=customer,
        status=Status(status) if status else None,
        **kw,
    )


def policy(**overrides: Any) -> Policy:
    """PRODUCT.md's defaults: email auto_ack 2m + first_reply 1h + next_reply 4h;
    social first_reply 15m + next_reply 4h; phone answer 20s."""
    email = overrides.pop("email", None) or (
        TargetSpec(TargetName.AUTO_ACK, timedelta(minutes=2)),
        TargetSpec(TargetName.FIRST_REPLY, timedelta(hours=1), warn_before=timedelta(minutes=15)),
        TargetSpec(TargetName.NEXT_REPLY, timedelta(hours=4)),
    )
    phone = overrides.pop("phone", None) or (TargetSpec(TargetName.ANSWER, timedelta(seconds=20)),)
    social = (
        TargetSpec(TargetName.FIRST_REPLY, timedelta(minutes=15)),
        TargetSpec(TargetName.NEXT_REPLY, timedelta(hours=4)),
    )
    return Policy(
        (
            Rule("phone", Match(channels=frozenset({Channel.PHONE})), phone),
            Rule("social", Match(channels=frozenset({Channel.SOCIAL})), social),
            Rule("email", Match(channels=frozenset({Channel.EMAIL})), email),
        ),
        **overrides,
    )


def stored_events(tx: Any) -> int:
    """How many events a store transaction sees (`tx`: adapters.abc.Transaction)."""
    return sum(len(evs) for evs in tx.events.by_contact())
