"""`report --format html`: one self-contained page a support lead can read, print and
forward — the promise against the delivery per channel, queue and priority, response times
against each target, a daily trend, repeat contacts, phone service level and the worst
lapses with links. Charts are inline SVG (no script, no fonts or files to fetch), drawn
here so the page is the same wherever it is opened."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo
from html import escape
from typing import Any

from sla_monitor import __version__
from sla_monitor.domain.timeutil import format_duration, parse_instant

CSS = """
:root { --ok: #1a7f37; --bad: #c62828; --warn: #b26a00; --ink: #1f2328; --mute: #59636e;
        --line: #d0d7de; --bar: #3b6fb6; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: var(--ink); margin: 0 auto; padding: 1rem; max-width: 60rem; }
h1 { font-size: 1.5rem; margin: 0 0 .25rem; }
h2 { font-size: 1.15rem; margin: 2rem 0 .5rem; border-bottom: 1px solid var(--line);
     padding-bottom: .25rem; }
p.meta, .note { color: var(--mute); margin: .25rem 0; }
.cards { display: flex; flex-wrap: wrap; gap: .75rem; margin: 1rem 0; }
.card { flex: 1 1 9rem; border: 1px solid var(--line); border-radius: 6px; padding: .6rem .8rem; }
.card b { display: block; font-size: 1.4rem; }
.ok { color: var(--ok); } .bad { color: var(--bad); } .warn { color: var(--warn); }
table { border-collapse: collapse; width: 100%; font-size: .9rem; }
th, td { text-align: left; padding: .3rem .4rem; border-bottom: 1px solid var(--line);
         vertical-align: top; }
th { font-weight: 600; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
.scroll { overflow-x: auto; }
svg { display: block; width: 100%; height: auto; }
svg text { font: 12px system-ui, sans-serif; fill: var(--ink); }
a { color: #0550ae; word-break: break-all; }
@media print { body { max-width: none; font-size: 11pt; } h2 { break-after: avoid; }
               svg, table { break-inside: avoid; } a { color: var(--ink); } }
"""


NONE = "&#8211;"  # an en dash: no value


def _pct(v: float | None) -> str:
    return NONE if v is None else f"{v * 100:.1f}%"


def _secs(v: float | None) -> str:
    if v is None:
        return NONE
    return format_duration(timedelta(seconds=round(v))) if v >= 1 else f"{v:.1f}s"


def _when(text: str | None, tz: tzinfo) -> str:
    if not text:
        return NONE
    return parse_instant(text).astimezone(tz).strftime("%Y-%m-%d %H:%M")


def _compliance_chart(rows: list[dict[str, Any]]) -> str:
    """Bars of compliance per channel/queue/target with a tick at each objective."""
    judged = [r for r in rows if r["compliance"] is not None]
    if not judged:
        return '<p class="note">No target was met or breached in this period.</p>'
    label_w, bar_w, row_h = 230, 420, 26
    width, height = label_w + bar_w + 70, row_h * len(judged) + 24
    out = [
        f'<svg data-chart="compliance" viewBox="0 0 {width} {height}" role="img" '
        'aria-label="Compliance against objective per channel, queue and target">'
    ]
    for x in (0, 0.25, 0.5, 0.75, 1):
        gx = label_w + x * bar_w
        out.append(f'<line x1="{gx}" y1="0" x2="{gx}" y2="{height - 18}" stroke="#d0d7de"/>')
        out.append(f'<text x="{gx}" y="{height - 4}" text-anchor="middle">{x:.0%}</text>')
    for i, r in enumerate(judged):
        y = i * row_h + 4
        below = r["compliance"] < r["objective"]
        color = "#c62828" if below else "#1a7f37"
        label = escape(f"{r['channel']}/{r['queue']} {r['target']}")
        out.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{label}</text>')
        out.append(
            f'<rect x="{label_w}" y="{y + 3}" width="{r["compliance"] * bar_w:.1f}" '
            f'height="{row_h - 10}" fill="{color}"><title>{label}: {_pct(r["compliance"])} '
            f"met, objective {_pct(r['objective'])}</title></rect>"
        )
        ox = label_w + r["objective"] * bar_w
        out.append(
            f'<line x1="{ox:.1f}" y1="{y}" x2="{ox:.1f}" y2="{y + row_h - 4}" '
            'stroke="#1f2328" stroke-width="2"/>'
        )
        out.append(f'<text x="{label_w + bar_w + 6}" y="{y + 15}">{_pct(r["compliance"])}</text>')
    out.append("</svg>")
    return "".join(out)


def _response_chart(rows: list[dict[str, Any]], within: dict[tuple[str, str, str], float]) -> str:
    """Per channel/queue/target: p50 to p90 as a bar, a whisker to p99, and the target's
    `within` as a red line, on a scale relative to that target (so 20 s and 4 h compare)."""
    timed = [r for r in rows if r["response_seconds"]]
    if not timed:
        return '<p class="note">No response times in this period.</p>'
    label_w, bar_w, row_h = 230, 420, 28
    width, height = label_w + bar_w + 150, row_h * len(timed) + 24
    out = [
        f'<svg data-chart="response" viewBox="0 0 {width} {height}" role="img" '
        'aria-label="Response times against each target">'
    ]
    for i, r in enumerate(timed):
        rs = r["response_seconds"]
        limit = within.get((r["channel"], r["queue"], r["target"])) or rs["p99"]
        scale = max(rs["p99"], limit) * 1.1 or 1.0

        def x(v: float, scale: float = scale) -> float:
            return label_w + v / scale * bar_w

        y = i * row_h + 4
        label = escape(f"{r['channel']}/{r['queue']} {r['target']}")
        out.append(f'<text x="{label_w - 6}" y="{y + 16}" text-anchor="end">{label}</text>')
        out.append(
            f'<line x1="{x(0)}" y1="{y + 12}" x2="{x(rs["p99"]):.1f}" y2="{y + 12}" '
            'stroke="#59636e"/>'
        )
        out.append(
            f'<rect x="{x(rs["p50"]):.1f}" y="{y + 5}" '
            f'width="{max(x(rs["p90"]) - x(rs["p50"]), 2):.1f}" '
            f'height="14" fill="#3b6fb6"><title>{label}: p50 {_secs(rs["p50"])}, p90 '
            f"{_secs(rs['p90'])}, p99 {_secs(rs['p99'])}, target {_secs(limit)}</title></rect>"
        )
        out.append(
            f'<line x1="{x(limit):.1f}" y1="{y}" x2="{x(limit):.1f}" y2="{y + 24}" '
            'stroke="#c62828" stroke-width="2" stroke-dasharray="4 3"/>'
        )
        out.append(
            f'<text x="{label_w + bar_w + 6}" y="{y + 16}">p90 {_secs(rs["p90"])} / '
            f"{_secs(limit)}</text>"
        )
    out.append("</svg>")
    return "".join(out)


def _daily_chart(days: list[dict[str, Any]], objective: float) -> str:
    """Compliance per day, with the default objective as a dashed line."""
    points = [d for d in days if d["compliance"] is not None]
    if not points:
        return '<p class="note">No day with a judged target in this period.</p>'
    width, height, left, top, plot_h = 700, 230, 44, 10, 180
    plot_w = width - left - 36  # room for the last day's label
    step = plot_w / max(len(points) - 1, 1)
    lowest = min(0.5, min(d["compliance"] for d in points), objective - 0.05)

    def y(v: float) -> float:
        return float(top + (1 - (v - lowest) / (1 - lowest)) * plot_h)

    out = [
        f'<svg data-chart="daily" viewBox="0 0 {width} {height}" role="img" '
        'aria-label="Compliance per day">'
    ]
    for tick in (lowest, (lowest + 1) / 2, 1.0):
        out.append(
            f'<line x1="{left}" y1="{y(tick):.1f}" x2="{width - 16}" y2="{y(tick):.1f}" '
            'stroke="#d0d7de"/>'
            f'<text x="{left - 4}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:.0%}</text>'
        )
    out.append(
        f'<line x1="{left}" y1="{y(objective):.1f}" x2="{width - 16}" y2="{y(objective):.1f}" '
        'stroke="#1f2328" stroke-dasharray="6 4"><title>objective</title></line>'
    )
    coords = [(left + i * step, y(d["compliance"])) for i, d in enumerate(points)]
    path = " ".join(f"{cx:.1f},{cy:.1f}" for cx, cy in coords)
    out.append(f'<polyline points="{path}" fill="none" stroke="#3b6fb6" stroke-width="2"/>')
    every = max(1, len(points) // 8)
    for i, ((cx, cy), d) in enumerate(zip(coords, points, strict=True)):
        color = "#c62828" if d["compliance"] < objective else "#1a7f37"
        out.append(
            f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="{color}"><title>{d["day"]}: '
            f"{_pct(d['compliance'])} ({d['met']} met, {d['breached']} breached)</title></circle>"
        )
        if i % every == 0 or i == len(points) - 1:
            out.append(
                f'<text x="{cx:.1f}" y="{height - 8}" text-anchor="middle">{d["day"][5:]}</text>'
            )
    out.append("</svg>")
    return "".join(out)


def _table(head: list[str], rows: list[list[str]], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r)
        )
        + "</tr>"
        for r in rows
    )
    table = f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"
    return f'<div class="scroll">{table}</div>'


def render_html(
    r: dict[str, Any],
    lapses: list[dict[str, Any]],
    within: dict[tuple[str, str, str], float],
    objective: float,
    tz: tzinfo = UTC,
    worst: int = 15,
) -> str:
    """The page for one `report` result, its lapses (`breaches`), each target's `within`
    per channel/queue/target, the default objective; instants shown in `tz`."""
    rows = r["targets"]
    met = sum(x["met"] for x in rows)
    breached = sum(x["breached"] for x in rows)
    late = sum(x.get("late", 0) for x in rows)
    never = sum(x.get("never_answered", 0) for x in rows)
    overall = met / (met + breached) if met + breached else None
    below = [x for x in rows if x["compliance"] is not None and x["compliance"] < x["objective"]]
    first = _when(r["from"], tz) if r["from"] else "the start"
    period = f"{first} to {_when(r['to'] or r['as_of'], tz)}"
    tone = "ok" if overall is not None and overall >= objective else "bad"

    def card(title: str, value: str, tone: str, note: str) -> str:
        return f'<div class="card">{title}<b class="{tone}">{value}</b>{note}</div>'

    cards = [
        card("Targets met", _pct(overall), tone, f"objective {_pct(objective)}"),
        card("Met", f"{met:,}", "", f"breached {breached:,}"),
        card("Answered late", f"{late:,}", "warn", f"never answered {never:,}"),
        card(
            "Below objective",
            str(len(below)),
            "bad" if below else "ok",
            f"of {len(rows)} queue targets",
        ),
    ]
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Support SLA report, {escape(period)}</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>Support SLA report</h1>",
        f'<p class="meta">{escape(period)} · as of {_when(r["as_of"], tz)} ({escape(str(tz))}) · '
        f"sla-monitor {escape(__version__)}</p>",
        f'<div class="cards">{"".join(cards)}</div>',
        "<h2>Promise and delivery per channel, queue and target</h2>",
        '<p class="note">Share of targets met (met / (met + breached)); the black tick is '
        "each one's objective, red bars fall short of it.</p>",
        _compliance_chart(rows),
        _table(
            [
                "channel / queue",
                "target",
                "met",
                "late",
                "never answered",
                "compliance",
                "objective",
                "gap",
            ],
            [
                [
                    escape(f"{x['channel']}/{x['queue']}"),
                    escape(x["target"]),
                    str(x["met"]),
                    str(x.get("late", 0)),
                    str(x.get("never_answered", 0)),
                    _pct(x["compliance"]),
                    _pct(x["objective"]),
                    (
                        f'<span class="{"bad" if x["compliance"] < x["objective"] else "ok"}">'
                        f"{(x['compliance'] - x['objective']) * 100:+.1f} pt</span>"
                    )
                    if x["compliance"] is not None
                    else NONE,
                ]
                for x in rows
            ],
            {2, 3, 4, 5, 6, 7},
        ),
        "<h2>Per priority</h2>",
        _table(
            ["channel / queue", "priority", "met", "breached", "compliance"],
            [
                [
                    escape(f"{x['channel']}/{x['queue']}"),
                    escape(x["priority"]),
                    str(x["met"]),
                    str(x["breached"]),
                    _pct(x["compliance"]),
                ]
                for x in r.get("priorities", [])
            ],
            {2, 3, 4},
        ),
        "<h2>Response times against each target</h2>",
        '<p class="note">The blue bar runs from the median (p50) to p90, the line to p99; the '
        "red dashed line is the target's <code>within</code>.</p>",
        _response_chart(rows, within),
        "<h2>Day by day</h2>",
        _daily_chart(r.get("daily", []), objective),
    ]
    if r.get("contacts"):
        parts += [
            "<h2>Customers who had to ask twice</h2>",
            _table(
                ["channel / queue", "contacts opened", "repeat contacts", "share"],
                [
                    [
                        escape(f"{c['channel']}/{c['queue']}"),
                        f"{c['opened']:,}",
                        f"{c['repeat_contacts']:,}",
                        _pct(c["repeat_contacts"] / c["opened"] if c["opened"] else None),
                    ]
                    for c in r["contacts"]
                ],
                {1, 2, 3},
            ),
        ]
    if r.get("service_level"):
        parts += [
            "<h2>Phone service level</h2>",
            _table(
                ["queue", "answered in time", "formula"],
                [
                    [escape(s["queue"]), _pct(s["value"]), escape(s["formula"])]
                    for s in r["service_level"]
                ],
                {1},
            ),
        ]
    ranked = sorted(lapses, key=lambda b: -b["late_seconds"])[:worst]
    parts += [
        f"<h2>Worst lapses ({len(ranked)} of {len(lapses)})</h2>",
        _table(
            ["deadline", "contact", "queue", "target", "late by", "answered by"],
            [
                [
                    _when(b["deadline"], tz),
                    (
                        f'<a href="{escape(b["link"])}">{escape(b["contact"])}</a>'
                        if b["link"]
                        else escape(b["contact"])
                    ),
                    escape(f"{b['channel']}/{b['queue']} ({b['priority']})"),
                    escape(b["target"]),
                    _secs(b["late_seconds"])
                    + (
                        ""
                        if b["answered_at"]
                        else " (still waiting)"
                        if b["waiting"]
                        else " (ended unanswered)"
                    ),
                    escape(b["answered_by"]) if b["answered_by"] else NONE,
                ]
                for b in ranked
            ],
            {4},
        )
        if ranked
        else '<p class="note">No acknowledgement lapsed in this period.</p>',
        f'<p class="note">Written {datetime.now(UTC).astimezone(tz).strftime("%Y-%m-%d %H:%M")} '
        "by <code>sla-monitor report --format html</code>.</p>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"
