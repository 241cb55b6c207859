"""Replay and report: recompute outcomes from stored events, deterministically."""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from itertools import pairwise
from typing import Any

from sla_monitor.adapters.abc import Store
from sla_monitor.adapters.records import (
    NO_PRIORITY,
    Row,
    TargetRecord,
    decided_of,
    evaluation_rows,
)
from sla_monitor.config import Config, contact_link
from sla_monitor.domain.engine import (
    NEVER_READ,
    ContactEvaluation,
    ContactSummary,
    Outcome,
    evaluate_contact,
    find_repeats,
    read_until,
)
from sla_monitor.domain.events import ContactKey, Event
from sla_monitor.domain.policy import TargetName
from sla_monitor.domain.timeutil import from_micros, iso, to_micros
from sla_monitor.service_layer.live import response_buckets

Progress = Callable[[int, int], None]  # (contacts done, events done)


def _evaluations(
    store: Store,
    config: Config,
    as_of: datetime,
    progress: Progress | None,
    keep_decided: bool = False,
) -> Iterator[ContactEvaluation]:
    """Every contact as of `as_of`. `keep_decided`: outcomes the monitor already published
    (decided by `as_of`) stand, as they do live — everything but `replay`, which recomputes."""
    with store.read() as reader:
        watermarks = {n: s.watermark for n, s in reader.sources.load().items()}
        contacts = events = 0
        last = time.monotonic()
        batch: list[list[Event]] = []

        def flush() -> Iterator[ContactEvaluation]:
            decided: dict[ContactKey, list[TargetRecord]] = {}
            if keep_decided:
                with store.begin() as other:
                    decided = other.state.targets_for([b[0].contact_key for b in batch])
            for b in batch:
                kept = _decided_by(decided, b[0].contact_key, as_of) if keep_decided else None
                yield _evaluate(b, config, as_of, watermarks, kept)
            batch.clear()

        for evs in reader.events.by_contact(until_us=to_micros(as_of)):
            batch.append(evs)
            if len(batch) >= 500:
                yield from flush()
            contacts += 1
            events += len(evs)
            if progress is not None and time.monotonic() - last >= 1.0:
                progress(contacts, events)
                last = time.monotonic()
        yield from flush()
        if progress is not None:
            progress(contacts, events)


def _decided_by(
    rows: dict[ContactKey, list[TargetRecord]], key: ContactKey, as_of: datetime
) -> dict[tuple[str, int], tuple[str, datetime]]:
    as_of_us = to_micros(as_of)
    return {k: v for k, v in decided_of(rows, key).items() if to_micros(v[1]) <= as_of_us}


def _evaluate(
    events: list[Event],
    config: Config,
    as_of: datetime,
    watermarks: dict[str, datetime | None],
    decided: dict[tuple[str, int], tuple[str, datetime]] | None = None,
) -> ContactEvaluation:
    """One contact as of `as_of`, judged up to where its source has been read completely."""
    wm = read_until(watermarks.get(events[0].source), as_of)
    return evaluate_contact(events, config.policy, as_of, wm, decided)


def _summary(ev: ContactEvaluation) -> ContactSummary:
    return ContactSummary(ev.key, ev.attributes.customer_id, ev.opened_at, ev.first_response_at)


@dataclass
class ReplaySummary:
    contacts: int
    targets: int
    repeats: int


