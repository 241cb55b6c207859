"""`sla-monitor`: run, check-config, ingest, replay, report, explain, archive, due."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import sys
import threading
import time
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sla_monitor import __version__
from sla_monitor.adapters import open_store
from sla_monitor.adapters.abc import Store
from sla_monitor.config import (
    Config,
    ConfigError,
    default_config_path,
    load_config,
    parse_listen,
)
from sla_monitor.domain.calendar import CONTINUOUS, CalendarError, TargetClock
from sla_monitor.domain.timeutil import (
    from_micros,
    iso,
    parse_duration,
    parse_human_instant,
)
from sla_monitor.entrypoints import render
from sla_monitor.entrypoints.webconfig import WebConfigError
from sla_monitor.sources import validate_source_config
from sla_monitor.sources._tail import MAX_LINE_BYTES
from sla_monitor.sources.abc import Rejected
from sla_monitor.sources.jsonl import EventFile

log = logging.getLogger("sla_monitor")


class UsageError(Exception):
    pass


INSTANT_OPTIONS = ("from_", "to_", "to", "as_of", "before", "watermark")  # args' names


def _instants(args: argparse.Namespace, now: datetime) -> None:
    """Options given as instants, read as a person writes them (parse_human_instant) in
    the zone of --tz, once every option is known; relative ones ("2h", "7d") back from
    `now`."""
    try:
        tz: tzinfo = ZoneInfo(args.tz) if args.tz not in ("UTC", "Z") else UTC
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(f"--tz {args.tz!r}: not an IANA time zone (e.g. Europe/Berlin)") from None
    args.zone = tz  # text output shows instants in it too
    now = now.replace(microsecond=0)
    if getattr(args, "since", None) is not None and getattr(args, "from_", None) is not None:
        raise UsageError("give --from or --since, not both")
    for name in (*INSTANT_OPTIONS, "since"):
        value = getattr(args, name, None)
        if isinstance(value, str):
            try:
                setattr(args, name, parse_human_instant(value, tz, now))
            except ValueError as exc:
                option = "--" + name.rstrip("_").replace("_", "-")
                raise UsageError(f"{option}: {exc}") from None
    if getattr(args, "since", None) is not None:
        args.from_ = args.since


def _duration(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _progress(label: str, total_events: int | None = None) -> Any:
    """A progress line on stderr (about once a second: the callers throttle): share done
    and time left where the total is known, and the rate."""
    start = time.monotonic()

    def show(done: int, events: int) -> None:
        took = time.monotonic() - start
        rate = events / max(took, 1e-9)
        where = render.progress(events, total_events, took) + " — " if total_events else ""
        print(
            f"{label}: {where}{done:,} contacts, {events:,} events ({rate:,.0f} events/s)",
            file=sys.stderr,
            flush=True,
        )

    return show


def _stored_events(store: Store) -> int | None:
    """About how many events are stored (for progress): counted as they were stored."""
    with store.read() as tx:
        return sum(n for _labels, n in tx.counters.ingested()) or None


# -- commands -------------------------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace) -> int:
    from sla_monitor.entrypoints.webconfig import load_web_config
    from sla_monitor.sources import preflight_source

    config = load_config(args.config, validate_source_config)
    # everything `run` will need that can be checked without side effects, listed at once
    problems = config.preflight(preflight_source)
    if config.web_config_path:
        try:
            load_web_config(config.web_config_path)
        except WebConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError(problems)
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

    app = build_app(
        args.config,
        args.db,
        args.listen,
        args.alertmanager,
        serve=MetricsServer,
        web_config=args.web_config,
    )
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("received signal %d, stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        app.start()
    except BaseException:
        app.stop()  # what did start (pages, the scheduler) must not keep the process alive
        raise
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


def _open(args: argparse.Namespace) -> tuple[Config, Store, datetime]:
    """The config, the store, and the instant its monitor is at ("now" for the tools that
    judge it: a demo database's clock runs ahead of real time), with the instants given
    on the command line read against that now."""
    from sla_monitor.service_layer.clock import database_now
    from sla_monitor.service_layer.runtime import alive_within

    config = load_config(args.config, validate_source_config)
    store = _store(config, args)
    try:
        now = database_now(config, store, alive_within(config)).replace(microsecond=0)
        _instants(args, now)
    except BaseException:
        store.close()
        raise
    return config, store, now


def cmd_ingest(args: argparse.Namespace) -> int:
    from sla_monitor.service_layer.clock import SystemClock
    from sla_monitor.service_layer.ingest import ImportSummary, advance, import_events
    from sla_monitor.service_layer.monitor import Monitor
    from sla_monitor.service_layer.runtime import settle_heap

    config = load_config(args.config, validate_source_config)
    _instants(args, datetime.now(UTC))
    path = Path(args.file)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    if args.max_line_bytes < 1:
        raise UsageError("--max-line-bytes must be at least 1")
    store = _store(config, args)
    monitor = Monitor(store, config, SystemClock())
    monitor.log_rejections = False  # printed below, once each, with the line they came from
    monitor.load()
    settle_heap()  # as `run` does: what was loaded stays, the collector runs less often
    watermark = args.watermark or datetime.now(UTC)
    lines = EventFile(path, args.source, args.max_line_bytes)
    started = last = time.monotonic()

    def progress(summary: ImportSummary, _items: int) -> None:
        nonlocal last
        if time.monotonic() - last >= 1.0:
            took = time.monotonic() - started
            line = render.ingest_progress(lines.lines, summary, lines.position, lines.size, took)
            print(line, file=sys.stderr, flush=True)
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
    from sla_monitor.service_layer.runtime import alive_within, holders_of

    config, store, now = _open(args)
    # replay rewrites every contact: under a running monitor, both would write the same
    # records (and the monitor's memory would no longer match the store)
    within = alive_within(config)
    if running := holders_of(store, datetime.now(UTC), within):
        store.close()
        raise UsageError(
            f"a monitor is running on this database ({', '.join(running)}): stop it first, "
            "replay, then start it again (one stopped without saying so is forgotten "
            f"{within:.0f} s after its last sign of life)"
        )
    as_of = args.as_of or now
    started = time.monotonic()
    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers must be at least 1")
    total = _stored_events(store)
    summary = replay(store, config, as_of, _progress("replay", total), args.workers)
    print(render.replayed(summary, as_of, time.monotonic() - started))
    store.close()
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from sla_monitor.service_layer.recompute import breaches, report

    config, store, now = _open(args)
    as_of = args.as_of or now
    if args.to_ and args.from_ and args.to_ <= args.from_:
        store.close()
        raise UsageError("--to must be later than --from")
    progress = _progress("report") if sys.stderr.isatty() else None
    try:
        result = report(store, config, as_of, args.from_, args.to_, progress, args.by, args.zone)
        lapses = (
            breaches(store, config, as_of, args.from_, args.to_) if args.format == "html" else []
        )
    finally:
        store.close()
    if args.format == "json":
        text = json.dumps(result, indent=2) + "\n"
    elif args.format == "csv":
        text = render.report_csv(result)
    elif args.format == "html":
        from sla_monitor.entrypoints.html_report import render_html

        objective = config.settings.objectives.ratio
        text = render_html(result, lapses, _withins(config, result), objective, args.zone)
    else:
        text = render.report(result, args.zone) + "\n"
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _withins(config: Config, result: dict[str, Any]) -> dict[tuple[str, str, str], float]:
    """Each reported channel/queue/target's `within`, from the first policy rule whose
    channel and queue match (the report does not split by priority or tier)."""
    out = {}
    for row in result["targets"]:
        for rule in config.settings.policy.rules:
            m = rule.match
            channels = [c.value for c in m.channel] if m.channel else None
            if (channels is None or row["channel"] in channels) and (
                m.queue is None or row["queue"] in m.queue
            ):
                spec = next((t for n, t in rule.targets.items() if n.value == row["target"]), None)
                if spec is not None:
                    out[(row["channel"], row["queue"], row["target"])] = spec.within.total_seconds()
                    break
    return out


def cmd_rules(args: argparse.Namespace) -> int:
    from sla_monitor.publishing.rules import render_rules

    config = load_config(args.config, validate_source_config)
    text = render_rules(config, config.settings.runbooks_url())
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}: check it with `promtool check rules {args.out}`")
    else:
        sys.stdout.write(text)
    return 0


def cmd_breaches(args: argparse.Namespace) -> int:
    from sla_monitor.service_layer.recompute import breaches

    config, store, now = _open(args)
    as_of = args.as_of or now
    if args.to_ and args.from_ and args.to_ <= args.from_:
        store.close()
        raise UsageError("--to must be later than --from")
    try:
        found = breaches(
            store,
            config,
            as_of,
            args.from_,
            args.to_,
            frozenset(args.queue or ()),
            _progress("breaches") if sys.stderr.isatty() else None,
        )
    finally:
        store.close()
    if args.format == "json":
        print(json.dumps({"as_of": iso(as_of), "breaches": found}, indent=2))
    elif args.format == "csv":
        sys.stdout.write(render.breaches_csv(found))
    else:
        print(render.breaches(found, as_of, args.zone))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from sla_monitor.service_layer.recompute import explain

    source, sep, conv = args.contact.partition(":")
    if not sep:
        raise UsageError("CONTACT is SOURCE:CONVERSATION_ID (e.g. demo:1234)")
    config, store, now = _open(args)
    result = explain(store, config, (source, conv), args.as_of or now)
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
    print(render.explanation(result, args.zone))
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

    if args.to_file is None and not args.dry_run:
        raise UsageError("give --to FILE (a new .jsonl.gz file), or --dry-run")
    config, store, now = _open(args)
    path = None if args.dry_run else Path(args.to_file)
    try:
        s = archive(store, config, args.before, path, now, _progress("archive"))
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


INSTANT = "WHEN"  # how every instant option is shown in help
WHEN_HELP = """\
WHEN is a date (2026-11-24) or a local time ('2026-11-24 09:00') in --tz,
an ISO-8601 instant with an offset (2026-11-24T09:00:00Z), or how long ago
(7d, 90m)."""
EXAMPLES = {
    "run": "sla-monitor run --config /etc/sla-monitor/sla-monitor.yaml --listen 127.0.0.1:9799",
    "check-config": "sla-monitor check-config --config /etc/sla-monitor/sla-monitor.yaml",
    "ingest": "sla-monitor ingest events.jsonl --source helpdesk-export --strict",
    "replay": "sla-monitor replay --as-of '2026-11-30 18:00' --tz Europe/Berlin",
    "report": "sla-monitor report --since 7d\n  sla-monitor report --from 2026-11-01 --to "
    "2026-12-01 --tz Europe/Berlin --format html --out november.html",
    "rules": "sla-monitor rules --config /etc/sla-monitor/sla-monitor.yaml "
    "--out /etc/prometheus/rules/sla-monitor.rules.yml",
    "breaches": "sla-monitor breaches --since 7d --queue billing\n  sla-monitor breaches "
    "--from 2026-11-01 --to 2026-12-01 --format csv > lapses-november.csv",
    "explain": "sla-monitor explain zendesk:48213\n  sla-monitor explain demo:1234 --as-of 2h",
    "archive": "sla-monitor archive --before 2026-01-01 --to /backup/sla-2025.jsonl.gz",
    "due": "sla-monitor due --calendar office --from '2026-11-27 17:30' --tz Europe/Berlin "
    "--after 4h\n  sla-monitor due --calendar office --from 2026-11-27 --to 2026-11-30 "
    "--format seconds",
}


def _options(suppress: bool) -> argparse.ArgumentParser:
    """The options every command takes, before or after its name (`suppress`: for the
    command's own parser, so that one given before the command is not reset after it)."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE",
        default=default(default_config_path()),
        help="config file (default: $SLA_MONITOR_CONFIG or config/sla-monitor.yaml)",
    )
    common.add_argument(
        "--db", metavar="URL", default=default(None), help="database URL; overrides the config's"
    )
    common.add_argument(
        "--log-level",
        default=default("INFO"),
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="how much to log (default: INFO; DEBUG also shows tracebacks)",
    )
    common.add_argument(
        "--log-format",
        default=default("text"),
        choices=["text", "json"],
        help="text lines, or one JSON object a line for container logs (default: text)",
    )
    common.add_argument(
        "--tz",
        metavar="ZONE",
        default=default("UTC"),
        help="IANA time zone of dates and times given without an offset, and of the times "
        "text output shows (default: UTC; JSON is always UTC)",
    )
    return common


def _listen(text: str) -> str:
    try:
        parse_listen(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (e.g. 127.0.0.1:9799 or :9799)") from None
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sla-monitor",
        description="Responsiveness SLA monitor for customer-support teams.",
        parents=[_options(suppress=False)],
        epilog="Options before the command apply to it: sla-monitor --config FILE report",
    )
    p.add_argument("--version", action="version", version=f"sla-monitor {__version__}")
    common = _options(suppress=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, when: bool = False) -> argparse.ArgumentParser:
        epilog = (WHEN_HELP + "\n\n" if when else "") + "example:\n  " + EXAMPLES[name]
        return sub.add_parser(
            name,
            parents=[common],
            help=help,
            description=help[0].upper() + help[1:] + ".",
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    run = command("run", "poll, evaluate, serve /metrics, /healthz and /readyz")
    run.add_argument(
        "--listen",
        type=_listen,
        metavar="HOST:PORT",
        default=os.environ.get("SLA_MONITOR_LISTEN") or None,
        help="where to serve /metrics, /healthz, /readyz (default: $SLA_MONITOR_LISTEN, "
        "else the config's listen)",
    )
    run.add_argument(
        "--web-config",
        metavar="FILE",
        help="TLS and basic auth for /metrics, in exporter-toolkit's web-config.yml format "
        "(default: the config's web_config_file)",
    )
    run.add_argument(
        "--alertmanager",
        action="append",
        metavar="URL",
        help="push per-contact alerts to this Alertmanager (repeatable; adds to "
        "alerting.alertmanager_urls)",
    )
    run.set_defaults(func=cmd_run)

    cc = command("check-config", "validate the config and say what it holds")
    cc.set_defaults(func=cmd_check_config)

    ing = command("ingest", "import a JSON-lines file of events", when=True)
    ing.add_argument("file", metavar="FILE", help="JSON lines, one event each (or .gz)")
    ing.add_argument(
        "--source",
        default="ingest",
        help="source name for lines that do not name one (default: ingest)",
    )
    ing.add_argument(
        "--watermark",
        metavar=INSTANT,
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

    rp = command("replay", "recompute every outcome from stored events", when=True)
    rp.add_argument("--as-of", metavar=INSTANT, help="evaluate as of this instant (default: now)")
    rp.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="processes reading and evaluating contacts (default: one per CPU; 1: none)",
    )
    rp.set_defaults(func=cmd_replay)

    rep = command("report", "compliance per channel, queue and target", when=True)
    rep.add_argument("--from", dest="from_", metavar=INSTANT, help="targets started at or after")
    rep.add_argument(
        "--since", metavar=INSTANT, help="the same as --from (e.g. --since 7d: the last week)"
    )
    rep.add_argument("--to", dest="to_", metavar=INSTANT, help="targets started before")
    rep.add_argument("--as-of", metavar=INSTANT, help="evaluate as of this instant (default: now)")
    rep.add_argument(
        "--by",
        choices=["agent", "team"],
        help="also per person or team: the targets they answered, met %% and response times",
    )
    rep.add_argument(
        "--format",
        choices=["text", "json", "csv", "html"],
        default="text",
        help="output (default: text; csv: one row per channel, queue and target, or per "
        "person or team with --by; html: one self-contained page to read, print or forward)",
    )
    rep.add_argument("--out", metavar="FILE", help="write to FILE (default: standard output)")
    rep.set_defaults(func=cmd_report)

    ru = command("rules", "write the Prometheus rules for the config's objectives")
    ru.add_argument("--out", metavar="FILE", help="write them to FILE (default: standard output)")
    ru.set_defaults(func=cmd_rules)

    br = command("breaches", "the contacts whose acknowledgement lapsed, with links", when=True)
    br.add_argument("--from", dest="from_", metavar=INSTANT, help="deadlines at or after")
    br.add_argument("--since", metavar=INSTANT, help="the same as --from (e.g. --since 7d)")
    br.add_argument("--to", dest="to_", metavar=INSTANT, help="deadlines before")
    br.add_argument("--as-of", metavar=INSTANT, help="evaluate as of this instant (default: now)")
    br.add_argument(
        "--queue", action="append", metavar="QUEUE", help="only this queue (repeat for more)"
    )
    br.add_argument(
        "--format",
        choices=["text", "json", "csv"],
        default="text",
        help="output (default: text; csv for a spreadsheet)",
    )
    br.set_defaults(func=cmd_breaches)

    ex = command("explain", "one contact's timeline and targets", when=True)
    ex.add_argument("contact", metavar="CONTACT", help="SOURCE:CONVERSATION_ID (e.g. demo:1234)")
    ex.add_argument("--as-of", metavar=INSTANT, help="explain as of this instant (default: now)")
    ex.add_argument(
        "--format", choices=["text", "json"], default="text", help="output (default: text)"
    )
    ex.set_defaults(func=cmd_explain)

    arc = command(
        "archive", "move contacts quiet before a date to a gzip file; counters unchanged", True
    )
    arc.add_argument(
        "--before",
        metavar=INSTANT,
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

    due = command("due", "calendar arithmetic: deadlines and business time", when=True)
    due.add_argument(
        "--calendar",
        metavar="NAME",
        required=True,
        help="a calendar from the config, or 'calendar' for 24x7 time",
    )
    due.add_argument("--from", dest="from_", metavar=INSTANT, required=True, help="the start")
    due.add_argument(
        "--after",
        type=_duration,
        metavar="DURATION",
        help="deadline: this much open time after --from (e.g. 4h, 1h30m)",
    )
    due.add_argument("--to", metavar=INSTANT, help="open time between --from and --to")
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
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if args.log_format == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=getattr(logging, args.log_level), handlers=[handler])
    debug = args.log_level == "DEBUG"
    if not debug:  # libraries speak at WARNING and above (httpx: a line per Alertmanager
        handler.addFilter(_ours_or_warning)  # re-send; alembic: a line per plugin; ...)
    try:
        if args.func is cmd_due:  # the others read them against their database (_open)
            _instants(args, datetime.now(UTC))
        code = int(args.func(args))
        sys.stdout.flush()  # here, so a reader gone away is met below, not at exit
        return code
    except ConfigError as exc:
        print("config error:\n  " + "\n  ".join(exc.problems), file=sys.stderr)
        return 2
    except (UsageError, WebConfigError) as exc:
        print(f"sla-monitor {args.command}: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader went away (`explain … | head`): stop quietly, as a Unix tool does
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print(f"sla-monitor {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        print(f"sla-monitor {args.command}: {_plain(exc)}", file=sys.stderr)
        return 1


def _ours_or_warning(record: logging.LogRecord) -> bool:
    return record.name.startswith("sla_monitor") or record.levelno >= logging.WARNING


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for container log collectors (`--log-format json`)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _plain(exc: BaseException) -> str:
    """One line saying what went wrong, with a hint (the traceback with --log-level debug;
    never SQL parameters or URLs with passwords: only the driver's first line)."""
    from sla_monitor.service_layer.monitor import store_unreachable

    if store_unreachable(exc):
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        return (
            f"database unavailable: {reason} (check `database` in the config or --db; "
            "--log-level debug for details)"
        )
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen: {exc.strerror} — is another sla-monitor (or another program) "
            "serving that port? Choose another with --listen HOST:PORT or `listen:` in the "
            "config"
        )
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM):
        where = f" {exc.filename}" if exc.filename else ""
        return f"permission denied{where}: {exc.strerror} (--log-level debug for details)"
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or exc}{where} (--log-level debug for details)"
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return (
        f"unexpected error: {type(exc).__name__}: {first} (run again with --log-level debug "
        "for the traceback, and report it)"
    )


if __name__ == "__main__":
    sys.exit(main())
