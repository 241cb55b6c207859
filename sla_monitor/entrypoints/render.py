"""How the CLI shows results: text for people (JSON is printed as it comes)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any

from sla_monitor.domain.timeutil import format_duration, iso, parse_instant
from sla_monitor.service_layer.archive import ArchiveSummary
from sla_monitor.service_layer.ingest import ImportSummary
from sla_monitor.service_layer.recompute import ReplaySummary

_NOT_ADVANCED = "watermark not advanced (file cut short)"


def when(text: str | None, tz: tzinfo = UTC) -> str:
    """An instant for people: local time in `tz`, to the second, with the zone's name
    ('2026-11-24 10:00:05 CET'); JSON output stays ISO-8601 UTC."""
    if not text:
        return "-"
    return parse_instant(text).astimezone(tz).strftime("%Y-%m-%d %H:%M:%S %Z")


def took(seconds: float) -> str:
    """A duration for people, to the second ('1h4m8s')."""
    return format_duration(timedelta(seconds=round(seconds)))


def progress(done: float, total: float | None, seconds: float) -> str:
    """How far, and how long is left at the rate so far: '42%, about 2m45s left'."""
    if not total or seconds <= 0 or done <= 0:
        return "starting" if done <= 0 else "going"
    share = min(done / total, 1.0)
    left = seconds * (1 - share) / share
    return f"{share:.0%}, about {format_duration(timedelta(seconds=round(left)))} left"


def ingest_progress(
    lines: int, s: ImportSummary, position: int = 0, size: int = 0, seconds: float = 0.0
) -> str:
    return (
        f"ingest: {progress(position, size, seconds)} — {lines:,} lines, {s.new:,} new "
        f"events, {s.set_aside:,} set aside"
    )


def ingested(path: Path, lines: int, s: ImportSummary, watermark: datetime | None) -> str:
    """The summary line of `ingest` (`watermark` None: not advanced, the file was cut short)."""
    aside = s.set_aside
    archived = s.reasons.get("archived", 0)
    stored = s.events - s.new - (aside - s.rejected)  # the rest was stored before
    why = ", ".join(f"{r} {n}" for r, n in sorted(s.reasons.items()) if r != "archived")
    return (
        f"ingested {path}: {lines} lines, {s.events} events "
        f"({s.new} new, {stored} already stored"
        + (f", {archived} set aside as older than the archive horizon" if archived else "")
        + f"), {aside - archived} rejected"
        + (f" ({why})" if why else "")
        + "; "
        + (
            f"watermark {iso(watermark)}"
            if watermark
            else "watermark not advanced (file cut short)"
        )
    )


def replayed(s: ReplaySummary, as_of: datetime, seconds: float) -> str:
    return (
        f"replayed {s.contacts} contacts, {s.targets} targets, "
        f"{s.repeats} repeat contacts as of {iso(as_of)} in {seconds:.1f}s"
    )


def report(r: dict[str, Any], tz: tzinfo = UTC) -> str:
    """A compliance report (`report --format text`), instants in `tz`."""
    start = when(r["from"], tz) if r["from"] else "start"
    period = f"{start} .. {when(r['to'], tz) if r['to'] else 'end'}"
    lines = [f"Compliance report, {period}, as of {when(r['as_of'], tz)}", ""]
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
            + ", ".join(f"{src} quiet before {when(at, tz)}" for src, at in archived.items())
            + " were moved out by `sla-monitor archive` and are not counted here; ingest the "
            "archive files into a separate database to report on that period.",
        ]
    if r.get("by"):
        lines += [
            "",
            f"Per {r['by']} (targets they answered; automatic acknowledgements excluded):",
        ]
        people = [(r["by"], "answered", "met", "late", "met %", "p50", "p90")]
        for p in r["people"]:
            rs = p["response_seconds"] or {}
            people.append(
                (
                    p[r["by"]],
                    str(p["answered"]),
                    str(p["met"]),
                    str(p["late"]),
                    f"{p['met_ratio'] * 100:.1f}%",
                    *(_secs(rs.get(q)) for q in ("p50", "p90")),
                )
            )
        widths = [max(len(cells[i]) for cells in people) for i in range(len(people[0]))]
        for cells in people:
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)))
    if r["service_level"]:
        lines += ["", "Phone service level:"]
        for s in r["service_level"]:
            value = f"{s['value'] * 100:.1f}%" if s["value"] is not None else "-"
            lines.append(f"  {s['queue']:<20} {value}  ({s['formula']})")
    return "\n".join(lines)


def _secs(value: float | None) -> str:
    return format_duration(timedelta(seconds=round(value))) if value is not None else "-"


REPORT_COLUMNS = (
    *("channel", "queue", "target", "met", "breached", "late", "never_answered"),
    *("cancelled", "abandoned", "abandoned_short", "open", "compliance"),
)


def report_csv(r: dict[str, Any]) -> str:
    """`report --format csv`: a row per channel, queue and target (with `--by`: per person
    or team), response times in seconds; for a spreadsheet."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    times = ("p50_seconds", "p90_seconds", "p99_seconds")
    if r.get("by"):
        w.writerow((r["by"], "answered", "met", "late", "met_ratio", *times))
        for p in r["people"]:
            rs = p["response_seconds"] or {}
            counts = [p[r["by"]], p["answered"], p["met"], p["late"], p["met_ratio"]]
            w.writerow([*counts, *(rs.get(q, "") for q in ("p50", "p90", "p99"))])
        return out.getvalue()
    w.writerow((*REPORT_COLUMNS, *times))
    for t in r["targets"]:
        rs = t["response_seconds"] or {}
        cells = ["" if t[c] is None else t[c] for c in REPORT_COLUMNS]
        w.writerow([*cells, *(rs.get(q, "") for q in ("p50", "p90", "p99"))])
    return out.getvalue()


