"""Help Scout against a local server answering like the Mailbox API 2.0 (an OAuth token
endpoint; HAL pages of conversations with their threads embedded; rate-limit headers):
pages, a conversation on two pages, threads out of order, a 429 with
X-RateLimit-Retry-After, a 5xx burst, a token the API stops taking, a refused app secret, an
unreadable cursor, a malformed conversation set aside; end to end, a workflow's reply
acknowledges but only a person's answers."""

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
from sla_monitor.sources.helpscout import HelpScoutOptions, HelpScoutSource

from ..fakeapi import Reply, Request

T0 = datetime(2026, 11, 2, 9, tzinfo=UTC)
NOW = T0 + timedelta(hours=3)
APP, SECRET = "hs-app-id", "hs-app-secret"
MAILBOX = 85123


def at(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")


def person(pid: int, kind: str, first: str, last: str) -> dict[str, Any]:
    return {
        "id": pid,
        "type": kind,
        "first": first,
        "last": last,
        "email": f"{first.lower()}@x.example",
    }


ALICE = person(29418, "customer", "Alice", "Archer")
DANA = person(1234, "user", "Dana", "Whitfield")
AI = person(777, "system_user", "AI", "Answers")


def thread(
    tid: int,
    ttype: str,
    by: dict[str, Any],
    minutes: float,
    status: str = "nochange",
    action: str | None = None,
    state: str = "published",
) -> dict[str, Any]:
    return {
        "id": tid,
        "type": ttype,
        "status": status,
        "state": state,
        "action": {"type": action, "text": "You ran a workflow", "associatedEntities": {}}
        if action
        else None,
        "body": "…",
        "source": {"type": "email", "via": by["type"] if by["type"] == "customer" else "user"},
        "customer": ALICE,
        "createdBy": by,
        "assignedTo": {"id": 1234, "type": "user", "first": "Dana", "last": "Whitfield"},
        "savedReplyId": 0,
        "to": [],
        "cc": [],
        "bcc": [],
        "createdAt": at(minutes),
        "openedAt": None,
        "_embedded": {"attachments": []},
    }


def conversation(
    cid: int, ctype: str, created: float, modified: float, threads: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "id": cid,
        "number": cid - 1000,
        "threads": len(threads),
        "type": ctype,
        "folderId": 1,
        "status": "active",
        "state": "published",
        "subject": f"Conversation {cid}",
        "preview": "…",
        "mailboxId": MAILBOX,
        "assignee": DANA,
        "createdBy": ALICE,
        "createdAt": at(created),
        "closedBy": 0,
        "closedAt": None,
        "userUpdatedAt": at(modified),
        "customerWaitingSince": {"time": at(created), "friendly": "3 hours ago"},
        "source": {"type": "email", "via": "customer"},
        "tags": [],
        "cc": [],
        "bcc": [],
        "primaryCustomer": {"id": ALICE["id"], "email": "alice@x.example", "type": "customer"},
        "customFields": [],
        "_embedded": {"threads": threads},
    }


MAIL = conversation(
    2001,
    "email",
    0,
    70,
    [  # newest first, as the API lists them
        thread(15, "note", DANA, 60),
        thread(14, "message", DANA, 20, status="closed"),
        thread(13, "message", DANA, 10, state="draft"),  # a draft reached nobody
        thread(12, "message", DANA, 0.5, action="automatic-workflow"),  # the auto-reply
        thread(11, "customer", ALICE, 0, status="active"),
    ],
)
CHAT = conversation(
    2002, "chat", 90, 95, [thread(22, "chat", AI, 91), thread(21, "customer", ALICE, 90)]
)
BROKEN = {"number": 1, "type": "email"}  # no id


class Api:
    def __init__(self, faults: list[Reply] | None = None, remaining: int = 390) -> None:
        self.faults = faults or []
        self.remaining = remaining
        self.valid = {"tok-1"}
        self.issued = 0
        self.refuse = False

    def __call__(self, req: Request) -> Reply:
        if req.path == "/v2/oauth2/token":  # (answered from the POST handler below)
            return 405, {}, {}
        if req.headers.get("authorization") not in {f"Bearer {t}" for t in self.valid}:
            return (
                401,
                {},
                {"error": "invalid_token", "error_description": "The access token expired"},
            )
        if self.faults:
            return self.faults.pop(0)
        limits = {
            "X-RateLimit-Limit-Minute": "400",
            "X-RateLimit-Remaining-Minute": str(self.remaining),
        }
        page = int(req.params.get("page", "1"))
        items = [MAIL, BROKEN] if page == 1 else [MAIL, CHAT]  # MAIL modified between pages
        links: dict[str, Any] = {"self": {"href": "…"}, "first": {"href": "…"}}
        if page == 1:
            links["next"] = {"href": "…page=2"}
        body = {
            "_embedded": {"conversations": items},
            "_links": links,
            "page": {"size": 25, "totalElements": 3, "totalPages": 2, "number": page},
        }
        return 200, limits, body

    def token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if self.refuse or form.get("client_secret") != SECRET:
            return 401, {
                "error": "invalid_client",
                "error_description": "Invalid client credentials",
            }
        self.issued += 1
        token = f"tok-{self.issued}"
        self.valid.add(token)
        return 200, {"token_type": "bearer", "access_token": token, "expires_in": 172800}


@pytest.fixture
def api() -> Any:
    """The fake API, with a token endpoint (POST) beside its GET routes."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import parse_qs, urlsplit

    from ..fakeapi import FakeApi

    state = Api()
    fake = FakeApi(state)

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, headers: dict[str, str], body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/hal+json")
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            req = Request(
                parts.path,
                {k: v[-1] for k, v in parse_qs(parts.query).items()},
                {k.lower(): v for k, v in self.headers.items()},
            )
            fake.requests.append(req)
            self._reply(*fake.handler(req))

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            form = {k: v[-1] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            status, body = state.token(form)
            self._reply(status, {}, body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_port}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield fake, state
    finally:
        server.shutdown()
        server.server_close()


def source(url: str, **options: Any) -> HelpScoutSource:
    os.environ["SLA_TEST_HS_SECRET"] = options.pop("secret", SECRET)
    opts = HelpScoutOptions.model_validate(
        {
            "app_id": APP,
            "app_secret": {"env": "SLA_TEST_HS_SECRET"},
            "base_url": url,
            "mailboxes": {str(MAILBOX): "support"},
            **options,
        }
    )
    return HelpScoutSource(SourceContext("scout", None, ()), opts)


def test_conversations_and_threads_become_events_with_faults_on_the_way(api: Any) -> None:
    fake, state = api
    state.faults = [
        (429, {"X-RateLimit-Retry-After": "13"}, {"error": "Too many requests"}),
        (500, {}, {"error": "oops"}),
        (503, {}, {"error": "oops"}),
    ]
    src = source(fake.url)
    with pytest.raises(RateLimited) as limited:
        src.poll(None, NOW)
    assert limited.value.retry_after == 13
    for status in (500, 503):
        with pytest.raises(SourceError, match=f"server error {status}"):
            src.poll(None, NOW)
    result = src.poll(None, NOW)
    asked = [r.params for r in fake.requests if r.path == "/v2/conversations"][-2]
    assert (
        asked["status"] == "all"
        and asked["sortField"] == "modifiedAt"
        and asked["embed"] == "threads"
    )
    assert asked["mailbox"] == str(MAILBOX)
    kinds = {e.event_id: (e.kind, e.agent) for e in result.events}
    assert kinds == {
        "11:customer_message": (EventKind.CUSTOMER_MESSAGE, None),
        "11:status:open": (EventKind.STATUS_CHANGED, None),
        "12:auto_reply": (EventKind.AUTO_REPLY, None),  # the workflow's auto-reply
        "14:agent_reply": (EventKind.AGENT_REPLY, "Dana Whitfield"),
        "14:status:solved": (EventKind.STATUS_CHANGED, None),  # replied and closed
        "21:customer_message": (EventKind.CUSTOMER_MESSAGE, None),
        "22:auto_reply": (EventKind.AUTO_REPLY, None),  # AI Answers (a system user)
    }
    by_id = {e.event_id: e for e in result.events}
    assert by_id["14:status:solved"].status is Status.SOLVED
    assert by_id["21:customer_message"].channel.value == "chat"
    assert by_id["11:customer_message"].queue == "support"
    assert by_id["11:customer_message"].customer_id == "alice@x.example"
    assert [r.reason for r in result.rejected] == ["bad_item"]  # the one without an id
    assert result.watermark == NOW - timedelta(minutes=2)
    assert json.loads(result.cursor or "{}")["since"] == "2026-11-02T10:35:00Z"


def test_an_expired_token_is_replaced_and_a_refused_secret_is_named_not_shown(api: Any) -> None:
    fake, state = api
    src = source(fake.url)
    src.poll(None, NOW)
    state.valid.clear()  # the API stops taking the token
    with pytest.raises(AuthFailed):
        src.poll(None, NOW)
    assert src.poll(None, NOW).events  # a new token on the next poll
    assert state.issued == 2
    bad = source(fake.url, secret="wrong-secret")
    with pytest.raises(AuthFailed) as refused:
        bad.poll(None, NOW)
    assert APP in str(refused.value) and "wrong-secret" not in str(refused.value)


def test_an_unreadable_cursor_reads_from_the_start_a_backlog_goes_on_and_a_budget_slows(
    api: Any,
) -> None:
    fake, state = api
    state.remaining = 3
    src = source(fake.url, max_pages=1)
    first = src.poll("not a cursor", NOW)
    asked = next(r.params for r in fake.requests if r.path == "/v2/conversations")
    assert asked["modifiedSince"] == (NOW - timedelta(days=7, minutes=2)).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    assert first.more and first.watermark is None and first.next_poll_after == 60.0
    second = src.poll(first.cursor, NOW)
    assert [r.params["page"] for r in fake.requests if r.path == "/v2/conversations"] == ["1", "2"]
    assert not second.more and second.watermark is not None


def test_a_workflow_acknowledges_but_only_a_person_answers(
    api: Any, tmp_path: Path, shipped_config: Config
) -> None:
    fake, _state = api
    result = source(fake.url).poll(None, NOW)
    store = SqlStore(f"sqlite:///{tmp_path / 'hs.db'}")
    store.migrate()
    monitor = Monitor(store, shipped_config, FixedClock(NOW))
    monitor.load()
    monitor.apply_poll("scout", "helpscout", result, 0.0)
    rows = {
        (r["channel"], r["target"]): r
        for r in report(store, shipped_config, NOW, None, None)["targets"]
    }
    assert rows[("email", "auto_ack")]["met"] == 1  # the workflow at 30 s
    first = rows[("email", "first_reply")]
    assert first["met"] == 1 and first["response_seconds"]["p50"] == 20 * 60  # Dana, not the draft
    store.close()
