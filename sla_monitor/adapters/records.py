"""What the store hands back and takes: small immutable records, never rows or connections.

Contact and target records are named tuples: as cheap to build from a driver's row as the
row itself (a restart reads a million open targets), and plain tuples to a bulk insert.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple

from sla_monitor.domain.engine import ContactEvaluation
from sla_monitor.domain.events import ContactKey
from sla_monitor.domain.timeutil import from_micros, to_micros

NO_PRIORITY = "none"  # label for contacts whose source gives no priority

Counts = list[tuple[tuple[str, ...], int]]  # (label values, count) per series
Row = tuple[Any, ...]  # a record's values as a plain tuple, in its field order


@dataclass(frozen=True)
class SourceState:
    """Where a source has been read to: its cursor and watermark (what it vouches for)."""

    name: str
    kind: str
    cursor: str | None = None
    watermark: datetime | None = None
    last_success: datetime | None = None


class ContactRecord(NamedTuple):
    """A contact's stored state, with the labels it was counted under when it opened."""

    source: str
    conversation_id: str
    channel: str
    queue: str
    priority: str
    customer_id: str | None
    rule: str | None
    status: str
    opened_us: int | None
    first_response_us: int | None
    repeat_of_source: str | None
    repeat_of_conversation: str | None
    events: int
    next_wake_us: int | None
    awaiting_us: int | None
    unmatched: bool | None
    repeat_counted: bool | None  # counted as a repeat contact (stays, once counted)
    callback_requested: bool | None = None  # 0014: the caller asked to be called back
    callback_handled: bool | None = None  # ... and the team got back to them

    @property
    def key(self) -> ContactKey:
        return (self.source, self.conversation_id)

    @property
    def repeat_of(self) -> ContactKey | None:
        if self.repeat_of_source is None or self.repeat_of_conversation is None:
            return None
        return (self.repeat_of_source, self.repeat_of_conversation)


class TargetRecord(NamedTuple):
    """One target of a contact, as last evaluated (labels as when its outcome was decided)."""

    source: str
    conversation_id: str
    target: str
    seq: int
    channel: str
    queue: str
    priority: str
    state: str
    outcome: str | None
    is_open: bool
    started_us: int
    deadline_us: int | None
    warn_us: int | None
    ended_us: int | None
    decided_us: int | None
    response_seconds: float | None


CONTACT_FIELDS = ContactRecord._fields
TARGET_FIELDS = TargetRecord._fields


class AlertingTarget(NamedTuple):
    """An open target that is breached or at risk, with what a page needs to say."""

    source: str
    conversation_id: str
    target: str
    seq: int
    channel: str
    queue: str
    priority: str
    state: str
    started_us: int
    deadline_us: int | None
    customer_id: str | None
    rule: str | None


class PendingWake(NamedTuple):
    """A contact waiting for a deadline or warning point, or for its source's watermark."""

    source: str
    conversation_id: str
    wake_us: int | None
    awaiting_us: int | None


class RejectedRecord(NamedTuple):
    id: int
    source: str
    reason: str
    detail: str
    payload: str
    rejected_us: int
    key: str | None


class QuietContact(NamedTuple):
    """A contact that can be archived (nothing open, nothing pending)."""

    source: str
    conversation_id: str
    customer_id: str | None


class CarriedResponses(NamedTuple):
    """Archived response times: their value rounded up to the millisecond, how many, and
    their exact sum."""

    channel: str
    queue: str
    target: str
    le_seconds: float
    how_many: int
    total: float
    priority: str = NO_PRIORITY  # rows carried before it was kept: "none"


class Carried(StrEnum):
    """Counters whose archived rows' contribution is carried forward. The values are the
    stored keys (written by earlier versions too): never rename one."""

    INGESTED = "sla_events_ingested"  # only before migration 0009 (now ingested_counts)
    OPENED = "sla_contacts_opened"
    REPEATS = "sla_repeat_contacts"
    UNMATCHED = "sla_contacts_unmatched"
    OUTCOMES = "sla_target_outcomes"
    CALLBACKS_REQUESTED = "sla_callbacks_requested"
    CALLBACKS_HANDLED = "sla_callbacks_handled"


CONTACTS_SEEN = "contacts"  # state_counts metric: (source, channel, queue) -> contacts
RESPONSE_BOUNDS = "response_bounds"  # state_counts metric: the response buckets' bounds

# a contact or target row's counted labels (metric, label values) -> how many
StateCounts = Counter[tuple[str, tuple[str, ...]]]


