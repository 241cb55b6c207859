"""Zendesk against a local server answering like the incremental ticket event export:
pages, overlap duplicates, out-of-order updates, a 429 with Retry-After, a 5xx burst."""

from __future__ import annotations

import base64
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
from sla_monitor.sources.zendesk import ZendeskOptions, ZendeskSource

from ..fakeapi import Reply, fake_api

T0 = datetime(2026, 11, 2, 9, tzinfo=UTC)
TS = int(T0.timestamp())
AGENT, ALICE, BOB = 7001, 9001, 9002
ADMIN, INTEGRATION, CAROL = 7002, 8001, 9003  # an admin, an API integration, a CC'd colleague
ROLES = {AGENT: "agent", ADMIN: "admin", INTEGRATION: "agent", ALICE: "end-user"}
ROLES |= {BOB: "end-user", CAROL: "end-user"}


def users(req: Any) -> Reply:
    """users/show_many.json, shaped like the vendor's: {"users": [...], "next_page": ...}."""
    ids = [int(x) for x in req.params["ids"].split(",")]
    return (
        200,
        {},
        {
            "users": [
                {
                    "id": i,
                    "url": f"https://acme.zendesk.com/api/v2/users/{i}.json",
                    "name": f"User {i}",
                    "email": f"user{i}@example.com",
                    "role": ROLES[i],
                    "role_type": None,
                    "active": True,
                    "suspended": False,
                }
                for i in ids
                if i in ROLES
            ],
            "next_page": None,
            "previous_page": None,
            "count": len(ids),
        },
    )


def router(export: Any) -> Any:
    return lambda req: users(req) if req.path.endswith("/users/show_many.json") else export(req)


def audit(
    aid: int, ticket: int, ts: int, via: Any, children: list[dict[str, Any]], updater: int = ALICE
) -> dict[str, Any]:
    return {
        "id": aid,
        "ticket_id": ticket,
        "timestamp": ts,
        "created_at": datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "updater_id": updater,
        "via": via,
        "system": {},
        "event_type": "Audit",
        "merged_ticket_ids": [],
        "child_events": children,
    }


def comment(
    cid: int, author: int, ts: int, public: bool = True, channel: str = "email"
) -> dict[str, Any]:
    return {
        "id": cid,
        "via": {"channel": channel, "source": {"from": {}, "to": {}, "rel": None}},
        "via_reference_id": None,
        "type": "Comment",
        "author_id": author,
        "body": "…",
        "html_body": "<p>…</p>",
        "public": public,
        "attachments": [],
        "audit_id": cid - 1,
        "created_at": datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "event_type": "Comment",
    }


TRIGGER = {
    "channel": "rule",
    "source": {
        "to": {},
        "from": {"id": 35079792, "title": "Notify requester of received request"},
        "rel": "trigger",
    },
}
NOTIFY = audit(
    20,
    101,
    TS + 30,
    TRIGGER,
    [
        {
            "id": 21,
            "via": TRIGGER,
            "via_reference_id": 35079792,
            "subject": "Request received",
            "body": "We got your request",
            "recipients": [ALICE],
            "event_type": "Notification",
        }
    ],
    updater=-1,
)
PAGE1 = [
    audit(
        10,
        101,
        TS,
        "Mail",
        [
            {
                "id": 11,
                "via": "Mail",
                "via_reference_id": None,
                "requester_id": ALICE,
                "event_type": "Create",
            },
            {
                "id": 12,
                "via": "Mail",
                "via_reference_id": None,
                "status": "new",
                "event_type": "Create",
            },
            {
                "id": 13,
                "via": "Mail",
                "via_reference_id": None,
                "group_id": 360001,
                "event_type": "Create",
            },
            {
                "id": 14,
                "via": "Mail",
                "via_reference_id": None,
                "priority": "high",
                "event_type": "Create",
            },
            comment(15, ALICE, TS),
        ],
    ),
    NOTIFY,
]
PAGE2 = [  # out of order, and the trigger notification again (the overlap re-read)
    audit(
        40,
        102,
        TS + 3600,
        {"channel": "twitter"},
        [
            {"id": 41, "requester_id": BOB, "event_type": "Create"},
            {"id": 42, "status": "new", "event_type": "Create"},
            {"id": 43, "group_id": 360002, "event_type": "Create"},
            comment(44, BOB, TS + 3600, channel="twitter"),
        ],
        updater=BOB,
    ),
    audit(
        30,
        101,
        TS + 3000,
        {"channel": "web"},
        [
            comment(31, AGENT, TS + 3000, channel="web"),
            {
                "id": 32,
                "via": "Web form",
                "status": "pending",
                "previous_value": "new",
                "event_type": "Change",
            },
        ],
        updater=AGENT,
    ),
    NOTIFY,
    audit(
        50,
        103,
        TS + 3700,
        {"channel": "web"},
        [comment(51, AGENT, TS + 3700, public=False)],
        updater=AGENT,
    ),
    audit(60, 55, TS + 3800, {"channel": "web"}, [comment(61, AGENT, TS + 3800)], updater=AGENT),
]


