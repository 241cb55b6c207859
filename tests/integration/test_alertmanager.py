"""Per-contact alerts delivered to a real Alertmanager: labels, link, resolution, an
outage, several Alertmanagers, and a restart."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sla_monitor.domain.engine import evaluate_contact
from sla_monitor.publishing.alertmanager import AlertmanagerPublisher
from sla_monitor.service_layer.clock import SystemClock

from ..helpers import ev, policy
from ..promstack import AM_CONFIG, Alertmanager


def wait_for(check: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError("timed out")


def publish_contact(pub: AlertmanagerPublisher, events: list, now: datetime) -> None:  # type: ignore[type-arg]
    result = evaluate_contact(events, policy(), now, now)
    for t in result.targets:
        pub.target_changed(result, t, None)


def breached_email(now: datetime, reply: bool = False) -> list:  # type: ignore[type-arg]
    t0 = now - timedelta(minutes=70)
    events = [
        ev(
            "customer_message",
            t0,
            conv="T-42",
            customer="alice@example.com",
            source="desk",
            event_id="m1",
        ),
        ev("auto_reply", t0 + timedelta(seconds=20), conv="T-42", source="desk", event_id="m2"),
    ]
    if reply:
        events.append(ev("agent_reply", now, conv="T-42", source="desk", event_id="m3"))
    return events


def lapsed(am: Alertmanager) -> list[dict]:  # type: ignore[type-arg]
    return [a for a in am.alerts() if a["labels"]["alertname"] == "AcknowledgementLapsed"]


def test_page_with_labels_and_link_then_resolved(alertmanager: Alertmanager) -> None:
    pub = AlertmanagerPublisher(
        [alertmanager.url],
        SystemClock(),
        {"desk": "https://desk.example.com/tickets/{conversation_id}"},
        resend_interval=30,
    )
    pub.start()
    try:
        now = datetime.now(UTC)
        publish_contact(pub, breached_email(now), now)
        wait_for(lambda: len(lapsed(alertmanager)) == 1)
        alert = lapsed(alertmanager)[0]
        assert alert["labels"] == {
            "alertname": "AcknowledgementLapsed",
            "severity": "page",
            "channel": "email",
            "queue": "billing",
            "target": "first_reply",
            "priority": "none",
            "contact": "desk:T-42",
            "source": "desk",
        }
        assert alert["annotations"]["link"] == "https://desk.example.com/tickets/T-42"
        assert alert["annotations"]["customer"] == "alice@example.com"
        assert "10m past the deadline" in alert["annotations"]["summary"]
        assert alert["status"]["state"] == "active"
        publish_contact(pub, breached_email(now, reply=True), now)
        wait_for(lambda: lapsed(alertmanager) == [])
    finally:
        pub.stop()


def test_an_outage_delays_the_page_but_does_not_lose_it(alertmanager: Alertmanager) -> None:
    pub = AlertmanagerPublisher([alertmanager.url], SystemClock(), {}, resend_interval=30)
    pub.start()
    try:
        alertmanager.stop()
        now = datetime.now(UTC)
        publish_contact(pub, breached_email(now), now)
        wait_for(lambda: not pub.delivered_ok[alertmanager.url])  # tried, and failed
        alertmanager.start()
        wait_for(lambda: len(lapsed(alertmanager)) == 1, timeout=40)
    finally:
        pub.stop()


def test_every_alertmanager_of_a_pair_gets_every_alert(alertmanager: Alertmanager) -> None:
    second = Alertmanager(AM_CONFIG)
    second.start()
    pub = AlertmanagerPublisher(
        [alertmanager.url, second.url], SystemClock(), {}, resend_interval=30
    )
    pub.start()
    try:
        now = datetime.now(UTC)
        publish_contact(pub, breached_email(now), now)
        wait_for(lambda: len(lapsed(alertmanager)) == 1 and len(lapsed(second)) == 1)
    finally:
        pub.stop()
        second.cleanup()


def test_at_risk_warning(alertmanager: Alertmanager) -> None:
    pub = AlertmanagerPublisher([alertmanager.url], SystemClock(), {}, resend_interval=30)
    pub.start()
    try:
        now = datetime.now(UTC)
        events = [ev("customer_message", now - timedelta(minutes=50), conv="W", source="desk")]
        publish_contact(pub, events, now)
        wait_for(
            lambda: any(
                a["labels"]["alertname"] == "AcknowledgementAtRisk" for a in alertmanager.alerts()
            )
        )
        warning = next(
            a for a in alertmanager.alerts() if a["labels"]["alertname"] == "AcknowledgementAtRisk"
        )
        assert warning["labels"]["severity"] == "warning"
        assert "10m left" in warning["annotations"]["summary"]
    finally:
        pub.stop()


def test_after_a_restart_the_active_pages_are_sent_again(tmp_path: Path) -> None:
    """The monitor breaches a contact while Alertmanager is unreachable and is restarted;
    the new process sends the page from the store."""
    import json as _json

    from sla_monitor.bootstrap import build_app
    from sla_monitor.domain.timeutil import iso
    from sla_monitor.entrypoints.http import MetricsServer

    from ..conftest import SHIPPED_CONFIG, free_port

    now = datetime.now(UTC)
    events = tmp_path / "calls.jsonl"
    events.write_text(
        "".join(
            _json.dumps(r) + "\n"
            for r in [
                {
                    "event_id": "q1",
                    "conversation_id": "call-7",
                    "kind": "call_queued",
                    "occurred_at": iso(now - timedelta(minutes=2)),
                    "channel": "phone",
                    "queue": "support-line",
                },
            ]
        )
    )
    config = tmp_path / "c.yaml"
    config.write_text(
        SHIPPED_CONFIG.read_text().split("sources:")[0]
        + f"""sources:
  - name: pbx
    kind: jsonl
    interval: 1h
    contact_url: "https://pbx.example/calls/{{conversation_id}}"
    options: {{path: {events}}}
