"""`sla-monitor`: run, check-config, ingest, replay, report, explain, archive, due."""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import signal
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, cast

from sla_monitor import __version__
from sla_monitor.adapters import open_store
from sla_monitor.adapters.abc import Store
from sla_monitor.config import Config, ConfigError, default_config_path, load_config
from sla_monitor.domain.calendar import CONTINUOUS, CalendarError, TargetClock
from sla_monitor.domain.events import Event
from sla_monitor.domain.timeutil import (
    format_duration,
    from_micros,
    iso,
    parse_duration,
    parse_instant,
)
from sla_monitor.sources import validate_source_config
from sla_monitor.sources._tail import MAX_LINE_BYTES
from sla_monitor.sources.abc import Rejected
from sla_monitor.sources.jsonl import parse_line

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
    for warning in unmatched_sources(config):
        print(f"{args.config}: warning: {warning}", file=sys.stderr)
    return 0


def unmatched_sources(config: Config) -> list[str]:
    """Configured sources whose contacts no policy rule can take (they would get no targets
    and be counted in sla_contacts_unmatched_total)."""
    out = []
    for i, src in enumerate(config.settings.sources):
        if src.channel is None:
            continue
        queues: list[str | None] = list(src.queues) or [None]
        for queue in queues:
            if not config.policy.could_match(src.channel, queue):
                where = f"queue {queue!r} of " if queue else ""
                out.append(
                    f"sources[{i}] ({src.name}): no policy rule matches {where}channel "
                    f"{src.channel.value!r}; its contacts would have no targets — add a rule "
                    "(policy.rules) that matches it"
                )
    return out


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
    from sla_monitor.service_layer.monitor import Monitor

    config = load_config(args.config, validate_source_config)
    store = _store(config, args)
    monitor = Monitor(store, config, SystemClock())
    monitor.load()
    path = Path(args.file)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    if args.max_line_bytes < 1:
        raise UsageError("--max-line-bytes must be at least 1")
    events: dict[str, list[Event]] = {}
    rejected: dict[str, list[Rejected]] = {}
    totals = {"lines": 0, "events": 0, "new": 0, "rejected": 0, "archived": 0}
    reasons: Counter[str] = Counter()
    last = time.monotonic()
    watermark = args.watermark or datetime.now(UTC)

    seen: set[str] = set()

    def flush() -> None:
        for source in sorted(set(events) | set(rejected)):
            seen.add(source)
            summary = monitor.ingest(source, events.get(source, []), rejected.get(source, []))
            totals["new"] += summary.new
            reasons.update(summary.reasons)
        events.clear()
        rejected.clear()

    def set_aside(item: Rejected) -> None:
        # counted under the source the line names, where it names one
        rejected.setdefault(item.source or args.source, []).append(item)
        totals["rejected"] += 1
        print(f"rejected: {item.detail}", file=sys.stderr)

    defaults = {"source": args.source}
    problems: list[str] = []
    with _open_events(path) as fh:
        for n, raw in enumerate(_lines(fh, path, problems, args.max_line_bytes), 1):
            where = f"{path}:{n}"
            if raw is None:
                set_aside(
                    Rejected(
                        "too_long",
                        f"{where}: line longer than {args.max_line_bytes} bytes "
                        "(--max-line-bytes); skipped",
                        "",
                    )
                )
                continue
            try:
                text = raw.decode("utf-8").strip()
            except UnicodeDecodeError as exc:
                payload = raw.decode("utf-8", "backslashreplace").strip()
                set_aside(
                    Rejected(
                        "bad_encoding",
                        f"{where}: not valid UTF-8 (byte {exc.start} of the line)",
                        payload,
                        _named_source(raw.decode("utf-8", "replace")),
                    )
                )
                continue
            if not text:
                continue
            totals["lines"] += 1
            item = parse_line(text, None, defaults, where)
            if isinstance(item, Event):
                events.setdefault(item.source, []).append(item)
                totals["events"] += 1
            else:
                set_aside(item)
            if totals["lines"] % 20000 == 0:
                flush()
                if time.monotonic() - last >= 1.0:
                    print(
                        f"ingest: {totals['lines']} lines, {totals['new']} new events, "
                        f"{sum(reasons.values())} set aside",
                        file=sys.stderr,
                        flush=True,
                    )
                    last = time.monotonic()
    flush()
    # The watermark applies once the whole file is in: every source named in it has been
    # read completely up to that instant, so deadlines before it can now be judged.
    if not problems:  # a file cut short does not hold every event up to the watermark
        for source in sorted(seen):
            monitor.ingest(source, [], [], watermark)
    aside = sum(reasons.values())
    archived = reasons.get("archived", 0)
    stored = totals["events"] - totals["new"] - (aside - totals["rejected"])  # the rest
    why = ", ".join(f"{r} {n}" for r, n in sorted(reasons.items()) if r != "archived")
    print(
        f"ingested {path}: {totals['lines']} lines, {totals['events']} events "
        f"({totals['new']} new, {stored} already stored"
        + (f", {archived} set aside as older than the archive horizon" if archived else "")
        + f"), {aside - archived} rejected"
        + (f" ({why})" if why else "")
        + "; "
        + ("watermark not advanced (file cut short)" if problems else f"watermark {iso(watermark)}")
    )
    store.close()
    if problems:
        return 1
    return 1 if args.strict and aside else 0


