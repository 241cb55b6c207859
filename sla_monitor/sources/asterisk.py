"""`asterisk_queue_log`: calls from Asterisk's queue_log, tailed by inode + byte offset.

Each line is `epoch|uniqueid|queue|agent|event|data1|data2|...`. A call (uniqueid) is a
contact on the phone channel, in the line's queue, with the caller id as customer:

  ENTERQUEUE (data: url|callerid|position)           -> call_queued
  CONNECT    (data: holdtime|bridged uniqueid|ring)   -> call_answered
  ABANDON, EXITWITHTIMEOUT, EXITEMPTY, EXITWITHKEY    -> call_abandoned (reason kept)
  COMPLETEAGENT, COMPLETECALLER                       -> status_changed closed

Other events (RINGNOANSWER, QUEUESTART, agent logins, ...) say nothing about the
caller's wait and are skipped. Asterisk writes the log as things happen, so by default the
watermark is the time of the read.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from sla_monitor.domain.events import Channel, Event, EventKind, Status
from sla_monitor.sources.abc import PollResult, Rejected, SourceContext, SourceOptions
from sla_monitor.sources.tail import latest_event_watermark, read_new_lines

KINDS = {
    "ENTERQUEUE": EventKind.CALL_QUEUED,
    "CONNECT": EventKind.CALL_ANSWERED,
    "ABANDON": EventKind.CALL_ABANDONED,
    "EXITWITHTIMEOUT": EventKind.CALL_ABANDONED,
    "EXITEMPTY": EventKind.CALL_ABANDONED,
    "EXITWITHKEY": EventKind.CALL_ABANDONED,
    "COMPLETEAGENT": EventKind.STATUS_CHANGED,
    "COMPLETECALLER": EventKind.STATUS_CHANGED,
}


class AsteriskOptions(SourceOptions):
    path: str = "/var/log/asterisk/queue_log"
    watermark: Literal["read_time", "latest_event"] = "read_time"
    max_lines_per_poll: int = Field(50_000, gt=0)


def parse_queue_log_line(text: str, source: str, where: str) -> Event | Rejected | None:
    """One queue_log line -> an event, a rejection (malformed), or None (not about a wait)."""
    parts = text.split("|")
    if len(parts) < 5:
        return Rejected(
            "malformed", f"{where}: expected epoch|uniqueid|queue|agent|event|...", text
        )
    epoch, uniqueid, queue, _agent, name, *data = parts
    kind = KINDS.get(name)
    if kind is None or queue in ("", "NONE"):
        return None
    try:
        occurred = datetime.fromtimestamp(float(epoch), UTC)
    except (ValueError, OverflowError):
        return Rejected("bad_timestamp", f"{where}: bad epoch {epoch!r}", text)
    if not uniqueid:
        return Rejected("missing_field", f"{where}: no call uniqueid", text)
    caller = data[1] if name == "ENTERQUEUE" and len(data) > 1 and data[1] else None
    return Event(
        source=source,
        event_id=f"{uniqueid}:{name}:{epoch}",
        conversation_id=uniqueid,
        kind=kind,
        occurred_at=occurred,
        channel=Channel.PHONE,
        queue=queue,
        customer_id=caller,
        status=Status.CLOSED if kind is EventKind.STATUS_CHANGED else None,
        reason=name if kind is EventKind.CALL_ABANDONED else None,
    )


class AsteriskQueueLogSource:
    def __init__(self, ctx: SourceContext, options: AsteriskOptions) -> None:
        self.name = ctx.name
        self.options = options

    def poll(self, cursor: str | None, now: datetime) -> PollResult:
        state: dict[str, Any] = json.loads(cursor) if cursor else {"files": {}}
        path = Path(self.options.path)
        read = read_new_lines(
            [path] if path.exists() else [],
            state.setdefault("files", {}),
            self.options.max_lines_per_poll,
        )
        result = PollResult(more=read.more)
        result.rejected += [Rejected("unreadable", p, "") for p in read.problems]
        for line in read.lines:
            item = parse_queue_log_line(line.text, self.name, line.where)
            if isinstance(item, Event):
                result.events.append(item)
            elif item is not None:
                result.rejected.append(item)
        if not result.more:
            if self.options.watermark == "read_time":
                result.watermark = now
            else:
                result.watermark = latest_event_watermark(state, result.events)
        result.cursor = json.dumps(state, sort_keys=True)
        return result

    def close(self) -> None:
        pass
