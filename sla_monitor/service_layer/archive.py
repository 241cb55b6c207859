"""`archive`: move the events of contacts that went quiet before a date out of the database
into a gzip JSON-lines file (the event format `ingest` reads), without moving a counter.

Which contacts (docs/scaling.md, "Retention"): no event at or after `before`, no open
target, no deadline or watermark wait pending, from a source read completely up to
`before`, and not one that a staying contact of the same customer could be a repeat of (so
no repeat link, now or after a replay, ever points into the archive). Their contribution
to every counter goes into the carried totals in the same transaction that deletes their
rows, and each batch is on disk (fsync) before that transaction commits: a crash loses
nothing, at worst a batch is both in the file and still stored (restoring is idempotent).
"""

from __future__ import annotations

import gzip
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO

from sla_monitor.adapters.abc import Store, Transaction
from sla_monitor.adapters.records import QuietContact
from sla_monitor.config import Config
from sla_monitor.domain.engine import ContactSummary, could_repeat
from sla_monitor.domain.events import ContactKey, Event
from sla_monitor.domain.timeutil import format_duration, iso, to_micros

Progress = Callable[[int, int], None]  # (contacts done, events done)


class ArchiveError(Exception):
    """The archive cannot run as asked; nothing was changed."""


class ArchiveInterrupted(Exception):
    """The archive stopped part-way: what it reports as archived is committed and in the
    file; everything else is still stored."""


@dataclass
class ArchiveSummary:
    before: datetime
    file: Path | None
    contacts: int = 0
    events: int = 0
    targets: int = 0
    opened: int = 0  # archived contacts that had opened (all before `before`)
    kept_linked: int = 0  # quiet, but chained to a contact that stays
    remaining_before: int = 0  # contacts opened before `before` still stored, for any reason
    behind: dict[str, datetime | None] = field(default_factory=dict)  # sources not read to it


def archive(
    store: Store,
    config: Config,
    before: datetime,
    path: Path | None,
    now: datetime,
    progress: Progress | None = None,
    batch: int = 2000,
) -> ArchiveSummary:
    """Archive to `path`; `path=None` is a dry run (the same selection, nothing changed)."""
    window = config.policy.repeat_window
    if before > now - window:
        raise ArchiveError(
            f"--before {iso(before)} is within the repeat window "
            f"({format_duration(window)}) of now: a contact opened since "
            f"{iso(now - window)} can still make an earlier one a repeat contact. "
            f"Choose {iso(now - window)} or earlier."
        )
    if path is not None and not path.parent.is_dir():
        raise ArchiveError(f"{path.parent}: no such folder")
    before_us = to_micros(before)
    with store.begin() as tx:
        states = tx.sources.load()
    ready = sorted(
        n for n, s in states.items() if s.watermark is not None and s.watermark >= before
    )
    summary = ArchiveSummary(
        before, path, behind={n: s.watermark for n, s in states.items() if n not in ready}
    )
    sink = _ArchiveFile(path) if path is not None else None  # refuses an existing file
    try:
        run_id = 0
        if sink is not None:
            # the horizon first: from now on an old event of an archived contact is set aside
            # by every poller instead of starting a contact with half its history
            with store.begin() as tx:
                run_id = tx.archive.start_run(before_us, str(path), to_micros(now), ready)
        last = time.monotonic()
        try:
            with store.read() as reader:
                for chunk in _by_customer(reader.archive.quiet_contacts(before_us, ready), batch):
                    _archive_chunk(store, chunk, before_us, window, run_id, sink, summary)
                    if progress is not None and time.monotonic() - last >= 1.0:
                        progress(summary.contacts, summary.events)
                        last = time.monotonic()
        except Exception as exc:
            raise ArchiveInterrupted(
                f"stopped with {summary.contacts:,} quiet contacts archived "
                f"({summary.events:,} events): "
                f"{exc!r}. Those are committed"
                + (f" and in {path}" if path is not None else "")
                + "; the rest is still stored. Run again with a new --to file to go on."
            ) from exc
        if sink is not None:
            with store.begin() as tx:
                tx.archive.finish_run(run_id, to_micros(now))
    finally:
        if sink is not None:
            sink.close()
    if progress is not None:
        progress(summary.contacts, summary.events)
    with store.begin() as tx:
        summary.remaining_before = tx.archive.count_opened_before(before_us)
    if sink is None:  # a dry run deleted nothing
        summary.remaining_before -= summary.opened
    return summary


