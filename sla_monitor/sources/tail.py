"""Incremental reading of append-only text files (jsonl exports, Asterisk's queue_log).

State per file: inode, byte offset, line number and a fingerprint of its first bytes.
Growth is read from the offset; a shorter file or a changed fingerprint is a truncation
(read again from the start; the store drops duplicates); a new inode at the path is a
rotation (the rest of the old file is read first if it can still be found beside it).
A half-written last line (no newline yet) is left for the next read.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sla_monitor.domain.events import Event
from sla_monitor.domain.timeutil import from_micros, to_micros

_HEAD = 64


@dataclass(frozen=True)
class Line:
    text: str
    where: str  # file:line, for error messages


@dataclass
class TailRead:
    lines: list[Line] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    more: bool = False  # stopped at the budget: more is waiting


def _fingerprint(path: Path) -> str:
    with path.open("rb") as fh:
        head = fh.read(_HEAD)
    return hashlib.sha1(head).hexdigest() if len(head) == _HEAD else ""


def _find_by_inode(folder: Path, inode: int) -> Path | None:
    try:
        for p in folder.iterdir():
            if p.is_file() and os.stat(p).st_ino == inode:
                return p
    except OSError:
        return None
    return None


def _new_entry(inode: int) -> dict[str, Any]:
    return {"inode": inode, "offset": 0, "line": 0, "head": ""}


def read_new_lines(paths: list[Path], files: dict[str, dict[str, Any]], budget: int) -> TailRead:
    """Read up to `budget` complete new lines; updates `files` (the per-file state) in place."""
    out = TailRead()
    current = {str(p): p for p in paths}
    # Rotated files first: their tail is older than anything in the new file.
    for key, tracked in list(files.items()):
        p = current.get(key)
        if p is not None and os.stat(p).st_ino == tracked["inode"]:
            continue
        old = _find_by_inode(Path(key).parent, tracked["inode"])
        if old is not None:
            budget = _read(old, tracked, out, budget, key)
            if budget <= 0:
                out.more = True
                return out
        del files[key]
    for key, p in current.items():
        if budget <= 0:
            out.more = True
            break
        try:
            st = os.stat(p)
        except OSError as exc:
            out.problems.append(f"{p}: {exc.strerror}")
            continue
        entry = files.get(key)
        if entry is None or entry["inode"] != st.st_ino:
            entry = _new_entry(st.st_ino)
        elif st.st_size < entry["offset"] or (entry["head"] and _fingerprint(p) != entry["head"]):
            entry = _new_entry(st.st_ino)  # truncated (or rewritten in place)
        budget = _read(p, entry, out, budget, key)
        files[key] = entry
        if budget <= 0:
            out.more = True
    return out


def _read(path: Path, entry: dict[str, Any], out: TailRead, budget: int, label: str) -> int:
    try:
        fh = path.open("rb")
    except OSError as exc:
        out.problems.append(f"{path}: {exc.strerror}")
        return budget
    with fh:
        if not entry["head"]:
            entry["head"] = _fingerprint(path)
        fh.seek(entry["offset"])
        while budget > 0:
            raw = fh.readline()
            if not raw or not raw.endswith(b"\n"):
                break  # end of file, or a line still being written
            entry["offset"] += len(raw)
            entry["line"] += 1
            text = raw.decode("utf-8", errors="replace").strip()
            if text:
                budget -= 1
                out.lines.append(Line(text, f"{label}:{entry['line']}"))
    return budget


def latest_event_watermark(state: dict[str, Any], events: list[Event]) -> datetime | None:
    """For files written in time order: complete up to the newest event seen so far."""
    latest = max((to_micros(e.occurred_at) for e in events), default=None)
    if latest is not None and latest > state.get("latest_us", latest - 1):
        state["latest_us"] = latest
    return from_micros(state["latest_us"]) if "latest_us" in state else None