"""
    )
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    am = Alertmanager(AM_CONFIG)  # configured, but not running yet
    try:
        first = build_app(
            str(config), db, f"127.0.0.1:{free_port()}", [am.url], serve=MetricsServer
        )
        first.start()
        wait_for(
            lambda: (
                first.monitor.live.outcomes.get(
                    ("phone", "support-line", "none", "answer", "breached"), 0
                )
                == 1
            )
        )
        wait_for(lambda: first.alerts is not None and not first.alerts.delivered_ok[am.url])
        first.stop()
        am.start()
        second = build_app(
            str(config), db, f"127.0.0.1:{free_port()}", [am.url], serve=MetricsServer
        )
        second.start()
        try:
            wait_for(lambda: len(lapsed(am)) == 1)
            assert lapsed(am)[0]["labels"]["contact"] == "pbx:call-7"
            assert lapsed(am)[0]["annotations"]["link"] == "https://pbx.example/calls/call-7"
        finally:
            second.stop()
    finally:
        am.cleanup()


def test_a_page_goes_out_only_once_its_contact_is_stored(
    tmp_path: Path, alertmanager: Alertmanager
) -> None:
    """Whoever follows the page's link finds the contact: the page is not sent while the
    transaction that breached it is still open (the publisher is told after the commit and
    never takes the monitor's lock, so it need not wait for the other listeners)."""
    import json as _json

    from sla_monitor.bootstrap import build_app
    from sla_monitor.domain.timeutil import iso
    from sla_monitor.entrypoints.http import MetricsServer

    from ..conftest import SHIPPED_CONFIG, free_port

    now = datetime.now(UTC)
    events = tmp_path / "calls.jsonl"
    row = {
        "event_id": "q1",
        "conversation_id": "call-9",
        "kind": "call_queued",
        "occurred_at": iso(now - timedelta(minutes=2)),
        "channel": "phone",
        "queue": "support-line",
    }
    events.write_text(_json.dumps(row) + "\n")
    config = tmp_path / "c.yaml"
    config.write_text(
        SHIPPED_CONFIG.read_text().split("sources:")[0]
        + f"sources:\n  - name: pbx\n    kind: jsonl\n    interval: 1h\n"
        f"    options: {{path: {events}}}\n"
    )
    app = build_app(
        str(config),
        f"sqlite:///{tmp_path / 'db.sqlite'}",
        f"127.0.0.1:{free_port()}",
        [alertmanager.url],
        serve=MetricsServer,
    )
    stored_when_paged: list[bool] = []

    class Straggler:
        """A slow listener, told of the breach like the publisher: it watches for the page
        and, the moment Alertmanager has it, asks the database (another connection: only
        what is committed) whether the contact is there."""

        def target_changed(self, *_: object) -> None:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not lapsed(alertmanager):
                time.sleep(0.02)
            if lapsed(alertmanager):
                with app.store.read() as tx:
                    stored = tx.state.contacts_for([("pbx", "call-9")])
                stored_when_paged.append(("pbx", "call-9") in stored)

    app.monitor.listeners.append(Straggler())
    app.start()
    try:
        wait_for(lambda: len(lapsed(alertmanager)) == 1)
        wait_for(lambda: bool(stored_when_paged))
        assert all(stored_when_paged)
        with app.store.begin() as conn:
            assert ("pbx", "call-9") in conn.state.contacts_for([("pbx", "call-9")])
    finally:
        app.stop()


def test_delivery_to_alertmanager_is_measured(alertmanager: Alertmanager) -> None:
    """sla_alert_delivery_seconds: hand-over to Alertmanager's acceptance, once per page."""
    from prometheus_client import CollectorRegistry, generate_latest

    from sla_monitor.publishing.alertmanager import DeliveryCollector

    pub = AlertmanagerPublisher([alertmanager.url], SystemClock(), {}, resend_interval=1)
    registry = CollectorRegistry()
    registry.register(DeliveryCollector(lambda: pub))
    pub.start()
    try:
        now = datetime.now(UTC)
        publish_contact(pub, breached_email(now), now)
        wait_for(lambda: len(lapsed(alertmanager)) == 1)
        wait_for(lambda: pub.delivery.count == 1)
        time.sleep(2.5)  # re-sent while active: still one delivery
        text = generate_latest(registry).decode()
    finally:
        pub.stop()
    assert "sla_alert_delivery_seconds_count 1.0" in text
    assert 0 < pub.delivery.total < 10


def test_severity_per_target_decides_what_pages() -> None:
    """A lapsed auto_ack (a machine's failure) pages nobody by default; first_reply pages;
    keep_informed makes a ticket; a policy may say `severity: none`."""
    from sla_monitor.domain.policy import TargetName, TargetSpec

    pub = AlertmanagerPublisher(["http://127.0.0.1:9"], SystemClock(), {}, resend_interval=30)
    now = datetime.now(UTC)
    email = (
        TargetSpec(TargetName.AUTO_ACK, timedelta(minutes=2)),
        TargetSpec(TargetName.FIRST_REPLY, timedelta(hours=1)),
        TargetSpec(TargetName.KEEP_INFORMED, timedelta(minutes=30)),
    )
    t0 = now - timedelta(hours=3)
    events = [
        ev("customer_message", t0, conv="X", source="desk"),
        ev("agent_reply", t0 + timedelta(hours=2), conv="X", source="desk"),
        ev("customer_message", t0 + timedelta(minutes=1), conv="Y", source="desk"),
    ]
    for conv in ("X", "Y"):
        result = evaluate_contact(
            [e for e in events if e.conversation_id == conv], policy(email=email), now, now
        )
        for t in result.targets:
            pub.target_changed(result, t, None)
    pages = {(k[1], k[2]): pub._payload(k, f)["labels"]["severity"] for k, f in pub.active.items()}
    assert pages == {("Y", "first_reply"): "page", ("X", "keep_informed"): "ticket"}
    quiet = (TargetSpec(TargetName.FIRST_REPLY, timedelta(hours=1), severity="none"),)
    pub.active.clear()
    result = evaluate_contact(
        [e for e in events if e.conversation_id == "Y"], policy(email=quiet), now, now
    )
    for t in result.targets:
        pub.target_changed(result, t, None)
    assert pub.active == {}
    pub.client.close()


def test_pages_reach_an_alertmanager_that_asks_for_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Credentials from the config (the password from an env var) reach an Alertmanager
    behind basic auth; a wrong password is refused, said once, and never printed."""
    import json as _json
    import logging

    import bcrypt

    from sla_monitor.bootstrap import build_app
    from sla_monitor.domain.timeutil import iso
    from sla_monitor.entrypoints.http import MetricsServer

    from ..conftest import SHIPPED_CONFIG, free_port

    password = "am-Secret-42"
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    am = Alertmanager(AM_CONFIG, f"basic_auth_users:\n  sla: '{hashed}'\n")
    am.auth = ("sla", password)
    am.start()
    try:
        monkeypatch.setenv("SLA_TEST_AM_PASSWORD", password)
        now = datetime.now(UTC)
        events = tmp_path / "calls.jsonl"
        call = {
            "event_id": "q1",
            "conversation_id": "call-5",
            "kind": "call_queued",
            "occurred_at": iso(now - timedelta(minutes=2)),
            "channel": "phone",
            "queue": "support-line",
        }
        events.write_text(_json.dumps(call) + "\n")
        head, _sources = SHIPPED_CONFIG.read_text().split("\nsources:")
        assert "\nalerting:" not in head
        head += "\nalerting:\n  basic_auth: {username: sla, password: {env: SLA_TEST_AM_PASSWORD}}"
        config = tmp_path / "c.yaml"
        config.write_text(
            head + f"\nsources:\n  - name: pbx\n    kind: jsonl\n    options: {{path: {events}}}\n"
        )
        app = build_app(
            str(config),
            f"sqlite:///{tmp_path / 'db.sqlite'}",
            f"127.0.0.1:{free_port()}",
            [am.url],
            serve=MetricsServer,
        )
        app.start()
        try:
            wait_for(lambda: len(lapsed(am)) == 1)
            assert lapsed(am)[0]["labels"]["contact"] == "pbx:call-5"
        finally:
            app.stop()
        # the same Alertmanager, credentials in the URL, the wrong password
        wrong = am.url.replace("http://", "http://sla:Wrong-Pw-77@")
        publisher = AlertmanagerPublisher([wrong], SystemClock(), {})
        with caplog.at_level(logging.WARNING, logger="sla_monitor.publishing.alertmanager"):
            assert not publisher._post(wrong, [{"labels": {"alertname": "x"}}], {})
            assert not publisher._post(wrong, [{"labels": {"alertname": "x"}}], {})
        said = [r.getMessage() for r in caplog.records]
        assert len(said) == 1 and "refused" in said[0] and "401" in said[0], said
        assert "Wrong-Pw-77" not in caplog.text and "***@127.0.0.1" in said[0]
    finally:
        am.cleanup()
