"""The pager in an alert storm: a change sends what changed, not the whole active set;
the whole set goes again only when a re-send is due, or after an outage. (The transport
below stands in for the network; tests/integration/test_alertmanager.py uses a real
Alertmanager.)"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import httpx

from sla_monitor.adapters.records import AlertingTarget
from sla_monitor.config import Config
from sla_monitor.domain.engine import evaluate_contact
from sla_monitor.domain.timeutil import to_micros
from sla_monitor.publishing.alertmanager import LAPSED, AlertmanagerPublisher
from sla_monitor.service_layer.clock import FixedClock

from ..helpers import T0, ev, policy

URL = "http://alertmanager.test"


class Recorder:
    def __init__(self) -> None:
        self.posts: list[list[dict[str, Any]]] = []
        self.down = False

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        self.posts.append(json.loads(request.content))
        return httpx.Response(200)


def breached(i: int, state: str = "breached") -> AlertingTarget:
    started = to_micros(T0)
    return AlertingTarget(
        "desk", f"c{i}", "first_reply", 0, "email", "billing", "none", state,
        started, started + 3_600_000_000, f"cust-{i}", None,
    )  # fmt: skip


def publisher(recorder: Recorder, clock: list[float]) -> AlertmanagerPublisher:
    return AlertmanagerPublisher(
        [URL],
        FixedClock(T0 + timedelta(hours=2)),
        {},
        resend_interval=60,
        transport=httpx.MockTransport(recorder),
        monotonic=lambda: clock[0],
    )


def test_one_change_among_10k_active_alerts_sends_one() -> None:
    rec, clock = Recorder(), [1000.0]
    pub = publisher(rec, clock)
    pub.load(breached(i) for i in range(10_000))
    assert pub.flush() and len(rec.posts[-1]) == 10_000  # after a restart: all of them
    pub.load([breached(10_000)])  # one more contact lapses
    assert pub.flush()
    assert [a["labels"]["contact"] for a in rec.posts[-1]] == ["desk:c10000"]
    # a contact among them is answered: one resolution goes out, nothing else
    events = [
        ev("customer_message", T0, conv="T-1", source="desk", event_id="m1"),
        ev("auto_reply", T0 + timedelta(seconds=20), conv="T-1", source="desk", event_id="m2"),
    ]
    now = T0 + timedelta(hours=2)
    lapsed = evaluate_contact(events, policy(), now, now)
    for t in lapsed.targets:
        pub.target_changed(lapsed, t, None)
    assert pub.flush() and [a["labels"]["contact"] for a in rec.posts[-1]] == ["desk:T-1"]
    answered = [*events, ev("agent_reply", now, conv="T-1", source="desk", event_id="m3")]
    done = evaluate_contact(answered, policy(), now, now)
    for t in done.targets:
        pub.target_changed(done, t, "breached")
    assert pub.flush()
    assert [(a["labels"]["contact"], a["endsAt"]) for a in rec.posts[-1]] == [
        ("desk:T-1", "2026-11-02T11:00:00Z")  # ended now
    ]


def test_nothing_changed_nothing_sent_until_the_resend_is_due() -> None:
    rec, clock = Recorder(), [1000.0]
    pub = publisher(rec, clock)
    pub.load(breached(i) for i in range(50))
    pub.flush()
    rec.posts.clear()
    clock[0] += 30
    assert pub.flush() and rec.posts == []
    clock[0] += 31  # past resend_interval: Alertmanager must hear of every active alert
    assert pub.flush() and len(rec.posts[-1]) == 50


def test_after_an_outage_everything_goes_again() -> None:
    rec, clock = Recorder(), [1000.0]
    pub = publisher(rec, clock)
    pub.load(breached(i) for i in range(20))
    pub.flush()
    rec.down = True
    pub.load([breached(20)])
    assert not pub.flush()
    rec.down = False
    clock[0] += 1
    assert pub.flush()
    sent = {a["labels"]["contact"] for a in rec.posts[-1]}
    assert len(sent) == 21 and all(a["labels"]["alertname"] == LAPSED for a in rec.posts[-1])


def test_each_page_links_to_its_runbook_on_the_monitor() -> None:
    rec = Recorder()
    pub = AlertmanagerPublisher(
        [URL],
        FixedClock(T0 + timedelta(hours=2)),
        {},
        transport=httpx.MockTransport(rec),
        runbooks_url="https://sla.example.com/runbooks",
    )
    pub.load([breached(1), breached(2, "at_risk")])
    assert pub.flush()
    links = {a["labels"]["alertname"]: a["annotations"]["runbook_url"] for a in rec.posts[-1]}
    assert links == {
        "AcknowledgementLapsed": "https://sla.example.com/runbooks/AcknowledgementLapsed",
        "AcknowledgementAtRisk": "https://sla.example.com/runbooks/AcknowledgementAtRisk",
    }


def test_runbooks_default_to_the_monitors_own_address(shipped_config: Config) -> None:
    s = shipped_config.settings
    assert s.runbooks_url() == "http://localhost:9799/runbooks"
    assert s.runbooks_url("0.0.0.0:8080") == "http://localhost:8080/runbooks"
    other = s.model_copy(update={"external_url": "https://sla.example.com/monitor/"})
    assert other.runbooks_url() == "https://sla.example.com/monitor/runbooks"
