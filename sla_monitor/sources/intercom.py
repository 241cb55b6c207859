"""`intercom`: Intercom conversations (Messenger chat, email, WhatsApp, social, phone).

Searches conversations updated since the last one seen (`POST /conversations/search`,
`updated_at > …`, oldest update first, 150 a page, `pages.next.starting_after` for the
next), then reads each one's parts (`GET /conversations/{id}`):

- the conversation's `source` is its first message: by a `user` or `lead` ->
  `customer_message`; by an `admin` (an outbound message) -> `agent_reply`; by a `bot` ->
  `auto_reply`;
- a `comment` part by a user or lead -> `customer_message`; by an admin -> `agent_reply`
  named after the admin (an `auto_reply` when the admin is one of `automation_admins`); by
  a `bot` (Fin, Operator, custom bots) -> `auto_reply`. Notes and assignments answer
  nobody;
- `close` -> solved, `open` -> open, `snoozed` -> on hold (`status_changed`);
- the team the conversation is assigned to is the queue (`teams` names them; none:
  `default_queue`); the channel is the source's type (email; conversation/chat -> chat;
  whatsapp, facebook, instagram, twitter, sms -> social; phone_call -> phone); priority
  `priority` -> high.

Requests carry `Intercom-Version`. A 429 honours `Retry-After`; with fewer than
`min_remaining` requests left (`X-RateLimit-Remaining`) the next poll waits a minute. A
paging cursor Intercom no longer takes (400) starts the search again from the last update
seen. The watermark is the start of the poll that read to the last page.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from pydantic import Field

from sla_monitor.domain.events import Channel, Event, EventKind, Status
from sla_monitor.sources._http import JsonClient
from sla_monitor.sources._http import json_object as _obj
from sla_monitor.sources._secrets import SecretRef
from sla_monitor.sources.abc import (
    ApiOptions,
    PollResult,
    Rejected,
    SourceContext,
    SourceError,
)

CHANNELS = {
    "email": Channel.EMAIL,
    "conversation": Channel.CHAT,
    "chat": Channel.CHAT,
    "whatsapp": Channel.SOCIAL,
    "facebook": Channel.SOCIAL,
    "instagram": Channel.SOCIAL,
    "twitter": Channel.SOCIAL,
    "sms": Channel.SOCIAL,
    "phone_call": Channel.PHONE,
}
STATUSES = {"close": Status.SOLVED, "open": Status.OPEN, "snoozed": Status.ON_HOLD}
CUSTOMERS = {"user", "lead", "contact"}


class IntercomOptions(ApiOptions):
    token: SecretRef  # an access token (Developer Hub -> your app -> Authentication)
    base_url: str = "https://api.intercom.io"  # api.eu.intercom.io, api.au.intercom.io
    api_version: str = "2.11"
    teams: dict[str, str] = {}  # team id -> queue name
    default_queue: str = "unassigned"
    automation_admins: list[str] = []  # admins whose replies are an integration's
    max_pages: int = Field(5, ge=1, le=1000)
    min_remaining: int = Field(50, ge=0)


class IntercomSource:
    def __init__(self, ctx: SourceContext, options: IntercomOptions) -> None:
        self.name = ctx.name
        self.options = options
        self.base = options.base_url.rstrip("/")
        self.client = JsonClient(
            headers={
                "Authorization": f"Bearer {options.token.read()}",
                "Intercom-Version": options.api_version,
            },
            timeout=options.timeout,
            credential=f"the access token (from {options.token.describe()})",
        )
        self.automation = set(options.automation_admins)
        self.remaining: int | None = None

    def _budget(self, headers: Any) -> None:
        left = headers.get("x-ratelimit-remaining")
        if left is not None and str(left).isdigit():
            self.remaining = int(left)

    # -- mapping ------------------------------------------------------------------------

    def map_conversation(self, c: dict[str, Any], out: PollResult) -> None:
        cid = str(c["id"])
        source = _obj(c.get("source"))
        channel = CHANNELS.get(str(source.get("type")), Channel.CHAT)
        team = c.get("team_assignee_id")
        queue = self.options.teams.get(str(team), f"team-{team}") if team else None
        contacts = _obj(c.get("contacts")).get("contacts") or []
        first = contacts[0] if contacts and isinstance(contacts[0], dict) else {}
        customer = first.get("external_id") or first.get("id")
        base = Event(
            source=self.name,
            event_id=f"{cid}:source",
            conversation_id=cid,
            kind=EventKind.CUSTOMER_MESSAGE,
            occurred_at=datetime.fromtimestamp(int(c["created_at"]), UTC),
            channel=channel,
            queue=queue or self.options.default_queue,
            customer_id=str(customer) if customer else None,
            priority="high" if c.get("priority") == "priority" else None,
        )
        kind, agent = self._who(_obj(source.get("author")))
        out.events.append(replace(base, kind=kind, agent=agent))
        parts = _obj(c.get("conversation_parts")).get("conversation_parts") or []
        for p in parts:
            if not isinstance(p, dict):
                continue
            try:
                pid, at = p["id"], datetime.fromtimestamp(int(p["created_at"]), UTC)
            except (KeyError, TypeError, ValueError) as exc:
                why = f"conversation {cid} part {p.get('id')}: {exc!r}"
                out.rejected.append(Rejected("bad_item", why, json.dumps(p)[:20000]))
                continue
            ptype = str(p.get("part_type"))
            part = replace(base, event_id=f"{cid}:{pid}", occurred_at=at)
            if ptype == "comment":
                kind, agent = self._who(_obj(p.get("author")))
                out.events.append(replace(part, kind=kind, agent=agent))
            elif ptype in STATUSES:
                out.events.append(
                    replace(part, kind=EventKind.STATUS_CHANGED, status=STATUSES[ptype])
                )

    def _who(self, author: dict[str, Any]) -> tuple[EventKind, str | None]:
        kind = str(author.get("type"))
        if kind in CUSTOMERS:
            return EventKind.CUSTOMER_MESSAGE, None
        if kind == "admin" and str(author.get("id")) not in self.automation:
            return EventKind.AGENT_REPLY, author.get("name") or author.get("email")
        return EventKind.AUTO_REPLY, None  # a bot (Fin, Operator) or an integration

    # -- polling ------------------------------------------------------------------------

    def _search(self, since: int, after: str | None) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "query": {"field": "updated_at", "operator": ">", "value": since},
            "pagination": {"per_page": 150},
            "sort": {"field": "updated_at", "order": "ascending"},
        }
        if after:
            payload["pagination"]["starting_after"] = after
        body, headers = self.client.post_with_headers(f"{self.base}/conversations/search", payload)
        self._budget(headers)
        if not isinstance(body, dict) or not isinstance(body.get("conversations"), list):
            raise SourceError("unexpected response from /conversations/search: no conversations")
        return body

    def poll(self, cursor: str | None, now: datetime) -> PollResult:
        first = int((now - self.options.start).timestamp())
        try:
            state = json.loads(cursor) if cursor else {}
            since, after = int(state.get("since", first)), state.get("after")
        except (ValueError, TypeError, AttributeError):
            since, after = first, None  # unreadable: from `start` again (ids de-duplicate)
        result = PollResult()
        newest = since
        query_from = max(0, since - int(self.options.overlap.total_seconds()))
        for _ in range(self.options.max_pages):
            try:
                body = self._search(query_from, after)
            except SourceError as exc:
                if exc.status != 400 or after is None:
                    raise
                after = None  # a paging cursor no longer taken: search again from `since`
                body = self._search(query_from, None)
            for listed in body["conversations"]:
                if not isinstance(listed, dict) or listed.get("id") is None:
                    why = "a conversation without an id"
                    result.rejected.append(Rejected("bad_item", why, json.dumps(listed)[:20000]))
                    continue
                full, headers = self.client.get_with_headers(
                    f"{self.base}/conversations/{listed['id']}", {"display_as": "plaintext"}
                )
                self._budget(headers)
                try:
                    self.map_conversation(_obj(full), result)
                except (KeyError, TypeError, ValueError) as exc:
                    why = f"conversation {listed['id']}: {exc!r}"
                    result.rejected.append(Rejected("bad_item", why, json.dumps(full)[:20000]))
                    continue
                newest = max(newest, int(listed.get("updated_at") or 0))
            nxt = _obj(_obj(body.get("pages")).get("next"))
            after = nxt.get("starting_after")
            if not after:
                break
        else:
            result.more = True
        if result.more:
            result.cursor = json.dumps({"since": since, "after": after})
        else:
            result.cursor = json.dumps({"since": newest})
            result.watermark = now - self.options.overlap
        if self.remaining is not None and self.remaining < self.options.min_remaining:
            result.next_poll_after = 60.0
        return result

    def close(self) -> None:
        self.client.close()
