"""Intercom against a local server answering like its REST API (2.11): conversation search
(POST, `pages.next.starting_after`), one conversation with its parts, rate-limit headers.
Pages, a conversation on two pages, a 429 with Retry-After, a 5xx burst, a refused token,
a paging cursor no longer taken, an unreadable cursor, a malformed part set aside; end to
end, Fin's answer acknowledges but only an admin's answers."""

from __future__ import annotations

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
from sla_monitor.sources.intercom import IntercomOptions, IntercomSource

from ..fakeapi import Reply, Request, fake_api

T0 = datetime(2026, 11, 2, 9, tzinfo=UTC)
NOW = T0 + timedelta(hours=3)
TOKEN = "dG9rOmludGVyY29t"
TEAM = 4455
USER = {"type": "user", "id": "6543b1", "name": "Alice Archer", "email": "alice@example.com"}
ADMIN = {"type": "admin", "id": "814860", "name": "Dana Whitfield", "email": "dana@acme.example"}
FIN = {"type": "bot", "id": "7201", "name": "Fin", "email": "operator+acme@intercom.io"}


def ts(minutes: float) -> int:
    return int((T0 + timedelta(minutes=minutes)).timestamp())


def part(pid: str, ptype: str, author: dict[str, Any], minutes: float) -> dict[str, Any]:
    return {
        "type": "conversation_part",
        "id": pid,
        "part_type": ptype,
        "body": "<p>…</p>" if ptype in ("comment", "note") else None,
        "created_at": ts(minutes),
        "updated_at": ts(minutes),
        "notified_at": ts(minutes),
        "assigned_to": None,
        "author": author,
        "attachments": [],
        "external_id": None,
        "redacted": False,
    }


def conversation(
    cid: str, source_type: str, created: float, updated: float, parts: list[Any]
) -> dict[str, Any]:
    return {
        "type": "conversation",
        "id": cid,
        "title": None,
        "created_at": ts(created),
        "updated_at": ts(updated),
        "waiting_since": None,
        "snoozed_until": None,
        "open": True,
        "state": "open",
        "read": True,
        "priority": "priority" if cid == "1001" else "not_priority",
        "admin_assignee_id": 814860,
        "team_assignee_id": TEAM,
        "tags": {"type": "tag.list", "tags": []},
        "conversation_rating": None,
        "source": {
            "type": source_type,
            "id": f"src-{cid}",
            "delivered_as": "customer_initiated",
            "subject": "",
            "body": "<p>Hello</p>",
            "author": USER,
            "attachments": [],
            "url": None,
            "redacted": False,
        },
        "contacts": {
            "type": "contact.list",
            "contacts": [{"type": "contact", "id": "6543b1", "external_id": "cust-42"}],
        },
        "teammates": {"type": "admin.list", "admins": [{"type": "admin", "id": "814860"}]},
        "first_contact_reply": {"created_at": ts(created), "type": source_type, "url": None},
        "sla_applied": None,
        "statistics": None,
        "conversation_parts": {
            "type": "conversation_part.list",
            "conversation_parts": parts,
            "total_count": len(parts),
        },
        "ai_agent_participated": cid == "1001",
    }


CHAT = conversation(
    "1001",
    "conversation",
    0,
    40,
    [
        part("p1", "comment", FIN, 0.2),  # Fin answers at once
        part("p2", "assignment", ADMIN, 1),
        part("p3", "note", ADMIN, 2),
        part("p4", "comment", ADMIN, 20),  # a person, 20 minutes in
        part("p5", "comment", USER, 30),
        {"type": "conversation_part", "id": "p6", "part_type": "comment"},  # no created_at
        part("p7", "close", ADMIN, 40),
    ],
)
MAIL = conversation("1002", "email", 60, 70, [part("p8", "snoozed", ADMIN, 70)])


class Api:
    def __init__(self, faults: list[Reply] | None = None, remaining: int = 900) -> None:
        self.faults = faults or []
        self.remaining = remaining
        self.stale = False  # a starting_after Intercom no longer takes

    def __call__(self, req: Request) -> Reply:
        if req.headers.get("authorization") != f"Bearer {TOKEN}":
            return (
                401,
                {},
                {
                    "type": "error.list",
                    "errors": [{"code": "unauthorized", "message": "Access Token Invalid"}],
                },
            )
        if self.faults:
            return self.faults.pop(0)
        limits = {"X-RateLimit-Limit": "1000", "X-RateLimit-Remaining": str(self.remaining)}
        if req.method == "POST" and req.path == "/conversations/search":
            after = req.body["pagination"].get("starting_after")
            if after and self.stale:
                self.stale = False
                return (
                    400,
                    {},
                    {
                        "type": "error.list",
                        "errors": [
                            {"code": "parameter_invalid", "message": "starting_after is invalid"}
                        ],
                    },
                )
            listed = [CHAT] if not after else [CHAT, MAIL]  # CHAT updated between pages
            pages: dict[str, Any] = {
                "type": "pages",
                "page": 2 if after else 1,
                "per_page": 150,
                "total_pages": 2,
            }
            if not after:
                pages["next"] = {"page": 2, "starting_after": "WzE3OTI="}
            summary = [{k: v for k, v in c.items() if k != "conversation_parts"} for c in listed]
            return (
                200,
                limits,
                {
                    "type": "conversation.list",
                    "pages": pages,
                    "total_count": 2,
                    "conversations": summary,
                },
            )
        if req.path.startswith("/conversations/"):
            cid = req.path.rsplit("/", 1)[1]
            return 200, limits, {"1001": CHAT, "1002": MAIL}[cid]
        return 404, {}, {"type": "error.list", "errors": [{"code": "not_found"}]}


