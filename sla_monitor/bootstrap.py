"""The composition root: config -> store -> monitor -> sources -> scheduler -> /metrics."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import ThreadingHTTPServer

from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import CollectorRegistry
from prometheus_client.process_collector import ProcessCollector

from sla_monitor.adapters.store import ClusterStore, LeaseLost, Store
from sla_monitor.config import Config, SourceConfig, load_config, parse_listen
from sla_monitor.domain.timeutil import to_micros
from sla_monitor.entrypoints.http import serve
from sla_monitor.publishing.alertmanager import AlertmanagerPublisher, DeliveryCollector
from sla_monitor.publishing.metrics import MonitorCollector
from sla_monitor.service_layer.clock import AcceleratedClock, Clock, SystemClock
from sla_monitor.service_layer.monitor import Monitor, store_unreachable
from sla_monitor.sources import Source, build_source
from sla_monitor.sources.abc import AuthFailed, SourceError

log = logging.getLogger(__name__)
WAKE_JOB = "deadline-wake"
SYNC_INTERVAL = 0.25  # seconds between the leader's reads of what other replicas stored
MAX_BACKOFF = 300.0  # seconds; a failing source is retried at least this often
AUTH_RETRY = 300.0


def open_store(config: Config, db_url: str | None = None) -> Store:
    store = Store(db_url or config.database_url)
    store.migrate()
    return store


def choose_clock(config: Config, store: Store) -> Clock:
    """The demo desk may run the monitor's clock faster than real time (speed > 1)."""
    speeds = {
        float(s.options.get("speed", 1.0)) for s in config.settings.sources if s.kind == "demo"
    }
    speed = max(speeds, default=1.0)
    if speed <= 1.0:
        return SystemClock()
    if any(s.kind != "demo" for s in config.settings.sources):
        log.warning("demo speed %.0fx also speeds up the clock of the other sources", speed)
    with store.begin() as conn:
        marks = [s.watermark for s in store.load_sources(conn).values() if s.watermark]
    origin = max([datetime.now(UTC), *marks])  # never let a restart move time backwards
    log.info("demo: the monitor's clock runs %.0fx faster than real time", speed)
    return AcceleratedClock(speed, origin)