class _DryRun(Exception):
    """Ends a dry run's transaction, rolling it back."""


def _archive_chunk(
    store: Store,
    chunk: list[QuietContact],
    before_us: int,
    window: timedelta,
    run_id: int,
    sink: _ArchiveFile | None,
    summary: ArchiveSummary,
) -> None:
    try:
        with store.begin() as tx:
            # re-checked inside the writing transaction: an event may have arrived since
            keys_in = [(q.source, q.conversation_id) for q in chunk]
            quiet = {(q[0], q[1]) for q in tx.archive.quiet_contacts(before_us, (), keys_in)}
            customers = {q.customer_id for q in chunk if q.customer_id and q[:2] in quiet}
            linked = _linked_to_staying(tx, customers, quiet, window)
            keys = [k for k in keys_in if k in quiet and k not in linked]
            summary.kept_linked += len(linked)
            if not keys:
                return
            write = sink.write if sink is not None else (lambda _events: None)
            events, targets, opened = tx.archive.archive(keys, run_id, write)
            if sink is None:
                raise _DryRun  # a dry run does the same work in a transaction it rolls back
    except _DryRun:
        pass
    summary.contacts += len(keys)
    summary.opened += opened
    summary.events += events
    summary.targets += targets


def _linked_to_staying(
    tx: Transaction,
    customers: set[str],
    quiet: set[ContactKey],
    window: timedelta,
) -> set[ContactKey]:
    """Quiet contacts that must stay because a contact that stays could be a repeat of them
    (opened within the window after, before they had a personal response): archiving them
    would change that contact's link at its next evaluation or replay. Links only run from
    later to earlier contacts, so one pass from a customer's latest contact back decides."""
    keep: set[ContactKey] = set()
    by_customer: dict[str, list[ContactSummary]] = {}
    for s in tx.state.summaries_for_customers(customers):
        if s.opened_at is not None and s.customer_id:
            by_customer.setdefault(s.customer_id, []).append(s)
    for group in by_customer.values():
        group.sort(key=lambda s: (s.opened_at, s.key), reverse=True)
        staying: deque[ContactSummary] = deque()  # later contacts that stay, latest first
        for s in group:
            assert s.opened_at is not None
            while staying and staying[0].opened_at - s.opened_at > window:  # type: ignore[operator]
                staying.popleft()
            if s.key in quiet and not any(could_repeat(s, z, window) for z in staying):
                continue  # goes to the archive
            if s.key in quiet:
                keep.add(s.key)
            staying.append(s)
    return keep


def _by_customer(rows: Iterable[QuietContact], size: int) -> Iterator[list[QuietContact]]:
    """Chunks of about `size` contacts that never split one customer's contacts."""
    chunk: list[QuietContact] = []
    for row in rows:
        if len(chunk) >= size and (row[2] is None or row[2] != chunk[-1][2]):
            yield chunk
            chunk = []
        chunk.append(row)
    if chunk:
        yield chunk


class _ArchiveFile:
    """Gzip JSON lines, one event per line; each batch flushed and fsynced before the
    transaction that deletes its rows commits. Never overwrites: opened with O_EXCL."""

    def __init__(self, path: Path) -> None:
        try:
            self.raw: IO[bytes] = path.open("xb")
        except FileExistsError:
            raise ArchiveError(
                f"{path} already exists: an archive file is never overwritten; choose a new name"
            ) from None
        self.gz = gzip.GzipFile(fileobj=self.raw, mode="wb", filename="")

    def write(self, events: list[Event]) -> None:
        lines = "".join(json.dumps(e.to_dict(), separators=(",", ":")) + "\n" for e in events)
        self.gz.write(lines.encode())
        self.gz.flush()  # a sync flush: every line so far can be read back after a crash
        self.raw.flush()
        os.fsync(self.raw.fileno())

    def close(self) -> None:
        self.gz.close()
        self.raw.close()
