"""`freshdesk`: email, portal, phone, chat and social through one Freshdesk desk.

Reads tickets updated since the last poll (`GET /api/v2/tickets?updated_since=…&order_by=
updated_at&order_type=asc&per_page=100&page=N`, the next page named by the `Link` header)
and, for each, its conversations (`GET /api/v2/tickets/{id}/conversations`, paged the
same way):

- the ticket itself is the customer's first message (`created_at`, by `requester_id`),
  except an outbound e-mail (`source` 10), which an agent started;
- a conversation marked `private` is a note: it acknowledges nobody;
- by one of the desk's agents (`GET /api/v2/agents`, looked up once a poll) -> an
  `agent_reply` named after the agent, or an `auto_reply` when the agent is one of the
  configured `automation_agents` (the API user of an integration or a scenario/bot
  account); by anyone else (the requester, a CC'd contact) -> a `customer_message`
  (`incoming` decides when the author's role is unknown);
- a status that differs from the one last seen -> `status_changed` at `updated_at` (2 open,
  3 pending, 4 resolved -> solved, 5 closed; custom statuses -> open); a priority likewise
  -> `priority_changed` (1 low, 2 medium -> normal, 3 high, 4 urgent);
- the ticket's `source` is its channel (1 email, 2 portal, 9 feedback widget, 10 outbound
  e-mail -> email; 3 phone; 7 chat, 12 bot -> chat; 5 Twitter, 6 Facebook, 13 WhatsApp ->
  social); its group is the queue (`groups` names them).

Paging and rate limits: a poll reads at most `max_pages` ticket pages; a backlog is read in
further polls at once. A 429 honours `Retry-After`; with fewer than `min_remaining`
requests left in the plan's minute (`X-Ratelimit-Remaining`), the next poll waits a
minute. The list is read again from `overlap` before the last ticket seen (events are
de-duplicated by id); the watermark is the start of the poll that found nothing newer.
"""

from __future__ import annotations

import json
import re
import time
from collections import OrderedDict
from datetime import datetime
from typing import Any

import httpx
from pydantic import Field, model_validator

from sla_monitor.domain.events import Channel, Event, EventKind, Status
from sla_monitor.domain.timeutil import iso, parse_instant
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
    1: Channel.EMAIL,  # email
    2: Channel.EMAIL,  # portal
    3: Channel.PHONE,
    5: Channel.SOCIAL,  # Twitter
    6: Channel.SOCIAL,  # Facebook
    7: Channel.CHAT,
    9: Channel.EMAIL,  # feedback widget
    10: Channel.EMAIL,  # outbound e-mail
    12: Channel.CHAT,  # bot
    13: Channel.SOCIAL,  # WhatsApp
}
OUTBOUND = 10
STATUSES = {2: Status.OPEN, 3: Status.PENDING, 4: Status.SOLVED, 5: Status.CLOSED}
PRIORITIES = {1: "low", 2: "normal", 3: "high", 4: "urgent"}
AGENTS_TTL = 600.0  # seconds between reads of the agent list
MAX_TICKETS = 50_000  # last status and priority remembered per ticket, in the cursor
_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


class FreshdeskOptions(ApiOptions):
    domain: str | None = Field(None, description="acme for acme.freshdesk.com")
    base_url: str | None = None  # instead of domain (e.g. a proxy)
    api_key: SecretRef
    groups: dict[str, str] = {}  # group id -> queue name
    default_queue: str = "unassigned"
    default_channel: Channel = Channel.EMAIL
    automation_agents: list[int] = []  # agents whose replies are an integration's or a bot's
    max_pages: int = Field(10, ge=1, le=300)  # ticket pages a poll reads (100 tickets each)
    min_remaining: int = Field(20, ge=0)  # fewer requests left this minute: wait a minute

    @model_validator(mode="after")
    def _an_address(self) -> FreshdeskOptions:
        if not (self.domain or self.base_url):
            raise ValueError("give domain (acme for acme.freshdesk.com) or base_url")
        return self

    def url(self) -> str:
        if self.base_url:
            return self.base_url.rstrip("/")
        if not self.domain:
            raise ValueError("give domain (or base_url)")
        return f"https://{self.domain}.freshdesk.com"


