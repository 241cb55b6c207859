"""Front against a local server answering like its Core API events list (newest first,
`_pagination.next`, `X-Ratelimit-*`): a window over two pages read to its end before the
cursor moves (across polls when long), an event on two pages, a 429 with Retry-After, a 5xx
burst, a refused token, an unreadable cursor, a malformed event set aside; end to end, a
rule's reply acknowledges but only a teammate's answers."""

from __future__ import annotations

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
from sla_monitor.sources.front import FrontOptions, FrontSource

from ..fakeapi import Reply, Request, fake_api

T0 = datetime(2026, 11, 2, 9, tzinfo=UTC)
NOW = T0 + timedelta(hours=3)
TOKEN = "front-api-token"
INBOX = [{"_links": {}, "id": "inb_55c8c149", "name": "Support", "is_private": False}]
DANA = {
    "_links": {},
    "id": "tea_55c8c149",
    "email": "dana@acme.example",
    "username": "dana",
    "first_name": "Dana",
    "last_name": "Whitfield",
    "is_admin": False,
    "is_available": True,
}


def ts(minutes: float) -> float:
    return (T0 + timedelta(minutes=minutes)).timestamp()


def event(
    eid: str, etype: str, cnv: str, minutes: float, source: Any, target: Any = None
) -> dict[str, Any]:
    return {
        "_links": {"self": f"https://api2.frontapp.com/events/{eid}"},
        "id": eid,
        "type": etype,
        "emitted_at": ts(minutes),
        "conversation": {
            "_links": {},
            "id": cnv,
            "subject": "Where is my order?",
            "status": "assigned",
            "assignee": DANA,
            "recipient": {"handle": "alice@example.com", "role": "from"},
            "tags": [],
            "links": [],
            "created_at": ts(0),
            "is_private": False,
        },
        "source": source,
        "target": target,
    }


def message(
    mid: str, mtype: str, inbound: bool, minutes: float, author: Any = None
) -> dict[str, Any]:
    return {
        "_meta": {"type": "message"},
        "data": {
            "_links": {},
            "id": mid,
            "type": mtype,
            "is_inbound": inbound,
            "created_at": ts(minutes),
            "blurb": "…",
            "author": author,
            "recipients": [
                {
                    "handle": "alice@example.com" if inbound else "support@acme.example",
                    "role": "from",
                },
                {
                    "handle": "support@acme.example" if inbound else "alice@example.com",
                    "role": "to",
                },
            ],
            "body": "<p>…</p>",
            "text": "…",
            "attachments": [],
            "metadata": {},
        },
    }


INBOXES = {"_meta": {"type": "inboxes"}, "data": INBOX}
RULE = {"_meta": {"type": "rule"}, "data": {"id": "rul_1", "name": "Auto-acknowledge"}}
TEAMMATE = {"_meta": {"type": "teammate"}, "data": DANA}
EVENTS = [  # oldest first here; the server lists them newest first
    event("evt_1", "inbound", "cnv_1", 0, INBOXES, message("msg_1", "email", True, 0)),
    event("evt_2", "out_reply", "cnv_1", 0.5, RULE, message("msg_2", "email", False, 0.5)),
    event("evt_3", "comment", "cnv_1", 5, TEAMMATE, {"_meta": {"type": "comment"}, "data": {}}),
    event("evt_4", "out_reply", "cnv_1", 20, INBOXES, message("msg_3", "email", False, 20, DANA)),
    event("evt_5", "archive", "cnv_1", 25, TEAMMATE),
    event("evt_6", "inbound", "cnv_2", 60, INBOXES, message("msg_4", "whatsapp", True, 60)),
    {"id": "evt_7", "type": "inbound", "emitted_at": ts(61)},  # no conversation
    event("evt_8", "reopen", "cnv_1", 70, TEAMMATE),
]


class Api:
    def __init__(self, faults: list[Reply] | None = None, remaining: int = 40) -> None:
        self.faults = faults or []
        self.remaining = remaining
        self.url = ""

    def __call__(self, req: Request) -> Reply:
        if req.headers.get("authorization") != f"Bearer {TOKEN}":
            return 401, {}, {"_error": {"status": 401, "title": "Unauthenticated"}}
        if self.faults:
            return self.faults.pop(0)
        limits = {"X-Ratelimit-Limit": "50", "X-Ratelimit-Remaining": str(self.remaining)}
        after = float(req.params.get("q[after]", "0"))
        newest_first = [e for e in reversed(EVENTS) if float(e["emitted_at"]) > after]
        if req.params.get("page_token") == "p2":
            page, nxt = newest_first[3:], None
        else:
            page, nxt = newest_first[:4], f"{self.url}/events?page_token=p2"
            page = page + newest_first[3:4]  # the boundary event, on both pages
        return (
            200,
            limits,
            {"_pagination": {"next": nxt}, "_links": {"self": "…"}, "_results": page},
        )


