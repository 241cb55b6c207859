"""The engine's rules, one behaviour per test, as PRODUCT.md states them."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sla_monitor.domain.calendar import BusinessCalendar, DailyHours
from sla_monitor.domain.engine import (
    ContactSummary,
    Outcome,
    TargetState,
    evaluate_contact,
    find_repeats,
)
from sla_monitor.domain.events import Status
from sla_monitor.domain.policy import WAITING, Policy, TargetName, TargetSpec

from ..helpers import T0, at, ev, policy

FAR = at(days=30)  # as_of and watermark long after everything


def targets(events, pol=None, as_of=FAR, watermark=None):  # type: ignore[no-untyped-def]
    result = evaluate_contact(events, pol or policy(), as_of, watermark or as_of)
    return {(t.target.value, t.seq): t for t in result.targets}


class TestEmailAcknowledgement:
    def test_auto_reply_in_30s_then_personal_reply_at_50min_meets_both(self) -> None:
        ts = targets(
            [
                ev("customer_message", T0),
                ev("auto_reply", at(seconds=30)),
                ev("agent_reply", at(minutes=50)),
            ]
        )
        assert ts[("auto_ack", 0)].outcome is Outcome.MET
        assert ts[("auto_ack", 0)].response_seconds == 30
        assert ts[("first_reply", 0)].outcome is Outcome.MET
        assert ts[("first_reply", 0)].response_seconds == 3000

    def test_auto_reply_only_breaches_first_reply_at_one_hour(self) -> None:
        ts = targets([ev("customer_message", T0), ev("auto_reply", at(seconds=30))])
        fr = ts[("first_reply", 0)]
        assert fr.outcome is Outcome.BREACHED and fr.is_open
        assert fr.deadline == at(hours=1)
        assert fr.decided_at == at(hours=1)

    def test_an_auto_reply_does_not_fulfil_first_reply(self) -> None:
        ts = targets(
            [ev("customer_message", T0), ev("auto_reply", at(seconds=5))], as_of=at(minutes=30)
        )
        assert ts[("first_reply", 0)].state is TargetState.ON_TRACK
        assert ts[("auto_ack", 0)].state is TargetState.MET

    def test_a_personal_reply_also_acknowledges(self) -> None:
        ts = targets([ev("customer_message", T0), ev("agent_reply", at(seconds=90))])
        assert ts[("auto_ack", 0)].outcome is Outcome.MET
        assert ts[("first_reply", 0)].outcome is Outcome.MET

    def test_late_reply_stays_breached_and_records_latency(self) -> None:
        ts = targets([ev("customer_message", T0), ev("agent_reply", at(minutes=75))])
        fr = ts[("first_reply", 0)]
        assert fr.outcome is Outcome.BREACHED and not fr.is_open
        assert fr.response_seconds == 75 * 60

    def test_reply_exactly_at_the_deadline_is_met(self) -> None:
        ts = targets([ev("customer_message", T0), ev("agent_reply", at(hours=1))])
        assert ts[("first_reply", 0)].outcome is Outcome.MET

    def test_warning_point_makes_target_at_risk(self) -> None:
        events = [ev("customer_message", T0), ev("auto_reply", at(seconds=1))]
        assert (
            targets(events, as_of=at(minutes=44))[("first_reply", 0)].state is TargetState.ON_TRACK
        )
        assert (
            targets(events, as_of=at(minutes=45))[("first_reply", 0)].state is TargetState.AT_RISK
        )

    def test_a_second_customer_message_before_any_reply_starts_no_new_clock(self) -> None:
        ts = targets(
            [
                ev("customer_message", T0),
                ev("customer_message", at(minutes=10)),
                ev("agent_reply", at(minutes=20)),
            ]
        )
        assert set(ts) == {("auto_ack", 0), ("first_reply", 0)}


def _pausing() -> Policy:
    """A policy that opts first_reply in to pausing on pending/on_hold."""
    email = (
        TargetSpec(TargetName.AUTO_ACK, timedelta(minutes=2)),
        TargetSpec(
            TargetName.FIRST_REPLY,
            timedelta(hours=1),
            warn_before=timedelta(minutes=15),
            pause_on=WAITING,
        ),
        TargetSpec(TargetName.NEXT_REPLY, timedelta(hours=4), pause_on=WAITING),
    )
    return policy(email=email)


class TestPauses:
    def test_a_status_change_is_not_an_acknowledgement_by_default(self) -> None:
        """Issue 12: pending with no reply must not move the first-reply deadline."""
        ts = targets(
            [ev("customer_message", T0), ev("status_changed", at(minutes=10), status="pending")],
            as_of=at(hours=2),
        )
        fr = ts[("first_reply", 0)]
        assert fr.outcome is Outcome.BREACHED and fr.deadline == at(hours=1)

    def test_keep_informed_pauses_by_default(self) -> None:
        keep = (TargetSpec(TargetName.KEEP_INFORMED, timedelta(hours=24)),)
        ts = targets(
            [
                ev("customer_message", T0),
                ev("agent_reply", at(minutes=5)),
                ev("status_changed", at(minutes=10), status="pending"),
            ],
            pol=policy(email=keep),
            as_of=at(days=3),
        )
        assert ts[("keep_informed", 0)].state is TargetState.PAUSED

    def test_reply_during_pending_is_not_late(self) -> None:
        ts = targets(
            [
                ev("customer_message", T0),
                ev("status_changed", at(minutes=10), status="pending"),
                ev("agent_reply", at(minutes=90)),
            ],
            pol=_pausing(),
        )
        fr = ts[("first_reply", 0)]
        assert fr.outcome is Outcome.MET
        assert fr.response_seconds == 600  # only the 10 unpaused minutes count

    def test_pause_moves_the_deadline_by_the_paused_time(self) -> None:
        ts = targets(
            [
                ev("customer_message", T0),
                ev("status_changed", at(minutes=10), status="on_hold"),
                ev("status_changed", at(minutes=40), status="open"),
            ],
            pol=_pausing(),
            as_of=at(minutes=50),
        )
        assert ts[("first_reply", 0)].deadline == at(minutes=90)

    def test_paused_target_has_no_deadline_while_paused(self) -> None:
        ts = targets(
            [ev("customer_message", T0), ev("status_changed", at(minutes=10), status="pending")],
            pol=_pausing(),
            as_of=at(hours=5),
        )
        fr = ts[("first_reply", 0)]
        assert fr.state is TargetState.PAUSED and fr.deadline is None
        assert fr.remaining == timedelta(minutes=50)

    def test_auto_ack_never_pauses(self) -> None:
        ts = targets(
            [ev("customer_message", T0), ev("status_changed", at(seconds=10), status="pending")],
            as_of=at(hours=1),
        )
        assert ts[("auto_ack", 0)].outcome is Outcome.BREACHED

    def test_customer_message_ends_a_pending_pause(self) -> None:
        ts = targets(
            [
                ev("customer_message", T0),
                ev("status_changed", at(minutes=10), status="pending"),
                ev("customer_message", at(minutes=30)),
            ],
            pol=_pausing(),
            as_of=at(minutes=35),
        )
        assert ts[("first_reply", 0)].deadline == at(minutes=80)

    def test_pause_configured_per_target(self) -> None:
        email = (TargetSpec(TargetName.FIRST_REPLY, timedelta(hours=1), pause_on=frozenset()),)
        ts = targets(
            [ev("customer_message", T0), ev("status_changed", at(minutes=10), status="pending")],
            pol=policy(email=email),
        )
        assert ts[("first_reply", 0)].outcome is Outcome.BREACHED


class TestClosing:
    def test_solved_before_the_deadline_cancels(self) -> None:
        ts = targets(
            [ev("customer_message", T0), ev("status_changed", at(minutes=1), status="solved")]
        )
        assert ts[("first_reply", 0)].outcome is Outcome.CANCELLED
        assert ts[("auto_ack", 0)].outcome is Outcome.CANCELLED

    def test_solved_after_the_auto_ack_deadline_leaves_it_breached(self) -> None:
        ts = targets(
            [ev("customer_message", T0), ev("status_changed", at(minutes=20), status="solved")]
        )
        assert ts[("auto_ack", 0)].outcome is Outcome.BREACHED
        assert ts[("first_reply", 0)].outcome is Outcome.CANCELLED

    def test_closed_after_the_deadline_stays_breached(self) -> None:
        ts = targets(
            [ev("customer_message", T0), ev("status_changed", at(hours=2), status="closed")]
        )
        assert ts[("first_reply", 0)].outcome is Outcome.BREACHED

    def test_customer_message_on_solved_contact_reopens_with_next_reply(self) -> None:
        result = evaluate_contact(
            [
                ev("customer_message", T0),
                ev("agent_reply", at(minutes=5)),
                ev("status_changed", at(minutes=6), status="solved"),
                ev("customer_message", at(hours=3)),
            ],
            policy(),
            at(hours=4),
            at(hours=4),
        )
        assert result.status is Status.OPEN
        nr = {t.target: t for t in result.targets}[TargetName.NEXT_REPLY]
        assert nr.started_at == at(hours=3) and nr.state is TargetState.ON_TRACK


class TestFollowUps:
    def test_each_follow_up_after_an_agent_reply_gets_a_next_reply_clock(self) -> None:
        ts = targets(
            [
                ev("customer_message", T0),
                ev("agent_reply", at(minutes=30)),
                ev("customer_message", at(hours=2)),
                ev("customer_message", at(hours=2, minutes=5)),
                ev("agent_reply", at(hours=3)),
                ev("customer_message", at(hours=4)),
                ev("agent_reply", at(hours=9)),
            ]
        )
        assert ts[("next_reply", 0)].outcome is Outcome.MET
        assert ts[("next_reply", 0)].started_at == at(hours=2)
        assert ts[("next_reply", 1)].outcome is Outcome.BREACHED
        assert ("next_reply", 2) not in ts

    def test_next_reply_on_business_hours(self) -> None:
        cal = BusinessCalendar("b", "UTC", {d: [DailyHours(9 * 3600, 17 * 3600)] for d in range(5)})
        email = (TargetSpec(TargetName.NEXT_REPLY, timedelta(hours=4), clock=cal),)
        ts = targets(
            [
                ev("customer_message", T0),
                ev("agent_reply", at(minutes=5)),
                ev("customer_message", at(hours=7)),  # 16:00 Monday
            ],
            pol=policy(email=email),
            as_of=at(hours=8),
        )
        assert ts[("next_reply", 0)].deadline == at(days=1, hours=3)  # Tue 12:00

    def test_keep_informed_restarts_at_every_agent_reply(self) -> None:
        email = (TargetSpec(TargetName.KEEP_INFORMED, timedelta(hours=24)),)
        ts = targets(
            [
                ev("customer_message", T0),
                ev("agent_reply", at(hours=1)),
                ev("agent_reply", at(hours=30)),
            ],
            pol=policy(email=email),
            as_of=at(hours=31),
        )
        assert ts[("keep_informed", 0)].outcome is Outcome.BREACHED
        assert ts[("keep_informed", 1)].state is TargetState.ON_TRACK


class TestPhone:
    @pytest.mark.parametrize(
        ("after", "outcome"),
        [
            (3, Outcome.ABANDONED_SHORT),
            (5, Outcome.ABANDONED_SHORT),
            (12, Outcome.ABANDONED),
            (20, Outcome.BREACHED),
            (40, Outcome.BREACHED),
        ],
    )
    def test_abandoned_calls(self, after: int, outcome: Outcome) -> None:
        ts = targets(
            [
                ev("call_queued", T0, channel="phone"),
                ev("call_abandoned", at(seconds=after), channel="phone"),
            ]
        )
        assert ts[("answer", 0)].outcome is outcome

    @pytest.mark.parametrize(
        ("after", "rule_short", "outcome"),
        [
            (8, None, Outcome.ABANDONED),  # the policy's 5 s
            (8, 10, Outcome.ABANDONED_SHORT),
            (4, None, Outcome.ABANDONED_SHORT),
            (4, 0, Outcome.ABANDONED),  # a rule that counts every abandon
        ],
    )
    def test_a_rule_sets_its_own_short_abandon(
        self, after: int, rule_short: int | None, outcome: Outcome
    ) -> None:
        """Contact centres set the threshold per queue: a rule's `short_abandon` wins over
        the policy's (5 s), zero included."""
        short = None if rule_short is None else timedelta(seconds=rule_short)
        answer = (TargetSpec(TargetName.ANSWER, timedelta(seconds=20), short_abandon=short),)
        ts = targets(
            [
                ev("call_queued", T0, channel="phone"),
                ev("call_abandoned", at(seconds=after), channel="phone"),
            ],
            pol=policy(phone=answer),
        )
        assert ts[("answer", 0)].outcome is outcome

    def test_answered_in_time_and_late(self) -> None:
        ok = targets(
            [
                ev("call_queued", T0, channel="phone"),
                ev("call_answered", at(seconds=19), channel="phone"),
            ]
        )
        late = targets(
            [
                ev("call_queued", T0, channel="phone"),
                ev("call_answered", at(seconds=21), channel="phone"),
            ]
        )
        assert ok[("answer", 0)].outcome is Outcome.MET
        assert late[("answer", 0)].outcome is Outcome.BREACHED
        assert late[("answer", 0)].response_seconds == 21

    def test_callback_counts_only_when_configured(self) -> None:
        events = [
            ev("call_queued", T0, channel="phone"),
            ev("callback_requested", at(seconds=10), channel="phone"),
        ]
        # not a fulfilment here: the wait ended with the call, before the deadline
        answer = targets(events)[("answer", 0)]
        assert answer.outcome is Outcome.CANCELLED and not answer.is_open
        phone = (
            TargetSpec(
                TargetName.ANSWER,
                timedelta(seconds=20),
                fulfilled_by=frozenset({"call_answered", "callback_requested"}),
            ),
        )  # type: ignore[arg-type]
        assert targets(events, pol=policy(phone=phone))[("answer", 0)].outcome is Outcome.MET

    def test_short_abandon_is_configurable(self) -> None:
        events = [
            ev("call_queued", T0, channel="phone"),
            ev("call_abandoned", at(seconds=8), channel="phone"),
        ]
        ts = targets(events, pol=policy(short_abandon=timedelta(seconds=10)))
        assert ts[("answer", 0)].outcome is Outcome.ABANDONED_SHORT