def _next_link(headers: httpx.Headers) -> str | None:
    found = _NEXT.search(headers.get("link", ""))
    return found.group(1) if found else None


class FreshdeskSource:
    def __init__(self, ctx: SourceContext, options: FreshdeskOptions) -> None:
        self.name = ctx.name
        self.options = options
        self.base = options.url()
        key = options.api_key.read()
        self.client = JsonClient(
            timeout=options.timeout,
            auth=httpx.BasicAuth(key, "X"),  # the API key is the user name
            credential=f"the API key (from {options.api_key.describe()})",
        )
        self.automation = {int(a) for a in options.automation_agents}
        self.remaining: int | None = None  # requests left in the plan's minute
        self._agents: dict[int, str] = {}
        self._agents_read = -AGENTS_TTL

    def _get(self, url: str, params: dict[str, Any] | None = None) -> tuple[Any, str | None]:
        body, headers = self.client.get_with_headers(url, params)
        left = headers.get("x-ratelimit-remaining")
        if left is not None and left.isdigit():
            self.remaining = int(left)
        return body, _next_link(headers)

    def _pages(self, url: str, params: dict[str, Any] | None = None) -> list[Any]:
        """Every item of a paged list (conversations: a ticket has a handful of pages)."""
        items: list[Any] = []
        next_url: str | None = url
        while next_url:
            body, next_url = self._get(next_url, params)
            params = None  # the next link carries them
            if not isinstance(body, list):
                raise SourceError(f"unexpected response from {url}: not a list")
            items += body
        return items

    def agents(self) -> dict[int, str]:
        """The desk's agents: id -> name (who is the team), read again every few minutes."""
        if time.monotonic() - self._agents_read < AGENTS_TTL:
            return self._agents
        out: dict[int, str] = {}
        for a in self._pages(f"{self.base}/api/v2/agents", {"per_page": 100}):
            if isinstance(a, dict) and a.get("id") is not None:
                contact = a.get("contact")
                name = contact.get("name") if isinstance(contact, dict) else None
                out[int(a["id"])] = str(name or f"agent {a['id']}")
        self._agents, self._agents_read = out, time.monotonic()
        return out

    def _queue(self, group: Any) -> str:
        if group in (None, ""):
            return self.options.default_queue
        return self.options.groups.get(str(group), f"group-{group}")

    # -- mapping ------------------------------------------------------------------------

    def map_ticket(
        self,
        t: dict[str, Any],
        conversations: list[Any],
        known: dict[str, Any],
        agents: dict[int, str],
        out: PollResult,
    ) -> None:
        """One ticket, its conversations and what was last seen of it -> events."""
        tid = str(t["id"])
        created, updated = parse_instant(t["created_at"]), parse_instant(t["updated_at"])
        channel = CHANNELS.get(int(t.get("source") or 0), self.options.default_channel)
        queue = self._queue(t.get("group_id"))
        requester = str(t["requester_id"]) if t.get("requester_id") is not None else None
        priority = PRIORITIES.get(int(t.get("priority") or 0))

        def emit(eid: str, kind: EventKind, at: datetime, **kw: Any) -> None:
            out.events.append(
                Event(
                    source=self.name,
                    event_id=f"{tid}:{eid}",
                    conversation_id=tid,
                    kind=kind,
                    occurred_at=at,
                    channel=channel,
                    queue=queue,
                    customer_id=requester,
                    priority=kw.pop("priority", priority),
                    **kw,
                )
            )

        if int(t.get("source") or 0) == OUTBOUND:  # an agent wrote first: nobody is waiting
            by = agents.get(_int(t, "responder_id") or 0)
            emit("created", EventKind.AGENT_REPLY, created, agent=by)
        else:
            emit("created", EventKind.CUSTOMER_MESSAGE, created)
        for c in conversations:
            try:
                cid, at = c["id"], parse_instant(c["created_at"])
            except (KeyError, TypeError, ValueError) as exc:
                out.rejected.append(
                    Rejected(
                        "bad_item",
                        f"ticket {tid} conversation {c.get('id') if isinstance(c, dict) else '?'}: "
                        f"{exc!r}",
                        json.dumps(c)[:20000],
                    )
                )
                continue
            if c.get("private"):
                continue  # a note acknowledges nobody
            author = _int(c, "user_id")
            if author in agents and not c.get("incoming"):
                kind = EventKind.AUTO_REPLY if author in self.automation else EventKind.AGENT_REPLY
                name = agents[author] if kind is EventKind.AGENT_REPLY else None
                emit(f"conv:{cid}", kind, at, agent=name)
            elif author is not None and author in self.automation:
                emit(f"conv:{cid}", EventKind.AUTO_REPLY, at)
            elif c.get("incoming") or author not in agents:
                emit(f"conv:{cid}", EventKind.CUSTOMER_MESSAGE, at)
        status = STATUSES.get(int(t.get("status") or 2), Status.OPEN)
        seen = known.get(tid, {})
        if status.value != seen.get("status", Status.OPEN.value):
            emit(
                f"status:{status.value}:{iso(updated)}",
                EventKind.STATUS_CHANGED,
                updated,
                status=status,
            )
        if priority and seen.get("priority") not in (None, priority):
            emit(f"priority:{priority}:{iso(updated)}", EventKind.PRIORITY_CHANGED, updated)
        known[tid] = {"status": status.value, "priority": priority}

    # -- polling ------------------------------------------------------------------------

    def poll(self, cursor: str | None, now: datetime) -> PollResult:
        try:
            state = json.loads(cursor) if cursor else {}
            since = parse_instant(state["since"]) if "since" in state else now - self.options.start
            page = int(state.get("page", 1))
            known: OrderedDict[str, Any] = OrderedDict(state.get("tickets", {}))
        except (ValueError, KeyError, TypeError):
            # a cursor this version cannot read: read again from `start` (events are
            # de-duplicated by id, so nothing is counted twice)
            since, page, known = now - self.options.start, 1, OrderedDict()
        result = PollResult()
        agents = self.agents()
        after = since - self.options.overlap
        newest = since
        for _ in range(self.options.max_pages):
            body, next_url = self._get(
                f"{self.base}/api/v2/tickets",
                {
                    "updated_since": after.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "order_by": "updated_at",
                    "order_type": "asc",
                    "per_page": 100,
                    "page": page,
                },
            )
            if not isinstance(body, list):
                raise SourceError("unexpected response from /api/v2/tickets: not a list")
            # in order of update (the list is, but order within a page is not relied on)
            for t in sorted(
                (x for x in body if isinstance(x, dict)), key=lambda x: str(x.get("updated_at"))
            ):
                try:
                    tid = int(t["id"])
                    updated = parse_instant(t["updated_at"])
                    parse_instant(t["created_at"])
                except (KeyError, TypeError, ValueError) as exc:
                    result.rejected.append(
                        Rejected(
                            "bad_item", f"ticket {t.get('id')}: {exc!r}", json.dumps(t)[:20000]
                        )
                    )
                    continue
                conversations = self._pages(
                    f"{self.base}/api/v2/tickets/{tid}/conversations", {"per_page": 100}
                )
                known[str(tid)] = known.pop(str(tid), {})  # most recently updated last
                self.map_ticket(t, conversations, known, agents, result)
                newest = max(newest, updated)
            if next_url is None:
                break
            page += 1
        else:  # max_pages read and more to come: carry on at once, from the next page
            result.more = True
        while len(known) > MAX_TICKETS:
            known.popitem(last=False)
        if result.more:
            state = {"since": iso(since), "page": page, "tickets": known}
        else:
            state = {"since": iso(newest), "page": 1, "tickets": known}
            # everything updated before this poll began has been read
            result.watermark = now - self.options.overlap
        result.cursor = json.dumps(state)
        if self.remaining is not None and self.remaining < self.options.min_remaining:
            result.next_poll_after = 60.0  # the plan's minute budget is nearly spent
        return result

    def close(self) -> None:
        self.client.close()


def _int(item: dict[str, Any], key: str) -> int | None:
    value = item.get(key)
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None