def replay(
    store: Store,
    config: Config,
    as_of: datetime,
    progress: Progress | None = None,
    workers: int | None = None,
) -> ReplaySummary:
    """Recompute every contact's targets from stored events and rewrite the state tables.

    Contacts are independent, so with several CPUs, worker processes each read and evaluate
    a range of contacts while this process writes the rows (`workers`: default one per CPU;
    1 = all in this process). The outcome is the same either way."""
    workers = workers if workers is not None else (os.cpu_count() or 1)
    if workers > 1 and store.shared:
        with store.read() as reader:
            many = reader.events.id_span() >= PARALLEL_FROM_EVENTS
        if many:
            return _replay_parallel(store, config, as_of, progress, workers)
    summaries: list[ContactSummary] = []
    batch: list[ContactEvaluation] = []
    targets = 0
    with store.begin() as tx:
        tx.state.clear()
        tx.counters.count_responses_in(response_buckets(config.policy))
        for ev in _evaluations(store, config, as_of, progress):
            batch.append(ev)
            summaries.append(_summary(ev))
            targets += len(ev.targets)
            if len(batch) >= 2000:
                tx.state.write(*evaluation_rows(batch))
                batch.clear()
        tx.state.write(*evaluation_rows(batch))
        links = find_repeats(summaries, config.policy.repeat_window)
        tx.state.set_repeats(dict(links))
    return ReplaySummary(len(summaries), targets, len(links))


PARALLEL_FROM_EVENTS = 50_000  # below this, starting processes costs more than it saves

# What a forked replay worker needs: set before the pool starts, inherited by fork (the
# config holds calendars and compiled rules; no need to pickle it)
_job: tuple[str, Config, datetime, dict[str, datetime | None]] | None = None


def _replay_range(
    bounds: tuple[ContactKey | None, ContactKey | None],
) -> tuple[list[Row], list[Row], list[ContactSummary], int]:
    """In a worker process: evaluate the contacts in [start, stop) and build their rows."""
    from sla_monitor.adapters import open_store

    assert _job is not None
    url, config, as_of, watermarks = _job
    store = open_store(url)  # its own connections: never the parent's, inherited by fork
    try:
        evaluations = []
        events = 0
        with store.read() as reader:
            for evs in reader.events.by_contact(to_micros(as_of), *bounds):
                evaluations.append(_evaluate(evs, config, as_of, watermarks))
                events += len(evs)
        contacts, targets = evaluation_rows(evaluations)
        return contacts, targets, [_summary(ev) for ev in evaluations], events
    finally:
        store.close()


def _replay_parallel(
    store: Store, config: Config, as_of: datetime, progress: Progress | None, workers: int
) -> ReplaySummary:
    global _job
    with store.read() as reader:
        watermarks = {n: s.watermark for n, s in reader.sources.load().items()}
        points = reader.events.split_points(workers * 16)
    edges: list[ContactKey | None] = [None, *points, None]
    ranges = list(pairwise(edges))
    summaries: list[ContactSummary] = []
    targets = events = 0
    last = time.monotonic()
    _job = (store.url, config, as_of, watermarks)
    try:
        # forked before this process opens its writing transaction
        with multiprocessing.get_context("fork").Pool(workers) as pool, store.begin() as tx:
            tx.state.clear()
            tx.counters.count_responses_in(response_buckets(config.policy))
            for contact_rows, target_rows, part, n in pool.imap_unordered(_replay_range, ranges):
                tx.state.write(contact_rows, target_rows)
                summaries.extend(part)
                targets += len(target_rows)
                events += n
                if progress is not None and time.monotonic() - last >= 1.0:
                    progress(len(summaries), events)
                    last = time.monotonic()
            links = find_repeats(summaries, config.policy.repeat_window)
            tx.state.set_repeats(dict(links))
    finally:
        _job = None
    if progress is not None:
        progress(len(summaries), events)
    return ReplaySummary(len(summaries), targets, len(links))


def _percentile(sorted_values: list[float], p: float) -> float:
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))  # nearest-rank
    return sorted_values[rank - 1]


SERVICE_LEVEL_DENOMINATORS = {
    "late_abandons": ("met", "breached"),
    "all_abandons": ("met", "breached", "abandoned"),
    "all_abandons_and_short": ("met", "breached", "abandoned", "abandoned_short"),
}