def page(events: list[dict[str, Any]], end: int, last: bool) -> Reply:
    return (
        200,
        {},
        {
            "ticket_events": events,
            "count": len(events),
            "end_of_stream": last,
            "end_time": end,
            "next_page": f"https://acme.zendesk.com/api/v2/incremental/ticket_events.json?start_time={end}",
        },
    )


@pytest.fixture(autouse=True)
def token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_ZENDESK_TOKEN", "zd-token-123")


def zendesk(url: str, **kw: Any) -> ZendeskSource:
    options = ZendeskOptions.model_validate(
        {
            "base_url": url,
            "email": "bot@acme.test",
            "token": {"env": "TEST_ZENDESK_TOKEN"},
            "min_request_interval": 0,
            "groups": {"360001": "billing", "360002": "social-care"},
            **kw,
        }
    )
    return ZendeskSource(SourceContext("zendesk", None, ()), options)


def test_a_day_of_tickets_end_to_end(tmp_path: Path, shipped_config: Config) -> None:
    script = iter(
        [
            page(PAGE1, TS + 60, last=False),
            (429, {"Retry-After": "30"}, {"error": "TooManyRequests"}),
            (503, {}, {"error": "unavailable"}),
            (503, {}, {"error": "unavailable"}),
            page(PAGE2, TS + 7200, last=True),
        ]
    )
    results: list[PollResult] = []
    errors: list[SourceError] = []
    with fake_api(router(lambda req: next(script))) as api:
        src = zendesk(api.url)
        cursor = None
        for _ in range(6):
            try:
                r = src.poll(cursor, T0 + timedelta(days=1))
            except SourceError as exc:
                errors.append(exc)  # the runtime backs off and polls again
                continue
            results.append(r)
            cursor = r.cursor
            if not r.more:
                break
    exports = [r for r in api.requests if r.path.endswith("ticket_events.json")]
    first = exports[0]
    assert first.path == "/api/v2/incremental/ticket_events.json"
    assert first.params == {"start_time": str(TS + 86400 - 7 * 86400), "include": "comment_events"}
    expected_auth = base64.b64encode(b"bot@acme.test/token:zd-token-123").decode()
    assert first.headers["authorization"] == f"Basic {expected_auth}"
    assert exports[1].params["start_time"] == str(TS + 60 - 120)  # the overlap
    assert isinstance(errors[0], RateLimited) and errors[0].retry_after == 30
    assert [e.status for e in errors[1:]] == [503, 503]
    assert results[-1].watermark == T0 + timedelta(seconds=7200)
    events = [e for r in results for e in r.events]
    kinds = {(e.conversation_id, e.event_id): e.kind.value for e in events}
    assert kinds[("101", "21:auto_reply")] == "auto_reply"
    assert kinds[("101", "15:customer_message")] == "customer_message"
    assert kinds[("101", "31:agent_reply")] == "agent_reply"
    assert ("103", "51:agent_reply") not in kinds  # a private note acknowledges nobody
    assert [x for r in results for x in r.rejected] == []
    # a ticket from before the export start: its agent is known by role all the same
    assert kinds[("55", "61:agent_reply")] == "agent_reply"
    # who replied, by the name users/show_many gave (for reports per person)
    agents = {e.event_id: e.agent for e in events if e.kind.value == "agent_reply"}
    assert agents and all(a is not None and a.startswith("User ") for a in agents.values())
    by_ticket = {e.conversation_id: e for e in events if e.kind.value == "customer_message"}
    assert (
        by_ticket["101"].channel.value,
        by_ticket["101"].queue,
        by_ticket["101"].customer_id,
    ) == ("email", "billing", str(ALICE))
    assert (by_ticket["102"].channel.value, by_ticket["102"].queue) == ("social", "social-care")

    store = SqlStore(f"sqlite:///{tmp_path / 'zd.db'}")
    store.migrate()
    monitor = Monitor(store, shipped_config, FixedClock(T0 + timedelta(days=1)))
    monitor.load()
    for r in results:
        monitor.apply_poll("zendesk", "zendesk", r, 0.0)
    rows = {
        (x["channel"], x["target"]): x
        for x in report(store, shipped_config, T0 + timedelta(days=1), None, None)["targets"]
    }
    assert (rows[("email", "auto_ack")]["met"], rows[("email", "first_reply")]["met"]) == (1, 1)
    assert rows[("email", "first_reply")]["response_seconds"]["p50"] == 3000
    assert rows[("social", "first_reply")]["breached"] == 1  # nobody answered the tweet
    assert monitor.live.ingested[("zendesk", "priority_changed")] == 1
    store.close()


