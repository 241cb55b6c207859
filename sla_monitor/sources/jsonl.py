"""`jsonl`: normalized events from a JSON-lines file, or a folder of them, read
incrementally (see tail.py for growth, truncation, rotation and half-written lines)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import Field

from sla_monitor.domain.events import FIELD_LIMITS, Event, EventError, event_from_dict
from sla_monitor.sources._tail import Line, TailOptions, tail_poll
from sla_monitor.sources.abc import PollResult, Rejected, SourceContext


class JsonlOptions(TailOptions):
    path: str = Field(description="a .jsonl file, or a folder of them")
    pattern: str = "*.jsonl"


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
        named = raw.get("source")
        usable = isinstance(named, str) and 0 < len(named) <= FIELD_LIMITS["source"]
        usable = usable and "\x00" not in str(named)
        return Rejected(exc.reason, f"{where}: {exc}", line, named if usable else None)


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
        return tail_poll(self._paths(), cursor, now, self.options, self._parse)

    def _parse(self, line: Line) -> Event | Rejected:
        return parse_line(line.text, self.name, self.defaults, line.where)

    def close(self) -> None:
        pass
