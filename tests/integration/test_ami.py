"""Asterisk calls followed live over AMI, against a local server speaking the documented
protocol. The same calls read from `queue_log` give the same facts (same ids) and the same
outcomes; a connection dropped mid-call holds the watermark (no false breach) and the gap
is read back from `queue_log` (no lost call) — or, without it, the waiting call ends at the
drop, cancelled, never breached."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sla_monitor.adapters.memory import MemoryStore
from sla_monitor.config import Config
from sla_monitor.domain.events import EventKind
from sla_monitor.service_layer.clock import FixedClock
from sla_monitor.service_layer.monitor import Monitor
from sla_monitor.service_layer.recompute import report
from sla_monitor.sources.abc import AuthFailed, PollResult, SourceContext
from sla_monitor.sources.ami import AmiOptions, AmiSource
from sla_monitor.sources.asterisk import AsteriskOptions, AsteriskQueueLogSource

from ..fakeami import FakeAmi

T = 1_793_610_000  # 2026-11-02 09:40 UTC, in epoch seconds


class Clock:
    def __init__(self) -> None:
        self.now = float(T)

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def pbx() -> Iterator[FakeAmi]:
    server = FakeAmi("slamon", "ami-secret")
    yield server
    server.close()


def source(
    pbx: FakeAmi, clock: Clock, queue_log: Path | None = None, secret: str = "ami-secret"
) -> AmiSource:
    os.environ["SLA_TEST_AMI_SECRET"] = secret
    options: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": pbx.port,
        "username": "slamon",
        "secret": {"env": "SLA_TEST_AMI_SECRET"},
        "leave_grace": 2,
    }
    if queue_log is not None:
        options["queue_log"] = str(queue_log)
    return AmiSource(SourceContext("pbx", None, ()), AmiOptions.model_validate(options), clock)


# the same four calls, as AMI events and as queue_log lines
CALLS_AMI = [
    {
        "Event": "QueueCallerJoin",
        "Queue": "support",
        "Uniqueid": "A",
        "CallerIDNum": "+441",
        "Position": "1",
        "Count": "1",
        "Timestamp": T,
    },
    {
        "Event": "QueueCallerLeave",
        "Queue": "support",
        "Uniqueid": "A",
        "Count": "0",
        "Position": "1",
        "Timestamp": T + 8,
    },
    {
        "Event": "AgentConnect",
        "Queue": "support",
        "Uniqueid": "A",
        "MemberName": "Agent/1001",
        "HoldTime": "8",
        "RingTime": "3",
        "DestUniqueid": "A.2",
        "Timestamp": T + 8,
    },
    {
        "Event": "QueueCallerJoin",
        "Queue": "support",
        "Uniqueid": "B",
        "CallerIDNum": "+442",
        "Position": "1",
        "Count": "1",
        "Timestamp": T + 60,
    },
    {
        "Event": "QueueCallerAbandon",
        "Queue": "support",
        "Uniqueid": "B",
        "Position": "1",
        "OriginalPosition": "1",
        "HoldTime": "40",
        "Timestamp": T + 100,
    },
    {
        "Event": "QueueCallerJoin",
        "Queue": "support",
        "Uniqueid": "C",
        "CallerIDNum": "+443",
        "Position": "1",
        "Count": "1",
        "Timestamp": T + 200,
    },
    {
        "Event": "QueueCallerLeave",
        "Queue": "support",
        "Uniqueid": "C",
        "Count": "0",
        "Position": "1",
        "Timestamp": T + 260,
    },
    {
        "Event": "AgentComplete",
        "Queue": "support",
        "Uniqueid": "A",
        "MemberName": "Agent/1001",
        "HoldTime": "8",
        "TalkTime": "292",
        "Reason": "agent",
        "Timestamp": T + 300,
    },
]
CALLS_LOG = [
    f"{T}|A|support|NONE|ENTERQUEUE||+441|1",
    f"{T + 8}|A|support|Agent/1001|CONNECT|8|A.2|3",
    f"{T + 60}|B|support|NONE|ENTERQUEUE||+442|1",
    f"{T + 100}|B|support|NONE|ABANDON|1|1|40",
    f"{T + 200}|C|support|NONE|ENTERQUEUE||+443|1",
    f"{T + 260}|C|support|NONE|EXITWITHTIMEOUT|1|1|60",
    f"{T + 300}|A|support|Agent/1001|COMPLETEAGENT|8|292|1",
]
AS_OF = datetime.fromtimestamp(T + 400, UTC)


def outcomes(result: PollResult, config: Config, kind: str) -> list[Any]:
    monitor = Monitor(store := MemoryStore(), config, FixedClock(AS_OF))
    monitor.load()
    monitor.apply_poll("pbx", kind, result, 0.0)
    return report(store, config, AS_OF, None, None)["targets"]


def test_live_events_are_the_facts_queue_log_records_with_the_same_outcomes(
    pbx: FakeAmi, tmp_path: Path, shipped_config: Config
) -> None:
    clock = Clock()
    ami = source(pbx, clock)
    opened = ami.poll(None, AS_OF)  # logs in
    pbx.wait_connected()
    for event in CALLS_AMI:
        pbx.emit(**event)
    clock.now = T + 400
    live = ami.poll(opened.cursor, AS_OF)
    assert pbx.logins == 1 and [a["Action"] for a in pbx.actions][:2] == ["Login", "Ping"]
    log = tmp_path / "queue_log"
    log.write_text("\n".join(CALLS_LOG) + "\n")
    filed = AsteriskQueueLogSource(
        SourceContext("pbx", None, ()), AsteriskOptions(path=str(log))
    ).poll(None, AS_OF)
    assert {(e.event_id, e.kind) for e in live.events} == {
        (e.event_id, e.kind) for e in filed.events
    }
    answered = next(e for e in live.events if e.kind is EventKind.CALL_ANSWERED)
    assert answered.agent == "Agent/1001"
    assert outcomes(live, shipped_config, "asterisk_ami") == outcomes(
        filed, shipped_config, "asterisk_queue_log"
    )
    answer = next(
        r for r in outcomes(live, shipped_config, "asterisk_ami") if r["target"] == "answer"
    )
    assert (answer["met"], answer["breached"]) == (1, 2)  # A in 8 s; B at 40 s, C timed out
    assert live.watermark == datetime.fromtimestamp(T + 400 - 2, UTC)
    ami.close()  # says goodbye
    deadline = time.monotonic() + 5
    while "Logoff" not in [a.get("Action") for a in pbx.actions]:
        assert time.monotonic() < deadline, "no Logoff"
        time.sleep(0.01)


def test_a_drop_mid_call_holds_the_watermark_and_the_gap_is_read_back_from_queue_log(
    pbx: FakeAmi, tmp_path: Path, shipped_config: Config
) -> None:
    log = tmp_path / "queue_log"
    log.write_text(f"{T}|D|support|NONE|ENTERQUEUE||+444|1\n")
    clock = Clock()
    ami = source(pbx, clock, queue_log=log)
    store = MemoryStore()
    monitor = Monitor(store, shipped_config, FixedClock(AS_OF))
    monitor.load()

    def poll(at: float) -> PollResult:
        clock.now = at
        monitor.clock = FixedClock(datetime.fromtimestamp(at, UTC))  # type: ignore[assignment]
        result = ami.poll(
            monitor.sources["pbx"].cursor if "pbx" in monitor.sources else None,
            datetime.fromtimestamp(at, UTC),
        )
        monitor.apply_poll("pbx", "asterisk_ami", result, 0.0)
        monitor.wake()
        return result

    poll(T - 1)
    pbx.wait_connected()
    pbx.emit(
        Event="QueueCallerJoin",
        Queue="support",
        Uniqueid="D",
        CallerIDNum="+444",
        Position="1",
        Timestamp=T,
    )
    poll(T + 5)
    pbx.drop()  # mid-call: Asterisk answers D at T + 12 while AMI is down
    with log.open("a") as f:
        f.write(f"{T + 12}|D|support|Agent/1002|CONNECT|12|D.2|2\n")
    dropped = poll(T + 30)  # past D's 20 s deadline: but the watermark stays before it
    assert dropped.watermark == datetime.fromtimestamp(T + 5 - 2, UTC)
    assert not [t for t in monitor.live.open.values() if t.state == "breached"]
    back = poll(T + 40)  # reconnected: the gap is read back
    assert pbx.logins == 2
    assert any(e.kind is EventKind.CALL_ANSWERED and e.conversation_id == "D" for e in back.events)
    answer = next(
        r
        for r in report(store, shipped_config, AS_OF, None, None)["targets"]
        if r["target"] == "answer"
    )
    assert (answer["met"], answer["breached"]) == (
        1,
        0,
    )  # answered in 12 s: no false breach, no lost call


def test_without_queue_log_a_call_waiting_at_the_drop_ends_there_never_breached(
    pbx: FakeAmi, shipped_config: Config
) -> None:
    clock = Clock()
    ami = source(pbx, clock)
    ami.poll(None, AS_OF)
    pbx.wait_connected()
    pbx.emit(
        Event="QueueCallerJoin",
        Queue="support",
        Uniqueid="E",
        CallerIDNum="+445",
        Position="1",
        Timestamp=T,
    )
    clock.now = T + 5
    first = ami.poll("ami", AS_OF)
    pbx.drop()
    clock.now = T + 60
    second = ami.poll("ami", AS_OF)
    merged = PollResult(first.events + second.events, watermark=second.watermark)
    answer = next(
        r for r in outcomes(merged, shipped_config, "asterisk_ami") if r["target"] == "answer"
    )
    assert (answer["breached"], answer["cancelled"]) == (0, 1)  # ended at the drop, at 5 s


def test_a_refused_login_names_the_user_not_the_secret(pbx: FakeAmi) -> None:
    with pytest.raises(AuthFailed) as refused:
        source(pbx, Clock(), secret="wrong-secret").poll(None, AS_OF)
    assert "slamon" in str(refused.value) and "wrong-secret" not in str(refused.value)


def test_a_poll_the_store_did_not_take_is_handed_over_again(pbx: FakeAmi) -> None:
    """AMI does not replay: when the commit of a poll fails, the runtime hands the old
    cursor back, and the events of that poll come again (the store de-duplicates)."""
    clock = Clock()
    ami = source(pbx, clock)
    opened = ami.poll(None, AS_OF)
    pbx.wait_connected()
    pbx.emit(**CALLS_AMI[0])
    clock.now = T + 1
    lost = ami.poll(opened.cursor, AS_OF)  # read, then the store was away
    assert [e.event_id for e in lost.events] == [f"A:ENTERQUEUE:{T}"]
    pbx.emit(**CALLS_AMI[2])
    clock.now = T + 9
    again = ami.poll(opened.cursor, AS_OF)  # the cursor did not move
    assert [e.event_id for e in again.events] == [f"A:ENTERQUEUE:{T}", f"A:CONNECT:{T + 8}"]
    taken = ami.poll(again.cursor, AS_OF)  # stored: nothing is handed twice
    assert taken.events == []
