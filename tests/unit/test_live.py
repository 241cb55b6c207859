"""The live gauges' memory stays bounded by what is open, not by history."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sla_monitor.service_layer.live import DEFAULT_BUCKETS, LiveState, OpenTarget


def target(started: int, queue: str = "billing") -> OpenTarget:
    return OpenTarget.of("email", queue, "none", "first_reply", "on_track", started)


def test_finished_targets_do_not_pile_up_behind_one_long_open_target() -> None:
    live = LiveState(DEFAULT_BUCKETS)
    live.set_open(("s", "stuck", "first_reply", 0), target(0))  # open for the whole year
    for i in range(1, 40_000):  # contacts in time order, each answered before the next
        key = ("s", f"c{i}", "first_reply", 0)
        live.set_open(key, target(i))
        live.set_open(key, None)
    assert live.oldest()[("email", "billing", "first_reply")] == 0
    assert live.oldest_index_entries <= 2 * (1 + 1) + 65  # not 40,000: bounded by the open


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 30),  # which target
            st.none() | st.integers(0, 1000),  # closed, or open since
            st.sampled_from(["billing", "sales"]),  # queue (it may move)
        ),
        max_size=300,
    )
)
def test_the_oldest_gauge_is_always_the_oldest_open_target(
    steps: list[tuple[int, int | None, str]],
) -> None:
    live = LiveState(DEFAULT_BUCKETS)
    for n, started, queue in steps:
        key = ("s", f"c{n}", "first_reply", 0)
        live.set_open(key, None if started is None else target(started, queue))
        expected: dict[tuple[str, str, str], int] = {}
        for t in live.open.values():
            labels = (t.channel, t.queue, t.target)
            expected[labels] = min(expected.get(labels, t.started_us), t.started_us)
        assert live.oldest() == expected
        assert live.oldest_index_entries <= 2 * len(live.open) + 2 * 65
