"""`taskrouter`: Twilio TaskRouter (Twilio Flex) voice and messaging queues, from the
workspace's events.

Reads `GET /v1/Workspaces/{WorkspaceSid}/Events?StartDate=…&EndDate=…&PageSize=…` by time
window (from the last window's end, less an `overlap`, to now), following
`meta.next_page_url`, at most `max_pages` pages a poll (a longer window goes on in the next
poll, from its next page). Each task is a contact (its SID the conversation):

- `task.created` -> `call_queued` for a voice task, `customer_message` for a messaging one;
- `reservation.accepted` -> `call_answered` (voice) or `agent_reply` (messaging), named
  after the worker;
- `task.canceled` while nobody had accepted it -> `call_abandoned` (the caller hung up;
  its `task_canceled_reason` is the reason); once accepted, or for messaging -> closed;
- `task.completed` -> closed (`status_changed`); other events change nothing here.

The task channel is the channel (`voice` -> phone; `sms`, `whatsapp` -> social; `chat` and
anything else -> chat); the task queue's name is the queue; the caller (`from` in the task's
attributes) is the customer. Credentials: the account SID (or an API key SID) and its auth
token (or the key's secret), from secrets. A 429 honours `Retry-After`; the watermark is the
end of the last window read to its end.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import httpx
from pydantic import Field

from sla_monitor.domain.events import Channel, Event, EventKind, Status
from sla_monitor.domain.timeutil import parse_instant
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

CHANNELS = {"voice": Channel.PHONE, "sms": Channel.SOCIAL, "whatsapp": Channel.SOCIAL}
TYPES = ("task.created", "reservation.accepted", "task.canceled", "task.completed")
MAX_TASKS = 50_000  # tasks whose acceptance is remembered (an abandon is before it)


class TaskRouterOptions(ApiOptions):
    workspace_sid: str = Field(pattern=r"^WS[0-9a-fA-F]{32}$")
    username: str = Field(description="the account SID (AC…) or an API key SID (SK…)")
    password: SecretRef  # the auth token, or the API key's secret
    base_url: str = "https://taskrouter.twilio.com"
    start: timedelta = timedelta(hours=24)  # how far back the first poll reads (a day)
    page_size: int = Field(200, ge=1, le=1000)
    max_pages: int = Field(10, ge=1, le=1000)


class TaskRouterSource:
    def __init__(self, ctx: SourceContext, options: TaskRouterOptions) -> None:
        self.name = ctx.name
        self.options = options
        self.base = options.base_url.rstrip("/")
        self.client = JsonClient(
            timeout=options.timeout,
            auth=httpx.BasicAuth(options.username, options.password.read()),
            credential=f"{options.username} with the secret from {options.password.describe()}",
        )

    def map_event(self, e: dict[str, Any], accepted: dict[str, bool], out: PollResult) -> None:
        etype = str(e.get("event_type"))
        data = _obj(e.get("event_data"))
        try:
            sid, task = str(e["sid"]), str(data["task_sid"])
            at = parse_instant(str(e["event_date"]))
        except (KeyError, TypeError, ValueError) as exc:
            why = f"event {e.get('sid')}: {exc!r}"
            out.rejected.append(Rejected("bad_item", why, json.dumps(e)[:20000]))
            return
        channel = CHANNELS.get(str(data.get("task_channel_unique_name")), Channel.CHAT)
        voice = channel is Channel.PHONE
        try:
            attributes = json.loads(data.get("task_attributes") or "{}")
        except ValueError:
            attributes = {}
        caller = _obj(attributes).get("from") or _obj(attributes).get("caller")
        base = Event(
            source=self.name,
            event_id=sid,
            conversation_id=task,
            kind=EventKind.CUSTOMER_MESSAGE,
            occurred_at=at,
            channel=channel,
            queue=str(data.get("task_queue_name") or "unassigned"),
            customer_id=str(caller) if caller else None,
        )
        if etype == "task.created":
            out.events.append(base if not voice else replace(base, kind=EventKind.CALL_QUEUED))
        elif etype == "reservation.accepted":
            accepted[task] = True
            kind = EventKind.CALL_ANSWERED if voice else EventKind.AGENT_REPLY
            out.events.append(replace(base, kind=kind, agent=data.get("worker_name")))
        elif etype == "task.canceled" and voice and not accepted.get(task):
            reason = str(data.get("task_canceled_reason") or "canceled")
            out.events.append(replace(base, kind=EventKind.CALL_ABANDONED, reason=reason[:200]))
        elif etype in ("task.canceled", "task.completed"):
            out.events.append(replace(base, kind=EventKind.STATUS_CHANGED, status=Status.CLOSED))

    def poll(self, cursor: str | None, now: datetime) -> PollResult:
        try:
            state = json.loads(cursor) if cursor else {}
            since = parse_instant(state["since"]) if "since" in state else now - self.options.start
            next_url = state.get("next")
            until = parse_instant(state["until"]) if next_url else now
            accepted: dict[str, bool] = dict(state.get("accepted", {}))
            pending: list[Any] = list(state.get("pending", []))
        except (ValueError, KeyError, TypeError, AttributeError):
            # a cursor this version cannot read: from `start` again (ids de-duplicate)
            since, next_url, until, accepted, pending = now - self.options.start, None, now, {}, []
        result = PollResult()
        url = f"{self.base}/v1/Workspaces/{self.options.workspace_sid}/Events"
        for _ in range(self.options.max_pages):
            if next_url:
                body = self.client.get(next_url)
            else:
                start = (since - self.options.overlap).strftime("%Y-%m-%dT%H:%M:%SZ")
                end = until.strftime("%Y-%m-%dT%H:%M:%SZ")
                params = {"StartDate": start, "EndDate": end, "PageSize": self.options.page_size}
                body = self.client.get(url, params)
            events = _obj(body).get("events")
            if not isinstance(events, list):
                raise SourceError("unexpected response from TaskRouter Events: no events list")
            pending += [x for x in events if isinstance(x, dict)]
            next_url = _obj(_obj(body).get("meta")).get("next_page_url")
            if not next_url:
                break
        if next_url:  # the window goes on: what was read waits, the rest is read at once
            result.more = True
            state = {"since": since.isoformat(), "until": until.isoformat(), "next": next_url}
            result.cursor = json.dumps(state | {"accepted": accepted, "pending": pending})
            return result
        # pages list the newest first: a whole window, oldest first, so that an abandon is
        # told from a call hung up after it was answered
        unique = {str(e.get("sid")): e for e in pending}  # an event on two pages, once
        for e in sorted(
            unique.values(), key=lambda x: (str(x.get("event_date")), str(x.get("sid")))
        ):
            if str(e.get("event_type")) in TYPES:
                self.map_event(e, accepted, result)
        while len(accepted) > MAX_TASKS:
            accepted.pop(next(iter(accepted)))
        result.cursor = json.dumps({"since": until.isoformat(), "accepted": accepted})
        result.watermark = until - self.options.overlap
        return result

    def close(self) -> None:
        self.client.close()
