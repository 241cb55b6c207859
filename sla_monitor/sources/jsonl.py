"""`jsonl`: normalized events from a JSON-lines file, or a folder of them, read
incrementally (see _tail.py for growth, truncation, rotation and half-written lines)."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any, cast

from pydantic import Field

from sla_monitor.domain.events import FIELD_LIMITS, Event, EventError, event_from_dict
from sla_monitor.sources._tail import Line, TailOptions, missing_path, tail_poll
from sla_monitor.sources.abc import PollResult, Problems, Rejected, SourceContext, path_problem


class JsonlOptions(TailOptions):
    path: str = Field(description="a .jsonl file, or a folder of them")
    pattern: str = "*.jsonl"

    def preflight(self) -> Problems:
        return [*super().preflight(), *path_problem(self.path)]


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
        if (missing := missing_path(Path(self.options.path), cursor)) is not None:
            raise missing
        return tail_poll(self._paths(), cursor, now, self.options, self._parse)

    def _parse(self, line: Line) -> Event | Rejected:
        return parse_line(line.text, self.name, self.defaults, line.where)

    def close(self) -> None:
        pass


class EventFile:
    """The events of one file for `ingest` (.jsonl, or .jsonl.gz as `archive` writes): an
    Event or a Rejected per line, in order. Lines longer than `max_line_bytes` are rejected
    without being held in memory; a file cut short (a crash while archiving) ends early,
    with `problems` saying so, every line before it intact."""

    def __init__(self, path: Path, default_source: str, max_line_bytes: int) -> None:
        self.path = path
        self.defaults = {"source": default_source}
        self.max_bytes = max_line_bytes
        self.lines = 0  # non-blank lines read whole and decoded
        self.problems: list[str] = []
        self.size = path.stat().st_size if path.is_file() else 0  # bytes on disk
        self.position = 0  # bytes of the file on disk read so far (for progress)

    def __iter__(self) -> Iterator[Event | Rejected]:
        path = self.path
        with _open(path) as fh:
            for n, raw in enumerate(self._raw_lines(fh), 1):
                where = f"{path}:{n}"
                if raw is None:
                    yield Rejected(
                        "too_long",
                        f"{where}: line longer than {self.max_bytes} bytes "
                        "(--max-line-bytes); skipped",
                        "",
                    )
                    continue
                try:
                    text = raw.decode("utf-8").strip()
                except UnicodeDecodeError as exc:
                    yield Rejected(
                        "bad_encoding",
                        f"{where}: not valid UTF-8 (byte {exc.start} of the line)",
                        raw.decode("utf-8", "backslashreplace").strip(),
                        _named_source(raw.decode("utf-8", "replace")),
                    )
                    continue
                if text:
                    self.lines += 1
                    yield parse_line(text, None, self.defaults, where)

    def _raw_lines(self, fh: IO[bytes]) -> Iterator[bytes | None]:
        """The file's lines; None for one longer than the limit."""
        on_disk = getattr(fh, "fileobj", None) or fh  # a gzip file's compressed stream
        try:
            while raw := fh.readline(self.max_bytes + 1):
                self.position = on_disk.tell()
                if len(raw) <= self.max_bytes or raw.endswith(b"\n"):
                    yield raw
                    continue
                while (rest := fh.readline(1 << 16)) and not rest.endswith(b"\n"):
                    pass  # skip to the end of the over-long line
                yield None
        except (EOFError, OSError, zlib.error) as exc:
            self.problems.append(f"{self.path}: stopped reading early: {exc}")


def _open(path: Path) -> IO[bytes]:
    """.gz for archive files (`sla-monitor archive`)."""
    return cast(IO[bytes], gzip.open(path, "rb")) if path.suffix == ".gz" else path.open("rb")


def _named_source(payload: str) -> str | None:
    """The source a rejected line names, if it is readable enough to tell."""
    try:
        raw = json.loads(payload)
    except ValueError:
        return None
    named = raw.get("source") if isinstance(raw, dict) else None
    ok = isinstance(named, str) and 0 < len(named) <= 200 and "\x00" not in named
    return named if ok else None
