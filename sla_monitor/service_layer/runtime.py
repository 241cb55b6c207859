"""The runtime: polling with back-off, wake-ups at deadlines, leadership in a cluster.

Constructed with everything it needs (bootstrap.py wires it); knows the store only
through its seam and the pages only through `Pager`.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from apscheduler.schedulers.background import BackgroundScheduler

from sla_monitor.adapters.abc import LeaseLost, Store
from sla_monitor.adapters.records import AlertingTarget
from sla_monitor.config import Config, SourceConfig
from sla_monitor.domain.timeutil import to_micros
from sla_monitor.service_layer.clock import Clock
from sla_monitor.service_layer.monitor import Monitor, TargetListener, store_unreachable
from sla_monitor.sources.abc import AuthFailed, Source, SourceError

log = logging.getLogger(__name__)
WAKE_JOB = "deadline-wake"
SYNC_INTERVAL = 0.25  # seconds between the leader's reads of what other replicas stored
MAX_BACKOFF = 300.0  # seconds; a failing source is retried at least this often
AUTH_RETRY = 300.0


HEARTBEAT_SECONDS = 5.0  # a running monitor says so this often (`replay` checks)


def alive_within(config: Config) -> float:
    """Seconds after its last sign of life that a monitor counts as gone."""
    return max(3 * HEARTBEAT_SECONDS, config.settings.cluster.lease_ttl.total_seconds())


def holders_of(store: Store, now: datetime, within: float) -> list[str]:
    """The monitors (replicas) that said they hold this database in the last `within` s."""
    with store.begin() as tx:
        return tx.cluster.live_replicas(to_micros(now) - int(within * 1_000_000))


# Collect the young generation every 50,000 net allocations, not every 700: evaluating a
# poll allocates hundreds of thousands of short-lived objects, few in cycles, and the
# collector's passes over them cost ingest a third of its time (docs/benchmarks.md)
GC_THRESHOLDS = (50_000, 20, 100)


def settle_heap() -> None:
    """What start-up built (a million open targets, their keys and labels) lives as long as
    the process: move it out of the collector's sight, so a full collection walks only what
    changed since instead of pausing the process for every object (about 250 ms at 1M open
    targets; docs/benchmarks.md). Objects it holds are still freed when released; only
    reference cycles among them would wait for the next `gc.unfreeze`. Then collect less
    often (GC_THRESHOLDS)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class Pager(TargetListener, Protocol):
    """Pages on-call for breached and at-risk targets (publishing/alertmanager.py). Told
    only after the commit that decided a change (the monitor's unit of work), so a page
    never goes out for a contact the store does not have."""

    def load(self, rows: Iterable[AlertingTarget]) -> None: ...

    def reconcile(self, rows: Iterable[AlertingTarget]) -> None: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


class Endpoint(Protocol):
    """Serves /metrics, /healthz and /readyz (entrypoints/http.py)."""

    def start(
        self, healthy: Callable[[], bool], readiness: Callable[[], tuple[bool, str]]
    ) -> None: ...

    def stop(self) -> None: ...


