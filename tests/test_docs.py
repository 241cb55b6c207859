"""The README stays true: its example config is valid, and it names every metric served."""

from __future__ import annotations

import re
from pathlib import Path

from sla_monitor.config import load_config
from sla_monitor.entrypoints.cli import build_parser
from sla_monitor.publishing.metrics import MonitorCollector
from sla_monitor.service_layer.clock import FixedClock
from sla_monitor.service_layer.monitor import Monitor

from .conftest import ROOT, SHIPPED_CONFIG
from .helpers import T0

README = (ROOT / "README.md").read_text()


def test_readme_config_example_is_valid(tmp_path: Path) -> None:
    block = re.search(r"## Configuration.*?```yaml\n(.*?)```", README, re.S)
    assert block is not None
    path = tmp_path / "example.yaml"
    path.write_text(block.group(1))
    cfg = load_config(path)
    assert cfg.calendars["support-hours"].is_holiday(T0.date().replace(month=12, day=24))


def test_readme_lists_every_metric_and_command(tmp_path: Path) -> None:
    from sla_monitor.adapters.store import Store

    store = Store(f"sqlite:///{tmp_path / 'x.db'}")
    store.migrate()
    monitor = Monitor(store, load_config(SHIPPED_CONFIG), FixedClock(T0))
    monitor.load()
    names = {m.name for m in MonitorCollector(monitor).collect()}
    for name in names:
        shown = name + "_total" if f"`{name}_total`" in README else name
        assert f"`{shown}`" in README, f"{name} is served but not in the README"
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for command in commands:
        assert f"sla-monitor {command}" in README, command


def test_connector_examples_are_valid() -> None:
    from sla_monitor.sources import REGISTRY

    cfg = load_config(ROOT / "config" / "examples" / "connectors.yaml")
    kinds = {s.kind for s in cfg.settings.sources}
    assert kinds == set(REGISTRY) - {"demo"}  # every connector has an example
    for kind in REGISTRY:
        assert f"`{kind}`" in README, f"connector {kind} is not in the README"
        assert f"`{kind}`" in (ROOT / "docs" / "sources.md").read_text(), kind
