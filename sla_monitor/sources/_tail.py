"""Incremental reading of append-only text files (jsonl exports, Asterisk's queue_log).

State per file (kept in the source's cursor): inode, byte offset, line number, and a
fingerprint of its first bytes. Growth is read from the offset. Rotation, both ways
logrotate does it, loses nothing it could still find:
- rename (`create`): a new inode at the path. The old file is followed under its inode
  until it has stopped growing for a few polls (the writer may append until it reopens).
- `copytruncate`: the same inode, but shorter than the offset or with other first bytes.
  The copy is found beside it by its first bytes, and its tail — everything after the
  offset — is read first. If no copy is found (compressed or deleted already), the lost
  byte range is reported as a gap, never silently skipped.
A half-written last line (no newline yet) is left for the next read. A line longer than
`max_line_bytes` is reported once and skipped to its end, without ever being held in memory;
a line that is not valid UTF-8 is reported, not repaired.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import Field

from sla_monitor.domain.events import Event
from sla_monitor.sources._watermark import WatermarkMode, completed_up_to
from sla_monitor.sources.abc import PollResult, Rejected, SourceError, SourceOptions

_HEAD = 64  # bytes that identify a file (and its rotated copy)
_CHUNK = 1 << 16
_IDLE_POLLS = 3  # a renamed file unchanged for this many polls is done
MAX_LINE_BYTES = 1 << 20


@dataclass(frozen=True)
class Line:
    text: str
    where: str  # file:line, for error messages


@dataclass
class TailRead:
    lines: list[Line] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    gaps: list[str] = field(default_factory=list)  # input known lost, with its byte range
    too_long: list[Line] = field(default_factory=list)  # text: the line's first bytes
    bad_encoding: list[Line] = field(default_factory=list)  # text: escaped
    more: bool = False  # stopped at the budget: more is waiting


def _head(path: Path, n: int = _HEAD) -> str:
    with path.open("rb") as fh:
        return hashlib.sha1(fh.read(n)).hexdigest()


def _new_entry(inode: int) -> dict[str, Any]:
    return {"inode": inode, "offset": 0, "line": 0, "head": "", "head_len": 0}


def _siblings(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if p.is_file()]
    except OSError:
        return []


def _find_by_inode(folder: Path, inode: int) -> Path | None:
    for p in _siblings(folder):
        try:
            if os.stat(p).st_ino == inode:
                return p
        except OSError:
            continue
    return None


def _find_copy(named: Path, path: Path, entry: dict[str, Any]) -> Path | None:
    """The copy `copytruncate` left beside the file first known as `named` (now `path`):
    the newest sibling named after it whose first bytes are the ones we read, and at least
    as long as what we read."""
    found: list[tuple[float, Path]] = []
    for p in _siblings(path.parent):
        if p in (path, named) or not p.name.startswith(named.name):
            continue
        try:
            st = os.stat(p)
            if st.st_size >= entry["offset"] and _head(p, entry["head_len"]) == entry["head"]:
                found.append((st.st_mtime, p))
        except OSError:
            continue
    return max(found)[1] if found else None


def read_new_lines(
    paths: list[Path],
    files: dict[str, dict[str, Any]],
    budget: int,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> TailRead:
    """Read up to `budget` complete new lines; updates `files` (the per-file state) in place."""
    out = TailRead()
    current = {str(p): p for p in paths}
    # Files moved aside first: what is left in them is older than anything at the path.
    for key in [k for k in files if k.startswith("rotated:")]:
        moved = files[key]
        old = _find_by_inode(Path(moved["path"]).parent, moved["inode"])
        if old is None:
            del files[key]
            continue
        before = (moved["offset"], moved["line"])
        budget = _read_from(old, moved, out, budget, moved["path"], max_line_bytes)
        changed = (moved["offset"], moved["line"]) != before
        moved["idle"] = 0 if changed else moved.get("idle", 0) + 1
        if budget <= 0:
            out.more = True
            return out
        if moved["idle"] >= _IDLE_POLLS:
            del files[key]
    for key in [k for k in files if not k.startswith("rotated:") and k not in current]:
        _follow_moved(files, key)  # renamed, and nothing at the path yet
    for key, p in current.items():
        if budget <= 0:
            out.more = True
            break
        try:
            st = os.stat(p)
        except OSError as exc:
            out.problems.append(f"{p}: {exc.strerror}")
            continue
        entry: dict[str, Any] | None = files.get(key)
        if entry is not None and entry["inode"] != st.st_ino:  # renamed away: follow it
            moved = _follow_moved(files, key)
            old = _find_by_inode(p.parent, moved["inode"])
            if old is not None:
                budget = _read_from(old, moved, out, budget, key, max_line_bytes)
            entry = None
        if entry is None:
            entry = _new_entry(st.st_ino)
        files[key] = entry
        if budget <= 0:
            out.more = True
            break
        budget = _read_from(p, entry, out, budget, key, max_line_bytes)
        if budget <= 0:
            out.more = True
    return out


def _read_from(
    path: Path, entry: dict[str, Any], out: TailRead, budget: int, label: str, max_line: int
) -> int:
    """Read on from `entry`; a file truncated in place since (shorter than what was read, or
    with other first bytes) first has the rest read from its copy, then is read anew."""
    try:
        size = os.stat(path).st_size
        truncated = size < entry["offset"] or (
            entry["head_len"] > 0 and _head(path, entry["head_len"]) != entry["head"]
        )
    except OSError as exc:
        out.problems.append(f"{path}: {exc.strerror}")
        return budget
    if truncated:
        budget = _truncated(Path(label), path, entry, out, budget, label, max_line)
        entry.update(offset=0, line=0, head="", head_len=0, skipping=False)
        if budget <= 0:
            return budget
    return _read(path, entry, out, budget, label, max_line)


def _follow_moved(files: dict[str, dict[str, Any]], key: str) -> dict[str, Any]:
    """The file at `key` was renamed: follow it under its inode from where we were."""
    entry = files.pop(key)
    moved = files[f"rotated:{entry['inode']}"] = {**entry, "path": key, "idle": 0}
    return moved


def _truncated(
    named: Path,
    path: Path,
    entry: dict[str, Any],
    out: TailRead,
    budget: int,
    label: str,
    max_line: int,
) -> int:
    """`path` (first known as `named`) was truncated in place: read the rest of what we had
    not read from its copy."""
    copy = _find_copy(named, path, entry) if entry["head_len"] else None
    if copy is not None:
        return _read(copy, dict(entry), out, budget, label, max_line, final=True)
    if entry["offset"] or entry["head_len"]:
        out.gaps.append(
            f"{label}: truncated in place (copytruncate?) and no copy of it was found beside "
            f"it: bytes from {entry['offset']} (after line {entry['line']}) up to the "
            "truncation were not read"
        )
    return budget


def _read(
    path: Path,
    entry: dict[str, Any],
    out: TailRead,
    budget: int,
    label: str,
    max_line: int,
    final: bool = False,
) -> int:
    """Read complete lines from `entry`'s offset (`final`: the file will not grow, so an
    unterminated last line is a line too)."""
    try:
        fh = path.open("rb")
    except OSError as exc:
        out.problems.append(f"{path}: {exc.strerror}")
        return budget
    with fh:
        if entry["head_len"] < _HEAD:  # the fingerprint grows with the file, up to _HEAD
            first = fh.read(_HEAD)
            entry["head"], entry["head_len"] = hashlib.sha1(first).hexdigest(), len(first)
        fh.seek(entry["offset"])
        while budget > 0:
            if entry.get("skipping"):  # inside a line too long to keep: find its end
                chunk = fh.read(_CHUNK)
                if not chunk:
                    break
                end = chunk.find(b"\n")
                entry["offset"] += len(chunk) if end < 0 else end + 1
                if end >= 0:
                    entry["skipping"] = False
                    entry["line"] += 1
                    fh.seek(entry["offset"])
                continue
            raw = fh.readline(max_line + 1)
            if not raw:
                break
            if not raw.endswith(b"\n"):
                if len(raw) > max_line:
                    where = f"{label}:{entry['line'] + 1}"
                    preview = raw[:200].decode("utf-8", "backslashreplace")
                    out.too_long.append(Line(preview, where))
                    entry["offset"] += len(raw)
                    entry["skipping"] = True
                    continue
                if not final:
                    break  # a line still being written
            entry["offset"] += len(raw)
            entry["line"] += 1
            try:
                text = raw.decode("utf-8").strip()
            except UnicodeDecodeError as exc:
                where = f"{label}:{entry['line']} (byte {exc.start} of the line)"
                out.bad_encoding.append(Line(raw.decode("utf-8", "backslashreplace"), where))
                budget -= 1
                continue
            if text:
                budget -= 1
                out.lines.append(Line(text, f"{label}:{entry['line']}"))
    return budget


class TailOptions(SourceOptions):
    """Options every file-tailing source shares."""

    watermark: WatermarkMode = "read_time"
    max_lines_per_poll: int = Field(50_000, gt=0)
    max_line_bytes: int = Field(MAX_LINE_BYTES, gt=0, description="longer lines are rejected")


def missing_path(path: Path, cursor: str | None) -> SourceError | None:
    """A configured path that does not exist and never did, as far as this source knows
    (nothing read from it yet): a wrong path, reported as a failed poll (the source goes
    down) instead of read as "nothing happened". A path that was read before and is gone
    for a moment (a rename rotation) is not an error: the tail follows the old file."""
    if path.exists() or (cursor and json.loads(cursor).get("files")):
        return None
    return SourceError(f"{path}: no such file or folder (check the source's options.path)")


def tail_poll(
    paths: list[Path],
    cursor: str | None,
    now: datetime,
    options: TailOptions,
    parse: Callable[[Line], Event | Rejected | None],
) -> PollResult:
    """One poll of a file-tailing source: new lines parsed by `parse`, everything that
    could not be read reported as rejected (unreadable, too long, bad encoding, gaps)."""
    state: dict[str, Any] = json.loads(cursor) if cursor else {"files": {}}
    read = read_new_lines(
        paths, state.setdefault("files", {}), options.max_lines_per_poll, options.max_line_bytes
    )
    result = PollResult(more=read.more)
    result.rejected += [Rejected("unreadable", p, "") for p in read.problems]
    result.rejected += [Rejected("rotation_gap", g, "") for g in read.gaps]
    result.rejected += [
        Rejected(
            "too_long",
            f"{line.where}: line longer than {options.max_line_bytes} bytes (max_line_bytes); "
            "skipped to its end",
            line.text,
        )
        for line in read.too_long
    ]
    result.rejected += [
        Rejected("bad_encoding", f"{line.where}: not valid UTF-8", line.text)
        for line in read.bad_encoding
    ]
    for line in read.lines:
        item = parse(line)
        if isinstance(item, Event):
            result.events.append(item)
        elif item is not None:
            result.rejected.append(item)
    if not result.more:
        result.watermark = completed_up_to(options.watermark, state, result.events, now)
    result.cursor = json.dumps(state, sort_keys=True)
    return result
