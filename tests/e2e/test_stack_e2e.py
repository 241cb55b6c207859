"""End to end, as deployed: the monitor on the accelerated demo desk, a real Prometheus
scraping it with the shipped rules, a real Alertmanager receiving both the monitor's
per-contact pages and Prometheus' alerts. Every dashboard query must return data."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from sla_monitor.bootstrap import build_app
from sla_monitor.entrypoints.http import MetricsServer

from ..conftest import ROOT, SHIPPED_CONFIG, free_port
from ..promstack import AM_CONFIG, Alertmanager, Prometheus

LINK = "https://desk.example.com/tickets/{conversation_id}"
SUBSTITUTIONS = {
    "$__rate_interval": "1m",
    "$__range": "1h",
    "$__interval": "15s",
    "$channel": ".*",
    "$queue": ".*",
    "$priority": ".*",
    "$source": ".*",
}


def wait_for(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
        except httpx.HTTPError:
            result = None
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def dashboard_queries() -> list[tuple[str, dict[str, Any], dict[str, Any], str]]:
    """(board, panel, target, the target's query as Grafana would send it)."""
    out = []
    for path in sorted((ROOT / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):  # a text panel has none
                expr = target["expr"]
                for var, value in SUBSTITUTIONS.items():
                    expr = expr.replace(var, value)
                assert "$" not in expr, expr
                out.append((path.name, panel, target, expr))
    return out


def shape_problem(
    prom: Prometheus, panel: dict[str, Any], target: dict[str, Any], expr: str, since: float
) -> str | None:
    """What keeps a panel from showing this query (None: it shows it). Tables and bar gauges
    show one row or bar per series: an instant query (a table formatted as a table) that
    returns samples. Time series plot a range query that returns series of several points;
    a stat reduces a range."""
    kind = panel["type"]
    if kind in ("table", "bargauge"):
        if not target.get("instant") or target.get("range"):
            return "not an instant query"
        if kind == "table" and target.get("format") != "table":
            return "not formatted as a table"
        return None if prom.query(expr) else "no samples"
    if not target.get("range") or target.get("instant"):
        return "not a range query"
    if target.get("format") != "time_series":
        return "not formatted as a time series"
    series = prom.query_range(expr, since, time.time(), 1)
    if not any(len(s["values"]) >= 2 for s in series):
        return "no series with points to plot"
    return None


def test_pages_rules_and_dashboards_against_real_prometheus_and_alertmanager(
    tmp_path: Path,
) -> None:
    config = tmp_path / "sla-monitor.yaml"
    text = SHIPPED_CONFIG.read_text()
    text = re.sub(r"(    kind: demo[^\n]*\n)", r'\1    contact_url: "' + LINK + '"\n', text)
    config.write_text(text)
    am = Alertmanager(AM_CONFIG)
    am.start()
    port = free_port()
    app = build_app(
        str(config),
        f"sqlite:///{tmp_path / 'sla.db'}",
        f"127.0.0.1:{port}",
        [am.url],
        serve=MetricsServer,
    )
    app.start()
    prom = Prometheus(f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: ["{ROOT / "config/prometheus/rules/sla-monitor.rules.yml"}"]
alerting:
  alertmanagers: [{{static_configs: [{{targets: ["127.0.0.1:{am.port}"]}}]}}]
scrape_configs:
  - job_name: sla-monitor
    static_configs: [{{targets: ["127.0.0.1:{port}"]}}]
""")
    prom.start()
    started = time.time()
    try:
        # 1. the monitor pages a breached contact, with its labels and a link to it
        def lapsed() -> list[dict[str, Any]]:
            return [a for a in am.alerts() if a["labels"]["alertname"] == "AcknowledgementLapsed"]

        pages = wait_for("a page in Alertmanager", lapsed, 60)
        page = pages[0]
        labels = page["labels"]
        assert set(labels) == {
            "alertname",
            "severity",
            "channel",
            "queue",
            "target",
            "priority",
            "contact",
            "source",
        }
        assert labels["severity"] == "page" and labels["source"] == "demo"
        source, conversation = labels["contact"].split(":", 1)
        assert page["annotations"]["link"] == LINK.format(conversation_id=conversation)

        # the monitor's own list of what is lapsing now: breached contacts, with links
        def lapsing() -> list[dict[str, Any]]:
            url = f"http://127.0.0.1:{port}/lapsing?format=json"
            rows = httpx.get(url, timeout=5).json()["lapsing"]
            return [r for r in rows if r["state"] == "breached"]

        row = wait_for("a breached contact on /lapsing", lapsing, 30)[0]
        conv = row["contact"].split(":", 1)[1]
        assert row["link"] == LINK.format(conversation_id=conv) and row["late_seconds"] > 0
        html = httpx.get(f"http://127.0.0.1:{port}/lapsing", timeout=5).text
        assert 'href="https://desk.example.com/tickets/' in html and "Lapsing now" in html
        # its runbook, served by the monitor that paged (external_url: localhost and its port)
        runbook = httpx.get(page["annotations"]["runbook_url"], timeout=5)
        assert runbook.status_code == 200 and runbook.text.startswith("# AcknowledgementLapsed")
        with app.store.begin() as conn:
            contact = conn.state.contacts_for([(source, conversation)])[(source, conversation)]
        assert (labels["channel"], labels["queue"]) == (contact.channel, contact.queue)

        # 2. ... and resolves it after the reply event
        paged = {a["labels"]["contact"] + "/" + a["labels"]["target"]: a for a in pages}

        def one_resolved() -> str | None:
            active = {a["labels"]["contact"] + "/" + a["labels"]["target"] for a in lapsed()}
            gone = sorted(set(paged) - active)
            return gone[0] if gone else None

        resolved = wait_for("a page to resolve", one_resolved, 90)
        key = tuple(resolved.split("/")[0].split(":", 1))
        with app.store.begin() as conn:
            events = conn.events.for_contacts([key])[key]  # type: ignore[list-item]
        target = resolved.split("/")[1]
        closing = {"agent_reply", "auto_reply", "call_answered", "status_changed", "call_abandoned"}
        assert any(e.kind.value in closing for e in events), (target, events)

        # 3. every dashboard query returns data in the shape its panel needs
        wait_for("a few scrapes", lambda: prom.query("count_over_time(sla_build_info[1m]) > 5"), 30)
        problems = [
            (board, panel["title"], target["refId"], problem)
            for board, panel, target, expr in dashboard_queries()
            if (problem := shape_problem(prom, panel, target, expr, started)) is not None
        ]
        assert problems == [], f"panels that would not show their data: {problems}"

        # 4. a Prometheus-side rule fires (breached targets open for a minute)
        def firing() -> list[dict[str, Any]]:
            alerts = httpx.get(prom.url + "/api/v1/alerts", timeout=5).json()["data"]["alerts"]
            return [
                a
                for a in alerts
                if a["state"] == "firing" and a["labels"]["alertname"] == "SLABreachedTargetsOpen"
            ]

        rule_alerts = wait_for("SLABreachedTargetsOpen to fire", firing, 150)
        assert rule_alerts[0]["annotations"]["runbook_url"].endswith(
            "/runbooks/SLABreachedTargetsOpen"
        )
        # ... and reaches Alertmanager too
        wait_for(
            "the rule's alert in Alertmanager",
            lambda: [
                a for a in am.alerts() if a["labels"]["alertname"] == "SLABreachedTargetsOpen"
            ],
            30,
        )
    finally:
        prom.cleanup()
        app.stop()
        am.cleanup()
