"""`demo`: a simulated support desk, seeded and deterministic.

Contacts arrive in fixed time slots (slot i starts at ANCHOR + i * gap), and each slot's
script is drawn from Random(f"{seed}:{i}"), so the same seed gives the same events for the
same instants whatever the poll timing, and a restart resumes without gaps or duplicates.
The first poll back-fills `history`, so outcomes show at once; the monitor's clock runs
`speed` times faster than real time (see docs/design.md), so a newcomer sees breaches,
pauses and repeat contacts happen within a minute.
"""

from __future__ import annotations

import json
import math
import random
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import Field, field_validator

from sla_monitor.domain.events import Channel, Event, EventKind, Status
from sla_monitor.domain.timeutil import parse_duration
from sla_monitor.sources.abc import PollResult, SourceContext, SourceOptions

ANCHOR = datetime(2024, 1, 1, tzinfo=UTC)
MAX_SCRIPT = timedelta(hours=10)  # no script runs longer than this after its arrival

QUEUES = {
    Channel.EMAIL: ["billing", "technical"],
    Channel.PHONE: ["support-line", "sales-line"],
    Channel.SOCIAL: ["social-care"],
}
PRIORITIES = ["normal"] * 6 + ["high"] * 3 + ["urgent"]


class DemoOptions(SourceOptions):
    seed: int = 42
    speed: float = Field(1.0, ge=1.0, le=3600.0)
    contacts_per_hour: float = Field(120.0, gt=0, le=100_000)
    history: timedelta = timedelta(hours=3)

    @field_validator("history", mode="before")
    @classmethod
    def _history(cls, v: Any) -> timedelta:
        return parse_duration(v)


def _lognormal_seconds(rng: random.Random, median: float, sigma: float) -> float:
    return median * math.exp(rng.gauss(0, sigma))


