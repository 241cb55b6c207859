"""The composition root: config -> store -> monitor -> sources -> runtime (+ publishers).

Only wiring. The CLI hands in how to serve /metrics (`serve`), so nothing here depends
on an entrypoint.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.process_collector import ProcessCollector

from sla_monitor.adapters import open_store
from sla_monitor.adapters.abc import Store
from sla_monitor.config import Config, ConfigError, load_config
from sla_monitor.publishing.alertmanager import AlertmanagerPublisher, DeliveryCollector
from sla_monitor.publishing.metrics import MonitorCollector
from sla_monitor.service_layer.clock import Clock, choose_clock
from sla_monitor.service_layer.monitor import Monitor
from sla_monitor.service_layer.recompute import lapsing_now
from sla_monitor.service_layer.runtime import Endpoint, Runtime, alive_within
from sla_monitor.sources import build_source, secrets_of_source, validate_source_config
from sla_monitor.sources.abc import SourceContext

# (registry, listen address, web config file: TLS and basic auth)
Lapsing = Callable[[], list[dict[str, Any]]]  # the contacts lapsed or at risk now (/lapsing)
Serve = Callable[[CollectorRegistry, str, str | None, Lapsing], Endpoint]


def build_app(
    config_path: str,
    db_url: str | None = None,
    listen: str | None = None,
    alertmanagers: list[str] | None = None,
    serve: Serve | None = None,
    web_config: str | None = None,
) -> Runtime:
    config = load_config(config_path, validate_source_config)
    # a secret unset: say which, and do not start
    if missing := config.preflight(secrets_of_source, database=db_url is None):
        raise ConfigError(missing)
    store = open_store(db_url or config.database_url)
    store.migrate()
    clock = choose_clock(config, store, alive_within(config))
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
            client_options=alerting.client_options(Path(config.path).parent),
            runbooks_url=config.settings.runbooks_url(listen),
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
        web = web_config or config.web_config_path
        lapsing = partial(_lapsing, store, config, clock)
        runtime.endpoint = serve(registry, listen or config.settings.listen, web, lapsing)
    return runtime


def _lapsing(store: Store, config: Config, clock: Clock) -> list[dict[str, Any]]:
    return lapsing_now(store, config, clock.now())


def _publisher(runtime: Runtime) -> AlertmanagerPublisher | None:
    return runtime.alerts if isinstance(runtime.alerts, AlertmanagerPublisher) else None