def state_counts(contacts: Iterable[Row], targets: Iterable[Row], sign: int = 1) -> StateCounts:
    """What these contact and target rows (records or plain tuples in field order) add to
    the counters kept beside them (`sign` -1: what removing them takes away)."""
    out: StateCounts = Counter()
    for c in contacts:
        # ContactRecord order: source 0, channel 2, queue 3, priority 4, opened_us 8,
        # unmatched 15, repeat_counted 16
        out[(CONTACTS_SEEN, (c[0], c[2], c[3]))] += sign
        if c[8] is not None:
            out[(Carried.OPENED, (c[2], c[3], c[4]))] += sign
        if c[15]:
            out[(Carried.UNMATCHED, (c[2], c[3]))] += sign
        if c[16]:
            out[(Carried.REPEATS, (c[2], c[3]))] += sign
        if c[17]:  # callback_requested 17, callback_handled 18
            out[(Carried.CALLBACKS_REQUESTED, (c[2], c[3]))] += sign
        if c[18]:
            out[(Carried.CALLBACKS_HANDLED, (c[2], c[3]))] += sign
    for t in targets:
        # TargetRecord order: target 2, channel 4, queue 5, priority 6, outcome 8
        if t[8] is not None:
            out[(Carried.OUTCOMES, (t[4], t[5], t[6], t[2], t[8]))] += sign
    return out


def queues_of(contacts: Iterable[Row]) -> list[tuple[str, str]]:
    """(source, queue) of these contact rows, each once, in the order they first appear
    (the store keeps the order queues were first seen in: queue labels are bounded by it)."""
    return list(dict.fromkeys((c[0], c[3]) for c in contacts))


class ResponseCounts(NamedTuple):
    """One response-time histogram: per bucket of the given bounds (the last is +Inf)
    how many, and the exact sum of them all."""

    channel: str
    queue: str
    priority: str
    target: str
    counts: tuple[int, ...]
    total: float


# (channel, queue, priority, target, bucket) -> (how many, their sum)
ResponseBuckets = dict[tuple[str, str, str, str, int], tuple[int, float]]


def bucket_responses(
    bounds: tuple[float, ...], targets: Iterable[Row], sign: int = 1
) -> ResponseBuckets:
    """These target rows' response times in the buckets of `bounds` (a bucket takes the
    values up to and including its bound, as Prometheus's `le`)."""
    out: ResponseBuckets = {}
    for t in targets:
        seconds = t[15]  # TargetRecord order: response_seconds 15
        if seconds is None:
            continue
        # TargetRecord order: target 2, channel 4, queue 5, priority 6
        key = (t[4], t[5], t[6], t[2], bisect.bisect_left(bounds, seconds))
        n, total = out.get(key, (0, 0.0))
        out[key] = (n + sign, total + sign * float(seconds))
    return out


def response_histograms(
    bounds: tuple[float, ...], buckets: ResponseBuckets, carried: Iterable[CarriedResponses]
) -> list[ResponseCounts]:
    """Histograms from bucketed counts plus what archived rows carried."""
    merged: dict[tuple[str, str, str, str], tuple[list[int], float]] = {}

    def add(labels: tuple[str, str, str, str], bucket: int, n: int, total: float) -> None:
        counts, sum_ = merged.get(labels) or ([0] * (len(bounds) + 1), 0.0)
        counts[bucket] += n
        merged[labels] = (counts, sum_ + total)

    for (ch, q, p, tg, bucket), (n, total) in buckets.items():
        add((ch, q, p, tg), bucket, n, total)
    for c in carried:
        bucket = bisect.bisect_left(bounds, c.le_seconds)  # exact: rounded up to the ms
        add((c.channel, c.queue, c.priority, c.target), bucket, c.how_many, c.total)
    return [
        ResponseCounts(ch, q, p, tg, tuple(counts), total)
        for (ch, q, p, tg), (counts, total) in merged.items()
        if any(counts)
    ]


@dataclass(frozen=True)
class SourceCounts:
    """One source's counters, for the replica that takes the source over."""

    ingested: Counts
    rejected: Counts
    polls: Counts
    skipped: Counts
    late: Counts


def _us(dt: datetime | None) -> int | None:
    return None if dt is None else to_micros(dt)


def decided_of(
    targets: dict[ContactKey, list[TargetRecord]], key: ContactKey
) -> dict[tuple[str, int], tuple[str, datetime]]:
    """The outcomes already decided for a contact's targets."""
    return {
        (r.target, r.seq): (r.outcome, from_micros(r.decided_us if r.decided_us else r.started_us))
        for r in targets.get(key, [])
        if r.outcome is not None
    }