class TestWatermark:
    def test_no_breach_until_the_source_was_read_past_the_deadline(self) -> None:
        events = [ev("customer_message", T0), ev("auto_reply", at(seconds=3))]
        lagging = evaluate_contact(events, policy(), at(hours=2), at(minutes=59))
        fr = {t.target: t for t in lagging.targets}[TargetName.FIRST_REPLY]
        assert fr.outcome is None and fr.state is TargetState.AT_RISK
        assert lagging.awaiting_watermark == at(hours=1)
        # read up to the deadline itself: a reply stamped at that instant may still come
        up_to = evaluate_contact(events, policy(), at(hours=2), at(hours=1))
        assert {t.target: t for t in up_to.targets}[TargetName.FIRST_REPLY].outcome is None
        past = at(hours=1) + timedelta(microseconds=1)
        caught_up = evaluate_contact(events, policy(), at(hours=2), past)
        assert {t.target: t for t in caught_up.targets}[
            TargetName.FIRST_REPLY
        ].outcome is Outcome.BREACHED

    def test_next_wake_is_the_next_warning_point_or_deadline(self) -> None:
        events = [ev("customer_message", T0), ev("auto_reply", at(seconds=3))]
        r = evaluate_contact(events, policy(), at(minutes=1), at(minutes=1))
        assert r.next_wake == at(minutes=45)
        r = evaluate_contact(events, policy(), at(minutes=46), at(minutes=46))
        assert r.next_wake == at(hours=1) + timedelta(microseconds=1)  # first instant past


