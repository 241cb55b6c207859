"""Freshdesk against a local server answering like its REST API v2 (tickets updated since,
conversations, agents; `Link` paging, `X-Ratelimit-*` headers): pages, duplicates across
pages, out-of-order updates, a 429 with Retry-After, a 5xx burst, refused credentials, an
unreadable cursor, a malformed ticket set aside while the rest is read; end to end, a bot's
reply acknowledges but only a person's answers."""

from __future__ import annotations

import base64
import json
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
from sla_monitor.sources.freshdesk import FreshdeskOptions, FreshdeskSource

from ..fakeapi import Reply, Request, fake_api

T0 = datetime(2026, 11, 2, 9, tzinfo=UTC)
NOW = T0 + timedelta(hours=3)
DANA, BOT = 5001, 5002  # agents: a person, and the account a scenario/bot replies as
ALICE, BOB, CAROL = 9001, 9002, 9003  # contacts
KEY = "fd-key-123"


def at(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")


def agent(aid: int, name: str) -> dict[str, Any]:
    return {
        "available": True,
        "occasional": False,
        "id": aid,
        "ticket_scope": 1,
        "signature": None,
        "group_ids": [3001],
        "role_ids": [1],
        "skill_ids": [],
        "available_since": None,
        "contact": {
            "active": True,
            "email": f"agent{aid}@acme.example",
            "job_title": None,
            "language": "en",
            "last_login_at": at(0),
            "mobile": None,
            "name": name,
            "phone": None,
            "time_zone": "London",
            "created_at": at(-10000),
            "updated_at": at(-100),
        },
        "created_at": at(-10000),
        "updated_at": at(-100),
        "type": "support_agent",
    }


def ticket(
    tid: int,
    requester: int,
    created: float,
    updated: float,
    source: int = 1,
    status: int = 2,
    priority: int = 2,
    group: int | None = 3001,
) -> dict[str, Any]:
    return {
        "cc_emails": [],
        "fwd_emails": [],
        "reply_cc_emails": [],
        "ticket_cc_emails": [],
        "fr_escalated": False,
        "spam": False,
        "email_config_id": 61000012345,
        "group_id": group,
        "priority": priority,
        "requester_id": requester,
        "responder_id": DANA,
        "source": source,
        "company_id": None,
        "status": status,
        "subject": f"Ticket {tid}",
        "association_type": None,
        "support_email": "support@acme.example",
        "to_emails": ["support@acme.example"],
        "product_id": None,
        "id": tid,
        "type": "Question",
        "due_by": at(created + 1440),
        "fr_due_by": at(created + 60),
        "is_escalated": False,
        "custom_fields": {},
        "created_at": at(created),
        "updated_at": at(updated),
        "associated_tickets_count": None,
        "tags": [],
    }


def conversation(
    cid: int, tid: int, user: int, minutes: float, incoming: bool, private: bool = False
) -> dict[str, Any]:
    return {
        "body": "<div>…</div>",
        "body_text": "…",
        "id": cid,
        "incoming": incoming,
        "private": private,
        "user_id": user,
        "support_email": None if incoming else "support@acme.example",
        "source": 2 if private else 0,
        "category": 3 if incoming else 2,
        "to_emails": ["support@acme.example"] if incoming else ["alice@example.com"],
        "from_email": "alice@example.com" if incoming else "support@acme.example",
        "cc_emails": [],
        "bcc_emails": None,
        "email_failure_count": None,
        "outgoing_failures": None,
        "thread_id": None,
        "thread_message_id": None,
        "created_at": at(minutes),
        "updated_at": at(minutes),
        "last_edited_at": None,
        "last_edited_user_id": None,
        "attachments": [],
        "automation_id": None,
        "automation_type_id": None,
        "auto_response": False,
        "ticket_id": tid,
        "source_additional_info": None,
    }


CONVERSATIONS = {
    # e-mail: the bot's acknowledgement at 30 s, a note, Dana's answer at 20 min, then the
    # customer writes again and a CC'd colleague chimes in
    101: [
        conversation(1, 101, BOT, 0.5, incoming=False),
        conversation(2, 101, DANA, 5, incoming=False, private=True),
        conversation(3, 101, DANA, 20, incoming=False),
        conversation(4, 101, ALICE, 70, incoming=True),
        conversation(5, 101, CAROL, 75, incoming=True),
    ],
    102: [conversation(6, 102, DANA, 95, incoming=False)],  # the call, answered at once
    103: [conversation(7, 103, BOB, 130, incoming=True)],  # replies to an outbound mail
}
PAGE1 = [
    ticket(102, BOB, 90, 96, source=3, status=4),  # out of order within the page
    ticket(101, ALICE, 0, 76, priority=4),
]
PAGE2 = [
    ticket(101, ALICE, 0, 76, priority=4),  # again: updated as the pages were read
    ticket(103, BOB, 120, 131, source=10),
    {"id": 104, "requester_id": CAROL, "updated_at": at(132), "status": 2},  # no created_at
]


class Desk:
    """The scripted server: a fault first when asked, then the pages."""

    def __init__(self, faults: list[Reply] | None = None, remaining: int = 400) -> None:
        self.faults = faults or []
        self.remaining = remaining

    def __call__(self, req: Request) -> Reply:
        auth = req.headers.get("authorization", "")
        if auth != "Basic " + base64.b64encode(f"{KEY}:X".encode()).decode():
            return 401, {}, {"code": "invalid_credentials", "message": "You have to be logged in"}
        if self.faults:
            return self.faults.pop(0)
        limits = {"X-Ratelimit-Total": "400", "X-Ratelimit-Remaining": str(self.remaining)}
        limits["X-Ratelimit-Used-CurrentRequest"] = "1"
        if req.path == "/api/v2/agents":
            return 200, limits, [agent(DANA, "Dana Whitfield"), agent(BOT, "Acme Bot")]
        if req.path.startswith("/api/v2/tickets/") and req.path.endswith("/conversations"):
            tid = int(req.path.split("/")[4])
            return 200, limits, CONVERSATIONS.get(tid, [])
        if req.path == "/api/v2/tickets":
            if req.params.get("page", "1") == "1":
                link = f'<{self.url}/api/v2/tickets?page=2&per_page=100>; rel="next"'
                return 200, limits | {"Link": link}, PAGE1
            return 200, limits, PAGE2
        return 404, {}, {"code": "not_found"}

    url = ""


def source(url: str, key: str = KEY, **options: Any) -> FreshdeskSource:
    opts = FreshdeskOptions.model_validate(
        {
            "base_url": url,
            "api_key": {"env": "SLA_TEST_FD_KEY"},
            "groups": {"3001": "billing"},
            "automation_agents": [BOT],
            **options,
        }
    )
    import os

    os.environ["SLA_TEST_FD_KEY"] = key
    return FreshdeskSource(SourceContext("desk", None, ()), opts)


def test_tickets_and_conversations_become_events_with_faults_on_the_way(
    tmp_path: Path, shipped_config: Config
) -> None:
    desk = Desk(
        faults=[
            (429, {"Retry-After": "17"}, {"code": "rate_limited"}),
            (502, {}, {"code": "bad_gateway"}),
            (503, {}, {"code": "unavailable"}),
        ]
    )
    with fake_api(desk) as api:
        desk.url = api.url
        src = source(api.url)
        with pytest.raises(RateLimited) as limited:
            src.poll(None, NOW)
        assert limited.value.retry_after == 17
        for status in (502, 503):  # a burst of server errors: nothing lost, retried
            with pytest.raises(SourceError, match=f"server error {status}"):
                src.poll(None, NOW)
        first = src.poll(None, NOW)
        tickets = [r for r in api.requests if r.path == "/api/v2/tickets"]
    ask = tickets[-2].params
    assert ask["order_by"] == "updated_at" and ask["order_type"] == "asc"
    assert ask["updated_since"] == (NOW - timedelta(days=7, minutes=2)).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    kinds = {e.event_id: (e.kind, e.agent) for e in first.events}
    assert kinds == {
        "101:created": (EventKind.CUSTOMER_MESSAGE, None),
        "101:conv:1": (EventKind.AUTO_REPLY, None),  # the bot account: automatic
        "101:conv:3": (EventKind.AGENT_REPLY, "Dana Whitfield"),  # the note (2) is nobody's
        "101:conv:4": (EventKind.CUSTOMER_MESSAGE, None),
        "101:conv:5": (EventKind.CUSTOMER_MESSAGE, None),  # a CC'd colleague asks too
        "102:created": (EventKind.CUSTOMER_MESSAGE, None),
        "102:conv:6": (EventKind.AGENT_REPLY, "Dana Whitfield"),
        f"102:status:solved:{at(96)}": (EventKind.STATUS_CHANGED, None),
        "103:created": (EventKind.AGENT_REPLY, "Dana Whitfield"),  # outbound: the team began
        "103:conv:7": (EventKind.CUSTOMER_MESSAGE, None),
    }
    by_id = {e.event_id: e for e in first.events}
    assert by_id["101:created"].queue == "billing" and by_id["101:created"].priority == "urgent"
    assert by_id["101:created"].customer_id == str(ALICE)
    assert by_id["102:created"].channel.value == "phone"
    assert by_id[f"102:status:solved:{at(96)}"].status is Status.SOLVED
    assert [r.reason for r in first.rejected] == ["bad_item"]  # ticket 104, the rest read
    assert "ticket 104" in first.rejected[0].detail
    assert first.watermark == NOW - timedelta(minutes=2) and not first.more
    state = json.loads(first.cursor or "{}")
    assert state["since"] == "2026-11-02T11:11:00Z"  # the newest update read (103)


def test_the_next_poll_reads_from_the_last_update_and_changes_become_events() -> None:
    desk = Desk()
    with fake_api(desk) as api:
        desk.url = api.url
        src = source(api.url)
        first = src.poll(None, NOW)
        PAGE1[1] = ticket(101, ALICE, 0, 150, priority=3, status=3)  # now pending, high
        try:
            again = src.poll(first.cursor, NOW + timedelta(minutes=30))
        finally:
            PAGE1[1] = ticket(101, ALICE, 0, 76, priority=4)
        asked = [r for r in api.requests if r.path == "/api/v2/tickets"][-2].params
    assert asked["updated_since"] == "2026-11-02T11:09:00Z"  # since 103's update, overlapped
    changed = {
        e.event_id: e
        for e in again.events
        if e.event_id.startswith("101:") and ":" in e.event_id[4:]
    }
    assert {e.kind for e in changed.values()} >= {
        EventKind.STATUS_CHANGED,
        EventKind.PRIORITY_CHANGED,
    }
    status = next(e for e in changed.values() if e.kind is EventKind.STATUS_CHANGED)
    assert status.status is Status.PENDING and status.occurred_at == T0 + timedelta(minutes=150)
    # re-read conversations carry the same ids: stored once by the monitor
    assert {e.event_id for e in first.events} & {e.event_id for e in again.events}


def test_refused_credentials_name_the_key_not_its_value() -> None:
    with fake_api(Desk()) as api:
        src = source(api.url, key="wrong-key")
        with pytest.raises(AuthFailed) as refused:
            src.poll(None, NOW)
    assert "SLA_TEST_FD_KEY" in str(refused.value) and "wrong-key" not in str(refused.value)


def test_an_unreadable_cursor_reads_again_from_the_start_and_a_spent_budget_slows_down() -> None:
    desk = Desk(remaining=5)
    with fake_api(desk) as api:
        desk.url = api.url
        result = source(api.url).poll("{not json", NOW)
        asked = next(r for r in api.requests if r.path == "/api/v2/tickets").params
    assert asked["updated_since"] == (NOW - timedelta(days=7, minutes=2)).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    assert result.events and result.next_poll_after == 60.0  # 5 requests left this minute


def test_a_long_backlog_is_read_in_several_polls(shipped_config: Config) -> None:
    desk = Desk()
    with fake_api(desk) as api:
        desk.url = api.url
        src = source(api.url, max_pages=1)
        first = src.poll(None, NOW)
        assert first.more and first.watermark is None  # not read to the end yet
        second = src.poll(first.cursor, NOW)
        pages = [r.params.get("page") for r in api.requests if r.path == "/api/v2/tickets"]
    assert pages == ["1", "2"] and not second.more and second.watermark is not None


def test_a_bot_acknowledges_but_only_a_person_answers(
    tmp_path: Path, shipped_config: Config
) -> None:
    desk = Desk()
    with fake_api(desk) as api:
        desk.url = api.url
        result = source(api.url).poll(None, NOW)
    store = SqlStore(f"sqlite:///{tmp_path / 'fd.db'}")
    store.migrate()
    monitor = Monitor(store, shipped_config, FixedClock(NOW))
    monitor.load()
    monitor.apply_poll("desk", "freshdesk", result, 0.0)
    rows = {
        (r["queue"], r["target"]): r
        for r in report(store, shipped_config, NOW, None, None)["targets"]
    }
    # ticket 101: auto_ack met by the bot at 30 s; first_reply by Dana at 20 min, not by the bot
    assert rows[("billing", "auto_ack")]["met"] == 1
    first = rows[("billing", "first_reply")]
    assert first["met"] == 1 and first["response_seconds"]["p50"] == 20 * 60
    store.close()


def test_check_config_finds_an_unset_key_and_a_desk_without_an_address(tmp_path: Path) -> None:
    from sla_monitor.sources import preflight_source, validate_source_config

    options = {"domain": "acme", "api_key": {"env": "SLA_TEST_FD_UNSET"}}
    problems = preflight_source("freshdesk", options)
    assert problems == [
        (
            ("options", "api_key"),
            "environment variable SLA_TEST_FD_UNSET is not set (a secret api_key is read from it)",
        )
    ]
    assert validate_source_config("freshdesk", {"domain": "acme"})  # no api_key: named
    nowhere = validate_source_config("freshdesk", {"api_key": {"env": "X"}})
    assert any("give domain" in message for _where, message in nowhere), nowhere
