"""`chatwoot`: social, chat and e-mail inboxes of a Chatwoot account (application API).

Each poll lists the account's conversations by latest activity
(`GET /api/v1/accounts/{id}/conversations?status=all&sort_by=last_activity_at_desc&page=N`)
down to the last poll's mark (less an overlap), then reads each changed conversation's new
messages (`…/conversations/{id}/messages?after=<last message id>`). The last message id per
conversation and the activity mark are the cursor.

- channel from the inbox's `channel_type`: Twitter, Facebook, Instagram, WhatsApp,
  Telegram, Line, Sms -> social; Email -> email; WebWidget, Api -> chat;
- `message_type` 0 (incoming) -> `customer_message`;
- 1 (outgoing) by a `User` -> `agent_reply`, unless an automation rule or a campaign sent
  it (`content_attributes.automation_rule_id`, `additional_attributes.campaign_id`);
  outgoing by an `AgentBot` (or with no sender) and 3 (template: greetings, away messages,
  CSAT) -> `auto_reply`; private notes are skipped;
- 2 (activity) "… marked resolved …" / "… reopened …" / "… snoozed …" / "… pending …"
  -> `status_changed` solved / open / on_hold / pending;
- queue: the inbox's name; customer: the contact's e-mail, else phone, else its id.
"""

from __future__ import annotations

import json
import re
import time
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import Field, field_validator

from sla_monitor.domain.events import Channel, Event, EventKind, Status
from sla_monitor.domain.timeutil import parse_duration
from sla_monitor.sources._http import JsonClient
from sla_monitor.sources._secrets import SecretRef
from sla_monitor.sources.abc import (
    PollResult,
    Rejected,
    Skipped,
    SourceContext,
    SourceError,
    SourceOptions,
)
from sla_monitor.sources.mailclass import DAEMONS, NOREPLY

CHANNEL_TYPES = {
    "twitter": Channel.SOCIAL,
    "twitterprofile": Channel.SOCIAL,
    "facebookpage": Channel.SOCIAL,
    "facebook": Channel.SOCIAL,
    "instagram": Channel.SOCIAL,
    "whatsapp": Channel.SOCIAL,
    "telegram": Channel.SOCIAL,
    "line": Channel.SOCIAL,
    "sms": Channel.SOCIAL,
    "twiliosms": Channel.SOCIAL,
    "email": Channel.EMAIL,
    "webwidget": Channel.CHAT,
    "api": Channel.CHAT,
}
ACTIVITY = [
    (re.compile(r"\bresolved\b", re.I), Status.SOLVED),
    (re.compile(r"\breopened\b", re.I), Status.OPEN),
    (re.compile(r"\bsnoozed\b", re.I), Status.ON_HOLD),
    (re.compile(r"\bpending\b", re.I), Status.PENDING),
]
MAX_CONVERSATIONS = 100_000


def _incoming_machine(msg: dict[str, Any]) -> str | None:
    """Why an incoming message was written by software, if it was: Chatwoot's own mark for
    auto-replies into e-mail inboxes (`content_attributes.auto_reply`), or an e-mail sender
    that is a mail daemon or a no-reply address (as `mailclass` judges them)."""
    content = msg.get("content_attributes") or {}
    if not isinstance(content, dict):
        return None
    found = content.get("email")
    email: dict[str, Any] = found if isinstance(found, dict) else {}
    if content.get("auto_reply") or email.get("auto_reply"):
        return "auto_reply"
    senders = email.get("from") or []
    for address in [senders] if isinstance(senders, str) else senders:
        local = str(address).rpartition("@")[0].lower().strip('<> "')
        if local in DAEMONS:
            return "bounce"
        if NOREPLY.match(local):
            return "noreply_sender"
    return None


class ChatwootOptions(SourceOptions):
    base_url: str = Field(description="e.g. https://app.chatwoot.com")
    account_id: int
    token: SecretRef  # a user's or bot's access token, sent as `api_access_token`
    start: timedelta = timedelta(days=2)  # how far back the first poll reads
    overlap: timedelta = timedelta(minutes=2)
    max_pages: int = Field(40, gt=0)  # conversation-list pages per poll
    timeout: float = 30.0

    @field_validator("start", "overlap", mode="before")
    @classmethod
    def _durations(cls, v: Any) -> timedelta:
        return parse_duration(v)


def inbox_channel(channel_type: str | None) -> Channel:
    key = (channel_type or "").rpartition("::")[2].replace("_", "").lower()
    return CHANNEL_TYPES.get(key, Channel.CHAT)


