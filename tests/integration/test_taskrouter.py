"""Twilio TaskRouter against a local server answering like the workspace Events API
(`events`, `meta.next_page_url`, newest first): a window over two pages, an event on both
pages, a 429 with Retry-After, a 5xx burst, refused credentials, an unreadable cursor, a
malformed event set aside; end to end, a call answered within 20 s is met, one abandoned
after 40 s breached, a 3 s abandon left out of the service level."""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sla_monitor.adapters.sql import SqlStore
from sla_monitor.config import Config
from sla_monitor.domain.events import EventKind, Status
from sla_monitor.service_layer.clock import FixedClock
from sla_monitor.service_layer.monitor import Monitor
from sla_monitor.service_layer.recompute import report
from sla_monitor.sources.abc import AuthFailed, RateLimited, SourceContext, SourceError
from sla_monitor.sources.taskrouter import TaskRouterOptions, TaskRouterSource

from ..fakeapi import Reply, Request, fake_api

T0 = datetime(2026, 11, 2, 9, tzinfo=UTC)
NOW = T0 + timedelta(hours=1)
ACCOUNT, TOKEN = "AC" + "a" * 32, "auth-token-xyz"
WORKSPACE = "WS" + "b" * 32
QUEUE = "WQ" + "c" * 32


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def event(
    sid: str, etype: str, task: str, seconds: float, channel: str = "voice", **data: Any
) -> dict[str, Any]:
    when = at(seconds)
    return {
        "account_sid": ACCOUNT,
        "actor_sid": task,
        "actor_type": "task",
        "actor_url": f"https://taskrouter.twilio.com/v1/Workspaces/{WORKSPACE}/Tasks/{task}",
        "description": f"Task {task} {etype.split('.')[1]}",
        "event_data": {
            "task_sid": task,
            "task_queue_sid": QUEUE,
            "task_queue_name": "Support Line",
            "task_channel_unique_name": channel,
            "task_attributes": json.dumps({"from": "+441632960001", "direction": "inbound"}),
            "task_age": str(int(seconds)),
            "task_priority": "0",
            "task_assignment_status": "pending",
            "workspace_sid": WORKSPACE,
            **data,
        },
        "event_date": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "event_date_ms": int(when.timestamp() * 1000),
        "event_type": etype,
        "resource_sid": task,
        "resource_type": "task",
        "resource_url": f"https://taskrouter.twilio.com/v1/Workspaces/{WORKSPACE}/Tasks/{task}",
        "sid": sid,
        "source": "twilio",
        "source_ip_address": "10.0.0.1",
        "url": f"https://taskrouter.twilio.com/v1/Workspaces/{WORKSPACE}/Events/{sid}",
        "workspace_sid": WORKSPACE,
    }


T1, T2, T3, T4 = ("WT" + str(i) * 32 for i in range(1, 5))
EVENTS = [  # oldest first here; the API lists the newest first
    event("EV01", "task.created", T1, 0),
    event("EV02", "reservation.accepted", T1, 15, worker_name="dana.whitfield"),  # 15 s: met
    event("EV03", "task.created", T2, 60),
    event("EV04", "task.canceled", T2, 100, task_canceled_reason="Task canceled on hangup"),
    event("EV05", "task.created", T3, 200),
    event("EV06", "task.canceled", T3, 203, task_canceled_reason="hangup"),  # a 3 s abandon
    event("EV07", "task.created", T4, 300, channel="sms"),
    event("EV08", "reservation.accepted", T4, 420, channel="sms", worker_name="lee"),
    event("EV09", "task.completed", T1, 400),  # the answered call ends
    {"sid": "EV10", "event_type": "task.created", "event_data": {}},  # no date, no task
    event("EV11", "worker.activity.update", T1, 410),  # not about waits
]


class Api:
    def __init__(self, faults: list[Reply] | None = None) -> None:
        self.faults = faults or []
        self.url = ""

    def __call__(self, req: Request) -> Reply:
        expected = "Basic " + base64.b64encode(f"{ACCOUNT}:{TOKEN}".encode()).decode()
        if req.headers.get("authorization") != expected:
            return (
                401,
                {},
                {
                    "code": 20003,
                    "message": "Authenticate",
                    "more_info": "https://www.twilio.com/docs/errors/20003",
                    "status": 401,
                },
            )
        if self.faults:
            return self.faults.pop(0)
        newest_first = list(reversed(EVENTS))
        base = f"{self.url}/v1/Workspaces/{WORKSPACE}/Events?PageSize=6"
        if req.params.get("Page") == "1":
            page, nxt = newest_first[5:], None
        else:
            page, nxt = newest_first[:6], f"{base}&Page=1&PageToken=PAEV06"  # EV06 on both
        meta = {
            "first_page_url": f"{base}&Page=0",
            "key": "events",
            "next_page_url": nxt,
            "page": 0,
            "page_size": 6,
            "previous_page_url": None,
            "url": f"{base}&Page=0",
        }
        return 200, {}, {"events": page, "meta": meta}


