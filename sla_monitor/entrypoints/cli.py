"""`sla-monitor`: run, check-config, ingest, replay, report, explain, archive, due."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sla_monitor import __version__
from sla_monitor.adapters import open_store
from sla_monitor.adapters.abc import Store
from sla_monitor.config import Config, ConfigError, default_config_path, load_config
from sla_monitor.domain.calendar import CONTINUOUS, CalendarError, TargetClock
from sla_monitor.domain.timeutil import (
    from_micros,
    iso,
    parse_duration,
    parse_instant,
)
from sla_monitor.entrypoints import render
from sla_monitor.sources import validate_source_config
from sla_monitor.sources._tail import MAX_LINE_BYTES
from sla_monitor.sources.abc import Rejected
from sla_monitor.sources.jsonl import EventFile

log = logging.getLogger("sla_monitor")


class UsageError(Exception):
    pass


def _instant(text: str) -> datetime:
    try:
        return parse_instant(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _duration(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _progress(label: str) -> Any:
    start = time.monotonic()

    def show(done: int, events: int) -> None:
        rate = events / max(time.monotonic() - start, 1e-9)
        print(
            f"{label}: {done} contacts, {events} events ({rate:,.0f} events/s)",
            file=sys.stderr,
            flush=True,
        )

    return show


# -- commands -------------------------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config, validate_source_config)
    s = config.settings
    print(
        f"{args.config}: OK — {len(s.policy.rules)} policy rules, {len(s.calendars)} calendars, "
        f"{len(s.sources)} sources ({', '.join(f'{x.name} [{x.kind}]' for x in s.sources) or '-'})"
    )
    for warning in config.unmatched_sources():
        print(f"{args.config}: warning: {warning}", file=sys.stderr)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from sla_monitor.bootstrap import build_app
    from sla_monitor.entrypoints.http import MetricsServer

    app = build_app(args.config, args.db, args.listen, args.alertmanager, serve=MetricsServer)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("received signal %d, stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    app.start()
    log.info(
        "sla-monitor %s running: %d sources, database %s",
        __version__,
        len(app.sources),
        _safe_url(app.store.url),
    )
    try:
        while not stop.wait(1.0):
            pass
    finally:
        app.stop()
    return 0


def _safe_url(url: str) -> str:
    """The database URL without its password (never log secrets)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(unparseable URL)"


def _store(config: Config, args: argparse.Namespace) -> Store:
    store = open_store(args.db or config.database_url)
    store.migrate()
    return store


def cmd_ingest(args: argparse.Namespace) -> int:
    from sla_monitor.service_layer.clock import SystemClock
    from sla_monitor.service_layer.ingest import ImportSummary, advance, import_events
    from sla_monitor.service_layer.monitor import Monitor
    from sla_monitor.service_layer.runtime import settle_heap

    config = load_config(args.config, validate_source_config)
    path = Path(args.file)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    if args.max_line_bytes < 1:
        raise UsageError("--max-line-bytes must be at least 1")
    store = _store(config, args)
    monitor = Monitor(store, config, SystemClock())
    monitor.load()
    settle_heap()  # as `run` does: what was loaded stays, the collector runs less often
    watermark = args.watermark or datetime.now(UTC)
    lines = EventFile(path, args.source, args.max_line_bytes)
    last = time.monotonic()

    def progress(summary: ImportSummary, _items: int) -> None:
        nonlocal last
        if time.monotonic() - last >= 1.0:
            print(render.ingest_progress(lines.lines, summary), file=sys.stderr, flush=True)
            last = time.monotonic()

    def rejected(item: Rejected) -> None:
        print(f"rejected: {item.detail}", file=sys.stderr)

    summary = import_events(monitor, lines, args.source, rejected, progress)
    for problem in lines.problems:
        print(problem, file=sys.stderr)
    if not lines.problems:  # a file cut short does not hold every event up to the watermark
        advance(monitor, summary.sources, watermark)
    print(render.ingested(path, lines.lines, summary, None if lines.problems else watermark))
    store.close()
    if lines.problems:
        return 1
    return 1 if args.strict and summary.set_aside else 0


