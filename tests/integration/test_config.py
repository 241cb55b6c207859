"""Config validation: errors name the file, the line, the key path and what is wrong."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from sla_monitor.config import ConfigError, load_config
from sla_monitor.entrypoints.cli import main
from sla_monitor.sources import validate_source_config

from ..conftest import SHIPPED_CONFIG


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "broken.yaml"
    p.write_text(text)
    return p


GOOD = SHIPPED_CONFIG.read_text()


def test_shipped_config_carries_product_defaults() -> None:
    cfg = load_config(SHIPPED_CONFIG)
    rules = {r.name: {t.name.value: t for t in r.targets} for r in cfg.policy.rules}
    assert rules["email"]["auto_ack"].within.total_seconds() == 120
    assert rules["email"]["first_reply"].within.total_seconds() == 3600
    assert rules["email"]["next_reply"].clock.name == "support-hours"
    assert rules["social"]["first_reply"].within.total_seconds() == 900
    assert rules["phone"]["answer"].within.total_seconds() == 20
    assert cfg.policy.short_abandon.total_seconds() == 5
    assert cfg.policy.repeat_window.days == 7


def test_check_config_accepts_the_shipped_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(SHIPPED_CONFIG)]) == 0
    assert "OK" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "first_reply: {within: 1h, warn_before: 15m}",
            "first_reply: {within: 1x}",
            "policy.rules[2].targets.first_reply.within: not a duration: '1x'",
        ),
        (
            "auto_ack: {within: 2m}",
            "auto_ack: {within: 2m, colour: red}",
            "policy.rules[2].targets.auto_ack.colour: unknown key",
        ),
        (
            "timezone: Europe/London",
            "timezone: Europe/Londn",
            "calendars.support-hours.timezone: unknown IANA time zone 'Europe/Londn'",
        ),
        (
            "clock: {business: support-hours}, warn_before: 0.25}\n        # keep",
            "clock: {business: after-hours}, warn_before: 0.25}\n        # keep",
            "policy.rules[2].targets.next_reply.clock.business: unknown calendar 'after-hours'",
        ),
        ("kind: demo ", "kind: dmeo ", "sources[0].kind: unknown source kind 'dmeo'"),
        ("seed: 42", "seed: 42\n      sped: 60", "sources[0].options.sped: unknown option"),
        ("match: {channel: phone}", "match: {channel: fax}", "policy.rules[0].match.channel[0]"),
        ('mon-fri: ["08:00-18:00"]', 'mon-fri: ["8am-6pm"]', "bad hours '8am-6pm'"),
    ],
)
def test_errors_name_the_bad_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], old: str, new: str, expected: str
) -> None:
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    assert main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err
    assert expected in err


def test_error_carries_the_line_number(tmp_path: Path) -> None:
    text = GOOD.replace(
        "first_reply: {within: 1h, warn_before: 15m}", "first_reply: {within: soon}"
    )
    line = next(i for i, s in enumerate(text.splitlines(), 1) if "within: soon" in s)
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text), validate_source_config)
    assert f"broken.yaml:{line}: policy.rules[2].targets.first_reply" in str(exc.value)


def test_missing_policy_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="policy: required key is missing"):
        load_config(write(tmp_path, "sources: []\n"), validate_source_config)
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "policy: [\n"), validate_source_config)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.yaml", validate_source_config)


def test_secret_database_url_comes_from_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = GOOD.replace("url: sqlite:///sla-monitor.db", "url_env: TEST_SLA_DB")
    cfg = load_config(write(tmp_path, text), validate_source_config)
    monkeypatch.setenv("TEST_SLA_DB", "sqlite:///from-env.db")
    assert cfg.database_url == "sqlite:///from-env.db"
    monkeypatch.delenv("TEST_SLA_DB")
    with pytest.raises(ConfigError, match="TEST_SLA_DB is not set"):
        _ = cfg.database_url


def test_a_key_given_twice_is_an_error_not_a_silent_override(tmp_path: Path) -> None:
    text = GOOD.replace("listen: 0.0.0.0:9799", "listen: 0.0.0.0:9799\nlisten: 127.0.0.1:1", 1)
    line = next(i for i, s in enumerate(text.splitlines(), 1) if s.startswith("listen: 127"))
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text), validate_source_config)
    assert f"broken.yaml:{line}: listen: duplicate key (also on line {line - 1}" in str(exc.value)


@pytest.mark.parametrize("warn", ["1h", "2h", "100%"])
def test_a_warning_point_at_or_before_the_start_is_an_error(tmp_path: Path, warn: str) -> None:
    old = "first_reply: {within: 1h, warn_before: 15m}"
    assert old in GOOD
    text = GOOD.replace(old, f"first_reply: {{within: 1h, warn_before: {warn}}}")
    with pytest.raises(ConfigError, match=r"first_reply\.warn_before: .* is not shorter than"):
        load_config(write(tmp_path, text), validate_source_config)


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    """A policy error does not hide a source's: the operator fixes everything in one go."""
    text = GOOD.replace(
        "first_reply: {within: 1h, warn_before: 15m}", "first_reply: {within: soon}"
    ).replace("seed: 42", "seed: 42\n      sped: 60")
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text), validate_source_config)
    problems = exc.value.problems
    assert any("targets.first_reply.within" in p for p in problems), problems
    assert any("sources[0].options.sped: unknown option" in p for p in problems), problems


def test_a_secret_written_in_clear_gets_plain_words(tmp_path: Path) -> None:
    problems = validate_source_config(
        "zendesk", {"subdomain": "acme", "email": "a@acme.example", "token": "abc123"}
    )
    assert problems == [
        (
            ("options", "token"),
            "a secret is given as {env: VARIABLE} or {file: /path/to/file}, never written "
            "in the config",
        )
    ]


def test_a_queue_label_bound_smaller_than_the_queues_it_must_keep_is_an_error(
    tmp_path: Path,
) -> None:
    old = "    queues: []"
    assert old in GOOD
    text = GOOD.replace(old, "    queues: [billing]\n    queue_labels: {allow: [sales], max: 1}")
    with pytest.raises(ConfigError, match=r"queue_labels.max is 1, but 2 queues .* raise max"):
        load_config(write(tmp_path, text), validate_source_config)
    fine = GOOD.replace(old, "    queues: [billing]\n    queue_labels: {allow: [sales], max: 2}")
    load_config(write(tmp_path, fine), validate_source_config)


def test_a_rule_sets_short_abandon_and_the_service_level_formula_for_its_queues(
    tmp_path: Path,
) -> None:
    phone = "    - name: phone\n"
    rule = (
        "    - name: sales-phone\n"
        "      match: {channel: phone, queue: sales-line}\n"
        "      short_abandon: 10s\n"
        "      service_level: {formula: all_abandons}\n"
        "      targets: {answer: {within: 30s}}\n"
    )
    config = load_config(write(tmp_path, GOOD.replace(phone, rule + phone)), validate_source_config)
    assert config.formula_for("sales-line") == "all_abandons"
    assert config.formula_for("support-line") == "late_abandons"  # the policy's
    sales = config.policy.rules[0]
    assert sales.name == "sales-phone" and sales.targets[0].short_abandon == timedelta(seconds=10)
    assert config.policy.rules[1].targets[0].short_abandon is None
    unnamed = rule.replace("match: {channel: phone, queue: sales-line}", "match: {channel: phone}")
    with pytest.raises(ConfigError, match="service_level in a rule applies to the queues"):
        load_config(write(tmp_path, GOOD.replace(phone, unnamed + phone)), validate_source_config)
