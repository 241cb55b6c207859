#!/usr/bin/env python3
"""Generates the Grafana dashboards in this folder: `python dashboards/generate.py`.

The JSON files are committed (Grafana provisions them as they are); the test suite checks
they match this script, and that every query returns data from a real Prometheus.
Dependencies: none beyond the standard library.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DS = {"type": "prometheus", "uid": "${datasource}"}
F = 'channel=~"$channel",queue=~"$queue",priority=~"$priority"'  # outcome/opened filters
G = 'channel=~"$channel",queue=~"$queue"'  # gauges and histograms (no priority label)
RUNBOOKS = "http://localhost:9799/runbooks"


def variable(name: str, query: str, label: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": f"var-{name}"},
        "definition": query,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "refresh": 2,
        "sort": 1,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
    }


TEMPLATING = {
    "list": [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "hide": 0,
            "refresh": 1,
        },
        variable("channel", "label_values(sla_contacts_opened_total, channel)", "Channel"),
        variable(
            "queue", 'label_values(sla_contacts_opened_total{channel=~"$channel"}, queue)', "Queue"
        ),
        variable(
            "priority",
            'label_values(sla_contacts_opened_total{channel=~"$channel"}, priority)',
            "Priority",
        ),
    ]
}


class Board:
    def __init__(self, uid: str, title: str, description: str) -> None:
        self.uid, self.title, self.description = uid, title, description
        self.panels: list[dict[str, Any]] = []
        self.x = self.y = self.row_h = 0

    def panel(
        self,
        kind: str,
        title: str,
        description: str,
        exprs: list[tuple[str, str]],
        unit: str = "short",
        w: int = 12,
        h: int = 8,
        **options: Any,
    ) -> None:
        if self.x + w > 24:
            self.x, self.y = 0, self.y + self.row_h
            self.row_h = 0
        p: dict[str, Any] = {
            "id": len(self.panels) + 1,
            "type": kind,
            "title": title,
            "description": description,
            "datasource": DS,
            "gridPos": {"x": self.x, "y": self.y, "w": w, "h": h},
            "targets": [
                {
                    "refId": chr(65 + i),
                    "datasource": DS,
                    "expr": expr,
                    "legendFormat": legend,
                    "range": kind != "table",
                    "instant": kind == "table",
                }
                for i, (expr, legend) in enumerate(exprs)
            ],
            "fieldConfig": {
                "defaults": {"unit": unit, **options.pop("defaults", {})},
                "overrides": [],
            },
            "options": options,
        }
        self.panels.append(p)
        self.x += w
        self.row_h = max(self.row_h, h)

    def json(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": ["sla-monitor"],
            "timezone": "browser",
            "editable": True,
            "schemaVersion": 39,
            "version": 1,
            "refresh": "30s",
            "graphTooltip": 1,
            "time": {"from": "now-24h", "to": "now"},
            "templating": TEMPLATING,
            "annotations": {"list": []},
            "links": [{"title": "Runbooks", "type": "link", "url": RUNBOOKS, "targetBlank": True}],
            "panels": self.panels,
        }


def ratio(num: str, den: str, by: str, window: str) -> str:
    return (
        f"sum by ({by}) (increase(sla_target_outcomes_total{{{num}}}[{window}]))\n/\n"
        f"sum by ({by}) (increase(sla_target_outcomes_total{{{den}}}[{window}]))"
    )


def support_overview() -> Board:
    b = Board(
        "sla-support-overview",
        "Support overview",
        "Are customers acknowledged in time? Compliance, breaches and waits per channel and queue.",
    )
    pct = {"defaults": {"min": 0, "max": 1}}
    b.panel(
        "stat",
        "Breached now",
        "Open targets past their deadline, still unanswered.",
        [(f'sum(sla_open_targets{{state="breached",{G}}})', "breached")],
        w=6,
        h=5,
        defaults={
            "color": {"mode": "thresholds"},
            "thresholds": {
                "mode": "absolute",
                "steps": [{"color": "green", "value": None}, {"color": "red", "value": 1}],
            },
        },
    )
    b.panel(
        "stat",
        "At risk now",
        "Open targets past their warning point.",
        [(f'sum(sla_open_targets{{state="at_risk",{G}}})', "at risk")],
        w=6,
        h=5,
        defaults={
            "color": {"mode": "thresholds"},
            "thresholds": {
                "mode": "absolute",
                "steps": [{"color": "green", "value": None}, {"color": "orange", "value": 1}],
            },
        },
    )
    b.panel(
        "stat",
        "Paused",
        "Open targets whose clock is paused (pending, on hold).",
        [(f'sum(sla_open_targets{{state="paused",{G}}})', "paused")],
        w=6,
        h=5,
    )
    b.panel(
        "stat",
        "Longest wait now",
        "How long the longest-waiting open target has waited.",
        [(f"time() - min(sla_oldest_open_target_start_timestamp_seconds{{{G}}})", "wait")],
        unit="s",
        w=6,
        h=5,
    )
    b.panel(
        "bargauge",
        "Compliance by channel and queue (24h)",
        "Targets met / (met + breached) over the last 24 hours, all targets.",
        [
            (
                ratio(f'outcome="met",{F}', f'outcome=~"met|breached",{F}', "channel, queue", "1d"),
                "{{channel}} / {{queue}}",
            )
        ],
        unit="percentunit",
        w=12,
        h=9,
        displayMode="gradient",
        orientation="horizontal",
        **pct,
    )
    b.panel(
        "timeseries",
        "Compliance by target (1h windows)",
        "Share of each target met, hour by hour.",
        [
            (
                ratio(
                    f'outcome="met",{F}', f'outcome=~"met|breached",{F}', "channel, target", "1h"
                ),
                "{{channel}} {{target}}",
            )
        ],
        unit="percentunit",
        w=12,
        h=9,
        **pct,
    )
    b.panel(
        "timeseries",
        "Open targets by state",
        "What is waiting now, and how it stands.",
        [(f"sum by (state) (sla_open_targets{{{G}}})", "{{state}}")],
        w=12,
    )
    b.panel(
        "timeseries",
        "Response time p50 / p90 by target",
        "Time to fulfilment on each target's clock (pauses excluded). Compare with the "
        "targets: auto_ack 2m, first_reply 1h (email) / 15m (social), answer 20s.",
        [
            (
                f"histogram_quantile(0.5, sum by (target, le) (rate(sla_response_seconds_bucket{{{G}}}[$__rate_interval])))",
                "p50 {{target}}",
            ),
            (
                f"histogram_quantile(0.9, sum by (target, le) (rate(sla_response_seconds_bucket{{{G}}}[$__rate_interval])))",
                "p90 {{target}}",
            ),
        ],
        unit="s",
        w=12,
    )
    b.panel(
        "timeseries",
        "Email first replies within the hour",
        'Share of personal first replies to e-mail sent within 3600 s (le="3600").',
        [
            (
                'sum by (queue) (rate(sla_response_seconds_bucket{target="first_reply",channel="email",queue=~"$queue",le="3600"}[1h]))\n/\nsum by (queue) (rate(sla_response_seconds_count{target="first_reply",channel="email",queue=~"$queue"}[1h]))',
                "{{queue}}",
            )
        ],
        unit="percentunit",
        w=12,
        **pct,
    )
    b.panel(
        "timeseries",
        "Contacts opened per hour",
        "New contacts by channel.",
        [(f"sum by (channel) (increase(sla_contacts_opened_total{{{F}}}[1h]))", "{{channel}}")],
        w=12,
    )
    b.panel(
        "timeseries",
        "Repeat contacts per day",
        "Customers who had to ask twice: a new contact while an earlier one was unanswered.",
        [
            (
                f"sum by (channel, queue) (increase(sla_repeat_contacts_total{{{G}}}[1d]))",
                "{{channel}} / {{queue}}",
            )
        ],
        w=12,
    )
    b.panel(
        "timeseries",
        "Phone service level (1h)",
        "Calls answered within the answer target / (answered + abandoned after it).",
        [
            (
                ratio(
                    'channel="phone",target="answer",outcome="met",queue=~"$queue"',
                    'channel="phone",target="answer",outcome=~"met|breached",queue=~"$queue"',
                    "queue",
                    "1h",
                ),
                "{{queue}}",
            )
        ],
        unit="percentunit",
        w=12,
        **pct,
    )
    b.panel(
        "timeseries",
        "Phone abandons per hour",
        "Calls hung up before the answer was due (short ones are excluded from service level).",
        [
            (
                'sum by (queue, outcome) (increase(sla_target_outcomes_total{channel="phone",target="answer",outcome=~"abandoned|abandoned_short",queue=~"$queue"}[1h]))',
                "{{queue}} {{outcome}}",
            )
        ],
        w=12,
    )
    b.panel(
        "table",
        "Outcomes in the last 24 hours",
        "Every target's outcomes by queue.",
        [
            (
                f"sum by (channel, queue, target, outcome) (increase(sla_target_outcomes_total{{{F}}}[1d]))",
                "",
            )
        ],
        w=24,
        h=10,
    )
    return b


def monitor_health() -> Board:
    b = Board(
        "sla-monitor-health",
        "Monitor health",
        "Is the monitor reading its sources and publishing breaches in time?",
    )
    b.panel(
        "stat",
        "Sources up",
        "1 if the last poll of the source succeeded.",
        [("sla_source_up", "{{source}}")],
        w=8,
        h=5,
        defaults={
            "mappings": [
                {
                    "type": "value",
                    "options": {
                        "0": {"text": "DOWN", "color": "red"},
                        "1": {"text": "UP", "color": "green"},
                    },
                }
            ]
        },
    )
    b.panel(
        "stat",
        "Since last successful poll",
        "Seconds since each source was last read.",
        [("time() - sla_source_last_success_timestamp_seconds", "{{source}}")],
        unit="s",
        w=8,
        h=5,
    )
    b.panel(
        "stat",
        "Version",
        "Running sla-monitor version.",
        [("sla_build_info", "{{version}}")],
        w=8,
        h=5,
        textMode="name",
    )
    b.panel(
        "timeseries",
        "Polls by result",
        "ok, error, rate_limited, auth_error per second.",
        [("sum by (source, result) (rate(sla_source_polls_total[5m]))", "{{source}} {{result}}")],
    )
    b.panel(
        "timeseries",
        "Poll errors",
        "Failed polls per second (0 when all is well).",
        [
            (
                'sum by (source) (rate(sla_source_polls_total{result!="ok"}[5m]))\nor\nsum by (source) (rate(sla_source_polls_total[5m])) * 0',
                "{{source}}",
            )
        ],
    )
    b.panel(
        "timeseries",
        "Watermark lag",
        "How far behind now each source has been read completely.",
        [("time() - sla_source_watermark_timestamp_seconds", "{{source}}")],
        unit="s",
    )
    b.panel(
        "timeseries",
        "Poll duration",
        "Duration of the last poll.",
        [("sla_source_poll_duration_seconds", "{{source}}")],
        unit="s",
    )
    b.panel(
        "timeseries",
        "Events ingested per second",
        "New events stored, by kind.",
        [("sum by (source, kind) (rate(sla_events_ingested_total[5m]))", "{{source}} {{kind}}")],
    )
    b.panel(
        "timeseries",
        "Events rejected per second",
        "Malformed items set aside, by reason.",
        [
            (
                "sum by (source, reason) (rate(sla_events_rejected_total[5m]))\nor\nsum by (source) (rate(sla_events_ingested_total[5m])) * 0",
                "{{source}} {{reason}}",
            )
        ],
    )
    b.panel(
        "timeseries",
        "Breach detection and page delivery delay (p50 / p99)",
        "Measured on the wall clock. Detection: from the moment a breach was knowable (its "
        "deadline, or the arrival of the watermark that made it judgeable) to its commit. "
        "Delivery: from the commit to Alertmanager's acceptance. Goal: detection p99 under 1 s.",
        [
            (
                "histogram_quantile(0.5, sum by (le) (rate(sla_breach_detection_delay_seconds_bucket[15m])))",
                "detection p50",
            ),
            (
                "histogram_quantile(0.99, sum by (le) (rate(sla_breach_detection_delay_seconds_bucket[15m])))",
                "detection p99",
            ),
            (
                "histogram_quantile(0.99, sum by (le) (rate(sla_alert_delivery_seconds_bucket[15m])))",
                "delivery p99",
            ),
        ],
        unit="s",
        w=24,
    )
    return b


BOARDS = {"support-overview.json": support_overview, "monitor-health.json": monitor_health}


def render() -> dict[str, str]:
    return {name: json.dumps(make().json(), indent=2) + "\n" for name, make in BOARDS.items()}


if __name__ == "__main__":
    for name, text in render().items():
        (HERE / name).write_text(text)
        print(f"wrote {HERE / name}")