@dataclass
class Runtime:
    """Runs the monitor: polls each source on its interval (backing off on failure), wakes
    at the next deadline, and in cluster mode holds leases and leads or follows."""

    config: Config
    store: Store
    clock: Clock
    monitor: Monitor
    sources: dict[str, tuple[Source, SourceConfig]]
    scheduler: BackgroundScheduler = field(
        default_factory=lambda: BackgroundScheduler(timezone=UTC)
    )
    endpoint: Endpoint | None = None  # serves /metrics, /healthz, /readyz
    polled: set[str] = field(default_factory=set)
    alerts: Pager | None = None
    make_pager: Callable[[], Pager] | None = None  # for a leader taking over
    clustered: bool = False
    replica_id: str = ""
    leader: bool = False
    _wake_at: datetime | None = None
    _wake_lock: threading.Lock = field(default_factory=threading.Lock)
    # sources down: (why, since when, failed polls): logged as they go down, change reason
    # and come back, not at every retry
    _down: dict[str, tuple[str, float, int]] = field(default_factory=dict)

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
            self.monitor.poll_failed(name, cfg.kind, time.perf_counter() - started)
            self._poll_again(name, self._backoff(cfg, 1))
            return
        self.polled.add(name)
        if name in self._down:
            _why, since, failed = self._down.pop(name)
            log.info(
                "source %s is up again after %d failed polls (down %.0fs)",
                name,
                failed,
                time.monotonic() - since,
            )
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
        self.monitor.poll_failed(name, cfg.kind, duration, result)
        self.polled.add(name)
        failures = self.monitor.live.sources[name].consecutive_failures
        if isinstance(exc, SourceError) and exc.retry_after is not None:
            delay = exc.retry_after
        elif isinstance(exc, AuthFailed):
            delay = max(AUTH_RETRY, cfg.interval.total_seconds())  # a person must fix it
        else:
            delay = self._backoff(cfg, failures)
        why = f"{result}: {exc}" if isinstance(exc, SourceError) else repr(exc)
        previous = self._down.get(name)
        self._down[name] = (why, previous[1] if previous else time.monotonic(), failures)
        if previous is None:  # down: say why, once (a bug in a connector: with its traceback)
            log.error(
                "source %s is down: poll failed (%s); retrying in %.0fs, backing off",
                name,
                why,
                delay,
                exc_info=not isinstance(exc, SourceError) or log.isEnabledFor(logging.DEBUG),
            )
        elif previous[0] != why:
            log.warning("source %s is still down, now: %s (%d failed polls)", name, why, failures)
        else:
            log.debug("source %s: poll failed again (%s); next try in %.0fs", name, why, delay)
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
            if self.clustered and not self.leader:
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

    # -- cluster mode ---------------------------------------------------------------------

    def cluster_tick(self) -> None:
        """Renew this replica's leases, take free ones up to a fair share, lead if free."""
        assert self.clustered
        ttl = self.config.settings.cluster.lease_ttl
        now_us = to_micros(datetime.now(UTC))
        ttl_us = int(ttl.total_seconds() * 1_000_000)
        owned = self.monitor.owned_sources
        assert owned is not None
        try:
            with self.store.begin() as tx:
                tx.cluster.heartbeat(self.replica_id, now_us, to_micros(self.monitor.clock.now()))
                replicas = tx.cluster.live_replicas(now_us - ttl_us)
                holders = tx.cluster.holders(now_us)
            names = sorted(self.sources)
            share = -(-len(names) // max(1, len(replicas)))  # ceil
            index = replicas.index(self.replica_id) if self.replica_id in replicas else 0
            rotated = names[index:] + names[:index]  # replicas prefer different sources
            for name in rotated:
                lease = f"source:{name}"
                mine = holders.get(lease) == self.replica_id
                if mine and len(owned) > share and name in owned:
                    with self.store.begin() as tx:  # hand an extra source back
                        tx.cluster.release(lease, self.replica_id)
                    owned.discard(name)
                    continue
                if not mine and (lease in holders or len(owned) >= share):
                    continue
                with self.store.begin() as tx:
                    got = tx.cluster.try_lease(lease, self.replica_id, now_us, ttl_us)
                if got and name not in owned:
                    self.monitor.adopt_source(name, self.sources[name][1].kind)
                    owned.add(name)
                    log.info("replica %s polls source %s", self.replica_id, name)
                elif not got:
                    owned.discard(name)
            with self.store.begin() as tx:
                lead = tx.cluster.try_lease("leader", self.replica_id, now_us, ttl_us)
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
        settle_heap()
        self.monitor.exports_contacts = True
        self.leader = True
        if self.make_pager is not None:
            self.alerts = self.make_pager()
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

    def _start_alerts(self) -> None:
        assert self.alerts is not None
        with self.store.begin() as tx:
            self.alerts.load(tx.state.alerting())  # re-send what is active
        self.monitor.on_resync = self._resync_alerts
        self.alerts.start()

    def _resync_alerts(self) -> None:
        """The monitor re-read its memory after a commit of unknown fate: so do the pages."""
        if self.alerts is not None:
            with self.store.begin() as tx:
                self.alerts.reconcile(tx.state.alerting())

    def start(self) -> None:
        if self.clustered and self.store.dialect != "postgresql":
            log.warning(
                "cluster mode on %s: replicas must share one database; use PostgreSQL "
                "(docs/scaling.md)",
                self.store.dialect,
            )
        if self.clustered:
            self.monitor.owned_sources = set()
            self.monitor.exports_contacts = False
        else:
            self.monitor.load()
            settle_heap()
            if self.alerts is not None:
                self._start_alerts()
        if self.endpoint is not None:
            self.endpoint.start(self.healthy, self.readiness)
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
        if self.clustered:
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
            # say that a monitor holds the database (`replay` refuses to run under it)
            self.scheduler.add_job(
                self._heartbeat,
                "interval",
                seconds=HEARTBEAT_SECONDS,
                id="heartbeat",
                max_instances=1,
                coalesce=True,
                next_run_time=datetime.now(UTC),
            )

    def _heartbeat(self, now_us: int | None = None) -> None:
        try:
            with self.store.begin() as tx:
                now_us = now_us or to_micros(datetime.now(UTC))
                clock_us = to_micros(self.monitor.clock.now())  # where a demo's clock is
                tx.cluster.heartbeat(self.monitor.replica_id, now_us, clock_us)
        except Exception as exc:  # the monitor goes on; the outage is reported elsewhere
            log.debug("heartbeat not stored (%s)", exc)

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
        if not self.clustered and self.monitor.ready:
            self._heartbeat(now_us=1)  # gone: a `replay` may run at once
        if self.clustered:  # hand everything over at once, not after the ttl
            try:
                with self.store.begin() as tx:
                    for lease in ["leader", *(f"source:{n}" for n in self.sources)]:
                        tx.cluster.release(lease, self.replica_id)
            except Exception:
                log.exception("releasing leases failed; they expire by themselves")
        if self.endpoint is not None:
            self.endpoint.stop()
        if self.alerts is not None:
            self.alerts.stop()
        for source, _cfg in self.sources.values():
            source.close()
        self.store.close()