def source(url: str, token: str = TOKEN, **options: Any) -> TaskRouterSource:
    os.environ["SLA_TEST_TWILIO_TOKEN"] = token
    opts = TaskRouterOptions.model_validate(
        {
            "workspace_sid": WORKSPACE,
            "username": ACCOUNT,
            "password": {"env": "SLA_TEST_TWILIO_TOKEN"},
            "base_url": url,
            **options,
        }
    )
    return TaskRouterSource(SourceContext("flex", None, ()), opts)


def test_task_events_become_calls_and_messages_with_faults_on_the_way() -> None:
    state = Api(
        faults=[
            (429, {"Retry-After": "5"}, {"code": 20429, "status": 429}),
            (500, {}, {}),
            (503, {}, {}),
        ]
    )
    with fake_api(state) as api:
        state.url = api.url
        src = source(api.url)
        with pytest.raises(RateLimited) as limited:
            src.poll(None, NOW)
        assert limited.value.retry_after == 5
        for status in (500, 503):
            with pytest.raises(SourceError, match=f"server error {status}"):
                src.poll(None, NOW)
        result = src.poll(None, NOW)
        asked = [r.params for r in api.requests if r.path.endswith("/Events")][-2]
    assert asked["StartDate"] == (NOW - timedelta(hours=24, minutes=2)).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    assert asked["EndDate"] == NOW.strftime("%Y-%m-%dT%H:%M:%SZ")
    kinds = {e.event_id: (e.kind, e.agent, e.status, e.reason) for e in result.events}
    assert kinds == {
        "EV01": (EventKind.CALL_QUEUED, None, None, None),
        "EV02": (EventKind.CALL_ANSWERED, "dana.whitfield", None, None),
        "EV03": (EventKind.CALL_QUEUED, None, None, None),
        "EV04": (EventKind.CALL_ABANDONED, None, None, "Task canceled on hangup"),
        "EV05": (EventKind.CALL_QUEUED, None, None, None),
        "EV06": (EventKind.CALL_ABANDONED, None, None, "hangup"),
        "EV07": (EventKind.CUSTOMER_MESSAGE, None, None, None),  # an SMS task
        "EV08": (EventKind.AGENT_REPLY, "lee", None, None),
        "EV09": (EventKind.STATUS_CHANGED, None, Status.CLOSED, None),
    }
    by_id = {e.event_id: e for e in result.events}
    assert by_id["EV01"].queue == "Support Line" and by_id["EV01"].customer_id == "+441632960001"
    assert by_id["EV01"].channel.value == "phone" and by_id["EV07"].channel.value == "social"
    assert [r.reason for r in result.rejected] == ["bad_item"]  # EV10
    assert result.watermark == NOW - timedelta(minutes=2)


def test_a_long_window_goes_on_in_the_next_poll_and_credentials_are_named_not_shown() -> None:
    state = Api()
    with fake_api(state) as api:
        state.url = api.url
        src = source(api.url, max_pages=1)
        first = src.poll(None, NOW)
        assert first.more and first.watermark is None and first.events == []
        second = src.poll(first.cursor, NOW)
        assert not second.more and len(second.events) == 9
        with pytest.raises(AuthFailed) as refused:
            source(api.url, token="not-the-token").poll(None, NOW)
        assert ACCOUNT in str(refused.value) and "not-the-token" not in str(refused.value)
        again = source(api.url).poll("not json", NOW)  # unreadable cursor: from `start`
    assert len(again.events) == 9


def test_answered_in_time_met_abandoned_late_breached_short_abandon_left_out(
    tmp_path: Path, shipped_config: Config
) -> None:
    state = Api()
    with fake_api(state) as api:
        state.url = api.url
        result = source(api.url).poll(None, NOW)
    store = SqlStore(f"sqlite:///{tmp_path / 'tr.db'}")
    store.migrate()
    monitor = Monitor(store, shipped_config, FixedClock(NOW))
    monitor.load()
    monitor.apply_poll("flex", "taskrouter", result, 0.0)
    r = report(store, shipped_config, NOW, None, None)
    answer = next(x for x in r["targets"] if x["target"] == "answer")
    assert (answer["met"], answer["breached"], answer["abandoned_short"]) == (1, 1, 1)
    level = next(s for s in r["service_level"] if s["queue"] == "Support Line")
    assert level["value"] == 0.5  # met / (met + breached): the 3 s abandon is left out
    store.close()