class TestRepeats:
    def s(self, key: str, cust: str | None, opened: float, resp: float | None) -> ContactSummary:
        return ContactSummary(
            ("s", key), cust, at(minutes=opened), at(minutes=resp) if resp is not None else None
        )

    def test_second_contact_before_the_first_is_answered_is_a_repeat(self) -> None:
        links = find_repeats(
            [self.s("a", "x", 0, 30), self.s("b", "x", 10, None)], timedelta(days=7)
        )
        assert links == {("s", "b"): ("s", "a")}

    def test_no_repeat_once_answered_or_outside_the_window_or_other_customer(self) -> None:
        w = timedelta(days=7)
        assert find_repeats([self.s("a", "x", 0, 5), self.s("b", "x", 10, None)], w) == {}
        assert (
            find_repeats([self.s("a", "x", 0, None), self.s("b", "x", 60 * 24 * 8, None)], w) == {}
        )
        assert find_repeats([self.s("a", "x", 0, None), self.s("b", "y", 10, None)], w) == {}

    def test_linked_to_the_first_unanswered_contact(self) -> None:
        links = find_repeats(
            [self.s("a", "x", 0, None), self.s("b", "x", 5, None), self.s("c", "x", 9, None)],
            timedelta(days=7),
        )
        assert links == {("s", "b"): ("s", "a"), ("s", "c"): ("s", "a")}


