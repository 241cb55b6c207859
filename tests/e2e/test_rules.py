"""`sla-monitor rules`: the Prometheus rules come from the config's objectives (as Sloth
and Pyrra generate theirs from SLO specs). The shipped rules are its output for the shipped
config; objectives per queue and target, the budget's period, the low-traffic guard and
phone goals per queue under the configured formula are checked by promtool itself."""

from __future__ import annotations

from pathlib import Path

from ..conftest import DATA, SHIPPED_CONFIG
from .test_cli_errors import cli
from .test_deploy import RULES, run, tool

OBJECTIVES = """\
objectives:
  ratio: 0.95
  period: 28d
  min_events: 10
  rules:
    - match: {queue: billing, target: first_reply}
      ratio: 0.99
    - match: {queue: technical, priority: urgent}
      ratio: 0.999
  phone_service_level: 0.80
  phone_service_level_by_queue: {sales-line: 0.90}
"""


def test_the_shipped_rules_are_the_generators_output_for_the_shipped_config() -> None:
    done = cli("rules", "--config", str(SHIPPED_CONFIG))
    assert done.returncode == 0, done.stderr
    assert done.stdout == RULES.read_text(), "run `sla-monitor rules --out ...` again"


def test_objectives_per_queue_period_guard_and_phone_goals_hold_in_promtool(
    tmp_path: Path,
) -> None:
    text = SHIPPED_CONFIG.read_text()
    text = text.replace(
        "listen: 0.0.0.0:9799", "listen: 0.0.0.0:9799\nexternal_url: https://sla.example.com/"
    )
    # sales-line's calls are judged counting every abandon (the rest: late ones only)
    phone = "    - name: phone\n"
    assert phone in text
    text = text.replace(
        phone,
        "    - name: sales-phone\n"
        "      match: {channel: phone, queue: sales-line}\n"
        "      service_level: {formula: all_abandons}\n"
        "      short_abandon: 10s\n"
        "      targets: {answer: {within: 20s}}\n" + phone,
    )
    config = tmp_path / "sla.yaml"
    head, rest = text.split("\nobjectives:", 1)
    config.write_text(head + "\n" + OBJECTIVES + "\nsources:" + rest.split("\nsources:", 1)[1])
    done = cli("rules", "--config", str(config), "--out", str(tmp_path / "rules.yml"))
    assert done.returncode == 0, done.stderr
    run(tool("promtool"), "check", "rules", str(tmp_path / "rules.yml"))
    (tmp_path / "test.yml").write_text((DATA / "objectives.promtool.yml").read_text())
    out = run(tool("promtool"), "test", "rules", "test.yml", cwd=tmp_path)
    assert "SUCCESS" in out


def test_an_objective_that_promises_everything_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "sla.yaml"
    text = SHIPPED_CONFIG.read_text().replace("  ratio: 0.95 ", "  ratio: 1.0 ")
    config.write_text(text.replace("  period: 30d ", "  period: 2h "))
    done = cli("rules", "--config", str(config))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "objectives.ratio" in done.stderr and "objectives.period" in done.stderr
