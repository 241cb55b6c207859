"""The composition root: config -> store -> monitor -> sources -> runtime (+ publishers).

Only wiring. The CLI hands in how to serve /metrics (`serve`), so nothing here depends
on an entrypoint.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial

from prometheus_client import CollectorRegistry
from prometheus_client.process_collector import ProcessCollector

from sla_monitor.adapters import open_store
from sla_monitor.adapters.abc import Store
from sla_monitor.config import Config, load_config
from sla_monitor.publishing.alertmanager import AlertmanagerPublisher, DeliveryCollector
from sla_monitor.publishing.metrics import MonitorCollector
from sla_monitor.service_layer.clock import AcceleratedClock, Clock, SystemClock
from sla_monitor.service_layer.monitor import Monitor
from sla_monitor.service_layer.runtime import Endpoint, Runtime
from sla_monitor.sources import build_source, validate_source_config
from sla_monitor.sources.abc import SourceContext

log = logging.getLogger(__name__)
Serve = Callable[[CollectorRegistry, str], Endpoint]  # (registry, listen address)


def choose_clock(config: Config, store: Store) -> Clock:
    """The demo desk may run the monitor's clock faster than real time (speed > 1)."""
    speed = max(
        (float(s.options.get("speed", 1.0)) for s in config.settings.sources if s.kind == "demo"),
        default=1.0,
    )
    if speed <= 1.0:
        return SystemClock()
    if any(s.kind != "demo" for s in config.settings.sources):
        log.warning("demo speed %.0fx also speeds up the clock of the other sources", speed)
    with store.begin() as tx:
        marks = [s.watermark for s in tx.sources.load().values() if s.watermark]
    origin = max([datetime.now(UTC), *marks])  # never let a restart move time backwards
    log.info("demo: the monitor's clock runs %.0fx faster than real time", speed)
    return AcceleratedClock(speed, origin)


def build_app(
    config_path: str,
    db_url: str | None = None,
    listen: str | None = None,
    alertmanagers: list[str] | None = None,
    serve: Serve | None = None,
) -> Runtime:
    config = load_config(config_path, validate_source_config)
    store = open_store(db_url or config.database_url)
    store.migrate()
    clock = choose_clock(config, store)
    alerting, cluster = config.settings.alerting, config.settings.cluster
    urls = [*alerting.alertmanager_urls, *(alertmanagers or [])]
    make_pager = None
    if urls:
        make_pager = partial(
            AlertmanagerPublisher,
            urls,
            clock,
            {s.name: s.contact_url for s in config.settings.sources},
            alerting.resend_interval.total_seconds(),
            alerting.timeout.total_seconds(),
            severities=config.policy.severities,
        )
    if cluster.enabled and store.dialect != "postgresql":
        log.warning(
            "cluster mode on %s: replicas must share one database; use PostgreSQL "
            "(docs/scaling.md)",
            store.dialect,
        )
    # in a cluster, the leader creates its pager when it takes over
    alerts = make_pager() if make_pager and not cluster.enabled else None
    monitor = Monitor(store, config, clock, [alerts] if alerts else [])
    monitor.clustered = cluster.enabled
    monitor.replica_id = cluster.replica_id or f"{socket.gethostname()}:{os.getpid()}"
    sources = {
        cfg.name: (
            build_source(
                SourceContext(cfg.name, cfg.channel, tuple(cfg.queues)), cfg.kind, cfg.options
            ),
            cfg,
        )
        for cfg in config.settings.sources
    }
    for cfg in config.settings.sources:
        monitor.declare(cfg.name, cfg.kind, cfg.channel.value if cfg.channel else None, cfg.queues)
    runtime = Runtime(config, store, clock, monitor, sources, alerts=alerts, make_pager=make_pager)
    runtime.clustered, runtime.replica_id = cluster.enabled, monitor.replica_id
    registry = CollectorRegistry()
    registry.register(MonitorCollector(monitor))
    registry.register(DeliveryCollector(lambda: _publisher(runtime)))
    registry.register(ProcessCollector(registry=None))
    if serve is not None:
        runtime.endpoint = serve(registry, listen or config.settings.listen)
    return runtime


def _publisher(runtime: Runtime) -> AlertmanagerPublisher | None:
    return runtime.alerts if isinstance(runtime.alerts, AlertmanagerPublisher) else None