def _named_source(payload: str) -> str | None:
    """The source a rejected line names, if it is readable enough to tell."""
    try:
        raw = json.loads(payload)
    except ValueError:
        return None
    named = raw.get("source") if isinstance(raw, dict) else None
    ok = isinstance(named, str) and 0 < len(named) <= 200 and "\x00" not in named
    return named if ok else None


def _open_events(path: Path) -> IO[bytes]:
    """A file of event lines; .gz for archive files (`sla-monitor archive`)."""
    if path.suffix == ".gz":
        return cast(IO[bytes], gzip.open(path, "rb"))
    return path.open("rb")


def _lines(
    fh: IO[bytes], path: Path, problems: list[str], max_bytes: int
) -> Iterator[bytes | None]:
    """The file's lines; None for one longer than `max_bytes` (never held in memory whole)."""
    try:
        while raw := fh.readline(max_bytes + 1):
            if len(raw) <= max_bytes or raw.endswith(b"\n"):
                yield raw
                continue
            while (rest := fh.readline(1 << 16)) and not rest.endswith(b"\n"):
                pass  # skip to the end of the over-long line
            yield None
    except (EOFError, OSError, zlib.error) as exc:
        # a gzip file cut short (a crash while archiving): every line before it is intact
        problems.append(f"{path}: stopped reading early: {exc}")
        print(problems[-1], file=sys.stderr)


def cmd_replay(args: argparse.Namespace) -> int:
    from sla_monitor.service_layer.recompute import replay

    config = load_config(args.config, validate_source_config)
    store = _store(config, args)
    as_of = args.as_of or datetime.now(UTC)
    started = time.monotonic()
    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers must be at least 1")
    summary = replay(store, config, as_of, _progress("replay"), args.workers)
    print(
        f"replayed {summary.contacts} contacts, {summary.targets} targets, "
        f"{summary.repeats} repeat contacts as of {iso(as_of)} in "
        f"{time.monotonic() - started:.1f}s"
    )
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
        print(render_report(result))
    return 0


