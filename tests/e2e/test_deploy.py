"""Deployment artefacts are valid: Prometheus config and rules (promtool), Alertmanager
config (amtool), compose.yaml, Grafana provisioning, dashboards and runbooks."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from ..conftest import ROOT

PROM = ROOT / "config" / "prometheus"
RULES = PROM / "rules" / "sla-monitor.rules.yml"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (the README's test command installs it)")
    return path


def run(*cmd: str, cwd: Path = ROOT) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def alert_rules() -> list[dict]:  # type: ignore[type-arg]
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r for g in groups for r in g["rules"] if "alert" in r]


def test_promtool_checks_the_shipped_config_and_rules() -> None:
    out = run(tool("promtool"), "check", "config", str(PROM / "prometheus.yml"))
    assert "SUCCESS" in out and "rules found" in out


def test_promtool_unit_tests_cover_every_alert_firing_and_not() -> None:
    out = run(tool("promtool"), "test", "rules", "sla-monitor.test.yml", cwd=PROM / "tests")
    assert "SUCCESS" in out
    tests = yaml.safe_load((PROM / "tests" / "sla-monitor.test.yml").read_text())["tests"]
    cases = [c for t in tests for c in t.get("alert_rule_test", [])]
    for rule in alert_rules():
        mine = [c for c in cases if c["alertname"] == rule["alert"]]
        assert any(c["exp_alerts"] for c in mine), f"{rule['alert']}: no firing case"
        assert any(not c["exp_alerts"] for c in mine), f"{rule['alert']}: no not-firing case"


def test_every_alert_has_summary_description_and_a_runbook() -> None:
    names = []
    for rule in alert_rules():
        a = rule["annotations"]
        assert a["summary"] and a["description"], rule["alert"]
        # served by the monitor of the quick start (docs/deploy.md: set external_url)
        assert a["runbook_url"] == f"http://localhost:9799/runbooks/{rule['alert']}"
        assert (ROOT / "sla_monitor" / "runbooks" / f"{rule['alert']}.md").exists()
        names.append(rule["alert"])
    for name in ("AcknowledgementLapsed", "AcknowledgementAtRisk"):
        assert (ROOT / "sla_monitor" / "runbooks" / f"{name}.md").exists()
    assert len(names) == len(set(names)) >= 9


def test_amtool_checks_the_alertmanager_config() -> None:
    out = run(
        tool("amtool"), "check-config", str(ROOT / "config" / "alertmanager" / "alertmanager.yml")
    )
    assert "SUCCESS" in out


def test_compose_file_is_complete() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert {"sla-monitor", "prometheus", "alertmanager", "grafana"} <= set(services)
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name
        for volume in svc.get("volumes", []):
            host = volume.split(":")[0]
            if host.startswith("."):
                assert (ROOT / host).exists(), f"{name}: {host} does not exist"
            else:
                assert host in compose["volumes"], f"{name}: undeclared volume {host}"
    prom = yaml.safe_load((PROM / "prometheus.yml").read_text())
    target = prom["scrape_configs"][0]["static_configs"][0]["targets"][0]
    assert target == "sla-monitor:9799" and "9799:9799" in services["sla-monitor"]["ports"]
    assert "http://alertmanager:9093" in services["sla-monitor"]["command"]


def test_dockerfile_is_slim_non_root_locked_and_health_checked() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.count("FROM ") == 2 and "-slim" in text
    assert re.search(r"^USER [1-9]\d*:[1-9]\d*$", text, re.M)  # numeric: runAsNonRoot checks
    assert "HEALTHCHECK" in text and "sla_monitor.entrypoints.healthcheck" in text
    assert "--require-hashes" in text and "-r requirements.lock" in text
    assert "SLA_MONITOR_LISTEN=" in text  # what `run` serves on is what the probe asks
    assert 'CMD ["run"]' in text


def test_the_lock_pins_every_dependency_with_hashes() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["postgres"]]
    lock = (ROOT / "requirements.lock").read_text()
    pinned = dict(re.findall(r"^([a-z0-9][a-z0-9._-]*)==(\S+) \\$", lock, re.M))
    for requirement in wanted:
        name = re.split(r"[\[<>=!~ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        assert name in pinned, f"{name} is not in requirements.lock: run `make lock`"
    blocks = re.split(r"\n(?=[a-z0-9])", lock)
    assert all("--hash=sha256:" in b for b in blocks if "==" in b)


def test_the_container_healthcheck_asks_where_run_serves(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from prometheus_client import CollectorRegistry

    from sla_monitor.entrypoints.http import serve

    from ..conftest import free_port

    def probe(listen: str) -> int:
        env = {**os.environ, "SLA_MONITOR_LISTEN": listen}
        cmd = [sys.executable, "-m", "sla_monitor.entrypoints.healthcheck"]
        return subprocess.run(cmd, env=env, capture_output=True, timeout=30).returncode

    server = serve("127.0.0.1", 0, CollectorRegistry(), lambda: True, lambda: (True, "ok"))
    try:
        assert probe(f"0.0.0.0:{server.server_port}") == 0
        assert probe(f"0.0.0.0:{free_port()}") == 1  # nothing there: unhealthy
    finally:
        server.shutdown()
        server.server_close()


def test_dashboards_match_their_generator() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("generate", ROOT / "dashboards" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, text in module.render().items():
        assert (ROOT / "dashboards" / name).read_text() == text, (
            f"dashboards/{name} is stale: run `python dashboards/generate.py`"
        )


def test_dashboards_are_grafana_dashboards() -> None:
    provisioning = yaml.safe_load(
        (ROOT / "config/grafana/provisioning/dashboards/sla-monitor.yml").read_text()
    )
    assert provisioning["providers"][0]["type"] == "file"
    for path in sorted((ROOT / "dashboards").glob("*.json")):
        board = json.loads(path.read_text())
        assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        # every variable filters something, and every filter is a variable (a lead who
        # picks a priority must see every panel that has one follow it)
        exprs = " ".join(t["expr"] for p in board["panels"] for t in p.get("targets", []))
        used = {v for v in re.findall(r"\$(\w+)", exprs) if not v.startswith("__")}
        assert set(variables) - {"datasource"} == used, path.name
        if "sla_contacts_opened_total" in exprs:
            for panel in board["panels"]:
                for t in panel.get("targets", []):
                    if (
                        re.search(
                            r"sla_(target_outcomes|open_targets|response_seconds|contacts_opened)",
                            t["expr"],
                        )
                        and 'queue=~"$queue"' in t["expr"]
                    ):
                        assert "$priority" in t["expr"], (panel["title"], t["expr"])
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids))
        for panel in board["panels"]:
            assert panel["title"] and panel["description"]
            if panel["type"] == "text":  # words and links, no query
                assert panel["options"]["content"].strip()
                continue
            assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"]
            g = panel["gridPos"]
            assert g["x"] >= 0 and g["x"] + g["w"] <= 24
            for target in panel["targets"]:
                assert target["expr"].strip()


def test_readme_describes_every_dashboard_panel() -> None:
    readme = (ROOT / "README.md").read_text()
    for path in sorted((ROOT / "dashboards").glob("*.json")):
        board = json.loads(path.read_text())
        assert f"dashboards/{path.name}" in readme
        for panel in board["panels"]:
            assert panel["title"] in readme, f"README does not describe panel {panel['title']!r}"


def test_grafana_has_the_alertmanager_and_the_lead_a_way_to_each_lapsing_contact() -> None:
    """Per-contact lapses are not metrics (no label per contact): the support overview links
    to the monitor's /lapsing list and to Grafana's view of the provisioned Alertmanager."""
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    sources = yaml.safe_load(
        (ROOT / "config/grafana/provisioning/datasources/alertmanager.yml").read_text()
    )["datasources"]
    (am,) = [d for d in sources if d["type"] == "alertmanager"]
    assert am["jsonData"]["implementation"] == "prometheus"
    assert am["url"] == "http://alertmanager:9093" and "alertmanager" in compose["services"]
    board = json.loads((ROOT / "dashboards" / "support-overview.json").read_text())
    (panel,) = [p for p in board["panels"] if p["title"] == "Lapsing now, contact by contact"]
    content = panel["options"]["content"]
    assert "http://localhost:9799/lapsing" in content and f"alertmanager={am['name']}" in content
