"""Repeat contacts ("no customer made to ask twice"): re-linking a customer's contacts
after some of them were re-evaluated."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from sla_monitor.adapters.abc import Transaction
from sla_monitor.adapters.records import ContactRecord
from sla_monitor.domain.engine import ContactEvaluation, find_repeats
from sla_monitor.domain.events import ContactKey
from sla_monitor.domain.policy import Policy
from sla_monitor.domain.timeutil import to_micros


def relink(
    tx: Transaction,
    evaluations: Sequence[ContactEvaluation],
    old_contacts: dict[ContactKey, ContactRecord],
    policy: Policy,
) -> Counter[tuple[str, str]]:
    """Re-link repeat contacts around the contacts whose opening or first personal
    response changed (only those can change a link), within the repeat window. Returns the
    change in repeat contacts per (channel, queue), for the counters once committed."""
    window_us = int(policy.repeat_window.total_seconds() * 1_000_000)
    customers: set[str] = set()
    lo = hi = None
    for ev in evaluations:
        a = ev.attributes
        if not a.customer_id or ev.opened_at is None:
            continue
        old = old_contacts.get(ev.key)
        opened, response = (
            to_micros(ev.opened_at),
            (to_micros(ev.first_response_at) if ev.first_response_at else None),
        )
        if old is not None and (old.customer_id, old.opened_us, old.first_response_us) == (
            a.customer_id,
            opened,
            response,
        ):
            continue
        customers.add(a.customer_id)
        lo = opened if lo is None else min(lo, opened)
        hi = opened if hi is None else max(hi, opened)
    if not customers or lo is None or hi is None:
        return Counter()
    rows = tx.state.summaries_near(customers, lo - 2 * window_us, hi + 2 * window_us)
    current = {s.key: link for s, link in rows if link is not None}
    wanted = find_repeats([s for s, _ in rows], policy.repeat_window)
    inside = {
        s.key
        for s, _ in rows
        if s.opened_at is not None and lo - window_us <= to_micros(s.opened_at) <= hi + window_us
    }
    changed = {k: wanted.get(k) for k in inside if current.get(k) != wanted.get(k)}
    if not changed:
        return Counter()
    before = tx.state.contacts_for(list(changed))
    tx.state.set_repeats(changed)
    delta: Counter[tuple[str, str]] = Counter()
    for key, link in changed.items():
        # counted the first time it is linked; a later unlink (an event that fills in what
        # happened before it) changes the link, never the counter (counters never go down)
        if link is not None and not before[key].repeat_counted:
            delta[(before[key].channel, before[key].queue)] += 1
    return delta
