"""`jsonl`: normalized events from a JSON-lines file, or a folder of them, read
incrementally (see tail.py for growth, truncation, rotation and half-written lines)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from sla_monitor.domain.events import Event, EventError, event_from_dict
from sla_monitor.sources.abc import PollResult, Rejected, SourceContext, SourceOptions
from sla_monitor.sources.tail import latest_event_watermark, read_new_lines


class JsonlOptions(SourceOptions):
    path: str = Field(description="a .jsonl file, or a folder of them")
    pattern: str = "*.jsonl"
    watermark: Literal["read_time", "latest_event"] = "read_time"
    max_lines_per_poll: int = Field(50_000, gt=0)


def parse_line(
    line: str, source: str | None, defaults: dict[str, Any], where: str
) -> Event | Rejected:
    """One line -> an Event, or a Rejected that says what was wrong and where."""
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as exc:
        return Rejected(
            "bad_json", f"{where}: not valid JSON: {exc.msg} at column {exc.colno}", line
        )
    if not isinstance(raw, dict):
        return Rejected("not_an_object", f"{where}: each line must be a JSON object", line)
    for k, v in defaults.items():
        raw.setdefault(k, v)
    try:
        return event_from_dict(raw, source)
    except EventError as exc:
        return Rejected(exc.reason, f"{where}: {exc}", line)


class JsonlSource:
    def __init__(self, ctx: SourceContext, options: JsonlOptions) -> None:
        self.name = ctx.name
        self.options = options
        self.defaults: dict[str, Any] = {}
        if ctx.channel is not None:
            self.defaults["channel"] = ctx.channel.value

    def _paths(self) -> list[Path]:
        root = Path(self.options.path)
        if root.is_dir():
            return sorted(p for p in root.glob(self.options.pattern) if p.is_file())
        return [root] if root.exists() else []

    def poll(self, cursor: str | None, now: datetime) -> PollResult:
        state: dict[str, Any] = json.loads(cursor) if cursor else {"files": {}}
        read = read_new_lines(
            self._paths(), state.setdefault("files", {}), self.options.max_lines_per_poll
        )
        result = PollResult(more=read.more)
        for problem in read.problems:
            result.rejected.append(Rejected("unreadable", problem, ""))
        for line in read.lines:
            item = parse_line(line.text, self.name, self.defaults, line.where)
            if isinstance(item, Event):
                result.events.append(item)
            else:
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