# -- properties: the outcome depends on the set of events, not their order or duplicates ----

_KINDS = ["customer_message", "auto_reply", "agent_reply", "status_changed"]
_STATUSES = ["open", "pending", "on_hold", "solved"]


@st.composite
def email_histories(draw: st.DrawFn) -> list:  # type: ignore[type-arg]
    n = draw(st.integers(1, 12))
    out = [ev("customer_message", T0, event_id="first")]
    for i in range(n):
        kind = draw(st.sampled_from(_KINDS))
        minute = draw(st.integers(0, 600))
        status = draw(st.sampled_from(_STATUSES)) if kind == "status_changed" else None
        out.append(ev(kind, at(minutes=minute), event_id=f"x{i}", status=status))
    return out


@settings(max_examples=200, deadline=None)
@given(email_histories(), st.randoms(use_true_random=False), st.integers(0, 900))
def test_order_and_duplicates_do_not_change_outcomes(events, rnd, minutes) -> None:  # type: ignore[no-untyped-def]
    as_of = at(minutes=minutes)
    expected = evaluate_contact(events, policy(), as_of, as_of)
    shuffled = list(events) + rnd.sample(events, k=min(3, len(events)))
    rnd.shuffle(shuffled)
    again = evaluate_contact(shuffled, policy(), as_of, as_of)
    assert again == expected