def render_report(r: dict[str, Any]) -> str:
    period = f"{r['from'] or 'start'} .. {r['to'] or 'end'}"
    lines = [f"Compliance report, {period}, as of {r['as_of']}", ""]
    head = (
        "channel",
        "queue",
        "target",
        "met",
        "breached",
        "cancel",
        "aband",
        "short",
        "open",
        "compliance",
        "p50",
        "p90",
        "p99",
    )
    rows = [head]
    for t in r["targets"]:
        rs = t["response_seconds"] or {}
        rows.append(
            (
                t["channel"],
                t["queue"],
                t["target"],
                str(t["met"]),
                str(t["breached"]),
                str(t["cancelled"]),
                str(t["abandoned"]),
                str(t["abandoned_short"]),
                str(t["open"]),
                f"{t['compliance'] * 100:.1f}%" if t["compliance"] is not None else "-",
                *(
                    format_duration(timedelta(seconds=round(rs[p]))) if p in rs else "-"
                    for p in ("p50", "p90", "p99")
                ),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    if r["contacts"]:
        lines += ["", "Contacts opened and repeat contacts (customers who had to ask twice):"]
        for c in r["contacts"]:
            lines.append(
                f"  {c['channel']:<8} {c['queue']:<20} opened {c['opened']:>6}   "
                f"repeat {c['repeat_contacts']:>5}"
            )
    archived = r.get("archived_before") or {}
    if archived and (
        r["from"] is None
        or parse_instant(r["from"]) < max(parse_instant(t) for t in archived.values())
    ):
        lines += [
            "",
            "Archived: contacts of "
            + ", ".join(f"{src} quiet before {when}" for src, when in archived.items())
            + " were moved out by `sla-monitor archive` and are not counted here; ingest the "
            "archive files into a separate database to report on that period.",
        ]
    if r["service_level"]:
        lines += ["", "Phone service level:"]
        for s in r["service_level"]:
            value = f"{s['value'] * 100:.1f}%" if s["value"] is not None else "-"
            lines.append(f"  {s['queue']:<20} {value}  ({s['formula']})")
    return "\n".join(lines)


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
    print(
        f"Contact {result['contact']}  ({result['channel']}, queue {result['queue']}, "
        f"priority {result['priority']}, customer {result['customer']}, status {result['status']})"
    )
    print(
        f"Policy rule: {result['rule'] or '(none matched: no targets)'}"
        + (f"   Repeat of: {result['repeat_of']}" if result["repeat_of"] else "")
    )
    read = result["source_watermark"]
    print(
        f"As of {result['as_of']}; "
        + (f"source read completely up to {read}" if read else "source never read completely")
    )
    print("\nTimeline:")
    for e in result["events"]:
        extra = e.get("status") or e.get("priority") or e.get("reason") or ""
        print(f"  {e['occurred_at']}  {e['kind']:<18} {extra}")
    print("\nTargets:")
    for t in result["targets"]:
        resp = (
            f", answered after {format_duration(timedelta(seconds=t['response_seconds']))}"
            if t["response_seconds"] is not None
            else ""
        )
        print(
            f"  {t['target']}#{t['seq']}: {t['state'].upper()}  within "
            f"{format_duration(timedelta(seconds=t['within']))} ({t['clock']} clock), started "
            f"{t['started_at']}, deadline {t['deadline'] or 'moving (paused)'}{resp}"
        )
        if t.get("recomputed_outcome"):
            print(
                f"    decided {t['outcome']} before an event arrived late (older than its "
                f"source's watermark); recomputed it would be {t['recomputed_outcome']} — "
                "decided outcomes stand, `replay` recomputes"
            )
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
    dry = path is None
    where = "" if path is None else f" to {path} ({path.stat().st_size:,} bytes)"
    print(
        f"{'would archive' if dry else 'archived'} {_n(s.contacts, 'contact')} "
        f"({_n(s.events, 'event')}, {_n(s.targets, 'target')}) quiet since before "
        f"{iso(s.before)}{where}; counters unchanged"
    )
    print(
        f"{_n(s.remaining_before, 'contact')} opened before {iso(s.before)} "
        f"{'would stay' if dry else ('stays' if s.remaining_before == 1 else 'stay')} stored: "
        f"open targets, pending deadlines or events since; {s.kept_linked:,} of them "
        "because a contact that stays could be a repeat of them"
    )
    for name, watermark in sorted(s.behind.items()):
        seen = iso(watermark) if watermark else "never"
        print(f"source {name} skipped: read completely only up to {seen}")
    return 0


def _n(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def _clock(config: Config | None, name: str) -> TargetClock:
    if name == "calendar":
        return CONTINUOUS
    calendars = config.calendars if config else {}
    if name not in calendars:
        known = ", ".join(["calendar", *sorted(calendars)])
        raise UsageError(f"unknown calendar {name!r} (known: {known})")
    return calendars[name]


def iso_duration(d: timedelta) -> str:
    micros = round(d.total_seconds() * 1_000_000)
    sign = "-" if micros < 0 else ""
    micros = abs(micros)
    secs, frac = divmod(micros, 1_000_000)
    h, rest = divmod(secs, 3600)
    m, s = divmod(rest, 60)
    out = "PT" + (f"{h}H" if h else "") + (f"{m}M" if m else "")
    if s or frac or out == "PT":
        out += (f"{s}.{frac:06d}".rstrip("0").rstrip(".") if frac else str(s)) + "S"
    return sign + out


def _exact_seconds(d: timedelta) -> str:
    """Seconds with every digit a timedelta has (never exponent notation)."""
    us = d // timedelta(microseconds=1)
    sign, us = ("-", -us) if us < 0 else ("", us)
    whole, frac = divmod(us, 1_000_000)
    return f"{sign}{whole}" + (f".{frac:06d}".rstrip("0") if frac else "")


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
            print(iso_duration(d) if args.format == "iso" else _exact_seconds(d))
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
