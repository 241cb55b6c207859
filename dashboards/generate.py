#!/usr/bin/env python3
"""Generates the Grafana dashboards in this folder: `python dashboards/generate.py`.

The JSON files are committed (Grafana provisions them as they are); the test suite checks
they match this script, and that every query returns data from a real Prometheus.
Dependencies: the project itself (panels follow the shipped config's policy and objectives).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the panels follow the shipped config's policy
from sla_monitor.config import load_config  # noqa: E402

SHIPPED_CONFIG = HERE.parent / "config" / "sla-monitor.yaml"
DS = {"type": "prometheus", "uid": "${datasource}"}
F = 'channel=~"$channel",queue=~"$queue",priority=~"$priority"'  # series with a priority
G = 'channel=~"$channel",queue=~"$queue"'  # the rest (oldest wait, repeats, recording rules)
INSTANT_PANELS = ("table", "bargauge")
HIDE_TIME = {"id": "organize", "options": {"excludeByName": {"Time": True}}}
MONITOR = "http://localhost:9799"  # the monitor's external_url (docs/deploy.md)
RUNBOOKS = f"{MONITOR}/runbooks"


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


DATASOURCE = {
    "name": "datasource",
    "label": "Data source",
    "type": "datasource",
    "query": "prometheus",
    "current": {},
    "hide": 0,
    "refresh": 1,
}
CONTACT_VARIABLES = [
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
SOURCE_VARIABLES = [variable("source", "label_values(sla_source_up, source)", "Source")]


class Board:
    def __init__(
        self, uid: str, title: str, description: str, variables: list[dict[str, Any]]
    ) -> None:
        self.uid, self.title, self.description = uid, title, description
        self.variables = variables
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
                    # tables and bar gauges show one value per series: an instant query
                    # (a table formatted as a table); time series plot a range
                    "range": kind not in INSTANT_PANELS,
                    "instant": kind in INSTANT_PANELS,
                    "format": "table" if kind == "table" else "time_series",
                }
                for i, (expr, legend) in enumerate(exprs)
            ],
            "fieldConfig": {
                "defaults": {"unit": unit, **options.pop("defaults", {})},
                "overrides": options.pop("overrides", []),
            },
            "transformations": options.pop("transformations", []),
            "options": options,
        }
        self.panels.append(p)
        self.x += w
        self.row_h = max(self.row_h, h)

    def text(self, title: str, description: str, markdown: str, w: int = 12, h: int = 8) -> None:
        """A panel of words and links (no query)."""
        if self.x + w > 24:
            self.x, self.y = 0, self.y + self.row_h
            self.row_h = 0
        self.panels.append(
            {
                "id": len(self.panels) + 1,
                "type": "text",
                "title": title,
                "description": description,
                "gridPos": {"x": self.x, "y": self.y, "w": w, "h": h},
                "options": {"mode": "markdown", "content": markdown},
            }
        )
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
            "templating": {"list": [DATASOURCE, *self.variables]},
            "annotations": {"list": []},
            "links": [{"title": "Runbooks", "type": "link", "url": RUNBOOKS, "targetBlank": True}],
            "panels": self.panels,
        }


def ratio(num: str, den: str, by: str, window: str) -> str:
    return (
        f"sum by ({by}) (increase(sla_target_outcomes_total{{{num}}}[{window}]))\n/\n"
        f"sum by ({by}) (increase(sla_target_outcomes_total{{{den}}}[{window}]))"
    )


def quantile(q: float, target: str, channels: str) -> str:
    sel = f'target="{target}",channel=~"{channels}",{F}'
    return (
        f"histogram_quantile({q}, sum by (queue, le) "
        f"(rate(sla_response_seconds_bucket{{{sel}}}[$__rate_interval])))"
    )


def thresholds(*steps: tuple[str, float | None]) -> dict[str, Any]:
    return {
        "color": {"mode": "thresholds"},
        "thresholds": {
            "mode": "absolute",
            "steps": [{"color": color, "value": value} for color, value in steps],
        },
    }


# lines whose legend starts with "objective" or "goal": dashed, the promise to compare with
PROMISE_LINES = [
    {
        "matcher": {"id": "byRegexp", "options": "^(objective|goal) .*"},
        "properties": [
            {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
            {"id": "custom.lineWidth", "value": 2},
        ],
    }
]


def support_overview() -> Board:
    config = load_config(SHIPPED_CONFIG)
    objective = config.settings.objectives.ratio
    b = Board(
        "sla-support-overview",
        "Support overview",
        "Are we keeping our promise? What lapses right now, compliance against each "
        "objective, response times against each target, per channel, queue and priority.",
        CONTACT_VARIABLES,
    )
    pct = {"defaults": {"min": 0, "max": 1}}
    b.panel(
        "stat",
        "Breached now",
        "Open targets past their deadline, still unanswered (each one is paged).",
        [(f'sum(sla_open_targets{{state="breached",{F}}})', "breached")],
        w=6,
        h=5,
        defaults=thresholds(("green", None), ("red", 1)),
    )
    b.panel(
        "stat",
        "At risk now",
        "Open targets past their warning point: answer these first.",
        [(f'sum(sla_open_targets{{state="at_risk",{F}}})', "at risk")],
        w=6,
        h=5,
        defaults=thresholds(("green", None), ("orange", 1)),
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
        "stat",
        "Error budget left (lowest)",
        f"Of the breaches the objective allows over the period ({config.settings.objectives.period.days}d), "
        "the share not yet spent, for the queue and target that has spent most. Below 0: "
        "the objective is already missed.",
        [(f"min(sla:error_budget_remaining:ratio{{{G}}})", "budget left")],
        unit="percentunit",
        w=6,
        h=5,
        defaults=thresholds(("red", None), ("orange", 0), ("green", 0.25)),
    )
    b.panel(
        "table",
        "Breached and at risk now, per queue and target",
        "Where the open lapses and near-lapses are. Each breached contact is paged to "
        "on-call as AcknowledgementLapsed, with a link to it.",
        [
            (
                "sum by (channel, queue, priority, target, state) "
                f'(sla_open_targets{{state=~"breached|at_risk",{F}}}) > 0',
                "",
            )
        ],
        w=12,
        h=8,
        transformations=[HIDE_TIME],
    )
    b.text(
        "Lapsing now, contact by contact",
        "Which contacts, with links: the monitor's own list, and the pages in Alertmanager.",
        "Each breached contact is paged to on-call as **AcknowledgementLapsed**, with a link "
        "to the contact in its source.\n\n"
        f"- [**Lapsing now** — every contact breached or at risk, with links]({MONITOR}/lapsing) "
        "(served by the monitor; refreshes itself)\n"
        "- [**Pages in Alertmanager**](/alerting/groups?alertmanager=Alertmanager"
        "&groupBy=alertname) (Grafana's Alerting view of the provisioned Alertmanager "
        "data source: silence or inspect a page)\n"
        "- `sla-monitor breaches --since 7d` — the lapses of a period, to forward",
        w=12,
        h=8,
    )
    b.panel(
        "table",
        "Compliance against objective (30 days)",
        "Per channel, queue and target: share of targets met over the error budget's "
        "period, the objective (config: objectives) and the error budget left.",
        [
            (f"sla:target_compliance:ratio_rate30d{{{G}}}", "compliance"),
            (f"sla:objective:ratio{{{G}}}", "objective"),
            (f"sla:error_budget_remaining:ratio{{{G}}}", "budget left"),
        ],
        unit="percentunit",
        w=12,
        h=8,
        transformations=[
            {"id": "merge", "options": {}},
            HIDE_TIME,
            {
                "id": "organize",
                "options": {
                    "renameByName": {
                        "Value #A": "compliance",
                        "Value #B": "objective",
                        "Value #C": "budget left",
                    }
                },
            },
        ],
    )
    b.panel(
        "timeseries",
        "Compliance (1 day) against objective",
        "Share of targets met over the last day, with each one's objective as a dashed line.",
        [
            (f"sla:target_compliance:ratio_rate1d{{{G}}}", "{{channel}}/{{queue}} {{target}}"),
            (f"sla:objective:ratio{{{G}}}", "objective {{channel}}/{{queue}} {{target}}"),
        ],
        unit="percentunit",
        w=12,
        h=9,
        overrides=PROMISE_LINES,
        **pct,
    )
    b.panel(
        "bargauge",
        "Compliance by channel, queue and priority (24h)",
        f"Targets met / (met + breached) over the last 24 hours; red below the default "
        f"objective ({objective:.0%}).",
        [
            (
                ratio(
                    f'outcome="met",{F}',
                    f'outcome=~"met|breached",{F}',
                    "channel, queue, priority",
                    "1d",
                ),
                "{{channel}} / {{queue}} / {{priority}}",
            )
        ],
        unit="percentunit",
        w=12,
        h=9,
        displayMode="gradient",
        orientation="horizontal",
        defaults={"min": 0, "max": 1, **thresholds(("red", None), ("green", objective))},
    )
    # response times per policy rule and target, against that target's `within`
    for rule in config.settings.policy.rules:
        channels = "|".join(c.value for c in rule.match.channel or []) or ".*"
        for name, spec in rule.targets.items():
            within = spec.within.total_seconds()
            b.panel(
                "timeseries",
                f"{rule.name}: {name.value} response time (within {_human(within)})",
                f"Time to {name.value} on its clock (pauses excluded), p50 and p90 per queue, "
                f"for contacts of the `{rule.name}` rule; the red line is its target.",
                [
                    (quantile(0.5, name.value, channels), "p50 {{queue}}"),
                    (quantile(0.9, name.value, channels), "p90 {{queue}}"),
                ],
                unit="s",
                w=8,
                h=8,
                defaults={
                    "custom": {"thresholdsStyle": {"mode": "line"}},
                    **thresholds(("green", None), ("red", within)),
                },
            )
    for title, description, exprs, unit in (
        (
            "Phone: calls waiting now",
            "Callers on hold in each queue right now (answer target not yet met).",
            [('sla:phone_calls_waiting:count{queue=~"$queue"}', "{{queue}}")],
            "short",
        ),
        (
            "Phone: longest wait now",
            "How long the longest-waiting caller of each queue has been on hold.",
            [('sla:phone_longest_wait:seconds{queue=~"$queue"}', "{{queue}}")],
            "s",
        ),
        (
            "Phone: average speed of answer (1h)",
            "Average time callers waited before an agent answered, over the last hour.",
            [
                (
                    'sla:phone_average_speed_of_answer:seconds_rate1h{queue=~"$queue"}',
                    "{{queue}}",
                )
            ],
            "s",
        ),
        (
            "Phone: callbacks (1d)",
            "Callers who asked to be called back instead of waiting, and those the team then "
            "reached, over the last day.",
            [
                (
                    "sum by (queue, state) "
                    '(increase(sla_callbacks_total{channel="phone",queue=~"$queue"}[1d]))',
                    "{{queue}} {{state}}",
                )
            ],
            "short",
        ),
        (
            "Phone: abandon rate (1h)",
            "Share of calls the caller hung up on, over the last hour: all abandons, and "
            "without the short ones (under policy.short_abandon).",
            [
                ('sla:phone_abandon:ratio_rate1h{queue=~"$queue"}', "{{queue}} all"),
                (
                    'sla:phone_abandon_not_short:ratio_rate1h{queue=~"$queue"}',
                    "{{queue}} without short",
                ),
            ],
            "percentunit",
        ),
    ):
        b.panel("timeseries", title, description, exprs, unit=unit, w=6, h=7)
    b.panel(
        "timeseries",
        "Phone service level (1h) against goal",
        f"Calls answered within the answer target ({config.service_level_formula}: "
        "policy.service_level.formula), per queue, with its goal as a dashed line.",
        [
            ('sla:phone_service_level:ratio_rate1h{queue=~"$queue"}', "{{queue}}"),
            ('sla:phone_service_level_goal:ratio{queue=~"$queue"}', "goal {{queue}}"),
        ],
        unit="percentunit",
        w=12,
        overrides=PROMISE_LINES,
        **pct,
    )
    b.panel(
        "timeseries",
        "Phone abandons per hour",
        "Calls hung up before being answered; short ones (under policy.short_abandon) apart.",
        [
            (
                "sum by (queue, outcome) (increase(sla_target_outcomes_total"
                '{channel="phone",target="answer",outcome=~"abandoned|abandoned_short",'
                'queue=~"$queue",priority=~"$priority"}[1h]))',
                "{{queue}} {{outcome}}",
            )
        ],
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
        "Contacts opened per hour",
        "New contacts by channel.",
        [(f"sum by (channel) (increase(sla_contacts_opened_total{{{F}}}[1h]))", "{{channel}}")],
        w=12,
    )
    b.panel(
        "table",
        "Outcomes in the last 24 hours",
        "Every target's outcomes by channel, queue and priority.",
        [
            (
                "sum by (channel, queue, priority, target, outcome) "
                f"(increase(sla_target_outcomes_total{{{F}}}[1d])) > 0",
                "",
            )
        ],
        w=24,
        h=10,
        transformations=[HIDE_TIME],
    )
    return b


def _human(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def monitor_health() -> Board:
    b = Board(
        "sla-monitor-health",
        "Monitor health",
        "Is the monitor reading its sources and publishing breaches in time?",
        SOURCE_VARIABLES,
    )
    b.panel(
        "stat",
        "Sources up",
        "1 if the last poll of the source succeeded.",
        [('sla_source_up{source=~"$source"}', "{{source}}")],
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
        [('time() - sla_source_last_success_timestamp_seconds{source=~"$source"}', "{{source}}")],
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
        [
            (
                'sum by (source, result) (rate(sla_source_polls_total{source=~"$source"}[5m]))',
                "{{source}} {{result}}",
            )
        ],
    )
    b.panel(
        "timeseries",
        "Poll errors",
        "Failed polls per second (0 when all is well).",
        [
            (
                'sum by (source) (rate(sla_source_polls_total{result!="ok",source=~"$source"}[5m]))\nor\nsum by (source) (rate(sla_source_polls_total{source=~"$source"}[5m])) * 0',
                "{{source}}",
            )
        ],
    )
    b.panel(
        "timeseries",
        "Watermark lag",
        "How far behind now each source has been read completely.",
        [('time() - sla_source_watermark_timestamp_seconds{source=~"$source"}', "{{source}}")],
        unit="s",
    )
    b.panel(
        "timeseries",
        "Poll duration",
        "Duration of the last poll.",
        [('sla_source_poll_duration_seconds{source=~"$source"}', "{{source}}")],
        unit="s",
    )
    b.panel(
        "timeseries",
        "Events ingested per second",
        "New events stored, by kind.",
        [
            (
                'sum by (source, kind) (rate(sla_events_ingested_total{source=~"$source"}[5m]))',
                "{{source}} {{kind}}",
            )
        ],
    )
    b.panel(
        "timeseries",
        "Events rejected per second",
        "Malformed items set aside, by reason.",
        [
            (
                'sum by (source, reason) (rate(sla_events_rejected_total{source=~"$source"}[5m]))\nor\nsum by (source) (rate(sla_events_ingested_total{source=~"$source"}[5m])) * 0',
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
