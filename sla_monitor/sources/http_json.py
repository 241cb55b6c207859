"""`http_json`: a generic poller for in-house queues and social tools with a JSON API.

Declarative: where the items are in a response, how to page (a cursor parameter fed from a
response field, or a next-page link), and a mapping from JSON fields (dotted paths) to the
normalized event. Items whose kind is not in the mapping are skipped (they are not about
acknowledgements); items missing a required field are rejected and kept with the reason.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from pydantic import Field, model_validator

from sla_monitor.domain.events import Event, EventError, event_from_dict
from sla_monitor.sources._http import JsonClient
from sla_monitor.sources._secrets import SecretRef
from sla_monitor.sources._watermark import WatermarkMode, completed_up_to
from sla_monitor.sources.abc import PollResult, Rejected, SourceContext, SourceError, SourceOptions

MISSING = object()


def dig(obj: Any, path: str) -> Any:
    """`a.b.0.c` into nested dicts and lists; MISSING where the path does not lead."""
    cur = obj
    for part in path.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return MISSING
    return cur


class FieldMap(SourceOptions):
    path: str | None = None
    value: Any = None  # a constant
    values: dict[str, str] | None = None  # translate raw values (e.g. vendor kinds)
    default: Any = None

    @model_validator(mode="after")
    def _one(self) -> FieldMap:
        if self.path is None and self.value is None:
            raise ValueError("give a path (dotted JSON path) or a constant value")
        return self


class AuthHeader(SourceOptions):
    header: str = "Authorization"
    prefix: str = "Bearer "
    secret: SecretRef


class CursorParam(SourceOptions):
    param: str  # query parameter to send the cursor in
    from_: str = Field(alias="from")  # dotted path of the next cursor in the response


class HttpJsonOptions(SourceOptions):
    url: str
    params: dict[str, str] = {}
    auth: AuthHeader | None = None
    items: str = Field(description="dotted path to the list of items in a response")
    cursor: CursorParam | None = None
    next_link: str | None = None  # dotted path to the next page's URL
    expired_cursor_status: list[int] = [410]  # the API's answer to a cursor it forgot
    watermark: WatermarkMode = "read_time"
    max_pages_per_poll: int = Field(20, gt=0)
    timeout: float = Field(30.0, gt=0)
    map: dict[str, str | FieldMap]

    @model_validator(mode="after")
    def _required(self) -> HttpJsonOptions:
        need = {"event_id", "conversation_id", "kind", "occurred_at"}
        missing = sorted(need - set(self.map))
        if missing:
            raise ValueError(f"map needs {', '.join(missing)}")
        return self


def _timestamp(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = value / 1000 if value > 10**11 else value  # epoch milliseconds or seconds
        return datetime.fromtimestamp(seconds, UTC).isoformat()
    return value


class HttpJsonSource:
    def __init__(self, ctx: SourceContext, options: HttpJsonOptions) -> None:
        self.name = ctx.name
        self.ctx = ctx
        self.options = options
        headers = {}
        credential = "the credentials"
        if options.auth is not None:
            headers[options.auth.header] = options.auth.prefix + options.auth.secret.read()
            credential = f"the token from {options.auth.secret.describe()}"
        self.client = JsonClient(headers, options.timeout, credential=credential)
        self.fields = {
            k: FieldMap(path=v) if isinstance(v, str) else v for k, v in options.map.items()
        }

    def to_event(self, item: Any, where: str) -> Event | Rejected | None:
        raw: dict[str, Any] = {}
        for name, fm in self.fields.items():
            value = fm.value if fm.path is None else dig(item, fm.path)
            if value is MISSING or value is None:
                value = fm.default
            if fm.values is not None and value is not None:
                translated = fm.values.get(str(value))
                if translated is None and name == "kind":
                    return None  # not an event about acknowledgements
                value = translated if translated is not None else value
            if value is not None:
                raw[name] = _timestamp(value) if name == "occurred_at" else value
        if self.ctx.channel is not None:
            raw.setdefault("channel", self.ctx.channel.value)
        if isinstance(raw.get("tags"), str):
            raw["tags"] = [raw["tags"]]
        for key in ("event_id", "conversation_id", "customer_id"):
            if isinstance(raw.get(key), int):
                raw[key] = str(raw[key])
        try:
            return event_from_dict(raw, self.name)
        except EventError as exc:
            return Rejected(exc.reason, f"{where}: {exc}", json.dumps(item)[:20000])

    def poll(self, cursor: str | None, now: datetime) -> PollResult:
        state = json.loads(cursor) if cursor else {}
        result = PollResult()
        url = state.get("next_url") or self.options.url
        pages = 0
        while pages < self.options.max_pages_per_poll:
            params = dict(self.options.params) if url == self.options.url else {}
            if self.options.cursor and state.get("cursor") is not None:
                params[self.options.cursor.param] = state["cursor"]
            try:
                body = self.client.get(url, params or None)  # keep a next link's own query
            except SourceError as exc:
                if exc.status in self.options.expired_cursor_status and (
                    state.get("cursor") is not None or state.get("next_url")
                ):
                    # the API forgot our place: read again from the start; the store drops
                    # what it already has
                    state = {}
                    url = self.options.url
                    continue
                if pages == 0:
                    raise
                result.more = True  # keep what was read; the runtime retries the rest
                result.next_poll_after = exc.retry_after
                break
            pages += 1
            items = dig(body, self.options.items)
            if not isinstance(items, list):
                raise SourceError(f"response has no list at {self.options.items!r}")
            for i, item in enumerate(items):
                ev = self.to_event(item, f"page {pages} item {i}")
                if isinstance(ev, Event):
                    result.events.append(ev)
                elif ev is not None:
                    result.rejected.append(ev)
            next_url = dig(body, self.options.next_link) if self.options.next_link else None
            next_cursor = dig(body, self.options.cursor.from_) if self.options.cursor else MISSING
            if isinstance(next_url, str) and next_url and items:
                url = state["next_url"] = next_url
                continue
            if next_cursor not in (MISSING, None, "") and next_cursor != state.get("cursor"):
                state["cursor"] = next_cursor
                if items:
                    continue
            break
        else:
            result.more = True
        if not result.more:
            result.watermark = completed_up_to(self.options.watermark, state, result.events, now)
        result.cursor = json.dumps(state, sort_keys=True)
        return result

    def close(self) -> None:
        self.client.close()
