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

from datetime import UTC, datetime
from pathlib import Path

from sla_monitor.domain.events import Channel, Event, EventKind, Status
from sla_monitor.sources._tail import Line, TailOptions, missing_path, tail_poll
from sla_monitor.sources.abc import PollResult, Problems, Rejected, SourceContext, path_problem

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


class AsteriskOptions(TailOptions):
    path: str = "/var/log/asterisk/queue_log"

    def preflight(self) -> Problems:
        return [*super().preflight(), *path_problem(self.path)]


def parse_queue_log_line(text: str, source: str, where: str) -> Event | Rejected | None:
    """One queue_log line -> an event, a rejection (malformed), or None (not about a wait)."""
    parts = text.split("|")
    if len(parts) < 5:
        return Rejected(
            "malformed", f"{where}: expected epoch|uniqueid|queue|agent|event|...", text
        )
    epoch, uniqueid, queue, agent, name, *data = parts
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
        # the member who took the call (its interface or name, e.g. PJSIP/1001 or Alice)
        agent=agent if kind is EventKind.CALL_ANSWERED and agent not in ("", "NONE") else None,
    )


class AsteriskQueueLogSource:
    def __init__(self, ctx: SourceContext, options: AsteriskOptions) -> None:
        self.name = ctx.name
        self.options = options

    def poll(self, cursor: str | None, now: datetime) -> PollResult:
        path = Path(self.options.path)
        if (missing := missing_path(path, cursor)) is not None:
            raise missing
        return tail_poll([path] if path.exists() else [], cursor, now, self.options, self._parse)

    def _parse(self, line: Line) -> Event | Rejected | None:
        return parse_queue_log_line(line.text, self.name, line.where)

    def close(self) -> None:
        pass