class DemoSource:
    def __init__(self, ctx: SourceContext, options: DemoOptions) -> None:
        self.name = ctx.name
        self.options = options
        self.gap = timedelta(hours=1) / options.contacts_per_hour
        self._scripts: OrderedDict[int, list[Event]] = OrderedDict()

    # -- the desk --------------------------------------------------------------------

    def script(self, slot: int) -> list[Event]:
        cached = self._scripts.get(slot)
        if cached is not None:
            return cached
        rng = random.Random(f"{self.options.seed}:{slot}")
        t0 = ANCHOR + self.gap * slot + self.gap * rng.random()
        channel = rng.choices([Channel.EMAIL, Channel.PHONE, Channel.SOCIAL], [5, 3, 2])[0]
        customer = f"cust-{rng.randrange(3000):04d}"
        events: list[Event] = []
        conv = f"{slot}"
        if channel is Channel.EMAIL:
            self._email(rng, events, conv, t0, customer)
        elif channel is Channel.PHONE:
            self._call(rng, events, conv, t0, customer, rng.choice(QUEUES[Channel.PHONE]))
        else:
            self._social(rng, events, conv, t0, customer)
        self._scripts[slot] = events
        if len(self._scripts) > 20_000:
            self._scripts.popitem(last=False)
        return events

    def _event(
        self,
        events: list[Event],
        conv: str,
        kind: EventKind,
        at: datetime,
        channel: Channel,
        queue: str,
        customer: str,
        priority: str | None = None,
        status: Status | None = None,
        reason: str | None = None,
    ) -> None:
        events.append(
            Event(
                source=self.name,
                event_id=f"{conv}-{len(events)}",
                conversation_id=conv,
                kind=kind,
                occurred_at=at,
                channel=channel,
                queue=queue,
                customer_id=customer,
                priority=priority,
                status=status,
                reason=reason,
            )
        )

    def _email(
        self, rng: random.Random, ev: list[Event], conv: str, t0: datetime, cust: str
    ) -> None:
        queue, prio = rng.choice(QUEUES[Channel.EMAIL]), rng.choice(PRIORITIES)

        def add(kind: EventKind, at: datetime, status: Status | None = None) -> None:
            self._event(ev, conv, kind, at, Channel.EMAIL, queue, cust, prio, status)

        add(EventKind.CUSTOMER_MESSAGE, t0)
        r = rng.random()
        if r < 0.88:
            add(EventKind.AUTO_REPLY, t0 + timedelta(seconds=rng.uniform(2, 40)))
        elif r < 0.94:  # a slow autoresponder: auto_ack breached
            add(EventKind.AUTO_REPLY, t0 + timedelta(seconds=rng.uniform(150, 400)))
        if rng.random() < 0.08:
            # the team asks a colleague first: the contact waits on hold for a while
            hold = t0 + timedelta(minutes=rng.uniform(5, 20))
            add(EventKind.STATUS_CHANGED, hold, Status.ON_HOLD)
            back = hold + timedelta(minutes=rng.uniform(30, 120))
            add(EventKind.STATUS_CHANGED, back, Status.OPEN)
            first = back + timedelta(minutes=rng.uniform(5, 40))
        else:
            first = t0 + timedelta(seconds=_lognormal_seconds(rng, 1500, 0.7))
        if rng.random() < 0.12:
            # a customer who hears nothing for a while calls in: a repeat contact
            call_at = t0 + timedelta(minutes=rng.uniform(20, 50))
            if call_at < first:
                self._call(rng, ev, conv + "-call", call_at, cust, "support-line", answered=True)
        add(EventKind.AGENT_REPLY, first)
        t = first
        if rng.random() < 0.35:  # the customer writes back: a next_reply clock
            add(EventKind.STATUS_CHANGED, t + timedelta(seconds=1), Status.PENDING)
            t += timedelta(minutes=rng.uniform(20, 120))
            add(EventKind.CUSTOMER_MESSAGE, t)
            t += timedelta(seconds=_lognormal_seconds(rng, 5400, 0.8))
            add(EventKind.AGENT_REPLY, t)
        add(EventKind.STATUS_CHANGED, t + timedelta(minutes=rng.uniform(1, 30)), Status.SOLVED)

    def _call(
        self,
        rng: random.Random,
        ev: list[Event],
        conv: str,
        t0: datetime,
        cust: str,
        queue: str,
        answered: bool = False,
    ) -> None:
        def add(kind: EventKind, at: datetime, reason: str | None = None) -> None:
            self._event(ev, conv, kind, at, Channel.PHONE, queue, cust, None, None, reason)

        add(EventKind.CALL_QUEUED, t0)
        r = 0.0 if answered else rng.random()
        if r < 0.72:
            add(EventKind.CALL_ANSWERED, t0 + timedelta(seconds=_lognormal_seconds(rng, 11, 0.6)))
        elif r < 0.82:
            add(EventKind.CALL_ABANDONED, t0 + timedelta(seconds=rng.uniform(1, 5)), "ABANDON")
        else:
            gave_up = t0 + timedelta(seconds=rng.uniform(8, 70))
            # some long waits end in a callback request instead, usually returned; drawn
            # apart, so the rest of the script stays
            back = random.Random(f"{self.options.seed}:{conv}:callback")
            if back.random() < 0.4:
                add(EventKind.CALLBACK_REQUESTED, gave_up)
                if back.random() < 0.8:  # an agent calls back within the half hour
                    add(EventKind.CALL_ANSWERED, gave_up + timedelta(minutes=back.uniform(3, 30)))
            else:
                add(EventKind.CALL_ABANDONED, gave_up, "ABANDON")

    def _social(
        self, rng: random.Random, ev: list[Event], conv: str, t0: datetime, cust: str
    ) -> None:
        prio = rng.choice(PRIORITIES)

        def add(kind: EventKind, at: datetime, status: Status | None = None) -> None:
            self._event(ev, conv, kind, at, Channel.SOCIAL, "social-care", cust, prio, status)

        add(EventKind.CUSTOMER_MESSAGE, t0)
        if rng.random() < 0.7:  # a bot greeting: acknowledges, but is not a person
            add(EventKind.AUTO_REPLY, t0 + timedelta(seconds=rng.uniform(1, 5)))
        first = t0 + timedelta(seconds=_lognormal_seconds(rng, 480, 0.7))
        add(EventKind.AGENT_REPLY, first)
        done = first + timedelta(minutes=rng.uniform(2, 20))
        # a follow-up, sometimes (next_reply); drawn apart, so the rest of the script stays
        more = random.Random(f"{self.options.seed}:{conv}:follow-up")
        if more.random() < 0.3:
            asked = first + timedelta(minutes=more.uniform(1, 10))
            add(EventKind.CUSTOMER_MESSAGE, asked)
            done = asked + timedelta(seconds=_lognormal_seconds(more, 1800, 0.8))
            add(EventKind.AGENT_REPLY, done)
            done += timedelta(minutes=more.uniform(1, 10))
        add(EventKind.STATUS_CHANGED, done, Status.SOLVED)

    # -- polling ---------------------------------------------------------------------

    def events_between(self, after: datetime, until: datetime) -> list[Event]:
        """Every event with after < occurred_at <= until."""
        first = max(0, math.floor((after - MAX_SCRIPT - ANCHOR) / self.gap))
        last = math.floor((until - ANCHOR) / self.gap)
        out: list[Event] = []
        for slot in range(first, last + 1):
            out.extend(e for e in self.script(slot) if after < e.occurred_at <= until)
        return out

    def poll(self, cursor: str | None, now: datetime) -> PollResult:
        state = json.loads(cursor) if cursor else {}
        after = (
            datetime.fromisoformat(state["watermark"])
            if "watermark" in state
            else now - self.options.history
        )
        if now <= after:
            return PollResult(cursor=cursor, watermark=after)
        # bounded work per poll, so a long outage catches up in steps
        until = min(now, after + timedelta(hours=6))
        events = self.events_between(after, until)
        return PollResult(
            events=events,
            cursor=json.dumps({"watermark": until.isoformat()}),
            watermark=until,
            more=until < now,
        )

    def close(self) -> None:
        pass