def evaluation_rows(
    evaluations: Iterable[ContactEvaluation],
    repeat_links: dict[ContactKey, ContactKey] | None = None,
    contact_labels: dict[ContactKey, tuple[str, str, str]] | None = None,
    target_labels: dict[tuple[str, str, str, int], tuple[str, str, str]] | None = None,
    unmatched_before: set[ContactKey] | None = None,
    repeats_counted: set[ContactKey] | None = None,
) -> tuple[list[Row], list[Row]]:
    """The contact and target rows of these evaluations: plain tuples in `ContactRecord`
    and `TargetRecord` field order. Plain, because replay writes millions: a tuple subclass
    costs several times more to build, to bind in a bulk insert and to send back from a
    worker process.

    `contact_labels` and `target_labels` keep the labels a contact was counted under when
    it opened, and a target when its outcome was decided, so counters never move between
    series when a contact's priority or queue changes later."""
    links = repeat_links or {}
    contacts: list[Row] = []
    targets: list[Row] = []
    for ev in evaluations:
        a = ev.attributes
        prio = a.priority or NO_PRIORITY
        link = links.get(ev.key)
        kept = (contact_labels or {}).get(ev.key)
        ch, q, p = kept or (a.channel.value, a.queue, prio)
        if kept is not None:  # opened before: counted then, as it was then
            unmatched = ev.key in (unmatched_before or ())
        else:
            unmatched = ev.rule is None and ev.opened_at is not None
        contacts.append(
            (  # in ContactRecord field order
                ev.key[0],
                ev.key[1],
                ch,
                q,
                p,
                a.customer_id,
                ev.rule,
                ev.status.value,
                _us(ev.opened_at),
                _us(ev.first_response_at),
                link[0] if link else None,
                link[1] if link else None,
                ev.events,
                _us(ev.next_wake),
                _us(ev.awaiting_watermark),
                unmatched,
                link is not None or ev.key in (repeats_counted or ()),
                ev.callback_requested_at is not None,
                ev.callback_handled_at is not None,
            )
        )
        for t in ev.targets:
            tk = (ev.key[0], ev.key[1], t.target.value, t.seq)
            ch, q, p = (target_labels or {}).get(tk) or (a.channel.value, a.queue, prio)
            targets.append(
                (  # in TargetRecord field order
                    ev.key[0],
                    ev.key[1],
                    t.target.value,
                    t.seq,
                    ch,
                    q,
                    p,
                    t.state.value,
                    t.outcome.value if t.outcome else None,
                    t.is_open,
                    to_micros(t.started_at),
                    _us(t.deadline),
                    _us(t.warn_at),
                    _us(t.ended_at),
                    _us(t.decided_at),
                    t.response_seconds,
                )
            )
    return contacts, targets


@dataclass(frozen=True)
class CarriedCounts:
    """What archived records contributed to the counters (carried on after they go)."""

    counters: dict[Carried, Counter[tuple[str, ...]]]
    # (channel, queue, priority, target, value rounded up to the ms) -> (how many, exact sum)
    responses: dict[tuple[str, str, str, str, int], tuple[int, float]]
    opened: int


def carried_counts(
    contacts: Iterable[ContactRecord], targets: Iterable[TargetRecord]
) -> CarriedCounts:
    """What archiving these records takes out of the counts read from the state tables
    (events are counted as they are stored: archiving them moves nothing)."""
    counters: dict[Carried, Counter[tuple[str, ...]]] = {c: Counter() for c in Carried}
    for c in contacts:
        if c.opened_us is not None:
            counters[Carried.OPENED][(c.channel, c.queue, c.priority)] += 1
        if c.repeat_counted:
            counters[Carried.REPEATS][(c.channel, c.queue)] += 1
        if c.unmatched:
            counters[Carried.UNMATCHED][(c.channel, c.queue)] += 1
        if c.callback_requested:
            counters[Carried.CALLBACKS_REQUESTED][(c.channel, c.queue)] += 1
        if c.callback_handled:
            counters[Carried.CALLBACKS_HANDLED][(c.channel, c.queue)] += 1
    responses: dict[tuple[str, str, str, str, int], tuple[int, float]] = {}
    for t in targets:
        if t.outcome is not None:
            counters[Carried.OUTCOMES][(t.channel, t.queue, t.priority, t.target, t.outcome)] += 1
        if t.response_seconds is not None:
            seconds = float(t.response_seconds)
            # rounded up: v <= b exactly when ceil_ms(v) <= b, for any bound b in ms
            le_ms = math.ceil(round(seconds * 1000, 3))
            key = (t.channel, t.queue, t.priority, t.target, le_ms)
            n, total = responses.get(key, (0, 0.0))
            responses[key] = (n + 1, total + seconds)
    return CarriedCounts(counters, responses, sum(counters[Carried.OPENED].values()))