def report(
    store: Store,
    config: Config,
    as_of: datetime,
    start: datetime | None,
    end: datetime | None,
    progress: Progress | None = None,
    by: str | None = None,
    zone: tzinfo = UTC,
) -> dict[str, Any]:
    """Compliance per channel, queue and target for targets started in [start, end), each
    against its objective; per channel, queue and priority; per day (in `zone`). With `by`
    ("agent" or "team"), also per person or team for the targets they answered."""
    s_us = to_micros(start) if start else None
    e_us = to_micros(end) if end else None

    def in_period(t: datetime | None) -> bool:
        if t is None:
            return False
        us = to_micros(t)
        return (s_us is None or us >= s_us) and (e_us is None or us < e_us)

    outcomes: dict[tuple[str, str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    responses: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    opened: dict[tuple[str, str], int] = defaultdict(int)
    labels: dict[ContactKey, tuple[str, str]] = {}
    summaries: list[ContactSummary] = []
    people: dict[str, dict[str, Any]] = {}
    by_priority: dict[tuple[str, str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    daily: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for ev in _evaluations(store, config, as_of, progress, keep_decided=True):
        a = ev.attributes
        ch, q = a.channel.value, a.queue
        summaries.append(_summary(ev))
        labels[ev.key] = (ch, q)
        if in_period(ev.opened_at):
            opened[(ch, q)] += 1
        for t in ev.targets:
            if not in_period(t.started_at):
                continue
            key = (ch, q, t.target.value)
            outcomes[key][t.outcome.value if t.outcome else f"open_{t.state.value}"] += 1
            if t.outcome in (Outcome.MET, Outcome.BREACHED):
                judged = t.outcome.value
                by_priority[(ch, q, a.priority or NO_PRIORITY)][judged] += 1
                daily[t.started_at.astimezone(zone).date().isoformat()][judged] += 1
            if t.response_seconds is not None:
                responses[key].append(t.response_seconds)
            if t.outcome is Outcome.BREACHED:  # answered late, or never (so far)
                outcomes[key]["late" if t.response_seconds is not None else "never_answered"] += 1
            if by and t.response_seconds is not None and t.target is not TargetName.AUTO_ACK:
                who = (t.answered_by if by == "agent" else t.answered_team) or UNKNOWN_PERSON
                person = people.setdefault(who, {"met": 0, "late": 0, "times": []})
                person["met" if t.outcome is Outcome.MET else "late"] += 1
                person["times"].append(t.response_seconds)
    repeats: dict[tuple[str, str], int] = defaultdict(int)
    links = find_repeats(summaries, config.policy.repeat_window)
    by_key = {s.key: s for s in summaries}
    repeat_list = []
    for ckey, link in sorted(links.items()):
        if in_period(by_key[ckey].opened_at):
            repeats[labels[ckey]] += 1
            repeat_list.append(
                {"contact": f"{ckey[0]}:{ckey[1]}", "repeat_of": f"{link[0]}:{link[1]}"}
            )
    rows = []
    for (ch, q, tg), counts in sorted(outcomes.items()):
        met, breached = counts.get("met", 0), counts.get("breached", 0)
        row: dict[str, Any] = {
            "channel": ch,
            "queue": q,
            "target": tg,
            **{o.value: counts.get(o.value, 0) for o in Outcome},
            "open": sum(v for k, v in counts.items() if k.startswith("open_")),
            "late": counts.get("late", 0),
            "never_answered": counts.get("never_answered", 0),
            "compliance": round(met / (met + breached), 4) if met + breached else None,
            "objective": config.settings.objectives.for_series(ch, q, tg),
        }
        row["response_seconds"] = _percentiles(sorted(responses.get((ch, q, tg), [])))
        rows.append(row)
    service_level = []
    for row in rows:
        if row["target"] == "answer":
            formula = config.formula_for(row["queue"])  # contact centres set it per queue
            total = sum(row[k] for k in SERVICE_LEVEL_DENOMINATORS[formula])
            service_level.append(
                {
                    "channel": row["channel"],
                    "queue": row["queue"],
                    "value": round(row["met"] / total, 4) if total else None,
                    "formula": formula,
                }
            )
    contacts = [
        {"channel": ch, "queue": q, "opened": n, "repeat_contacts": repeats.get((ch, q), 0)}
        for (ch, q), n in sorted(opened.items())
    ]
    with store.begin() as tx:
        horizons = tx.archive.horizons()
    result: dict[str, Any] = {
        "priorities": [
            {"channel": ch, "queue": q, "priority": p, **_judged(c)}
            for (ch, q, p), c in sorted(by_priority.items())
        ],
        "daily": [{"day": day, **_judged(c)} for day, c in sorted(daily.items())],
    }
    if by:
        result["by"] = by
        result["people"] = [
            {
                by: who,
                "answered": p["met"] + p["late"],
                "met": p["met"],
                "late": p["late"],
                "met_ratio": round(p["met"] / (p["met"] + p["late"]), 4),
                "response_seconds": _percentiles(sorted(p["times"])),
            }
            for who, p in sorted(people.items(), key=lambda kv: (kv[0] == UNKNOWN_PERSON, kv[0]))
        ]
    return result | {
        "as_of": iso(as_of),
        "from": iso(start) if start else None,
        "to": iso(end) if end else None,
        # per source: contacts quiet before this were archived and are not in this report
        "archived_before": {src: iso(from_micros(us)) for src, us in sorted(horizons.items())},
        "targets": rows,
        "contacts": contacts,
        "repeat_contacts": repeat_list,
        "service_level": service_level,
    }


UNKNOWN_PERSON = "(not named by the source)"


def _judged(counts: dict[str, int]) -> dict[str, Any]:
    met, breached = counts.get("met", 0), counts.get("breached", 0)
    share = round(met / (met + breached), 4) if met + breached else None
    return {"met": met, "breached": breached, "compliance": share}


def breaches(
    store: Store,
    config: Config,
    as_of: datetime,
    start: datetime | None,
    end: datetime | None,
    queues: frozenset[str] = frozenset(),
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Every target that lapsed (its deadline passed unanswered) in [start, end), judged as
    `report` and the live monitor judge it: with a link to the contact, how late it was
    answered (or how long it has waited so far) and who finally answered."""
    links = {s.name: s.contact_url for s in config.settings.sources}
    s_us, e_us = (to_micros(start) if start else None), (to_micros(end) if end else None)
    out: list[dict[str, Any]] = []
    for ev in _evaluations(store, config, as_of, progress, keep_decided=True):
        a = ev.attributes
        if queues and a.queue not in queues:
            continue
        for t in ev.targets:
            if t.outcome is not Outcome.BREACHED or t.deadline is None:
                continue
            due = to_micros(t.deadline)
            if (s_us is not None and due < s_us) or (e_us is not None and due >= e_us):
                continue
            answered = t.ended_at if t.response_seconds is not None else None
            out.append(
                {
                    "contact": f"{ev.key[0]}:{ev.key[1]}",
                    "channel": a.channel.value,
                    "queue": a.queue,
                    "priority": a.priority or NO_PRIORITY,
                    "customer": a.customer_id,
                    "target": t.target.value,
                    "started_at": iso(t.started_at),
                    "deadline": iso(t.deadline),
                    "answered_at": iso(answered) if answered else None,
                    # still waiting now, or the wait ended unanswered (a caller hung up,
                    # the contact was closed)
                    "waiting": t.is_open,
                    # how far past the deadline the answer came, the wait ended, or it has
                    # gone on so far
                    "late_seconds": (
                        (answered or t.ended_at or as_of) - t.deadline
                    ).total_seconds(),
                    "answered_by": t.answered_by,
                    "answered_team": t.answered_team,
                    "link": contact_link(links.get(ev.key[0]), *ev.key),
                }
            )
    out.sort(key=lambda b: (b["deadline"], b["contact"], b["target"]))
    return out


def _percentiles(values: list[float]) -> dict[str, float] | None:
    """p50, p90, p99, max and count of sorted response times (None if there are none)."""
    if not values:
        return None
    out = {f"p{p}": round(_percentile(values, p), 3) for p in (50, 90, 99)}
    return out | {"max": round(values[-1], 3), "count": len(values)}


def explain(
    store: Store, config: Config, key: ContactKey, as_of: datetime
) -> dict[str, Any] | None:
    with store.begin() as tx:
        stored = tx.events.for_contacts([key]).get(key)
        if not stored:
            return None
        state = tx.sources.load().get(key[0])
        contact = tx.state.contacts_for([key]).get(key)
        link = contact.repeat_of if contact else None
        rows = tx.state.targets_for([key])
    events = [e for e in stored if e.occurred_at <= as_of]  # what had happened by then
    if not events:
        return None
    wm = read_until(state.watermark if state else None, as_of)
    decided = _decided_by(rows, key, as_of)
    ev = evaluate_contact(events, config.policy, as_of, wm, decided)
    fresh = {
        (t.target.value, t.seq): t.outcome.value if t.outcome else None
        for t in evaluate_contact(events, config.policy, as_of, wm).targets
    }
    a = ev.attributes
    return {
        "contact": f"{key[0]}:{key[1]}",
        "channel": a.channel.value,
        "queue": a.queue,
        "priority": a.priority or NO_PRIORITY,
        "tier": a.tier,
        "tags": sorted(a.tags),
        "customer": a.customer_id,
        "rule": ev.rule,
        "status": ev.status.value,
        "as_of": iso(as_of),
        "source_watermark": iso(wm) if wm != NEVER_READ else None,
        "repeat_of": f"{link[0]}:{link[1]}" if link else None,
        "events": [e.to_dict() for e in sorted(events, key=lambda e: e.sort_key())],
        "targets": [
            {
                "target": t.target.value,
                "seq": t.seq,
                "clock": t.clock,
                "within": t.within.total_seconds(),
                "started_at": iso(t.started_at),
                "deadline": iso(t.deadline) if t.deadline else None,
                "warn_at": iso(t.warn_at) if t.warn_at else None,
                "state": t.state.value,
                "outcome": t.outcome.value if t.outcome else None,
                "ended_at": iso(t.ended_at) if t.ended_at else None,
                "response_seconds": t.response_seconds,
                "answered_by": t.answered_by,
                "answered_team": t.answered_team,
                "remaining_seconds": t.remaining.total_seconds()
                if t.remaining is not None
                else None,
                # decided before an event arrived late; recomputed, it would be this
                "recomputed_outcome": fresh.get((t.target.value, t.seq))
                if fresh.get((t.target.value, t.seq)) != (t.outcome.value if t.outcome else None)
                else None,
            }
            for t in ev.targets
        ],
    }


def lapsing_now(store: Store, config: Config, now: datetime) -> list[dict[str, Any]]:
    """The contacts lapsed or about to lapse now (open targets breached or at risk, as the
    monitor last stored them): what on-call is paged for, as one list with links, oldest
    deadline first."""
    links = {s.name: s.contact_url for s in config.settings.sources}
    with store.read() as tx:
        rows = tx.state.alerting()
    out = []
    for r in rows:
        deadline = from_micros(r.deadline_us) if r.deadline_us is not None else None
        out.append(
            {
                "contact": f"{r.source}:{r.conversation_id}",
                "state": r.state,
                "channel": r.channel,
                "queue": r.queue,
                "priority": r.priority,
                "target": r.target,
                "customer": r.customer_id,
                "started_at": iso(from_micros(r.started_us)),
                "deadline": iso(deadline) if deadline else None,
                # past the deadline (> 0) or still before it (< 0)
                "late_seconds": (now - deadline).total_seconds() if deadline else None,
                "link": contact_link(links.get(r.source), r.source, r.conversation_id),
            }
        )
    out.sort(key=lambda x: (x["deadline"] or "", x["contact"], x["target"]))
    return out
