"""The deadline index against a plain dict model: whatever order contacts are scheduled,
rescheduled, taken out and put back in, it wakes exactly when the earliest is due."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sla_monitor.service_layer.deadlines import DeadlineIndex

KEYS = [("s", c) for c in "abcdef"]

ops = st.lists(
    st.one_of(
        st.tuples(st.just("schedule"), st.sampled_from(KEYS), st.none() | st.integers(0, 50)),
        st.tuples(st.just("pop"), st.integers(0, 60)),
        st.tuples(st.just("pop_and_fail"), st.integers(0, 60)),
    ),
    max_size=60,
)


@settings(max_examples=300)
@given(ops)
def test_the_next_wake_is_always_the_earliest_contact_due(steps: list[tuple]) -> None:  # type: ignore[type-arg]
    index, model = DeadlineIndex(), {}
    for step in steps:
        if step[0] == "schedule":
            _, key, at = step
            index.schedule(key, at)
            if at is None:
                model.pop(key, None)
            else:
                model[key] = at
        else:
            now = step[1]
            due = index.pop_due(now)
            expected = {k: v for k, v in model.items() if v <= now}
            assert due == expected
            if step[0] == "pop_and_fail":
                index.put_back(due)  # the store did not take it: still due
            else:
                for k in due:
                    del model[k]
        assert index.next() == (min(model.values()) if model else None)
        assert len(index) == len(model)


def test_a_contact_rescheduled_while_its_wake_failed_keeps_its_new_time() -> None:
    index = DeadlineIndex()
    index.schedule(KEYS[0], 10)
    due = index.pop_due(10)
    index.schedule(KEYS[0], 30)  # re-evaluated meanwhile (another poll)
    index.put_back(due)
    assert index.next() == 30


def test_watermark_waits_release_only_past_the_instant_and_can_be_undone() -> None:
    index = DeadlineIndex()
    index.schedule(KEYS[0], None, awaiting_us=100)
    index.schedule(KEYS[1], None, awaiting_us=200)
    assert index.release("s", 100) == []  # read up to the deadline is not past it
    popped = index.release("s", 150)
    assert [key for _at, key in popped] == [KEYS[0]]
    index.unrelease("s", popped)  # the transaction rolled back
    assert [key for _at, key in index.release("s", 201)] == [KEYS[0], KEYS[1]]


def test_a_wait_the_watermark_already_passed_is_due_at_once() -> None:
    index = DeadlineIndex()
    index.schedule(KEYS[0], None, awaiting_us=100, watermark_us=150)
    assert index.pop_due(100) == {KEYS[0]: 100}