def test_requests_stay_within_ten_a_minute(tmp_path: Path) -> None:
    with fake_api(lambda req: page([], TS, last=True)) as api:
        src = zendesk(api.url, min_request_interval=6)
        r1 = src.poll(None, T0)
        r2 = src.poll(r1.cursor, T0)
    assert len(api.requests) == 1
    assert r2.more and r2.next_poll_after is not None and 5 < r2.next_poll_after <= 6
    assert r2.cursor == r1.cursor


def test_too_recent_start_time_is_not_an_error(tmp_path: Path) -> None:
    with fake_api(
        lambda req: (422, {}, {"error": "InvalidValue", "description": "Too recent start_time"})
    ) as api:
        r = zendesk(api.url).poll('{"end_time": 1, "tickets": {}}', T0)
    assert r.events == [] and r.cursor == '{"end_time": 1, "tickets": {}}'


def test_only_agents_reply_cc_users_ask_merges_notes_and_integrations_do_neither(
    tmp_path: Path, shipped_config: Config
) -> None:
    web = {"channel": "web", "source": {"from": {}, "to": {}, "rel": None}}
    merge_via = {
        "channel": "merge",
        "source": {"from": {"ticket_id": 300, "subject": "Refund?"}, "to": {}, "rel": "merge"},
    }
    api_via = {"channel": "api", "source": {"from": {}, "to": {}, "rel": None}}
    updates = [
        audit(
            70,
            201,
            TS,
            "Mail",
            [
                {"id": 71, "requester_id": ALICE, "event_type": "Create"},
                {"id": 72, "status": "new", "event_type": "Create"},
                {"id": 73, "group_id": 360001, "event_type": "Create"},
                comment(74, ALICE, TS),
            ],
        ),
        # Alice's colleague, CC'd, chases: still the customer's side, not an answer
        audit(75, 201, TS + 600, "Mail", [comment(76, CAROL, TS + 600)], updater=CAROL),
        # an agent's internal note, then the merge of a duplicate (its comment is public)
        audit(77, 201, TS + 900, web, [comment(78, AGENT, TS + 900, public=False)], AGENT),
        audit(79, 201, TS + 1000, merge_via, [{**comment(80, AGENT, TS + 1000), "via": merge_via}]),
        # an integration posts through the API: a machine's message
        audit(
            81,
            201,
            TS + 1200,
            api_via,
            [{**comment(82, INTEGRATION, TS + 1200), "via": api_via}],
            INTEGRATION,
        ),
        # the admin answers: the first personal reply, at 1 h 20 min
        audit(83, 201, TS + 4800, web, [comment(84, ADMIN, TS + 4800, channel="web")], ADMIN),
    ]
    with fake_api(router(lambda req: page(updates, TS + 7200, last=True))) as api:
        result = zendesk(api.url, automation_users=[INTEGRATION]).poll(None, T0 + timedelta(1))
    lookups = [r for r in api.requests if r.path.endswith("/users/show_many.json")]
    assert len(lookups) == 1  # one lookup for every author of the page
    kinds = {
        e.event_id: e.kind.value
        for e in result.events
        if e.event_id[:2] in {"74", "76", "78", "80", "82", "84"}
    }
    assert kinds == {
        "74:customer_message": "customer_message",
        "76:customer_message": "customer_message",
        "82:auto_reply": "auto_reply",
        "84:agent_reply": "agent_reply",
    }
    assert all(e.customer_id == str(ALICE) for e in result.events)
    roles = json.loads(result.cursor or "{}")["roles"]
    assert roles[str(CAROL)] == "end-user" and roles[str(ADMIN)] == "admin"

    store = SqlStore(f"sqlite:///{tmp_path / 'zd.db'}")
    store.migrate()
    monitor = Monitor(store, shipped_config, FixedClock(T0 + timedelta(days=1)))
    monitor.load()
    monitor.apply_poll("zendesk", "zendesk", result, 0.0)
    rows = {
        x["target"]: x
        for x in report(store, shipped_config, T0 + timedelta(1), None, None)["targets"]
    }
    # the integration's post acknowledged (auto_ack met at 20 min, late for 2 min) ...
    assert rows["auto_ack"]["breached"] == 1
    # ... but only the admin's reply is personal, after the hour: breached, then answered
    assert rows["first_reply"]["breached"] == 1
    assert rows["first_reply"]["response_seconds"]["max"] == 4800
    store.close()