@dataclass
class App:
    config: Config
    store: Store
    clock: Clock
    monitor: Monitor
    sources: dict[str, tuple[Source, SourceConfig]]
    listen: str
    scheduler: BackgroundScheduler = field(
        default_factory=lambda: BackgroundScheduler(timezone=UTC)
    )
    http: ThreadingHTTPServer | None = None
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    polled: set[str] = field(default_factory=set)
    alerts: AlertmanagerPublisher | None = None
    alert_urls: list[str] = field(default_factory=list)
    cluster: ClusterStore | None = None
    replica_id: str = ""
    leader: bool = False
    _wake_at: datetime | None = None
    _wake_lock: threading.Lock = field(default_factory=threading.Lock)

    # -- jobs ----------------------------------------------------------------------------

    def poll(self, name: str) -> None:
        owned = self.monitor.owned_sources
        if owned is not None and name not in owned:
            return  # another replica polls it
        source, cfg = self.sources[name]
        state = self.monitor.sources.get(name)
        started = time.perf_counter()
        try:
            result = source.poll(state.cursor if state else None, self.clock.now())
        except Exception as exc:
            self._failed(name, cfg, exc, time.perf_counter() - started)
            return
        try:
            summary = self.monitor.apply_poll(name, cfg.kind, result, time.perf_counter() - started)
        except LeaseLost:
            log.warning("lost the lease of source %s; another replica polls it now", name)
            if owned is not None:
                owned.discard(name)
            return
        except Exception as exc:
            if not store_unreachable(exc):  # an outage is logged once, by the monitor
                log.error(
                    "storing the poll of source %s failed (%s); it will be read again",
                    name,
                    exc,
                    exc_info=log.isEnabledFor(logging.DEBUG),
                )
            self.monitor.poll_failed(
                name, cfg.kind, "store unavailable", time.perf_counter() - started
            )
            self._poll_again(name, self._backoff(cfg, 1))
            return
        self.polled.add(name)
        if summary.new or summary.rejected:
            log.debug(
                "source %s: %d new events, %d rejected, %d contacts evaluated",
                name,
                summary.new,
                summary.rejected,
                summary.contacts,
            )
        if result.more:  # a backlog: read on without waiting for the interval
            self._poll_again(name, result.next_poll_after or 0.0)
        elif result.next_poll_after and result.next_poll_after > cfg.interval.total_seconds():
            self._poll_again(name, result.next_poll_after)

    def _failed(self, name: str, cfg: SourceConfig, exc: Exception, duration: float) -> None:
        result = exc.result if isinstance(exc, SourceError) else "error"
        self.monitor.poll_failed(name, cfg.kind, str(exc), duration, result)
        self.polled.add(name)
        failures = self.monitor.live.sources[name].consecutive_failures
        if isinstance(exc, SourceError) and exc.retry_after is not None:
            delay = exc.retry_after
        elif isinstance(exc, AuthFailed):
            delay = max(AUTH_RETRY, cfg.interval.total_seconds())  # a person must fix it
        else:
            delay = self._backoff(cfg, failures)
        if isinstance(exc, SourceError):
            level = (
                logging.ERROR if failures == 1 or isinstance(exc, AuthFailed) else logging.WARNING
            )
            log.log(
                level,
                "poll of source %s failed (%s): %s; next try in %.0fs",
                name,
                result,
                exc,
                delay,
            )
        else:
            log.exception("poll of source %s failed; next try in %.0fs", name, delay)
        self._poll_again(name, delay)

    @staticmethod
    def _backoff(cfg: SourceConfig, failures: int) -> float:
        """Exponential back-off from the poll interval, capped."""
        interval = cfg.interval.total_seconds()
        return float(min(max(interval * 2 ** (failures - 1), interval), MAX_BACKOFF))

    def _poll_again(self, name: str, delay: float) -> None:
        job = self.scheduler.get_job(f"poll:{name}")
        if job is not None:
            job.modify(next_run_time=datetime.now(UTC) + timedelta(seconds=delay))

    def wake(self) -> None:
        with self._wake_lock:
            self._wake_at = None
        try:
            self.monitor.wake()
        except Exception as exc:
            if not store_unreachable(exc):  # an outage is logged once, by the monitor
                log.error(
                    "deadline evaluation failed (%s); retried in a second",
                    exc,
                    exc_info=log.isEnabledFor(logging.DEBUG),
                )
            # what fell due stays due: retried until the store takes it
            self.schedule_wake(self.clock.now() + timedelta(seconds=self.clock.speed))

    def schedule_wake(self, at: datetime | None) -> None:
        """Keep exactly one wake-up job, at the monitor's next warning point or deadline."""
        with self._wake_lock:
            if at is None or at == self._wake_at or not self.scheduler.running:
                return
            if self.cluster is not None and not self.leader:
                return
            self._wake_at = at
            self.scheduler.add_job(
                self.wake,
                "date",
                run_date=self.clock.to_real(at),
                id=WAKE_JOB,
                replace_existing=True,
                misfire_grace_time=None,
                max_instances=4,
            )

    # -- life cycle ----------------------------------------------------------------------

    # -- cluster mode ---------------------------------------------------------------------

    def cluster_tick(self) -> None:
        """Renew this replica's leases, take free ones up to a fair share, lead if free."""
        assert self.cluster is not None
        ttl = self.config.settings.cluster.lease_ttl
        now_us = to_micros(datetime.now(UTC))
        ttl_us = int(ttl.total_seconds() * 1_000_000)
        owned = self.monitor.owned_sources
        assert owned is not None
        try:
            with self.store.begin() as conn:
                self.cluster.heartbeat(conn, self.replica_id, now_us)
                replicas = self.cluster.live_replicas(conn, now_us - ttl_us)
                holders = self.cluster.holders(conn, now_us)
            names = sorted(self.sources)
            share = -(-len(names) // max(1, len(replicas)))  # ceil
            index = replicas.index(self.replica_id) if self.replica_id in replicas else 0
            rotated = names[index:] + names[:index]  # replicas prefer different sources
            for name in rotated:
                lease = f"source:{name}"
                mine = holders.get(lease) == self.replica_id
                if mine and len(owned) > share and name in owned:
                    with self.store.begin() as conn:  # hand an extra source back
                        self.cluster.release(conn, lease, self.replica_id)
                    owned.discard(name)
                    continue
                if not mine and (lease in holders or len(owned) >= share):
                    continue
                with self.store.begin() as conn:
                    got = self.cluster.try_lease(conn, lease, self.replica_id, now_us, ttl_us)
                if got and name not in owned:
                    self.monitor.adopt_source(name, self.sources[name][1].kind)
                    owned.add(name)
                    log.info("replica %s polls source %s", self.replica_id, name)
                elif not got:
                    owned.discard(name)
            with self.store.begin() as conn:
                lead = self.cluster.try_lease(conn, "leader", self.replica_id, now_us, ttl_us)
        except Exception:
            log.exception("cluster lease renewal failed")
            return
        if lead and not self.leader:
            self._become_leader()
        elif not lead and self.leader:
            self._step_down()

    def _become_leader(self) -> None:
        log.info("replica %s leads: evaluating contacts, deadlines and alerts", self.replica_id)
        self.monitor.reset_contacts()
        self.monitor.load()
        self.monitor.exports_contacts = True
        self.leader = True
        if self.alert_urls:
            self.alerts = self._publisher()
            self.monitor.listeners = [self.alerts]
            self._start_alerts()
        self.scheduler.add_job(
            self._sync,
            "interval",
            seconds=SYNC_INTERVAL,
            id="leader-sync",
            replace_existing=True,
            max_instances=1,
            coalesce=True,
            next_run_time=datetime.now(UTC),
        )
        self.schedule_wake(self.monitor.next_wake())

    def _step_down(self) -> None:
        log.warning("replica %s is no longer the leader", self.replica_id)
        self.leader = False
        self.monitor.exports_contacts = False
        if self.scheduler.get_job("leader-sync"):
            self.scheduler.remove_job("leader-sync")
        if self.alerts is not None:
            self.alerts.stop()
            self.alerts = None
            self.monitor.listeners = []
        self.monitor.reset_contacts()

    def _sync(self) -> None:
        try:
            self.monitor.sync()
        except LeaseLost:
            self._step_down()
        except Exception:
            log.exception("leader sync failed")

    def _publisher(self) -> AlertmanagerPublisher:
        alerting = self.config.settings.alerting
        return AlertmanagerPublisher(
            self.alert_urls,
            self.clock,
            {s.name: s.contact_url for s in self.config.settings.sources},
            alerting.resend_interval.total_seconds(),
            alerting.timeout.total_seconds(),
            severities=self.config.policy.severities,
        )

    def _start_alerts(self) -> None:
        assert self.alerts is not None
        self.alerts.commit_lock = self.monitor.lock
        with self.store.begin() as conn:
            self.alerts.load(self.store.alerting_targets(conn))  # re-send what is active
        self.monitor.on_resync = self._resync_alerts
        self.alerts.start()

    def _resync_alerts(self) -> None:
        """The monitor re-read its memory after a commit of unknown fate: so do the pages."""
        if self.alerts is not None:
            with self.store.begin() as conn:
                self.alerts.reconcile(self.store.alerting_targets(conn))

    def start(self) -> None:
        if self.cluster is not None:
            self.monitor.owned_sources = set()
            self.monitor.exports_contacts = False
        else:
            self.monitor.load()
            if self.alerts is not None:
                self._start_alerts()
        self.registry.register(MonitorCollector(self.monitor))
        self.registry.register(DeliveryCollector(lambda: self.alerts))
        self.registry.register(ProcessCollector(registry=None))
        host, port = parse_listen(self.listen)
        self.http = serve(host, port, self.registry, self.healthy, self.readiness)
        log.info("serving /metrics, /healthz, /readyz on %s:%d", host, self.http.server_port)
        self.scheduler.start()
        for name, (_source, cfg) in self.sources.items():
            self.scheduler.add_job(
                self.poll,
                "interval",
                args=[name],
                id=f"poll:{name}",
                seconds=cfg.interval.total_seconds(),
                next_run_time=datetime.now(UTC),
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
            )
        self.monitor.on_wake_change = self.schedule_wake
        if self.cluster is not None:
            self.monitor.ready = True
            ttl = self.config.settings.cluster.lease_ttl.total_seconds()
            self.scheduler.add_job(
                self.cluster_tick,
                "interval",
                seconds=ttl / 3,
                id="cluster-tick",
                max_instances=1,
                coalesce=True,
                next_run_time=datetime.now(UTC),
            )
        else:
            self.schedule_wake(self.monitor.next_wake())

    def healthy(self) -> bool:
        return bool(self.scheduler.running)

    def readiness(self) -> tuple[bool, str]:
        if not self.monitor.ready:
            return False, "loading state"
        if self.monitor.store_error is not None:
            return False, f"database unavailable: {self.monitor.store_error}"
        expected = set(self.sources)
        if self.monitor.owned_sources is not None:  # cluster: the sources this replica polls
            expected = set(self.monitor.owned_sources)
        waiting = sorted(expected - self.polled)
        if waiting:
            return False, "first poll pending: " + ", ".join(waiting)
        return True, "ready"

    def stop(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        if self.cluster is not None:  # hand everything over at once, not after the ttl
            try:
                with self.store.begin() as conn:
                    for lease in ["leader", *(f"source:{n}" for n in self.sources)]:
                        self.cluster.release(conn, lease, self.replica_id)
            except Exception:
                log.exception("releasing leases failed; they expire by themselves")
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
        if self.alerts is not None:
            self.alerts.stop()
        for source, _cfg in self.sources.values():
            source.close()
        self.store.close()


def build_app(
    config_path: str,
    db_url: str | None = None,
    listen: str | None = None,
    alertmanagers: list[str] | None = None,
) -> App:
    config = load_config(config_path)
    store = open_store(config, db_url)
    clock = choose_clock(config, store)
    alerting = config.settings.alerting
    urls = [*alerting.alertmanager_urls, *(alertmanagers or [])]
    alerts = None
    if urls:
        alerts = AlertmanagerPublisher(
            urls,
            clock,
            {s.name: s.contact_url for s in config.settings.sources},
            alerting.resend_interval.total_seconds(),
            alerting.timeout.total_seconds(),
            severities=config.policy.severities,
        )
    cluster_cfg = config.settings.cluster
    cluster = ClusterStore(store) if cluster_cfg.enabled else None
    if cluster is not None and store.dialect != "postgresql":
        log.warning(
            "cluster mode on %s: replicas must share one database; use PostgreSQL "
            "(docs/scaling.md)",
            store.dialect,
        )
    if cluster is not None and alerts is not None:
        alerts = None  # the leader creates its publisher when it takes over
    monitor = Monitor(store, config, clock, [alerts] if alerts else [])
    replica_id = cluster_cfg.replica_id or f"{socket.gethostname()}:{os.getpid()}"
    if cluster is not None:
        monitor.cluster = cluster
        monitor.replica_id = replica_id
    sources: dict[str, tuple[Source, SourceConfig]] = {}
    for cfg in config.settings.sources:
        sources[cfg.name] = (build_source(cfg), cfg)
        monitor.declare(cfg.name, cfg.kind, cfg.channel.value if cfg.channel else None, cfg.queues)
    return App(
        config,
        store,
        clock,
        monitor,
        sources,
        listen or config.settings.listen,
        alerts=alerts,
        alert_urls=urls,
        cluster=cluster,
        replica_id=replica_id,
    )
