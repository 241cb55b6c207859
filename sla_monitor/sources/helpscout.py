"""`helpscout`: Help Scout mailboxes (email, chat, phone) through the Mailbox API 2.0.

Signs in with OAuth 2.0 client credentials (an app created under Your Profile → My Apps:
its App ID and App Secret; the token endpoint is `https://api.helpscout.net/v2/oauth2/
token`), then lists conversations modified since the last poll (`GET /v2/conversations?
status=all&modifiedSince=…&sortField=modifiedAt&sortOrder=asc&embed=threads&page=N`, HAL
pages with `_links.next`) with their threads embedded:

- a thread of `type` `customer` (or created by a `customer`) -> `customer_message`;
- a `message`, `chat` or `phone` thread created by a `user` -> `agent_reply` named after
  the user — unless a workflow sent it (`action.type` `automatic-workflow`), an AI or bot
  user wrote it (`createdBy.type` `system_user`), or the user is one of
  `automation_users` -> `auto_reply`;
- notes (`note`), forwards and line items are not replies; a thread whose `status` is not
  `nochange` changes the conversation's status (`active` open, `pending` pending, `closed`
  solved, `spam` closed);
- the conversation's `type` is its channel (email; chat -> chat; phone -> phone); its
  mailbox is the queue (`mailboxes` names them); the customer is the primary customer.

A 429 honours `Retry-After` (or `X-RateLimit-Retry-After`); with fewer than
`min_remaining` requests left in the minute (`X-RateLimit-Remaining-Minute`) the next poll
waits a minute. Each poll re-reads `overlap` before the last modification seen (events are
de-duplicated by id); the watermark is the start of the poll that read to the last page.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from datetime import datetime
from typing import Any

from pydantic import Field

from sla_monitor.domain.events import Channel, Event, EventKind, Status
from sla_monitor.domain.timeutil import iso, parse_instant
from sla_monitor.sources._http import JsonClient
from sla_monitor.sources._http import json_object as _obj
from sla_monitor.sources._oauth import AccessTokens, OAuth2Options
from sla_monitor.sources._secrets import SecretRef
from sla_monitor.sources.abc import (
    ApiOptions,
    AuthFailed,
    PollResult,
    Rejected,
    SourceContext,
    SourceError,
)

API = "https://api.helpscout.net"
CHANNELS = {"email": Channel.EMAIL, "chat": Channel.CHAT, "phone": Channel.PHONE}
STATUSES = {
    "active": Status.OPEN,
    "open": Status.OPEN,
    "pending": Status.PENDING,
    "closed": Status.SOLVED,
    "spam": Status.CLOSED,
}
PERSONAL = {"message", "chat", "phone", "reply"}  # thread types a person can answer with


class HelpScoutOptions(ApiOptions):
    app_id: str = Field(description="the OAuth app's App ID (client id)")
    app_secret: SecretRef
    base_url: str = API  # a proxy, or a test server
    mailboxes: dict[str, str] = {}  # mailbox id -> queue name (empty: every mailbox)
    automation_users: list[int] = []  # users whose replies are an integration's
    max_pages: int = Field(10, ge=1, le=1000)  # 25 conversations a page
    min_remaining: int = Field(20, ge=0)


class HelpScoutSource:
    def __init__(self, ctx: SourceContext, options: HelpScoutOptions) -> None:
        self.name = ctx.name
        self.options = options
        self.base = options.base_url.rstrip("/")
        self.tokens = AccessTokens(
            OAuth2Options(
                token_url=f"{self.base}/v2/oauth2/token",
                client_id=options.app_id,
                client_secret=options.app_secret,
            ),
            options.timeout,
        )
        self.client = JsonClient(timeout=options.timeout, credential="the app's access token")
        self.automation = {int(u) for u in options.automation_users}
        self.remaining: int | None = None

    def _get(self, url: str, params: dict[str, Any] | None = None) -> Any:
        self.client.client.headers["Authorization"] = f"Bearer {self.tokens.token()}"
        try:
            body, headers = self.client.get_with_headers(url, params)
        except AuthFailed:
            self.tokens.forget()  # expired early or revoked: a new token next poll
            raise
        left = headers.get("x-ratelimit-remaining-minute")
        if left is not None and left.isdigit():
            self.remaining = int(left)
        return body

    def _queue(self, mailbox: Any) -> str:
        return self.options.mailboxes.get(str(mailbox), f"mailbox-{mailbox}")

    # -- mapping ------------------------------------------------------------------------

    def map_conversation(self, c: dict[str, Any], out: PollResult) -> None:
        cid = str(c["id"])
        channel = CHANNELS.get(str(c.get("type")), Channel.EMAIL)
        queue = self._queue(c.get("mailboxId"))
        primary = _obj(c.get("primaryCustomer"))
        customer = primary.get("email") or (str(primary["id"]) if primary.get("id") else None)
        embedded = _obj(c.get("_embedded"))
        threads = [t for t in embedded.get("threads") or [] if isinstance(t, dict)]
        for t in sorted(threads, key=lambda x: (str(x.get("createdAt")), x.get("id") or 0)):
            try:
                tid, at = t["id"], parse_instant(t["createdAt"])
            except (KeyError, TypeError, ValueError) as exc:
                why = f"conversation {cid} thread {t.get('id')}: {exc!r}"
                out.rejected.append(Rejected("bad_item", why, json.dumps(t)[:20000]))
                continue
            if t.get("state") not in (None, "published"):
                continue  # drafts and hidden threads reached nobody
            kind = self._kind(t)
            base = Event(
                source=self.name,
                event_id=str(tid),
                conversation_id=cid,
                kind=EventKind.CUSTOMER_MESSAGE,
                occurred_at=at,
                channel=channel,
                queue=queue,
                customer_id=customer,
            )
            if kind is not None:
                by = _obj(t.get("createdBy"))
                name = " ".join(str(by.get(k) or "") for k in ("first", "last")).strip()
                agent = (name or by.get("email")) if kind is EventKind.AGENT_REPLY else None
                out.events.append(
                    replace(base, event_id=f"{tid}:{kind.value}", kind=kind, agent=agent)
                )
            status = STATUSES.get(str(t.get("status")))
            if status is not None:
                eid = f"{tid}:status:{status.value}"
                out.events.append(
                    replace(base, event_id=eid, kind=EventKind.STATUS_CHANGED, status=status)
                )

    def _kind(self, t: dict[str, Any]) -> EventKind | None:
        by = _obj(t.get("createdBy"))
        kind_of_author = str(by.get("type") or "")
        ttype = str(t.get("type") or "")
        action = _obj(t.get("action"))
        if ttype == "customer" or (ttype in PERSONAL and kind_of_author == "customer"):
            return EventKind.CUSTOMER_MESSAGE
        if ttype not in PERSONAL:
            return None  # a note, a forward, a line item: nobody was answered
        automatic = (
            str(action.get("type")) == "automatic-workflow"
            or kind_of_author == "system_user"
            or (by.get("id") is not None and int(by["id"]) in self.automation)
        )
        return EventKind.AUTO_REPLY if automatic else EventKind.AGENT_REPLY

    # -- polling ------------------------------------------------------------------------

    def poll(self, cursor: str | None, now: datetime) -> PollResult:
        try:
            state = json.loads(cursor) if cursor else {}
            since = parse_instant(state["since"]) if "since" in state else now - self.options.start
            page = int(state.get("page", 1))
        except (ValueError, KeyError, TypeError):
            since, page = now - self.options.start, 1  # unreadable: read again from start
        result = PollResult()
        newest = since
        for _ in range(self.options.max_pages):
            params: dict[str, Any] = {
                "status": "all",
                "modifiedSince": (since - self.options.overlap).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "sortField": "modifiedAt",
                "sortOrder": "asc",
                "embed": "threads",
                "page": page,
            }
            if self.options.mailboxes:
                params["mailbox"] = ",".join(self.options.mailboxes)
            body = self._get(f"{self.base}/v2/conversations", params)
            if not isinstance(body, dict):
                raise SourceError("unexpected response from /v2/conversations: not an object")
            embedded = _obj(body.get("_embedded"))
            for c in embedded.get("conversations") or []:
                if not isinstance(c, dict) or c.get("id") is None:
                    why = f"conversation without an id on page {page}"
                    result.rejected.append(Rejected("bad_item", why, json.dumps(c)[:20000]))
                    continue
                self.map_conversation(c, result)
                modified = c.get("userUpdatedAt") or c.get("modifiedAt") or c.get("createdAt")
                with contextlib.suppress(ValueError):
                    newest = max(newest, parse_instant(str(modified)))
            links = _obj(body.get("_links"))
            if not links.get("next"):
                break
            page += 1
        else:
            result.more = True
        if result.more:
            result.cursor = json.dumps({"since": iso(since), "page": page})
        else:
            result.cursor = json.dumps({"since": iso(newest), "page": 1})
            result.watermark = now - self.options.overlap
        if self.remaining is not None and self.remaining < self.options.min_remaining:
            result.next_poll_after = 60.0
        return result

    def close(self) -> None:
        self.client.close()
        self.tokens.close()
