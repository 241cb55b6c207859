"""The engine: a contact's events + policy + time -> the state of each of its targets.

Pure: no I/O, and time comes in as `as_of` (now) and `watermark` (the instant up to which
the contact's source has been read completely). Events are de-duplicated and ordered first,
so the result depends only on the set of events, never on their arrival order.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from sla_monitor.domain.calendar import TargetClock
from sla_monitor.domain.events import (
    CUSTOMER_STARTS,
    PERSONAL_RESPONSES,
    ContactKey,
    Event,
    EventKind,
    Status,
    normalize,
)
from sla_monitor.domain.policy import ContactAttributes, Policy, Rule, TargetName, TargetSpec


class TargetState(StrEnum):
    ON_TRACK = "on_track"
    AT_RISK = "at_risk"
    BREACHED = "breached"
    PAUSED = "paused"
    MET = "met"
    CANCELLED = "cancelled"
    ABANDONED = "abandoned"
    ABANDONED_SHORT = "abandoned_short"


class Outcome(StrEnum):
    MET = "met"
    BREACHED = "breached"
    CANCELLED = "cancelled"
    ABANDONED = "abandoned"
    ABANDONED_SHORT = "abandoned_short"


# A source with no watermark has not been read completely up to any instant: nothing on it
# is knowable yet (no breach is declared). Every path — live, replay, report, explain —
# judges with `read_until`.
NEVER_READ = datetime.min.replace(tzinfo=UTC)
_TICK = timedelta(microseconds=1)  # the store's resolution


def read_until(watermark: datetime | None, as_of: datetime) -> datetime:
    """The instant up to which a contact can be judged: its source's watermark, not past
    `as_of`."""
    return NEVER_READ if watermark is None else min(watermark, as_of)


OPEN_STATES = (TargetState.ON_TRACK, TargetState.AT_RISK, TargetState.BREACHED, TargetState.PAUSED)


@dataclass(frozen=True)
class TargetResult:
    target: TargetName
    seq: int  # 0 for the first clock of this target on the contact, 1 for the next, ...
    started_at: datetime
    deadline: datetime | None  # None while paused: it moves by the paused time
    warn_at: datetime | None
    state: TargetState
    outcome: Outcome | None  # decided outcomes never change as time passes
    is_open: bool  # still waiting for its fulfilling event
    ended_at: datetime | None  # fulfilled, stopped or abandoned at
    response_seconds: float | None  # time to fulfilment on the target's clock, minus pauses
    decided_at: datetime | None  # when the outcome became knowable (breach: the deadline)
    remaining: timedelta | None  # clock time left (for a paused or running clock)
    clock: str
    within: timedelta
    lapse_severity: str = "page"  # how a lapse is raised: page | ticket | none
    risk_severity: str = "warning"  # how its warning point is raised: warning | ticket | none
    answered_by: str | None = None  # the agent whose event fulfilled it, where known
    answered_team: str | None = None


@dataclass(frozen=True)
class ContactEvaluation:
    key: ContactKey
    attributes: ContactAttributes
    rule: str | None
    status: Status
    opened_at: datetime | None  # the customer's first message or call
    # first personal response (agent reply, answered call), or a short abandon's end: when the
    # contact stopped asking (the repeat-contact rule)
    first_response_at: datetime | None
    targets: tuple[TargetResult, ...]
    next_wake: datetime | None  # next warning point or deadline after as_of
    awaiting_watermark: datetime | None  # earliest passed deadline the source has not reached
    events: int = 0
    # a caller who asked to be called back, and the team's first personal response after it
    callback_requested_at: datetime | None = None
    callback_handled_at: datetime | None = None


@dataclass
class _Clock:
    spec: TargetSpec
    seq: int
    start: datetime
    end: datetime | None = None
    end_kind: str | None = None  # fulfilled | stopped | abandoned
    by: tuple[str | None, str | None] = (None, None)  # (agent, team) of the fulfilling event


@dataclass
class _Walk:
    status: Status = Status.OPEN
    status_changes: list[tuple[datetime, Status]] = field(default_factory=list)
    clocks: list[_Clock] = field(default_factory=list)
    running: dict[TargetName, _Clock] = field(default_factory=dict)
    seqs: dict[TargetName, int] = field(default_factory=dict)


def contact_attributes(events: Sequence[Event]) -> ContactAttributes:
    """Channel from the first event; queue, priority and tier as last known; tags merged."""
    first = events[0]
    queue, priority, tier, customer = first.queue, None, None, None
    tags: set[str] = set()
    for e in events:
        queue = e.queue or queue
        priority = e.priority or priority
        tier = e.tier or tier
        customer = customer or e.customer_id
        tags |= e.tags
    return ContactAttributes(first.channel, queue, priority, tier, frozenset(tags), customer)


@dataclass(frozen=True)
class _Segment:
    """From `start`, until the next segment, `rule` is the one the contact matches."""

    start: datetime
    rule: Rule | None
    specs: dict[TargetName, TargetSpec]

    def spec(self, name: TargetName) -> TargetSpec | None:
        return self.specs.get(name)


def _segment(start: datetime, rule: Rule | None) -> _Segment:
    return _Segment(start, rule, {t.name: t for t in rule.targets} if rule else {})


def _rule_timeline(events: Sequence[Event], policy: Policy) -> list[_Segment]:
    """The rule in force over time: attributes as known after each event (channel from the
    first; queue, priority, tier as last named; tags merged), matched again on change."""
    first = events[0]
    queue, priority, tier, customer = first.queue, None, None, None
    tags: frozenset[str] = frozenset()
    out: list[_Segment] = []
    matched: tuple[object, ...] | None = None
    for e in events:
        queue = e.queue or queue
        priority = e.priority or priority
        tier = e.tier or tier
        customer = customer or e.customer_id
        if e.tags:
            tags = tags | e.tags
        seen = (queue, priority, tier, tags)
        if seen == matched:
            continue  # nothing a rule looks at changed (the common case: match once)
        matched = seen
        rule = policy.rule_for(
            ContactAttributes(first.channel, queue, priority, tier, tags, customer)
        )
        if not out or rule is not out[-1].rule:
            out.append(_segment(e.occurred_at, rule))
    return out


def _in_force(timeline: Sequence[_Segment], at: datetime) -> _Segment:
    found = timeline[0]
    for seg in timeline[1:]:
        if seg.start > at:
            break
        found = seg
    return found


def _walk(events: Sequence[Event], timeline: Sequence[_Segment]) -> _Walk:
    w = _Walk()

    def start(name: TargetName, at: datetime) -> None:
        spec = _in_force(timeline, at).spec(name)
        if spec is None or name in w.running:
            return
        seq = w.seqs.get(name, 0)
        w.seqs[name] = seq + 1
        clock = _Clock(spec, seq, at)
        w.clocks.append(clock)
        w.running[name] = clock

    def end(at: datetime, kind: str, names: Iterable[TargetName]) -> None:
        for name in list(names):
            clock = w.running.pop(name)
            clock.end, clock.end_kind = at, kind

    def set_status(at: datetime, status: Status) -> None:
        if status != w.status:
            w.status = status
            w.status_changes.append((at, status))

    started_first = False
    awaiting_follow_up = (
        False  # an agent has replied; the customer's next message starts next_reply
    )
    for e in events:
        t = e.occurred_at
        if e.kind is EventKind.CUSTOMER_MESSAGE:
            reopened = w.status in (Status.SOLVED, Status.CLOSED)
            set_status(t, Status.OPEN)  # a customer writing puts the ball back with the team
            if awaiting_follow_up or reopened:
                start(TargetName.NEXT_REPLY, t)
                awaiting_follow_up = False
            elif not started_first:
                start(TargetName.AUTO_ACK, t)
                start(TargetName.FIRST_REPLY, t)
            started_first = True
        elif e.kind is EventKind.CALL_QUEUED:
            if w.status in (Status.SOLVED, Status.CLOSED):
                set_status(t, Status.OPEN)
            start(TargetName.ANSWER, t)
            started_first = True
        elif e.kind is EventKind.CALL_ABANDONED:
            end(t, "abandoned", [n for n in w.running if n is TargetName.ANSWER])
        elif e.kind is EventKind.STATUS_CHANGED:
            assert e.status is not None
            set_status(t, e.status)
            if e.status in (Status.SOLVED, Status.CLOSED):
                end(t, "stopped", list(w.running))
                awaiting_follow_up = False
        if e.kind in (
            EventKind.AUTO_REPLY,
            EventKind.AGENT_REPLY,
            EventKind.CALL_ANSWERED,
            EventKind.CALLBACK_REQUESTED,
        ):
            fulfilled = [n for n, c in w.running.items() if e.kind in c.spec.fulfilments]
            for n in fulfilled:
                w.running[n].by = (e.agent, e.team)
            end(t, "fulfilled", fulfilled)
            if e.kind is EventKind.CALLBACK_REQUESTED and TargetName.ANSWER in w.running:
                # the caller left the queue for a callback: the wait ends with the call,
                # judged by time (breached if the deadline had passed, else cancelled)
                end(t, "stopped", [TargetName.ANSWER])
            if e.kind is EventKind.AGENT_REPLY:
                awaiting_follow_up = True
                if w.status is Status.OPEN:
                    start(TargetName.KEEP_INFORMED, t)
    return w


def _pauses(
    changes: Sequence[tuple[datetime, Status]],
    pause_on: frozenset[Status],
    start: datetime,
    until: datetime | None,
) -> list[tuple[datetime, datetime | None]]:
    """Intervals within [start, until) when the contact was in a pausing status."""
    if not pause_on:
        return []
    out: list[tuple[datetime, datetime | None]] = []
    paused_since: datetime | None = None
    status = Status.OPEN
    for at, new in changes:
        if until is not None and at >= until:
            break
        if status not in pause_on and new in pause_on:
            paused_since = at
        elif status in pause_on and new not in pause_on:
            assert paused_since is not None
            out.append((paused_since, at))
            paused_since = None
        status = new
    if paused_since is not None:
        out.append((paused_since, until))
    clipped: list[tuple[datetime, datetime | None]] = []
    for ps, pe in out:
        if pe is not None and pe <= start:
            continue
        clipped.append((max(ps, start), pe))
    return clipped


def due(
    clock: TargetClock,
    start: datetime,
    amount: timedelta,
    pauses: Sequence[tuple[datetime, datetime | None]],
) -> tuple[datetime | None, timedelta]:
    """When `amount` of clock time has run from `start`, not counting the paused intervals.

    Returns (deadline, 0), or (None, remaining) while a pause is still going on.
    """
    cursor, remaining = start, amount
    for ps, pe in pauses:
        if pe is not None and pe <= cursor:
            continue
        if ps > cursor:
            deadline = clock.add(cursor, remaining)
            if deadline <= ps:
                return deadline, timedelta(0)
            remaining -= clock.between(cursor, ps)
        if pe is None:
            return None, remaining
        cursor = max(cursor, pe)
    return clock.add(cursor, remaining), timedelta(0)


def _elapsed(
    clock: TargetClock,
    start: datetime,
    end: datetime,
    pauses: Sequence[tuple[datetime, datetime | None]],
) -> timedelta:
    total = clock.between(start, end)
    for ps, pe in pauses:
        s, e = max(ps, start), min(pe or end, end)
        if e > s:
            total -= clock.between(s, e)
    return total


def _judge(
    c: _Clock, w: _Walk, policy: Policy, as_of: datetime, watermark: datetime
) -> TargetResult:
    spec = c.spec
    pauses = _pauses(w.status_changes, spec.pauses, c.start, c.end)
    deadline, remaining = due(spec.clock, c.start, spec.within, pauses)
    warn_at = None
    if spec.warn_before is not None:
        lead = max(spec.within - spec.warn_before, timedelta(0))
        warn_at, _ = due(spec.clock, c.start, lead, pauses)
    knowable = min(as_of, watermark)
    response: float | None = None
    outcome: Outcome | None = None
    decided: datetime | None = None
    if c.end is not None:
        if c.end_kind == "fulfilled":
            response = _elapsed(spec.clock, c.start, c.end, pauses).total_seconds()
            if deadline is None or c.end <= deadline:
                outcome, decided = Outcome.MET, c.end
            else:
                outcome, decided = Outcome.BREACHED, deadline
        elif c.end_kind == "abandoned":
            waited = _elapsed(spec.clock, c.start, c.end, pauses)
            short = policy.short_abandon if spec.short_abandon is None else spec.short_abandon
            if waited <= short:
                outcome, decided = Outcome.ABANDONED_SHORT, c.end
            elif deadline is None or c.end < deadline:
                outcome, decided = Outcome.ABANDONED, c.end
            else:
                outcome, decided = Outcome.BREACHED, deadline
        elif deadline is not None and deadline <= c.end:
            outcome, decided = Outcome.BREACHED, deadline
        else:
            outcome, decided = Outcome.CANCELLED, c.end
        state = TargetState(outcome.value)
        return TargetResult(
            spec.name,
            c.seq,
            c.start,
            deadline,
            warn_at,
            state,
            outcome,
            False,
            c.end,
            response,
            decided,
            None,
            spec.clock.name,
            spec.within,
            spec.lapse_severity,
            spec.risk_severity,
            *(c.by if c.end_kind == "fulfilled" else (None, None)),
        )
    if deadline is None:
        state = TargetState.PAUSED
    elif deadline < knowable:  # the source has been read past the deadline (not up to it)
        state, outcome, decided = TargetState.BREACHED, Outcome.BREACHED, deadline
    elif deadline <= as_of or (warn_at is not None and warn_at <= as_of):
        state = TargetState.AT_RISK  # past the warning point, or due and awaiting the source
    else:
        state = TargetState.ON_TRACK
    if deadline is not None and deadline > as_of:
        remaining = _elapsed(spec.clock, as_of, deadline, pauses)
    elif deadline is not None:
        remaining = timedelta(0)
    return TargetResult(
        spec.name,
        c.seq,
        c.start,
        deadline,
        warn_at,
        state,
        outcome,
        True,
        None,
        None,
        decided,
        remaining,
        spec.clock.name,
        spec.within,
        spec.lapse_severity,
        spec.risk_severity,
    )


def _judge_over(
    c: _Clock,
    w: _Walk,
    policy: Policy,
    as_of: datetime,
    watermark: datetime,
    timeline: Sequence[_Segment],
) -> TargetResult:
    """Judge a clock under the rules in force while it ran. Decided outcomes are final: a
    lapse decided under one rule stands when the contact later matches another (a priority
    or queue change); an open clock moves to the new rule, measured from its start."""
    later = [seg for seg in timeline[1:] if seg.start > c.start]
    if not later:  # one rule all along (the common case)
        return _judge(c, w, policy, as_of, watermark)
    spec = c.spec
    seg_start = c.start
    for seg in later:
        if c.end is not None and c.end < seg.start:
            break  # it ended under the current rule
        knowable = min(as_of, watermark)
        pauses = _pauses(w.status_changes, spec.pauses, c.start, c.end)
        deadline, _ = due(spec.clock, c.start, spec.within, pauses)
        if deadline is not None and deadline < seg.start:
            decided = max(deadline, seg_start)
            if decided < knowable:  # lapsed under this rule, before the change: it stands
                result = _judge(replace(c, spec=spec), w, policy, as_of, watermark)
                if result.decided_at is not None and result.decided_at < decided:
                    result = replace(result, decided_at=decided)
                return result
            break  # not knowable yet: judged under this rule until it is
        nxt = seg.spec(spec.name)
        if nxt is None:  # the rule now in force makes no such promise: the clock ends
            return _judge(
                replace(c, spec=spec, end=seg.start, end_kind="stopped"),
                w,
                policy,
                as_of,
                watermark,
            )
        spec, seg_start = nxt, seg.start
    return _judge(c if spec is c.spec else replace(c, spec=spec), w, policy, as_of, watermark)


Decided = Mapping[tuple[str, int], tuple[str, datetime]]  # (target, seq) -> outcome, when


def _keep_decided(r: TargetResult, decided: Decided) -> TargetResult:
    """An outcome published before stands: an event that arrived after the decision (its
    source broke its watermark's promise) never flips it; only `replay` recomputes."""
    kept = decided.get((r.target.value, r.seq))
    if kept is None or (r.outcome is not None and r.outcome.value == kept[0]):
        return r
    outcome = Outcome(kept[0])
    state = TargetState.BREACHED if outcome is Outcome.BREACHED and r.is_open else None
    return replace(
        r, outcome=outcome, state=state or TargetState(outcome.value), decided_at=kept[1]
    )


def evaluate_contact(
    events: Iterable[Event],
    policy: Policy,
    as_of: datetime,
    watermark: datetime,
    decided: Decided | None = None,
) -> ContactEvaluation:
    """Evaluate one contact (all events must share source and conversation id). `decided`:
    outcomes already published for it, which stand (see `_keep_decided`)."""
    evs = normalize(list(events))
    if not evs:
        raise ValueError("a contact needs at least one event")
    key = evs[0].contact_key
    if any(e.contact_key != key for e in evs):
        raise ValueError("events of several contacts passed to evaluate_contact")
    attrs = contact_attributes(evs)
    rule = policy.rule_for(attrs)
    stored = len(evs)
    closes = _idle_closes(evs, rule, as_of, watermark)
    last = evs[-1]
    if closes:  # idle for `close_after`: closed then (in event order, so the walk sees it)
        evs = normalize([*evs, *(_closed(last, at, i) for i, at in enumerate(closes))])
    timeline = _rule_timeline(evs, policy)
    walk = _walk(evs, timeline)
    results = tuple(_judge_over(c, walk, policy, as_of, watermark, timeline) for c in walk.clocks)
    if decided:
        results = tuple(_keep_decided(r, decided) for r in results)
    opened = next((e.occurred_at for e in evs if e.kind in CUSTOMER_STARTS), None)
    first_response = None
    if opened is not None:
        first_response = next(
            (
                e.occurred_at
                for e in evs
                if e.kind in PERSONAL_RESPONSES and e.occurred_at >= opened
            ),
            None,
        )
    # a call abandoned within short_abandon is noise: the caller who redials was not made
    # to ask twice, so for the repeat rule the contact stops asking there
    for r in results:
        if (
            r.outcome is Outcome.ABANDONED_SHORT
            and r.ended_at is not None
            and (first_response is None or r.ended_at < first_response)
        ):
            first_response = r.ended_at
    wake: datetime | None = None
    awaiting: datetime | None = None
    for r in results:
        if not r.is_open or r.outcome is not None:
            continue
        # a breach is knowable the first instant past its deadline
        lapse = r.deadline + _TICK if r.deadline is not None else None
        for point in (r.warn_at, lapse):
            if point is not None and point > as_of and (wake is None or point < wake):
                wake = point
        if (
            r.deadline is not None
            and r.deadline <= as_of
            and (awaiting is None or r.deadline < awaiting)
        ):
            awaiting = r.deadline
    if rule is not None and rule.close_after is not None:
        idle_end = last.occurred_at + rule.close_after
        if any(r.is_open for r in results) and not (closes and closes[-1] == idle_end):
            if idle_end > as_of:
                wake = idle_end if wake is None else min(wake, idle_end)
            elif awaiting is None or idle_end < awaiting:
                awaiting = idle_end  # due, but the source has not been read that far
    callback = next((e.occurred_at for e in evs if e.kind is EventKind.CALLBACK_REQUESTED), None)
    handled = None
    if callback is not None:
        handled = next(
            (
                e.occurred_at
                for e in evs
                if e.kind in PERSONAL_RESPONSES and e.occurred_at > callback
            ),
            None,
        )
    return ContactEvaluation(
        key,
        attrs,
        rule.name if rule else None,
        walk.status,
        opened,
        first_response,
        results,
        wake,
        awaiting,
        stored,
        callback,
        handled,
    )


CLOSE_AFTER_EVENT_ID = "close_after"  # the id of the closing no event was stored for


def _idle_closes(
    evs: Sequence[Event], rule: Rule | None, as_of: datetime, watermark: datetime
) -> list[datetime]:
    """When the contact was closed for inactivity: `close_after` after each event followed
    by that long a silence — the last one only once the source has been read past it (no
    event can still arrive before it)."""
    if rule is None or rule.close_after is None or not evs:
        return []
    idle = rule.close_after
    out = [
        a.occurred_at + idle
        for a, b in itertools.pairwise(evs)
        if b.occurred_at - a.occurred_at > idle
    ]
    at = evs[-1].occurred_at + idle
    if at <= min(as_of, watermark):
        out.append(at)
    return out


def _closed(last: Event, at: datetime, n: int) -> Event:
    return Event(
        source=last.source,
        event_id=f"{CLOSE_AFTER_EVENT_ID}:{n}",
        conversation_id=last.conversation_id,
        kind=EventKind.STATUS_CHANGED,
        occurred_at=at,
        channel=last.channel,
        queue=last.queue,
        status=Status.CLOSED,
        reason="close_after",
    )


@dataclass(frozen=True)
class ContactSummary:
    """What the repeat-contact rule needs to know of a contact."""

    key: ContactKey
    customer_id: str | None
    opened_at: datetime | None
    first_response_at: datetime | None


def find_repeats(
    contacts: Iterable[ContactSummary], window: timedelta
) -> dict[ContactKey, ContactKey]:
    """Contacts opened while an earlier one of the same customer (within `window`) had no
    personal response yet, each linked to the earliest such contact."""
    by_customer: dict[str, list[ContactSummary]] = {}
    for c in contacts:
        if c.customer_id and c.opened_at is not None:
            by_customer.setdefault(c.customer_id, []).append(c)
    links: dict[ContactKey, ContactKey] = {}
    for group in by_customer.values():
        group.sort(key=lambda c: (c.opened_at, c.key))
        for i, later in enumerate(group):
            assert later.opened_at is not None
            for earlier in group[:i]:
                if could_repeat(earlier, later, window):
                    links[later.key] = earlier.key
                    break
    return links


def could_repeat(earlier: ContactSummary, later: ContactSummary, window: timedelta) -> bool:
    """Whether `later` (same customer) counts as a repeat of `earlier`: opened within the
    window after it while it had no personal response yet."""
    return (
        earlier.opened_at is not None
        and later.opened_at is not None
        and earlier.opened_at < later.opened_at
        and later.opened_at - earlier.opened_at <= window
        and (earlier.first_response_at is None or earlier.first_response_at > later.opened_at)
    )
