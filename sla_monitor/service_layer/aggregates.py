"""The live aggregates' diff: what re-evaluating some contacts changes in the counters and
gauges, computed from their records before and the evaluations after (no recount).

A contact keeps the labels it was counted under when it opened, and a target those of when
its outcome was decided, so a counter never moves between series when a contact's queue or
priority changes later (`Labels`). The diff is applied to `LiveState` only once the
transaction that stored the evaluations has committed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from sla_monitor.adapters.records import NO_PRIORITY, ContactRecord, TargetRecord
from sla_monitor.domain.engine import ContactEvaluation, TargetResult
from sla_monitor.domain.events import ContactKey
from sla_monitor.domain.timeutil import to_micros
from sla_monitor.service_layer.live import LiveState, OpenTarget, TargetKey


@dataclass(frozen=True, slots=True)
class Contribution:
    """One target's contribution to the live aggregates."""

    channel: str
    queue: str
    priority: str
    target: str
    state: str
    outcome: str | None
    is_open: bool
    started_us: int
    response_seconds: float | None

    @staticmethod
    def of(r: TargetRecord) -> Contribution:
        return Contribution(
            r.channel,
            r.queue,
            r.priority,
            r.target,
            r.state,
            r.outcome,
            r.is_open,
            r.started_us,
            r.response_seconds,
        )


@dataclass(frozen=True)
class Labels:
    """What stored records say about labels and links that must not move."""

    contacts: dict[ContactKey, tuple[str, str, str]]  # opened: (channel, queue, priority)
    targets: dict[tuple[str, str, str, int], tuple[str, str, str]]  # decided
    links: dict[ContactKey, ContactKey]  # repeat links as stored
    unmatched: set[ContactKey]  # opened without a rule taking them
    repeats_counted: set[ContactKey]  # counted as repeat contacts (for good)

    @staticmethod
    def of(
        contacts: dict[ContactKey, ContactRecord], targets: dict[ContactKey, list[TargetRecord]]
    ) -> Labels:
        return Labels(
            contacts={
                k: (r.channel, r.queue, r.priority)
                for k, r in contacts.items()
                if r.opened_us is not None
            },
            targets={
                (k[0], k[1], r.target, r.seq): (r.channel, r.queue, r.priority)
                for k, rows in targets.items()
                for r in rows
                if r.outcome is not None
            },
            links={k: link for k, r in contacts.items() if (link := r.repeat_of) is not None},
            unmatched={k for k, r in contacts.items() if r.opened_us is not None and r.unmatched},
            repeats_counted={k for k, r in contacts.items() if r.repeat_counted},
        )


@dataclass(frozen=True)
class TargetChange:
    """A target whose state or openness changed (the alerting hooks are told)."""

    evaluation: ContactEvaluation
    result: TargetResult
    before: Contribution | None


@dataclass
class AggregateChange:
    opened: Counter[tuple[str, ...]] = field(default_factory=Counter)
    unmatched: Counter[tuple[str, ...]] = field(default_factory=Counter)
    callbacks: Counter[tuple[str, ...]] = field(default_factory=Counter)
    series: set[tuple[str, str]] = field(default_factory=set)
    removed: list[tuple[ContactKey, int, Contribution]] = field(default_factory=list)
    added: list[tuple[ContactKey, int, Contribution]] = field(default_factory=list)
    gone: list[TargetKey] = field(default_factory=list)  # targets that no longer exist
    changed: list[TargetChange] = field(default_factory=list)
    # (contact, next wake µs, watermark awaited µs)
    wakes: list[tuple[ContactKey, int | None, int | None]] = field(default_factory=list)

    def apply(self, live: LiveState) -> None:
        """Change the aggregates (after the commit that stored the evaluations)."""
        live.opened.update(self.opened)
        live.unmatched.update(self.unmatched)
        live.callbacks.update(self.callbacks)
        live.series.update(self.series)
        for key, seq, row in self.removed:
            _contribute(live, key, seq, row, -1)
        for key, seq, row in self.added:
            _contribute(live, key, seq, row, +1)
        for tk in self.gone:
            live.set_open(tk, None)


def diff(
    evaluations: Iterable[ContactEvaluation],
    contacts: dict[ContactKey, ContactRecord],
    targets: dict[ContactKey, list[TargetRecord]],
    labels: Labels,
) -> AggregateChange:
    """What replacing these contacts' records (`contacts`, `targets`: as stored before)
    with these evaluations changes."""
    change = AggregateChange()
    for ev in evaluations:
        key, a = ev.key, ev.attributes
        old = contacts.get(key)
        kept = labels.contacts.get(key)
        if old is not None and old.opened_us is not None:
            change.opened[(old.channel, old.queue, old.priority)] -= 1
        if ev.opened_at is not None:
            ch, q, p = kept or (a.channel.value, a.queue, a.priority or NO_PRIORITY)
            change.opened[(ch, q, p)] += 1
            if kept is None and ev.rule is None:  # opens now, and no rule takes it
                change.unmatched[(ch, q)] += 1
        change.series.add((a.channel.value, a.queue))
        # callbacks, counted under the labels the contact row carries (as stored)
        if old is not None:
            for state, flag in (
                ("requested", old.callback_requested),
                ("handled", old.callback_handled),
            ):
                if flag:
                    change.callbacks[(old.channel, old.queue, state)] -= 1
        row_ch, row_q = (kept or (a.channel.value, a.queue, ""))[:2]
        for state, at in (
            ("requested", ev.callback_requested_at),
            ("handled", ev.callback_handled_at),
        ):
            if at is not None:
                change.callbacks[(row_ch, row_q, state)] += 1
        previous: dict[tuple[str, int], Contribution] = {}
        for r in targets.get(key, []):
            row = previous[(r.target, r.seq)] = Contribution.of(r)
            change.removed.append((key, r.seq, row))
        for t in ev.targets:
            tk = (key[0], key[1], t.target.value, t.seq)
            ch, q, p = labels.targets.get(tk) or (
                a.channel.value,
                a.queue,
                a.priority or NO_PRIORITY,
            )
            row = Contribution(
                ch,
                q,
                p,
                t.target.value,
                t.state.value,
                t.outcome.value if t.outcome else None,
                t.is_open,
                to_micros(t.started_at),
                t.response_seconds,
            )
            change.added.append((key, t.seq, row))
            before = previous.pop((t.target.value, t.seq), None)
            if before is None or (before.state, before.is_open) != (row.state, row.is_open):
                change.changed.append(TargetChange(ev, t, before))
        change.gone.extend((key[0], key[1], target, seq) for target, seq in previous)
        change.wakes.append(
            (
                key,
                to_micros(ev.next_wake) if ev.next_wake else None,
                to_micros(ev.awaiting_watermark) if ev.awaiting_watermark else None,
            )
        )
    return change


def _contribute(live: LiveState, key: ContactKey, seq: int, row: Contribution, sign: int) -> None:
    if row.outcome is not None:
        live.outcomes[(row.channel, row.queue, row.priority, row.target, row.outcome)] += sign
    if row.response_seconds is not None:
        live.response(row.channel, row.queue, row.priority, row.target, row.response_seconds, sign)
    if sign > 0:
        tk: TargetKey = (key[0], key[1], row.target, seq)
        live.set_open(
            tk,
            OpenTarget.of(
                row.channel, row.queue, row.priority, row.target, row.state, row.started_us
            )
            if row.is_open
            else None,
        )
