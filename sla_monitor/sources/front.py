"""`front`: Front inboxes (email, SMS, WhatsApp, Facebook, Twitter, chat) through its events.

Reads the company's events since the last one seen (`GET /events?q[after]=…&q[types][]=…
&limit=100`, newest first, the next page at `_pagination.next`); a window is read to its
end before the cursor moves (a long one over several polls, at most `max_pages` pages a
poll), then handled oldest first:

- `inbound` (a message received) -> `customer_message`;
- `outbound` and `out_reply` (a message sent) -> `agent_reply` named after its author — or
  `auto_reply` when a rule sent it (the event's `source._meta.type` is `rule`), when it has
  no teammate author (an API integration), or when the author is one of
  `automation_teammates`;
- `comment` is internal: nobody was answered; `archive` -> solved, `reopen` and `restore`
  -> open, `trash` -> closed (`status_changed`); assignments and tags change nothing here;
- the inbox the message went through is the queue (`inboxes` renames them); the channel
  is the message's type (email; sms, whatsapp, facebook, tweet, custom -> social;
  intercom, front_chat -> chat); the customer is the contact's handle. What the connector
  knows of a conversation (queue, channel, customer) travels in its cursor, for the events
  that do not say it (archive, reopen).

A 429 honours `Retry-After`; with fewer than `min_remaining` requests left
(`X-Ratelimit-Remaining`) the next poll waits a minute. The watermark is the start of the
poll that read a window to its end.
"""

from __future__ import annotations

import contextlib
import json
from collections import OrderedDict
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import Field, field_validator

from sla_monitor.domain.events import Channel, Event, EventKind, Status
from sla_monitor.domain.timeutil import parse_duration
from sla_monitor.sources._http import JsonClient
from sla_monitor.sources._http import json_object as _obj
from sla_monitor.sources._secrets import SecretRef
from sla_monitor.sources.abc import PollResult, Rejected, SourceContext, SourceError, SourceOptions

TYPES = ("inbound", "outbound", "out_reply", "archive", "reopen", "restore", "trash")
CHANNELS = {
    "email": Channel.EMAIL,
    "sms": Channel.SOCIAL,
    "whatsapp": Channel.SOCIAL,
    "facebook": Channel.SOCIAL,
    "tweet": Channel.SOCIAL,
    "twitter": Channel.SOCIAL,
    "custom": Channel.SOCIAL,
    "intercom": Channel.CHAT,
    "front_chat": Channel.CHAT,
    "call": Channel.PHONE,
}
STATUSES = {
    "archive": Status.SOLVED,
    "reopen": Status.OPEN,
    "restore": Status.OPEN,
    "trash": Status.CLOSED,
}
MAX_CONVERSATIONS = 50_000


class FrontOptions(SourceOptions):
    token: SecretRef  # an API token (Settings -> Developers -> API tokens)
    base_url: str = "https://api2.frontapp.com"
    inboxes: dict[str, str] = {}  # inbox id or name -> queue name
    automation_teammates: list[str] = []  # teammate ids whose messages are an integration's
    start: timedelta = timedelta(days=7)
    max_pages: int = Field(20, ge=1, le=1000)
    min_remaining: int = Field(10, ge=0)
    timeout: float = 30.0

    @field_validator("start", mode="before")
    @classmethod
    def _start(cls, v: Any) -> timedelta:
        return parse_duration(v)


