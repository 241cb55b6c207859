"""`zendesk`: email, voice and social through one Zendesk Support account.

Reads the incremental ticket event export with comments
(`GET /api/v2/incremental/ticket_events.json?start_time=…&include=comment_events`).
Each item is one ticket update (an audit) with its `child_events`:

- a public comment by an **agent or admin** (roles looked up with `users/show_many` and
  remembered in the cursor) -> `agent_reply`; by an **end user** — the requester or anyone
  CC'd — -> `customer_message`;
- a comment made by a trigger or automation (`via.channel == "rule"`), or by one of the
  configured `automation_users` (an integration's API user) -> `auto_reply`;
- private notes and merge comments (`via.channel == "merge"`, or `via.source.rel ==
  "merge"`: "Request #12 was closed and merged into this request") are not replies at all;
- a notification sent by a trigger (`Notification` events, `via.channel == "rule"`) ->
  `auto_reply` (the "we received your request" e-mail);
- status changes -> `status_changed` (`new`/`open` -> open, `hold` -> on_hold, ...);
- priority changes -> `priority_changed`; the group is the queue.

The channel comes from the ticket's first audit (`via.channel`): mail/email/web -> email;
voice, phone_call_inbound, voicemail -> phone; twitter, facebook, instagram, whatsapp,
any_channel, native_messaging -> social; chat -> chat. What the connector must remember
per ticket (channel, group, requester) travels in its cursor.

The export allows 10 requests a minute: one request per poll at most every
`min_request_interval`, a backlog read in further polls spaced the same way, and 429s
honour `Retry-After`. Each poll re-reads a small `overlap` before the last end time (events
are de-duplicated by id), and the watermark is the export's `end_time`.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

import httpx
from pydantic import Field

from sla_monitor.domain.events import Channel, Event, EventKind, Status
from sla_monitor.domain.timeutil import parse_instant
from sla_monitor.sources._http import JsonClient
from sla_monitor.sources._secrets import SecretRef
from sla_monitor.sources.abc import (
    ApiOptions,
    PollResult,
    Rejected,
    SourceContext,
    SourceError,
)

CHANNELS = {
    "mail": Channel.EMAIL,
    "email": Channel.EMAIL,
    "web": Channel.EMAIL,
    "web form": Channel.EMAIL,
    "web_form": Channel.EMAIL,
    "api": Channel.EMAIL,
    "web service": Channel.EMAIL,
    "voice": Channel.PHONE,
    "phone_call_inbound": Channel.PHONE,
    "voicemail": Channel.PHONE,
    "phone_call_outbound": Channel.PHONE,
    "sms": Channel.SOCIAL,
    "twitter": Channel.SOCIAL,
    "facebook": Channel.SOCIAL,
    "instagram": Channel.SOCIAL,
    "instagram_dm": Channel.SOCIAL,
    "whatsapp": Channel.SOCIAL,
    "any_channel": Channel.SOCIAL,
    "native_messaging": Channel.SOCIAL,
    "line": Channel.SOCIAL,
    "wechat": Channel.SOCIAL,
    "telegram": Channel.SOCIAL,
    "chat": Channel.CHAT,
    "chat_transcript": Channel.CHAT,
}
STATUSES = {
    "new": Status.OPEN,
    "open": Status.OPEN,
    "pending": Status.PENDING,
    "hold": Status.ON_HOLD,
    "solved": Status.SOLVED,
    "closed": Status.CLOSED,
}
PRIORITIES = {"low", "normal", "high", "urgent"}
MAX_TICKETS = 50_000  # tickets remembered in the cursor (most recently updated kept)
MAX_USERS = 50_000  # user roles remembered in the cursor
AGENT_ROLES = frozenset({"agent", "admin"})


class ZendeskOptions(ApiOptions):
    subdomain: str | None = None
    base_url: str | None = None  # instead of subdomain (e.g. a proxy)
    email: str = Field(description="the agent whose API token is used")
    token: SecretRef
    min_request_interval: float = Field(6.0, ge=0)  # 10 requests/minute
    groups: dict[str, str] = {}  # group id -> queue name
    default_queue: str = "unassigned"
    default_channel: Channel = Channel.EMAIL
    automation_users: list[int] = []  # users whose comments are an integration's, not a person's

    def url(self) -> str:
        if self.base_url:
            return self.base_url.rstrip("/")
        if not self.subdomain:
            raise ValueError("give subdomain (or base_url)")
        return f"https://{self.subdomain}.zendesk.com"


def _is_merge(via: Any) -> bool:
    if not isinstance(via, dict):
        return str(via).lower() == "merge"
    source = via.get("source")
    rel = source.get("rel") if isinstance(source, dict) else None
    return _via_channel(via) == "merge" or str(rel).lower() == "merge"


def _via_channel(via: Any) -> str | None:
    if isinstance(via, dict):
        ch = via.get("channel")
        return str(ch).lower() if ch is not None else None
    return str(via).lower() if via else None


class ZendeskSource:
    def __init__(self, ctx: SourceContext, options: ZendeskOptions) -> None:
        self.name = ctx.name
        self.options = options
        self.base = options.url()
        self.names: OrderedDict[str, str] = OrderedDict()  # agents' names, by user id
        token = options.token.read()
        self.client = JsonClient(
            timeout=options.timeout,
            auth=httpx.BasicAuth(f"{options.email}/token", token),
            credential=f"the API token of {options.email} (from {options.token.describe()})",
        )
        self._last_request = 0.0
        self.automation_users = {int(u) for u in options.automation_users}

    # -- mapping ------------------------------------------------------------------------

    def _queue(self, group: Any) -> str:
        if group in (None, ""):
            return self.options.default_queue
        return self.options.groups.get(str(group), f"group-{group}")

    def map_update(
        self,
        te: dict[str, Any],
        tickets: OrderedDict[str, dict[str, Any]],
        out: PollResult,
        roles: dict[str, str] | None = None,
    ) -> None:
        """One ticket update (audit) and its child events -> normalized events."""
        try:
            tid = str(te["ticket_id"])
            when = (
                datetime.fromtimestamp(int(te["timestamp"]), UTC)
                if "timestamp" in te
                else parse_instant(te["created_at"])
            )
        except (KeyError, TypeError, ValueError) as exc:
            out.rejected.append(
                Rejected(
                    "bad_item", f"ticket event {te.get('id')}: {exc!r}", json.dumps(te)[:20000]
                )
            )
            return
        ticket = tickets.pop(tid, None) or {}
        tickets[tid] = ticket  # most recently updated last
        audit_via = _via_channel(te.get("via"))
        if "channel" not in ticket:
            ch = CHANNELS.get(audit_via or "")
            ticket["channel"] = (ch or self.options.default_channel).value
        children = [c for c in te.get("child_events") or [] if isinstance(c, dict)]
        # ticket fields first: the requester and group apply to this update's comments
        for c in children:
            if c.get("event_type") in ("Create", "Change"):
                if "requester_id" in c:
                    ticket["requester"] = str(c["requester_id"])
                if "group_id" in c:
                    ticket["queue"] = self._queue(c["group_id"])
        queue = ticket.get("queue", self.options.default_queue)
        requester = ticket.get("requester")

        def emit(child: dict[str, Any], kind: EventKind, **kw: Any) -> None:
            at = when
            if child.get("created_at"):
                with contextlib.suppress(ValueError):
                    at = parse_instant(child["created_at"])
            out.events.append(
                Event(
                    source=self.name,
                    event_id=f"{child.get('id') or te.get('id')}:{kind.value}",
                    conversation_id=tid,
                    kind=kind,
                    occurred_at=at,
                    channel=Channel(ticket["channel"]),
                    queue=queue,
                    customer_id=requester,
                    **kw,
                )
            )

        for c in children:
            etype = c.get("event_type") or c.get("type")
            by_rule = _via_channel(c.get("via")) == "rule" or audit_via == "rule"
            if etype == "Comment":
                if not c.get("public", True):
                    continue  # an internal note acknowledges nobody
                if _is_merge(c.get("via")) or _is_merge(te.get("via")):
                    continue  # "merged into this request": nobody wrote to anybody
                author = str(c.get("author_id")) if c.get("author_id") is not None else None
                role = (roles or {}).get(author or "")
                if by_rule or (author and int(author) in self.automation_users):
                    emit(c, EventKind.AUTO_REPLY)
                elif role in AGENT_ROLES:
                    emit(c, EventKind.AGENT_REPLY, agent=self._agent_name(author))
                elif role == "end-user":  # the requester, or a colleague CC'd on the ticket
                    if requester is None:
                        ticket["requester"] = requester = author
                    emit(c, EventKind.CUSTOMER_MESSAGE)
                elif requester is None:
                    out.rejected.append(
                        Rejected(
                            "unknown_requester",
                            f"ticket {tid}: comment {c.get('id')} by user {author}, whose role "
                            "is unknown, on a ticket created before the export start; raise "
                            "`start` to include it",
                            json.dumps(c)[:20000],
                        )
                    )
                elif author == requester:
                    emit(c, EventKind.CUSTOMER_MESSAGE)
                else:
                    emit(c, EventKind.AGENT_REPLY)
            elif etype == "Notification" and by_rule:
                emit(c, EventKind.AUTO_REPLY)
            elif etype in ("Create", "Change"):
                if "status" in c and str(c["status"]) in STATUSES:
                    emit(c, EventKind.STATUS_CHANGED, status=STATUSES[str(c["status"])])
                if "priority" in c and str(c["priority"]) in PRIORITIES:
                    emit(c, EventKind.PRIORITY_CHANGED, priority=str(c["priority"]))
        while len(tickets) > MAX_TICKETS:
            tickets.popitem(last=False)

    # -- polling ----------------------------------------------------------------------------

    def poll(self, cursor: str | None, now: datetime) -> PollResult:
        state = json.loads(cursor) if cursor else {}
        wait = self.options.min_request_interval - (time.monotonic() - self._last_request)
        if wait > 0:  # stay inside the export's rate limit
            return PollResult(cursor=cursor, more=True, next_poll_after=wait)
        tickets: OrderedDict[str, dict[str, Any]] = OrderedDict(state.get("tickets", {}))
        if "end_time" in state:
            start = max(0, int(state["end_time"]) - int(self.options.overlap.total_seconds()))
        else:
            start = int((now - self.options.start).timestamp())
        self._last_request = time.monotonic()
        try:
            body = self.client.get(
                f"{self.base}/api/v2/incremental/ticket_events.json",
                {"start_time": start, "include": "comment_events"},
            )
        except SourceError as exc:
            if exc.status == 422:  # start_time too recent: nothing new yet
                return PollResult(cursor=cursor, next_poll_after=60.0)
            raise
        result = PollResult()
        updates = body.get("ticket_events") if isinstance(body, dict) else None
        if not isinstance(updates, list) or "end_time" not in body:
            raise SourceError("unexpected response: no ticket_events list or end_time")
        roles: OrderedDict[str, str] = OrderedDict(state.get("roles", {}))
        items = [u for u in updates if isinstance(u, dict)]
        self._learn_roles(items, roles)
        # pages are time-ordered, but order within a page is not relied on
        for te in sorted(items, key=lambda u: (u.get("timestamp") or 0, u.get("id") or 0)):
            self.map_update(te, tickets, result, roles)
        end_time = max(int(body["end_time"]), int(state.get("end_time", 0)))
        while len(roles) > MAX_USERS:
            roles.popitem(last=False)
        state = {"end_time": end_time, "tickets": tickets, "roles": roles}
        result.cursor = json.dumps(state)
        result.watermark = datetime.fromtimestamp(end_time, UTC)
        if not body.get("end_of_stream", True):
            result.more = True
            result.next_poll_after = self.options.min_request_interval
        return result

    def _learn_roles(self, updates: list[dict[str, Any]], roles: OrderedDict[str, str]) -> None:
        """Look up the roles of comment authors not seen before (100 users a request)."""
        wanted = sorted(
            {
                str(c["author_id"])
                for te in updates
                for c in te.get("child_events") or []
                if isinstance(c, dict)
                and (c.get("event_type") or c.get("type")) == "Comment"
                and c.get("public", True)
                and c.get("author_id") is not None
                # roles are kept in the cursor, names only here: look an agent up again
                and (
                    str(c["author_id"]) not in roles
                    or (
                        roles[str(c["author_id"])] in AGENT_ROLES
                        and str(c["author_id"]) not in self.names
                    )
                )
            }
        )
        for i in range(0, len(wanted), 100):
            ids = wanted[i : i + 100]
            body = self.client.get(
                f"{self.base}/api/v2/users/show_many.json", {"ids": ",".join(ids)}
            )
            users = body.get("users") if isinstance(body, dict) else None
            if not isinstance(users, list):
                raise SourceError("unexpected response from users/show_many: no users list")
            for u in users:
                if isinstance(u, dict) and u.get("id") is not None and u.get("role"):
                    roles[str(u["id"])] = str(u["role"])
                    if u["role"] in AGENT_ROLES and u.get("name"):  # for reports per person
                        self.names[str(u["id"])] = str(u["name"])
                        while len(self.names) > MAX_USERS:
                            self.names.popitem(last=False)

    def _agent_name(self, author: str | None) -> str | None:
        """The agent's name where looked up in this process, else their user id."""
        if author is None:
            return None
        return self.names.get(author) or f"user {author}"

    def close(self) -> None:
        self.client.close()