BREACH_COLUMNS = (
    *("contact", "channel", "queue", "priority", "customer", "target", "started_at"),
    *("deadline", "answered_at", "waiting", "late_seconds", "answered_by", "answered_team"),
    "link",
)


def breaches_csv(found: list[dict[str, Any]]) -> str:
    """`breaches --format csv`: a row per lapsed target (instants in UTC, ISO-8601)."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(BREACH_COLUMNS)
    for b in found:
        w.writerow(["" if b[c] is None else b[c] for c in BREACH_COLUMNS])
    return out.getvalue()


def breaches(found: list[dict[str, Any]], as_of: datetime, tz: tzinfo = UTC) -> str:
    """`breaches`: a line per lapsed target, oldest deadline first, instants in `tz`."""
    if not found:
        return f"no acknowledgement lapsed (as of {when(iso(as_of), tz)})"
    lines = [f"{len(found)} lapsed (as of {when(iso(as_of), tz)}):", ""]
    for b in found:
        late = format_duration(timedelta(seconds=round(b["late_seconds"])))
        if b["answered_at"]:
            who = f" by {b['answered_by']}" if b["answered_by"] else ""
            fate = f"answered {late} late{who}"
        elif b["waiting"]:
            fate = f"NOT ANSWERED, {late} past its deadline"
        else:
            fate = f"ended unanswered {late} after its deadline (abandoned or closed)"
        lines.append(
            f"{when(b['deadline'], tz)}  {b['contact']}  {b['channel']}/{b['queue']} "
            f"({b['priority']})  {b['target']}: {fate}"
        )
        if b["link"]:
            lines.append(f"    {b['link']}")
    return "\n".join(lines)


def explanation(result: dict[str, Any], tz: tzinfo = UTC) -> str:
    """One contact's timeline and targets (`explain --format text`), instants in `tz`."""
    out: list[str] = []
    out.append(
        f"Contact {result['contact']}  ({result['channel']}, queue {result['queue']}, "
        f"priority {result['priority']}, customer {result['customer']}, status {result['status']})"
    )
    out.append(
        f"Policy rule: {result['rule'] or '(none matched: no targets)'}"
        + (f"   Repeat of: {result['repeat_of']}" if result["repeat_of"] else "")
    )
    read = result["source_watermark"]
    out.append(
        f"As of {when(result['as_of'], tz)}; "
        + (
            f"source read completely up to {when(read, tz)}"
            if read
            else "source never read completely"
        )
    )
    out += ["", "Timeline:"]
    for e in result["events"]:
        extra = e.get("status") or e.get("priority") or e.get("reason") or ""
        if e.get("agent"):
            extra = f"{extra} by {e['agent']}".strip()
        out.append(f"  {when(e['occurred_at'], tz)}  {e['kind']:<18} {extra}")
    out += ["", "Targets:"]
    for t in result["targets"]:
        resp = (
            f", answered after {took(t['response_seconds'])}"
            if t["response_seconds"] is not None
            else ""
        )
        if t.get("answered_by") or t.get("answered_team"):
            team = f" ({t['answered_team']})" if t.get("answered_team") else ""
            resp += f" by {t.get('answered_by') or 'the team'}{team}"
        out.append(
            f"  {t['target']}#{t['seq']}: {t['state'].upper()}  within "
            f"{format_duration(timedelta(seconds=t['within']))} ({t['clock']} clock), started "
            f"{when(t['started_at'], tz)}, deadline "
            f"{when(t['deadline'], tz) if t['deadline'] else 'moving (paused)'}{resp}"
        )
        if t.get("recomputed_outcome"):
            out.append(
                f"    decided {t['outcome']} before an event arrived late (older than its "
                f"source's watermark); recomputed it would be {t['recomputed_outcome']} — "
                "decided outcomes stand, `replay` recomputes"
            )
    return "\n".join(out)


def archived(s: ArchiveSummary, path: Path | None) -> list[str]:
    """What `archive` did (or, with `path` None, would do)."""
    out: list[str] = []
    dry = path is None
    where = "" if path is None else f" to {path} ({path.stat().st_size:,} bytes)"
    out.append(
        f"{'would archive' if dry else 'archived'} {_n(s.contacts, 'contact')} "
        f"({_n(s.events, 'event')}, {_n(s.targets, 'target')}) quiet since before "
        f"{iso(s.before)}{where}; counters unchanged"
    )
    out.append(
        f"{_n(s.remaining_before, 'contact')} opened before {iso(s.before)} "
        f"{'would stay' if dry else ('stays' if s.remaining_before == 1 else 'stay')} stored: "
        f"open targets, pending deadlines or events since; {s.kept_linked:,} of them "
        "because a contact that stays could be a repeat of them"
    )
    for name, watermark in sorted(s.behind.items()):
        seen = iso(watermark) if watermark else "never"
        out.append(f"source {name} skipped: read completely only up to {seen}")
    return out


def iso_duration(d: timedelta) -> str:
    """ISO 8601 duration (PT1H2M3.5S), exact to the microsecond."""
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


def exact_seconds(d: timedelta) -> str:
    """Seconds with every digit a timedelta has (never exponent notation)."""
    us = d // timedelta(microseconds=1)
    sign, us = ("-", -us) if us < 0 else ("", us)
    whole, frac = divmod(us, 1_000_000)
    return f"{sign}{whole}" + (f".{frac:06d}".rstrip("0") if frac else "")


def _n(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"