def cmd_replay(args: argparse.Namespace) -> int:
    from sla_monitor.service_layer.recompute import replay

    config = load_config(args.config, validate_source_config)
    store = _store(config, args)
    as_of = args.as_of or datetime.now(UTC)
    started = time.monotonic()
    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers must be at least 1")
    summary = replay(store, config, as_of, _progress("replay"), args.workers)
    print(render.replayed(summary, as_of, time.monotonic() - started))
    store.close()
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from sla_monitor.service_layer.recompute import report

    config = load_config(args.config, validate_source_config)
    store = _store(config, args)
    as_of = args.as_of or datetime.now(UTC)
    if args.to_ and args.from_ and args.to_ <= args.from_:
        raise UsageError("--to must be later than --from")
    result = report(
        store,
        config,
        as_of,
        args.from_,
        args.to_,
        _progress("report") if sys.stderr.isatty() else None,
    )
    store.close()
    if args.format == "json":
        print(json.dumps(result, indent=2))
    else:
        print(render.report(result))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from sla_monitor.service_layer.recompute import explain

    config = load_config(args.config, validate_source_config)
    store = _store(config, args)
    source, sep, conv = args.contact.partition(":")
    if not sep:
        raise UsageError("CONTACT is SOURCE:CONVERSATION_ID (e.g. demo:1234)")
    result = explain(store, config, (source, conv), args.as_of or datetime.now(UTC))
    store.close()
    if result is None:
        print(f"no events stored for contact {args.contact}", file=sys.stderr)
        if horizon := _archive_horizon(config, args, source):
            print(
                f"(contacts of {source} quiet before {horizon} were archived: "
                "`sla-monitor archive`; ingest its file into a separate database to explain them)",
                file=sys.stderr,
            )
        return 1
    if args.format == "json":
        print(json.dumps(result, indent=2))
        return 0
    print(render.explanation(result))
    return 0


def _archive_horizon(config: Config, args: argparse.Namespace, source: str) -> str | None:
    store = _store(config, args)
    try:
        with store.begin() as tx:
            us = tx.archive.horizons().get(source)
    finally:
        store.close()
    return None if us is None else iso(from_micros(us))