class ChatwootSource:
    def __init__(self, ctx: SourceContext, options: ChatwootOptions) -> None:
        self.name = ctx.name
        self.options = options
        self.api = f"{options.base_url.rstrip('/')}/api/v1/accounts/{options.account_id}"
        self.client = JsonClient(
            {"api_access_token": options.token.read()},
            options.timeout,
            credential=f"the access token from {options.token.describe()}",
        )
        self.inboxes: dict[int, tuple[str, Channel]] = {}
        self._inboxes_at = -1e9

    def _load_inboxes(self) -> None:
        body = self.client.get(f"{self.api}/inboxes")
        payload = body.get("payload") if isinstance(body, dict) else None
        if not isinstance(payload, list):
            raise SourceError("unexpected inboxes response: no payload list")
        self.inboxes = {
            int(i["id"]): (
                str(i.get("name") or f"inbox-{i['id']}"),
                inbox_channel(i.get("channel_type")),
            )
            for i in payload
            if isinstance(i, dict) and "id" in i
        }

    def to_event(
        self, msg: dict[str, Any], conv: dict[str, Any], customer: str | None
    ) -> Event | Rejected | Skipped | None:
        try:
            mid, mtype, created = int(msg["id"]), int(msg["message_type"]), msg["created_at"]
            when = datetime.fromtimestamp(float(created), UTC)
        except (KeyError, TypeError, ValueError) as exc:
            return Rejected(
                "bad_item",
                f"conversation {conv.get('id')} message {msg.get('id')}: {exc!r}",
                json.dumps(msg)[:20000],
            )
        if msg.get("private"):
            return None  # a private note acknowledges nobody
        inbox_id = msg.get("inbox_id", conv.get("inbox_id"))
        queue, channel = self.inboxes.get(int(inbox_id or 0), (f"inbox-{inbox_id}", Channel.CHAT))
        status = None
        if mtype == 0:
            machine = _incoming_machine(msg)
            if machine is not None:
                return Skipped(machine)  # an out-of-office or a bounce into an e-mail inbox
            kind = EventKind.CUSTOMER_MESSAGE
        elif mtype == 1:
            content = msg.get("content_attributes") or {}
            extra = msg.get("additional_attributes") or {}
            automated = bool(content.get("automation_rule_id") or extra.get("campaign_id"))
            kind = (
                EventKind.AGENT_REPLY
                if msg.get("sender_type") == "User" and not automated
                else EventKind.AUTO_REPLY
            )
        elif mtype == 3:
            kind = EventKind.AUTO_REPLY
        elif mtype == 2:
            text = str(msg.get("content") or "")
            status = next((s for pattern, s in ACTIVITY if pattern.search(text)), None)
            if status is None:
                return None  # assignment, labels, ...: nothing about acknowledgements
            kind = EventKind.STATUS_CHANGED
        else:
            return None
        return Event(
            source=self.name,
            event_id=str(mid),
            conversation_id=str(conv["id"]),
            kind=kind,
            occurred_at=when,
            channel=channel,
            queue=queue,
            customer_id=customer,
            status=status,
            agent=_sender_name(msg) if kind is EventKind.AGENT_REPLY else None,
        )

    def poll(self, cursor: str | None, now: datetime) -> PollResult:
        state = json.loads(cursor) if cursor else {}
        seen: OrderedDict[str, int] = OrderedDict(state.get("last_message", {}))
        since = (
            float(state["mark"]) - self.options.overlap.total_seconds()
            if "mark" in state
            else (now - self.options.start).timestamp()
        )
        if time.monotonic() - self._inboxes_at > 600:  # inboxes rarely change
            self._load_inboxes()
            self._inboxes_at = time.monotonic()
        result = PollResult()
        changed: list[dict[str, Any]] = []
        for page in range(1, self.options.max_pages + 1):
            body = self.client.get(
                f"{self.api}/conversations",
                {"status": "all", "sort_by": "last_activity_at_desc", "page": page},
            )
            convs = (body.get("data") or {}).get("payload") if isinstance(body, dict) else None
            if not isinstance(convs, list):
                raise SourceError("unexpected conversations response: no data.payload list")
            fresh = [
                c
                for c in convs
                if isinstance(c, dict)
                and float(c.get("last_activity_at") or c.get("timestamp") or 0) >= since
            ]
            changed += fresh
            if len(fresh) < len(convs) or not convs:
                break
        else:
            result.more = True  # more changed conversations than one poll reads
        for conv in changed:
            cid = str(conv["id"])
            sender = (conv.get("meta") or {}).get("sender") or {}
            customer = (
                sender.get("email")
                or sender.get("phone_number")
                or (f"contact-{sender['id']}" if sender.get("id") is not None else None)
            )
            after = seen.get(cid)
            while True:
                try:
                    body = self.client.get(
                        f"{self.api}/conversations/{cid}/messages",
                        {"after": after} if after else None,
                    )
                except SourceError as exc:
                    if exc.status == 404:  # deleted since it was listed: forget it
                        after = None
                        seen.pop(cid, None)
                        break
                    raise
                messages = body.get("payload") if isinstance(body, dict) else None
                if not isinstance(messages, list):
                    raise SourceError(f"unexpected messages response for conversation {cid}")
                newest = after or 0
                for msg in sorted(
                    (m for m in messages if isinstance(m, dict)),
                    key=lambda m: int(m.get("id") or 0),
                ):
                    if after and int(msg.get("id") or 0) <= after:
                        continue  # already read (some servers ignore `after`)
                    ev = self.to_event(msg, conv, customer)
                    if isinstance(ev, Event):
                        result.events.append(ev)
                    elif isinstance(ev, Skipped):
                        result.skipped[ev.reason] += 1
                    elif ev is not None:
                        result.rejected.append(ev)
                    newest = max(newest, int(msg.get("id") or 0))
                if not newest or newest == after:
                    break
                after = newest
            if after:
                seen.pop(cid, None)
                seen[cid] = after
        while len(seen) > MAX_CONVERSATIONS:
            seen.popitem(last=False)
        mark = max(
            [float(state.get("mark", since))]
            + [float(c.get("last_activity_at") or 0) for c in changed]
        )
        result.cursor = json.dumps(
            {
                "mark": mark if not result.more else state.get("mark", since),
                "last_message": seen,
            }
        )
        if not result.more:
            result.watermark = now
        return result

    def close(self) -> None:
        self.client.close()


def _sender_name(msg: dict[str, Any]) -> str | None:
    """The agent who wrote a message (its `sender`, a User), by name."""
    sender = msg.get("sender")
    if isinstance(sender, dict):
        name = sender.get("available_name") or sender.get("name")
        if name:
            return str(name)
    return f"user {msg['sender_id']}" if msg.get("sender_id") is not None else None
