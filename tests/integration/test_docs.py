"""The README stays true: its example config is valid, and it names every metric served."""

from __future__ import annotations

import re
from pathlib import Path

from sla_monitor.config import load_config
from sla_monitor.entrypoints.cli import build_parser
from sla_monitor.publishing.metrics import MonitorCollector
from sla_monitor.service_layer.clock import FixedClock
from sla_monitor.service_layer.monitor import Monitor

from ..conftest import ROOT, SHIPPED_CONFIG
from ..helpers import T0

README = (ROOT / "README.md").read_text()


def test_readme_config_example_is_valid(tmp_path: Path) -> None:
    block = re.search(r"## Configuration.*?```yaml\n(.*?)```", README, re.S)
    assert block is not None
    path = tmp_path / "example.yaml"
    path.write_text(block.group(1))
    cfg = load_config(path)
    assert cfg.calendars["support-hours"].is_holiday(T0.date().replace(month=12, day=24))


def test_readme_lists_every_metric_and_command(tmp_path: Path) -> None:
    from sla_monitor.adapters.sql import SqlStore

    store = SqlStore(f"sqlite:///{tmp_path / 'x.db'}")
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


def test_scaling_doc_says_which_replica_exports_each_metric(tmp_path: Path) -> None:
    """docs/scaling.md tells dashboard authors which replica serves what; it must match
    what a leader, a source's lease holder and any replica actually serve."""
    from sla_monitor.adapters.sql import SqlStore

    text = (ROOT / "docs" / "scaling.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| `sla_")]

    def documented(marker: str) -> set[str]:
        (row,) = [r for r in rows if marker in r]
        return {n.removesuffix("_total") for n in re.findall(r"`(sla_\w+)`", row)}

    store = SqlStore(f"sqlite:///{tmp_path / 'x.db'}")
    store.migrate()
    monitor = Monitor(store, load_config(SHIPPED_CONFIG), FixedClock(T0))
    monitor.load()
    monitor.declare("demo", "demo", None, [])
    monitor.live.polls[("demo", "ok")] = 1
    monitor.live.ingested[("demo", "customer_message")] = 1
    monitor.live.rejected[("demo", "bad_json")] = 1
    monitor.live.skipped[("demo", "bounce")] = 1
    monitor.live.late[("demo",)] = 1
    health = monitor.live.sources["demo"]
    health.last_success = health.watermark = T0
    health.last_duration = 0.2

    def served(leader: bool, owned: set[str]) -> set[str]:
        monitor.exports_contacts, monitor.owned_sources = leader, owned
        return {m.name for m in MonitorCollector(monitor).collect() if m.samples}

    def families(leader: bool) -> set[str]:
        monitor.exports_contacts, monitor.owned_sources = leader, set()
        return {m.name for m in MonitorCollector(monitor).collect()}

    assert families(True) - families(False) == documented("**leader**")
    assert served(False, {"demo"}) - served(False, set()) == documented("**holding the source")
    assert served(False, set()) == documented("every replica")