@settings(max_examples=200, deadline=None)
@given(email_histories(), st.integers(0, 900), st.integers(0, 900))
def test_decided_outcomes_never_change_as_time_passes(events, m1, m2) -> None:  # type: ignore[no-untyped-def]
    early, late = sorted((at(minutes=m1), at(minutes=m2)))
    before = {
        (t.target, t.seq): t for t in evaluate_contact(events, policy(), early, early).targets
    }
    after = {(t.target, t.seq): t for t in evaluate_contact(events, policy(), late, late).targets}
    for key, t in before.items():
        if t.outcome is not None:
            assert after[key].outcome is t.outcome


class TestEveryContactEnds:
    """No target stays open forever once its contact has ended (issue 11)."""

    def test_a_callback_after_the_deadline_is_a_breach_that_ends(self) -> None:
        ts = targets(
            [
                ev("call_queued", T0, channel="phone"),
                ev("callback_requested", at(seconds=45), channel="phone"),
            ]
        )
        answer = ts[("answer", 0)]
        assert answer.outcome is Outcome.BREACHED and not answer.is_open
        assert answer.decided_at == at(seconds=20) and answer.ended_at == at(seconds=45)

    def test_every_way_a_call_ends_closes_its_answer_clock(self) -> None:
        endings = {
            "answered": ev("call_answered", at(seconds=5), channel="phone"),
            "abandoned": ev("call_abandoned", at(seconds=9), channel="phone"),
            "callback": ev("callback_requested", at(seconds=9), channel="phone"),
            "left": ev("status_changed", at(seconds=9), channel="phone", status="closed"),
        }
        for how, end in endings.items():
            answer = targets([ev("call_queued", T0, channel="phone"), end])[("answer", 0)]
            assert not answer.is_open, how

    def _idle(self, hours: float = 48) -> Policy:
        base = policy()
        email = next(r for r in base.rules if r.name == "email")
        rules = tuple(
            replace(r, close_after=timedelta(hours=hours)) if r is email else r for r in base.rules
        )
        return replace(base, rules=rules)

    def test_close_after_ends_an_idle_contact_keeping_decided_breaches(self) -> None:
        events = [
            ev("customer_message", T0),
            ev("agent_reply", at(hours=3)),  # first_reply breached at 1 h, then met late
            ev("customer_message", at(hours=4)),  # "thanks!": next_reply starts
        ]
        pol = self._idle(48)
        before = evaluate_contact(events, pol, at(hours=5), at(hours=5))
        assert before.next_wake is not None
        ts = targets(events, pol=pol, as_of=at(hours=4 + 48), watermark=at(hours=4 + 48))
        assert ts[("first_reply", 0)].outcome is Outcome.BREACHED  # decided: it stands
        nr = ts[("next_reply", 0)]
        assert not nr.is_open
        # 4 business hours from Monday 13:00 London lapsed before the close: breached, ended
        assert nr.outcome is Outcome.BREACHED
        assert not any(t.is_open for t in ts.values())

    def test_close_after_cancels_clocks_still_running(self) -> None:
        events = [ev("customer_message", T0)]
        pol = self._idle(hours=0.5)  # closed before the one-hour first reply was due
        ts = targets(events, pol=pol)
        assert ts[("first_reply", 0)].outcome is Outcome.CANCELLED
        result = evaluate_contact(events, pol, FAR, FAR)
        assert result.status is Status.CLOSED and result.events == 1

    def test_close_after_waits_for_the_source(self) -> None:
        events = [ev("customer_message", T0)]
        pol = self._idle(hours=0.5)
        result = evaluate_contact(events, pol, at(hours=2), at(minutes=20))
        assert result.status is Status.OPEN  # read only up to 09:20: a reply may be coming
        assert result.awaiting_watermark is not None

    def test_a_message_after_the_close_reopens_the_contact(self) -> None:
        events = [
            ev("customer_message", T0),
            ev("agent_reply", at(minutes=10)),
            ev("customer_message", at(hours=3)),
        ]
        ts = targets(events, pol=self._idle(hours=1), as_of=at(hours=3, minutes=5))
        assert ts[("next_reply", 0)].is_open

    def test_a_close_in_a_silence_stands_when_the_customer_writes_again(self) -> None:
        first = [ev("customer_message", T0)]
        pol = self._idle(hours=0.5)
        early = targets(first, pol=pol, as_of=at(hours=2))
        assert early[("first_reply", 0)].outcome is Outcome.CANCELLED
        later = targets([*first, ev("customer_message", at(hours=3))], pol=pol, as_of=at(hours=3))
        assert later[("first_reply", 0)].outcome is Outcome.CANCELLED  # decided: it stands
        assert later[("next_reply", 0)].is_open  # the new message reopened the contact


def _closing(minutes: int) -> Policy:
    base = policy()
    return replace(
        base,
        rules=tuple(replace(r, close_after=timedelta(minutes=minutes)) for r in base.rules),
    )


@settings(max_examples=150, deadline=None)
@given(email_histories(), st.integers(30, 300), st.integers(0, 1500), st.integers(0, 1500))
def test_with_close_after_decided_outcomes_stand_and_every_clock_ends(  # type: ignore[no-untyped-def]
    events, idle, m1, m2
) -> None:
    pol = _closing(idle)
    early, late = sorted((at(minutes=m1), at(minutes=m2)))
    before = {(t.target, t.seq): t for t in evaluate_contact(events, pol, early, early).targets}
    after = {(t.target, t.seq): t for t in evaluate_contact(events, pol, late, late).targets}
    for key, t in before.items():
        if t.outcome is not None:
            assert after[key].outcome is t.outcome
    last = max(e.occurred_at for e in events)
    end = last + timedelta(minutes=idle)
    final = evaluate_contact(events, pol, end, end)
    assert not any(t.is_open for t in final.targets)
    assert final.next_wake is None
