"""`jsonl`: normalized events from a JSON-lines file, or a folder of them, read incrementally.

The cursor keeps, per file, its inode, byte offset, line number and a fingerprint of its
first bytes. Growth is read from the offset; a shorter file or a changed fingerprint is a
truncation (read again from the start; the store drops the duplicates); a new inode at the
path is a rotation (the rest of the old file is read first if it can still be found beside
it). A half-written last line is left for the next poll.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from sla_monitor.domain.events import Event, EventError, event_from_dict
from sla_monitor.sources.abc import PollResult, Rejected, SourceContext, SourceOptions

_HEAD = 64


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


def _fingerprint(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.sha1(fh.read(_HEAD)).hexdigest()


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
        files: dict[str, dict[str, Any]] = state.setdefault("files", {})
        result = PollResult()
        budget = self.options.max_lines_per_poll
        current = {str(p): p for p in self._paths()}
        # Rotated files first: their tail is older than anything in the new file.
        for key, tracked in list(files.items()):
            p = current.get(key)
            if p is not None and os.stat(p).st_ino == tracked["inode"]:
                continue
            old = self._find_by_inode(Path(key).parent, tracked["inode"])
            if old is not None:
                budget = self._read(old, tracked, result, budget, label=key)
                if budget <= 0:
                    result.more = True
                    break
            del files[key]
        for key, p in current.items():
            if budget <= 0:
                result.more = True
                break
            st = os.stat(p)
            entry: dict[str, Any] | None = files.get(key)
            if entry is None or entry["inode"] != st.st_ino:
                entry = {"inode": st.st_ino, "offset": 0, "line": 0, "head": ""}
            elif st.st_size < entry["offset"] or (
                entry["head"] and _fingerprint(p) != entry["head"]
            ):
                entry = {"inode": st.st_ino, "offset": 0, "line": 0, "head": ""}  # truncated
            budget = self._read(p, entry, result, budget, label=key)
            files[key] = entry
            if budget <= 0:
                result.more = True
        result.cursor = json.dumps(state, sort_keys=True)
        if not result.more:
            if self.options.watermark == "read_time":
                result.watermark = now
            else:
                latest = max((e.occurred_at for e in result.events), default=None)
                previous = state.get("latest")
                if latest is not None and (previous is None or latest.isoformat() > previous):
                    state["latest"] = latest.isoformat()
                    result.cursor = json.dumps(state, sort_keys=True)
                result.watermark = (
                    datetime.fromisoformat(state["latest"]) if state.get("latest") else None
                )
        return result

    @staticmethod
    def _find_by_inode(folder: Path, inode: int) -> Path | None:
        try:
            for p in folder.iterdir():
                if p.is_file() and os.stat(p).st_ino == inode:
                    return p
        except OSError:
            return None
        return None

    def _read(
        self, path: Path, entry: dict[str, Any], result: PollResult, budget: int, label: str
    ) -> int:
        try:
            fh = path.open("rb")
        except OSError as exc:
            result.rejected.append(Rejected("unreadable", f"{path}: {exc.strerror}", ""))
            return budget
        with fh:
            if not entry["head"]:
                entry["head"] = (
                    hashlib.sha1(fh.read(_HEAD)).hexdigest()
                    if os.fstat(fh.fileno()).st_size >= _HEAD
                    else ""
                )
            fh.seek(entry["offset"])
            while budget > 0:
                raw = fh.readline()
                if not raw or not raw.endswith(b"\n"):
                    break  # end of file, or a line still being written
                entry["offset"] += len(raw)
                entry["line"] += 1
                text = raw.decode("utf-8", errors="replace").strip()
                if not text:
                    continue
                budget -= 1
                item = parse_line(text, self.name, self.defaults, f"{label}:{entry['line']}")
                if isinstance(item, Event):
                    result.events.append(item)
                else:
                    result.rejected.append(item)
        return budget

    def close(self) -> None:
        pass