def source(url: str, token: str = TOKEN, **options: Any) -> FrontSource:
    os.environ["SLA_TEST_FRONT_TOKEN"] = token
    opts = FrontOptions.model_validate(
        {
            "token": {"env": "SLA_TEST_FRONT_TOKEN"},
            "base_url": url,
            "inboxes": {"Support": "support"},
            **options,
        }
    )
    return FrontSource(SourceContext("front", None, ()), opts)


def test_events_become_contact_events_with_faults_on_the_way() -> None:
    api_state = Api(
        faults=[
            (429, {"Retry-After": "21"}, {"_error": {"status": 429}}),
            (502, {}, {}),
            (503, {}, {}),
        ]
    )
    with fake_api(api_state) as api:
        api_state.url = api.url
        src = source(api.url)
        with pytest.raises(RateLimited) as limited:
            src.poll(None, NOW)
        assert limited.value.retry_after == 21
        for status in (502, 503):
            with pytest.raises(SourceError, match=f"server error {status}"):
                src.poll(None, NOW)
        result = src.poll(None, NOW)
        first = [r.params for r in api.requests if r.path == "/events"][-2]
    assert float(first["q[after]"]) == pytest.approx((NOW - timedelta(days=7)).timestamp())
    kinds = {e.event_id: (e.kind, e.agent, e.status) for e in result.events}
    assert kinds == {
        "evt_1": (EventKind.CUSTOMER_MESSAGE, None, None),
        "evt_2": (EventKind.AUTO_REPLY, None, None),  # the rule's acknowledgement
        "evt_4": (EventKind.AGENT_REPLY, "Dana Whitfield", None),  # the comment (3) is internal
        "evt_5": (EventKind.STATUS_CHANGED, None, Status.SOLVED),
        "evt_6": (EventKind.CUSTOMER_MESSAGE, None, None),
        "evt_8": (EventKind.STATUS_CHANGED, None, Status.OPEN),
    }
    by_id = {e.event_id: e for e in result.events}
    assert by_id["evt_1"].queue == "support" and by_id["evt_1"].customer_id == "alice@example.com"
    assert by_id["evt_5"].queue == "support"  # archive says no inbox: remembered
    assert by_id["evt_6"].channel.value == "social"  # WhatsApp
    assert [r.reason for r in result.rejected] == ["bad_item"]  # evt_7, the rest read
    assert result.watermark == NOW
    assert json.loads(result.cursor or "{}")["after"] == pytest.approx(ts(70))


def test_a_long_window_is_read_to_its_end_over_polls_before_the_cursor_moves() -> None:
    state = Api()
    with fake_api(state) as api:
        state.url = api.url
        src = source(api.url, max_pages=1)
        first = src.poll(None, NOW)
        assert first.more and first.watermark is None and first.events == []
        second = src.poll(first.cursor, NOW)
        assert not second.more and second.watermark == NOW
        assert {e.event_id for e in second.events} >= {"evt_1", "evt_8"}
        third = src.poll(second.cursor, NOW)  # nothing newer than evt_8
    assert third.events == [] and float(api.requests[-1].params["q[after]"]) == pytest.approx(
        ts(70)
    )


def test_a_refused_token_an_unreadable_cursor_and_a_spent_budget() -> None:
    state = Api(remaining=2)
    with fake_api(state) as api:
        state.url = api.url
        with pytest.raises(AuthFailed) as refused:
            source(api.url, token="wrong").poll(None, NOW)
        assert (
            "SLA_TEST_FRONT_TOKEN" in str(refused.value)
            and "wrong" not in str(refused.value).split("(")[0]
        )
        result = source(api.url).poll("][", NOW)
    assert result.events and result.next_poll_after == 60.0


def test_a_rule_acknowledges_but_only_a_teammate_answers(
    tmp_path: Path, shipped_config: Config
) -> None:
    state = Api()
    with fake_api(state) as api:
        state.url = api.url
        result = source(api.url).poll(None, NOW)
    store = SqlStore(f"sqlite:///{tmp_path / 'front.db'}")
    store.migrate()
    monitor = Monitor(store, shipped_config, FixedClock(NOW))
    monitor.load()
    monitor.apply_poll("front", "front", result, 0.0)
    rows = {
        (r["channel"], r["target"]): r
        for r in report(store, shipped_config, NOW, None, None)["targets"]
    }
    assert rows[("email", "auto_ack")]["met"] == 1  # the rule, at 30 s
    first = rows[("email", "first_reply")]
    assert first["met"] == 1 and first["response_seconds"]["p50"] == 20 * 60  # Dana
    store.close()