def cmd_archive(args: argparse.Namespace) -> int:
    from sla_monitor.service_layer.archive import ArchiveError, ArchiveInterrupted, archive

    config = load_config(args.config, validate_source_config)
    if args.to_file is None and not args.dry_run:
        raise UsageError("give --to FILE (a new .jsonl.gz file), or --dry-run")
    store = _store(config, args)
    path = None if args.dry_run else Path(args.to_file)
    try:
        s = archive(store, config, args.before, path, datetime.now(UTC), _progress("archive"))
    except ArchiveError as exc:
        raise UsageError(str(exc)) from None
    except ArchiveInterrupted as exc:
        print(f"sla-monitor archive: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    for line in render.archived(s, path):
        print(line)
    return 0


def _clock(config: Config | None, name: str) -> TargetClock:
    if name == "calendar":
        return CONTINUOUS
    calendars = config.calendars if config else {}
    if name not in calendars:
        known = ", ".join(["calendar", *sorted(calendars)])
        raise UsageError(f"unknown calendar {name!r} (known: {known})")
    return calendars[name]


def cmd_due(args: argparse.Namespace) -> int:
    config = (
        load_config(args.config, validate_source_config) if args.calendar != "calendar" else None
    )
    clock = _clock(config, args.calendar)
    if (args.after is None) == (args.to is None):
        raise UsageError("give exactly one of --after DURATION or --to INSTANT")
    try:
        if args.after is not None:
            print(iso(clock.add(args.from_, args.after)))
        else:
            d = clock.between(args.from_, args.to)
            print(render.iso_duration(d) if args.format == "iso" else render.exact_seconds(d))
    except CalendarError as exc:
        raise UsageError(str(exc)) from None
    return 0


# -- parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sla-monitor",
        description="Responsiveness SLA monitor for customer-support teams.",
    )
    p.add_argument("--version", action="version", version=f"sla-monitor {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        default=default_config_path(),
        help="config file (default: $SLA_MONITOR_CONFIG or config/sla-monitor.yaml)",
    )
    common.add_argument("--db", help="database URL; overrides the config's database")
    common.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", parents=[common], help="poll, evaluate, serve /metrics")
    run.add_argument(
        "--listen", help="HOST:PORT for /metrics, /healthz, /readyz (default 0.0.0.0:9799)"
    )
    run.add_argument(
        "--alertmanager",
        action="append",
        metavar="URL",
        help="push per-contact alerts to this Alertmanager (repeatable; adds to "
        "alerting.alertmanager_urls)",
    )
    run.set_defaults(func=cmd_run)

    cc = sub.add_parser("check-config", parents=[common], help="validate the config")
    cc.set_defaults(func=cmd_check_config)

    ing = sub.add_parser("ingest", parents=[common], help="import a JSON-lines file of events")
    ing.add_argument("file")
    ing.add_argument(
        "--source",
        default="ingest",
        help="source name for lines that do not name one (default: ingest)",
    )
    ing.add_argument(
        "--watermark",
        type=_instant,
        help="the file holds every event up to this instant (default: now)",
    )
    ing.add_argument("--strict", action="store_true", help="exit 1 if any line was rejected")
    ing.add_argument(
        "--max-line-bytes",
        type=int,
        default=MAX_LINE_BYTES,
        metavar="N",
        help=f"longer lines are rejected and skipped (default: {MAX_LINE_BYTES})",
    )
    ing.set_defaults(func=cmd_ingest)

    rp = sub.add_parser(
        "replay", parents=[common], help="recompute every outcome from stored events"
    )
    rp.add_argument("--as-of", type=_instant, help="evaluate as of this instant (default: now)")
    rp.add_argument(
        "--workers",
        type=int,
        help="processes reading and evaluating contacts (default: one per CPU; 1: none)",
    )
    rp.set_defaults(func=cmd_replay)

    rep = sub.add_parser("report", parents=[common], help="compliance per channel, queue, target")
    rep.add_argument("--from", dest="from_", type=_instant, help="targets started at or after")
    rep.add_argument("--to", dest="to_", type=_instant, help="targets started before")
    rep.add_argument("--as-of", type=_instant, help="evaluate as of this instant (default: now)")
    rep.add_argument("--format", choices=["text", "json"], default="text")
    rep.set_defaults(func=cmd_report)

    ex = sub.add_parser("explain", parents=[common], help="one contact's timeline and targets")
    ex.add_argument("contact", help="SOURCE:CONVERSATION_ID")
    ex.add_argument("--as-of", type=_instant)
    ex.add_argument("--format", choices=["text", "json"], default="text")
    ex.set_defaults(func=cmd_explain)

    arc = sub.add_parser(
        "archive",
        parents=[common],
        help="move contacts quiet before a date to a gzip file; counters unchanged",
    )
    arc.add_argument(
        "--before",
        type=_instant,
        required=True,
        help="archive contacts with no event at or after this instant",
    )
    arc.add_argument(
        "--to",
        dest="to_file",
        metavar="FILE",
        help="gzip JSON-lines file to write (never overwritten; `ingest` reads it back)",
    )
    arc.add_argument(
        "--dry-run", action="store_true", help="say what would be archived; change nothing"
    )
    arc.set_defaults(func=cmd_archive)

    due = sub.add_parser("due", parents=[common], help="calendar arithmetic")
    due.add_argument(
        "--calendar", required=True, help="a calendar from the config, or 'calendar' for 24x7 time"
    )
    due.add_argument("--from", dest="from_", type=_instant, required=True)
    due.add_argument("--after", type=_duration, help="deadline: this much open time after --from")
    due.add_argument("--to", type=_instant, help="open time between --from and --to")
    due.add_argument(
        "--format",
        choices=["iso", "seconds"],
        default="iso",
        help="how to print a duration (default: ISO-8601, e.g. PT19H)",
    )
    due.set_defaults(func=cmd_due)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per plugin otherwise
    for chatty in ("httpx", "httpcore"):  # a line per request (every Alertmanager re-send)
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.root.level))
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print("config error:\n  " + "\n  ".join(exc.problems), file=sys.stderr)
        return 2
    except UsageError as exc:
        print(f"sla-monitor {args.command}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from sla_monitor.service_layer.monitor import store_unreachable

        if not store_unreachable(exc):
            raise
        log.debug("database unavailable", exc_info=True)
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        print(
            f"sla-monitor {args.command}: database unavailable: {reason} "
            "(check `database` in the config or --db; --log-level debug for details)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