class FrontSource:
    def __init__(self, ctx: SourceContext, options: FrontOptions) -> None:
        self.name = ctx.name
        self.options = options
        self.base = options.base_url.rstrip("/")
        self.client = JsonClient(
            headers={"Authorization": f"Bearer {options.token.read()}"},
            timeout=options.timeout,
            credential=f"the API token (from {options.token.describe()})",
        )
        self.automation = set(options.automation_teammates)
        self.remaining: int | None = None

    def _get(self, url: str, params: dict[str, Any] | None = None) -> Any:
        body, headers = self.client.get_with_headers(url, params)
        left = headers.get("x-ratelimit-remaining")
        if left is not None and left.isdigit():
            self.remaining = int(left)
        return body

    # -- mapping ------------------------------------------------------------------------

    def map_event(
        self, e: dict[str, Any], known: OrderedDict[str, dict[str, str | None]], out: PollResult
    ) -> None:
        etype = str(e.get("type"))
        conversation = _obj(e.get("conversation"))
        cid = str(conversation.get("id") or "")
        try:
            at = datetime.fromtimestamp(float(e["emitted_at"]), UTC)
            if not cid or not e.get("id"):
                raise KeyError("conversation.id" if not cid else "id")
        except (KeyError, TypeError, ValueError) as exc:
            why = f"event {e.get('id')}: {exc!r}"
            out.rejected.append(Rejected("bad_item", why, json.dumps(e)[:20000]))
            return
        seen = known.pop(cid, None) or {}
        known[cid] = seen  # most recent last
        source, target = _obj(e.get("source")), _obj(e.get("target"))
        message = (
            _obj(target.get("data")) if _obj(target.get("_meta")).get("type") == "message" else {}
        )
        inbox = self._inbox(source)
        if inbox:
            seen["queue"] = inbox
        if message.get("type"):
            seen["channel"] = CHANNELS.get(str(message["type"]), Channel.SOCIAL).value
        if etype == "inbound":
            handle = next(
                (
                    r.get("handle")
                    for r in message.get("recipients") or []
                    if isinstance(r, dict) and r.get("role") == "from"
                ),
                None,
            )
            seen["customer"] = str(handle) if handle else seen.get("customer")
        base = Event(
            source=self.name,
            event_id=str(e["id"]),
            conversation_id=cid,
            kind=EventKind.CUSTOMER_MESSAGE,
            occurred_at=at,
            channel=Channel(seen.get("channel") or Channel.EMAIL.value),
            queue=seen.get("queue") or "unassigned",
            customer_id=seen.get("customer"),
        )
        if etype == "inbound":
            out.events.append(base)
        elif etype in ("outbound", "out_reply"):
            author = _obj(message.get("author"))
            by_rule = _obj(source.get("_meta")).get("type") == "rule"
            automatic = by_rule or not author or str(author.get("id")) in self.automation
            if automatic:
                out.events.append(replace(base, kind=EventKind.AUTO_REPLY))
            else:
                name = " ".join(
                    str(author.get(k) or "") for k in ("first_name", "last_name")
                ).strip()
                agent = name or author.get("username") or author.get("email")
                out.events.append(replace(base, kind=EventKind.AGENT_REPLY, agent=agent))
        elif etype in STATUSES:
            status = STATUSES[etype]
            out.events.append(replace(base, kind=EventKind.STATUS_CHANGED, status=status))

    def _inbox(self, source: dict[str, Any]) -> str | None:
        if _obj(source.get("_meta")).get("type") != "inboxes":
            return None
        data = source.get("data")
        first = data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else {}
        key_id, key_name = str(first.get("id") or ""), str(first.get("name") or "")
        return (
            self.options.inboxes.get(key_id)
            or self.options.inboxes.get(key_name)
            or key_name
            or None
        )

    # -- polling ------------------------------------------------------------------------

    def poll(self, cursor: str | None, now: datetime) -> PollResult:
        try:
            state = json.loads(cursor) if cursor else {}
            after = (
                float(state["after"])
                if "after" in state
                else (now - self.options.start).timestamp()
            )
            next_url = state.get("next")
            newest = float(state.get("newest", after))
            known: OrderedDict[str, dict[str, str | None]] = OrderedDict(state.get("known", {}))
            pending = list(state.get("pending", []))
        except (ValueError, KeyError, TypeError):
            after, next_url, known, pending = (
                (now - self.options.start).timestamp(),
                None,
                OrderedDict(),
                [],
            )
            newest = after
        result = PollResult()
        for _ in range(self.options.max_pages):
            if next_url:
                body = self._get(next_url)
            else:
                params = {"q[after]": f"{after:.3f}", "q[types][]": list(TYPES), "limit": 100}
                body = self._get(f"{self.base}/events", params)
            if not isinstance(body, dict) or not isinstance(body.get("_results"), list):
                raise SourceError("unexpected response from /events: no _results list")
            pending += [x for x in body["_results"] if isinstance(x, dict)]
            next_url = _obj(body.get("_pagination")).get("next")
            if not next_url:
                break
        if next_url:  # the window goes on: keep what was read, read on at once
            result.more = True
            result.cursor = json.dumps(
                {
                    "after": after,
                    "next": next_url,
                    "newest": newest,
                    "known": known,
                    "pending": pending,
                }
            )
            return result
        for e in sorted(pending, key=lambda x: (float(x.get("emitted_at") or 0), str(x.get("id")))):
            self.map_event(e, known, result)
            with contextlib.suppress(TypeError, ValueError):
                newest = max(newest, float(e.get("emitted_at") or 0))
        while len(known) > MAX_CONVERSATIONS:
            known.popitem(last=False)
        result.cursor = json.dumps({"after": newest, "known": known})
        result.watermark = now
        if self.remaining is not None and self.remaining < self.options.min_remaining:
            result.next_poll_after = 60.0
        return result

    def close(self) -> None:
        self.client.close()
