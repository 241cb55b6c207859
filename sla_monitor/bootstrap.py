"""The composition root: config -> store -> monitor -> sources -> runtime (+ publishers).

Only wiring. The CLI hands in how to serve /metrics (`serve`), so nothing here depends
on an entrypoint.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from functools import partial

from prometheus_client import CollectorRegistry
from prometheus_client.process_collector import ProcessCollector

from sla_monitor.adapters import open_store
from sla_monitor.config import load_config
from sla_monitor.publishing.alertmanager import AlertmanagerPublisher, DeliveryCollector
from sla_monitor.publishing.metrics import MonitorCollector
from sla_monitor.service_layer.clock import choose_clock
from sla_monitor.service_layer.monitor import Monitor
from sla_monitor.service_layer.runtime import Endpoint, Runtime
from sla_monitor.sources import build_source, validate_source_config
from sla_monitor.sources.abc import SourceContext

Serve = Callable[[CollectorRegistry, str], Endpoint]  # (registry, listen address)


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