def source(url: str, token: str = TOKEN, **options: Any) -> IntercomSource:
    os.environ["SLA_TEST_INTERCOM_TOKEN"] = token
    opts = IntercomOptions.model_validate(
        {
            "token": {"env": "SLA_TEST_INTERCOM_TOKEN"},
            "base_url": url,
            "teams": {str(TEAM): "support"},
            **options,
        }
    )
    return IntercomSource(SourceContext("intercom", None, ()), opts)


def test_conversations_and_parts_become_events_with_faults_on_the_way() -> None:
    state = Api(faults=[(429, {"Retry-After": "9"}, {}), (500, {}, {}), (503, {}, {})])
    with fake_api(state) as api:
        src = source(api.url)
        with pytest.raises(RateLimited) as limited:
            src.poll(None, NOW)
        assert limited.value.retry_after == 9
        for status in (500, 503):
            with pytest.raises(SourceError, match=f"server error {status}"):
                src.poll(None, NOW)
        result = src.poll(None, NOW)
        search = [r for r in api.requests if r.method == "POST"][-2]
        assert search.headers["intercom-version"] == "2.11"
    query = search.body["query"]
    assert query["field"] == "updated_at" and query["operator"] == ">"
    assert query["value"] == int((NOW - timedelta(days=7, minutes=2)).timestamp())
    assert search.body["sort"] == {"field": "updated_at", "order": "ascending"}
    kinds = {e.event_id: (e.kind, e.agent, e.status) for e in result.events}
    assert kinds == {
        "1001:source": (EventKind.CUSTOMER_MESSAGE, None, None),
        "1001:p1": (EventKind.AUTO_REPLY, None, None),  # Fin
        "1001:p4": (EventKind.AGENT_REPLY, "Dana Whitfield", None),  # assignment, note: nobody's
        "1001:p5": (EventKind.CUSTOMER_MESSAGE, None, None),
        "1001:p7": (EventKind.STATUS_CHANGED, None, Status.SOLVED),
        "1002:source": (EventKind.CUSTOMER_MESSAGE, None, None),
        "1002:p8": (EventKind.STATUS_CHANGED, None, Status.ON_HOLD),
    }
    by_id = {e.event_id: e for e in result.events}
    assert by_id["1001:source"].queue == "support" and by_id["1001:source"].priority == "high"
    assert (
        by_id["1001:source"].channel.value == "chat"
        and by_id["1002:source"].channel.value == "email"
    )
    assert by_id["1001:source"].customer_id == "cust-42"
    assert [r.reason for r in result.rejected] == ["bad_item", "bad_item"]  # p6, on both pages
    assert result.watermark == NOW - timedelta(minutes=2) and not result.more


def test_a_stale_paging_cursor_searches_again_and_a_backlog_goes_on() -> None:
    state = Api()
    with fake_api(state) as api:
        src = source(api.url, max_pages=1)
        first = src.poll(None, NOW)
        assert first.more and first.watermark is None
        state.stale = True
        second = src.poll(first.cursor, NOW)
        afters = [
            r.body["pagination"].get("starting_after") for r in api.requests if r.method == "POST"
        ]
    assert afters == [None, "WzE3OTI=", None]  # refused, then from the start of the window
    assert second.events


def test_a_refused_token_an_unreadable_cursor_and_a_spent_budget() -> None:
    state = Api(remaining=10)
    with fake_api(state) as api:
        with pytest.raises(AuthFailed) as refused:
            source(api.url, token="nope").poll(None, NOW)
        assert "SLA_TEST_INTERCOM_TOKEN" in str(refused.value) and "nope" not in str(refused.value)
        result = source(api.url).poll("{{", NOW)
    assert result.events and result.next_poll_after == 60.0


def test_fin_acknowledges_but_only_an_admin_answers(tmp_path: Path, shipped_config: Config) -> None:
    with fake_api(Api()) as api:
        result = source(api.url).poll(None, NOW)
    store = SqlStore(f"sqlite:///{tmp_path / 'ic.db'}")
    store.migrate()
    monitor = Monitor(store, shipped_config, FixedClock(NOW))
    monitor.load()
    monitor.apply_poll("intercom", "intercom", result, 0.0)
    rows = {
        (r["channel"], r["queue"], r["target"]): r
        for r in report(store, shipped_config, NOW, None, None)["targets"]
    }
    assert rows[("chat", "support", "auto_ack")]["met"] == 1  # Fin, at 12 s
    first = rows[("chat", "support", "first_reply")]
    assert first["met"] == 1 and first["response_seconds"]["p50"] == 20 * 60  # Dana
    store.close()
