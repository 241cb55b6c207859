"""Chatwoot against a local server answering like its application API: conversations by
activity (two pages), messages after an id (duplicates, out of order), bots, templates,
automations, private notes, a 429 with Retry-After and a 5xx, and a deleted conversation."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sla_monitor.adapters.sql import SqlStore
from sla_monitor.config import Config
from sla_monitor.service_layer.clock import FixedClock
from sla_monitor.service_layer.monitor import Monitor
from sla_monitor.service_layer.recompute import report
from sla_monitor.sources.abc import PollResult, RateLimited, SourceContext, SourceError
from sla_monitor.sources.chatwoot import ChatwootOptions, ChatwootSource

from ..fakeapi import Reply, Request, fake_api

T0 = datetime(2026, 11, 2, 9, tzinfo=UTC)
TS = int(T0.timestamp())
NOW = T0 + timedelta(hours=3)
INBOXES = [
    {"id": 1, "name": "Twitter @acme", "channel_type": "Channel::TwitterProfile"},
    {"id": 2, "name": "Website chat", "channel_type": "Channel::WebWidget"},
    {"id": 3, "name": "support@acme.test", "channel_type": "Channel::Email"},
]


def msg(
    mid: int,
    conv: int,
    inbox: int,
    mtype: int,
    minutes: float,
    sender_type: str | None = None,
    **kw: Any,
) -> dict[str, Any]:
    return {
        "id": mid,
        "content": kw.pop("content", "…"),
        "account_id": 5,
        "inbox_id": inbox,
        "conversation_id": conv,
        "message_type": mtype,
        "created_at": TS + int(minutes * 60),
        "updated_at": TS + int(minutes * 60),
        "private": kw.pop("private", False),
        "status": "sent",
        "source_id": None,
        "content_type": "text",
        "content_attributes": kw.pop("content_attributes", {}),
        "additional_attributes": kw.pop("additional_attributes", {}),
        "sender_type": sender_type,
        "sender_id": 1,
        "sender": {"id": 1, "type": (sender_type or "").lower()}
        | (  # an agent, as Chatwoot's push_event_data gives one
            {"name": "Priya Natarajan", "available_name": "Priya", "thumbnail": ""}
            if sender_type == "User"
            else {}
        ),
    }


MESSAGES = {
    # a tweet: the bot greets, a person answers in 9 minutes, resolved
    "10": [
        msg(101, 10, 1, 0, 0),
        msg(102, 10, 1, 1, 0.1, "AgentBot"),
        msg(104, 10, 1, 1, 9, "User"),
        msg(103, 10, 1, 1, 5, "User", private=True),
        msg(105, 10, 1, 2, 10, content="Conversation was marked resolved by Jo"),
    ],
    # a chat: greeting template, an automation's reply, then nobody
    "11": [
        msg(111, 11, 2, 0, 30),
        msg(112, 11, 2, 3, 30.05),
        msg(113, 11, 2, 1, 31, "User", content_attributes={"automation_rule_id": 7}),
    ],
    # an e-mail: a campaign's message is not a person's reply; a person replies at 40 min;
    # the customer's out-of-office (marked by Chatwoot) and a bounce are nobody asking
    "12": [
        msg(121, 12, 3, 0, 60),
        msg(
            124,
            12,
            3,
            0,
            60.5,
            "Contact",
            content_attributes={
                "email": {"from": ["eve@example.com"], "subject": "Out of office"},
                "auto_reply": True,
            },
        ),
        msg(
            125,
            12,
            3,
            0,
            61.5,
            "Contact",
            content_attributes={
                "email": {"from": ["MAILER-DAEMON@mx.example.com"], "subject": "Undelivered"}
            },
        ),
        msg(122, 12, 3, 1, 61, "User", additional_attributes={"campaign_id": 3}),
        msg(123, 12, 3, 1, 100, "User"),
    ],
}


def conversation(cid: int, inbox: int, last: float, email: str | None) -> dict[str, Any]:
    return {
        "id": cid,
        "inbox_id": inbox,
        "status": "open",
        "timestamp": TS + int(last * 60),
        "last_activity_at": TS + int(last * 60),
        "unread_count": 0,
        "meta": {
            "sender": {"id": cid * 10, "name": "C", "email": email, "phone_number": None},
            "assignee": None,
            "channel": "x",
        },
        "messages": [],
    }


CONVERSATIONS = [
    conversation(13, 2, 120, None),  # deleted between the listing and the read: 404
    conversation(12, 3, 100, "eve@example.com"),
    conversation(11, 2, 31, None),
    conversation(10, 1, 10, None),
    conversation(9, 1, -5000, None),
]


@pytest.fixture(autouse=True)
def token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_CHATWOOT_TOKEN", "cw-token")


def make_handler(fail: list[Reply]) -> Any:
    def handle(req: Request) -> Reply:
        assert req.headers["api_access_token"] == "cw-token"
        if fail:
            return fail.pop(0)
        base = "/api/v1/accounts/5"
        if req.path == f"{base}/inboxes":
            return 200, {}, {"payload": INBOXES}
        if req.path == f"{base}/conversations":
            page = int(req.params["page"])
            chunk = CONVERSATIONS[(page - 1) * 2 : page * 2]
            return 200, {}, {"data": {"meta": {"all_count": 4}, "payload": chunk}}
        cid = req.path.split("/")[-2]
        if cid not in MESSAGES:
            return 404, {}, {"error": "Resource could not be found"}
        after = int(req.params.get("after", 0))
        # the server returns messages unordered, and one already-read message again
        items = [m for m in MESSAGES[cid] if m["id"] > after - 1][::-1]
        return 200, {}, {"meta": {}, "payload": items}

    return handle


def chatwoot(url: str) -> ChatwootSource:
    return ChatwootSource(
        SourceContext("chatwoot", None, ()),
        ChatwootOptions.model_validate(
            {"base_url": url, "account_id": 5, "token": {"env": "TEST_CHATWOOT_TOKEN"}}
        ),
    )


def test_conversations_end_to_end(tmp_path: Path, shipped_config: Config) -> None:
    fail: list[Reply] = [(429, {"Retry-After": "15"}, {}), (502, {}, {}), (503, {}, {})]
    results: list[PollResult] = []
    with fake_api(make_handler(fail)) as api:
        src = chatwoot(api.url)
        with pytest.raises(RateLimited) as limited:
            src.poll(None, NOW)
        assert limited.value.retry_after == 15
        for status in (502, 503):  # a 5xx burst: each poll fails, nothing is lost
            with pytest.raises(SourceError, match=f"server error {status}"):
                src.poll(None, NOW)
        results.append(src.poll(None, NOW))
        results.append(src.poll(results[0].cursor, NOW))
    first, again = results
    kinds = {e.event_id: (e.kind.value, e.channel.value, e.queue) for e in first.events}
    assert kinds == {
        "101": ("customer_message", "social", "Twitter @acme"),
        "102": ("auto_reply", "social", "Twitter @acme"),
        "104": ("agent_reply", "social", "Twitter @acme"),
        "105": ("status_changed", "social", "Twitter @acme"),
        "111": ("customer_message", "chat", "Website chat"),
        "112": ("auto_reply", "chat", "Website chat"),
        "113": ("auto_reply", "chat", "Website chat"),
        "121": ("customer_message", "email", "support@acme.test"),
        "122": ("auto_reply", "email", "support@acme.test"),
        "123": ("agent_reply", "email", "support@acme.test"),
    }
    agents = {e.event_id: e.agent for e in first.events if e.agent}
    assert agents == {"104": "Priya", "123": "Priya"}  # who replied: for reports per person
    assert again.events == []  # nothing after the last message ids
    assert first.skipped == {"auto_reply": 1, "bounce": 1}  # neither is a customer asking
    assert next(e for e in first.events if e.event_id == "121").customer_id == "eve@example.com"

    store = SqlStore(f"sqlite:///{tmp_path / 'cw.db'}")
    store.migrate()
    monitor = Monitor(store, shipped_config, FixedClock(NOW))
    monitor.load()
    monitor.apply_poll("chatwoot", "chatwoot", first, 0.0)
    rows = {
        (x["channel"], x["target"]): x
        for x in report(store, shipped_config, NOW, None, None)["targets"]
    }
    assert rows[("social", "first_reply")]["met"] == 1
    assert rows[("chat", "first_reply")]["breached"] == 1  # a template and an automation only
    assert rows[("email", "first_reply")]["met"] == 1  # 40 minutes, the campaign did not count
    assert rows[("email", "auto_ack")]["met"] == 1  # ... but it did acknowledge
    store.close()


def test_a_deleted_conversation_is_forgotten(tmp_path: Path) -> None:
    with fake_api(make_handler([])) as api:
        src = chatwoot(api.url)
        r = src.poll(json.dumps({"mark": TS - 10, "last_message": {"13": 5, "10": 105}}), NOW)
    assert '"13"' not in (r.cursor or "") and '"10": 105' in (r.cursor or "")
