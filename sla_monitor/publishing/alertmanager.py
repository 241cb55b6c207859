"""Per-contact alerts to Alertmanager's v2 API (`POST /api/v2/alerts`).

`AcknowledgementLapsed` (severity page) while a target is breached and unfulfilled,
`AcknowledgementAtRisk` (severity warning) from its warning point; resolved (`endsAt` now)
when the contact is acknowledged or closed. The monitor's evaluation only records what
should be active (no I/O, O(1) work, and only after its transaction committed); a sender
thread posts to every configured Alertmanager only what changed since that one last
accepted (new and updated alerts, resolutions), and the whole active set every
`resend_interval` (so Alertmanager never times an active alert out). In an alert storm,
one change sends one alert: the cost of a change does not grow with the active set, and
the sender never takes the monitor's lock. An Alertmanager that is down gets everything
when it is back; after a restart the active set is rebuilt from the store and re-sent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from sla_monitor import __version__
from sla_monitor.adapters.records import AlertingTarget
from sla_monitor.config import contact_link
from sla_monitor.domain.engine import ContactEvaluation, TargetResult, TargetState
from sla_monitor.domain.timeutil import format_duration, from_micros, iso
from sla_monitor.service_layer.clock import Clock
from sla_monitor.service_layer.live import Histogram

log = logging.getLogger(__name__)

LAPSED, AT_RISK = "AcknowledgementLapsed", "AcknowledgementAtRisk"
DELIVERY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
AlertKey = tuple[str, str, str, int, str]  # source, conversation, target, seq, alertname


@dataclass(frozen=True)
class AlertFacts:
    source: str
    conversation_id: str
    target: str
    seq: int
    channel: str
    queue: str
    priority: str
    customer: str | None
    started_at: datetime
    deadline: datetime | None
    state: str
    lapse_severity: str = "page"  # page | ticket | none
    risk_severity: str = "warning"  # warning | ticket | none


def facts_from(ev: ContactEvaluation, t: TargetResult) -> AlertFacts:
    a = ev.attributes
    return AlertFacts(
        ev.key[0],
        ev.key[1],
        t.target.value,
        t.seq,
        a.channel.value,
        a.queue,
        a.priority or "none",
        a.customer_id,
        t.started_at,
        t.deadline,
        t.state.value,
        t.lapse_severity,
        t.risk_severity,
    )


def _facts_of_row(
    r: AlertingTarget, severities: Callable[[str | None, str], tuple[str, str]]
) -> AlertFacts:
    """A stored breached or at-risk target (StateRepository.alerting)."""
    lapse, risk = severities(r.rule, r.target)
    return AlertFacts(
        r.source,
        r.conversation_id,
        r.target,
        r.seq,
        r.channel,
        r.queue,
        r.priority,
        r.customer_id,
        from_micros(r.started_us),
        from_micros(r.deadline_us) if r.deadline_us is not None else None,
        r.state,
        lapse,
        risk,
    )


def _default_severities(rule: str | None, target: str) -> tuple[str, str]:
    from sla_monitor.domain.policy import DEFAULT_AT_RISK, DEFAULT_SEVERITY, TargetName

    name = TargetName(target)
    return DEFAULT_SEVERITY[name], DEFAULT_AT_RISK[name]


def _human(d: timedelta) -> str:
    """A duration for people: whole seconds, never negative."""
    return format_duration(timedelta(seconds=round(max(d.total_seconds(), 0.0))))


def _without_credentials(url: str) -> str:
    """The URL as it may be shown: no user or password (those belong in alerting.basic_auth,
    but a URL with them still works and must never reach a log line)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


def _scrub(text: str, url: str) -> str:
    """Text that may quote the URL or its password, with them taken out."""
    password = urlsplit(url).password
    text = text.replace(url, _without_credentials(url))
    return text.replace(password, "***") if password else text


class AlertmanagerPublisher:
    def __init__(
        self,
        urls: Sequence[str],
        clock: Clock,
        contact_urls: dict[str, str | None],
        resend_interval: float = 60.0,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        severities: Callable[[str | None, str], tuple[str, str]] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        client_options: dict[str, Any] | None = None,
        runbooks_url: str | None = None,
    ) -> None:
        self.urls = [u.rstrip("/") for u in urls]
        self.runbooks_url = runbooks_url  # <external_url>/runbooks: served by the monitor
        self.clock = clock
        self.contact_urls = contact_urls
        self.resend_interval = resend_interval
        # (rule, target) -> (lapse, at-risk) severity, for targets re-read from the store
        self.severities = severities or _default_severities
        options = dict(client_options or {})  # credentials, TLS (config: alerting)
        headers = {"User-Agent": f"sla-monitor/{__version__}", **options.pop("headers", {})}
        self.client = httpx.Client(timeout=timeout, transport=transport, headers=headers, **options)
        self.active: dict[AlertKey, AlertFacts] = {}
        # sla_alert_delivery_seconds: from hand-over (after the commit) to the first
        # Alertmanager's acceptance, per page
        self.delivery = Histogram(DELIVERY_BUCKETS)
        self._handed: dict[AlertKey, float] = {}
        self.resolved: dict[str, dict[AlertKey, dict[str, Any]]] = {u: {} for u in self.urls}
        # per Alertmanager: active alerts it has not accepted in their current form
        self.changed: dict[str, set[AlertKey]] = {u: set() for u in self.urls}
        self._full_due: dict[str, float] = dict.fromkeys(self.urls, 0.0)  # next full re-send
        self.delivered_ok: dict[str, bool] = dict.fromkeys(self.urls, True)
        self._monotonic = monotonic
        self._cond = threading.Condition()
        self._dirty = False
        self._stop = False
        self._thread: threading.Thread | None = None

    # -- what should be active (called under the monitor's lock: no I/O here) ----------------

    def target_changed(self, ev: ContactEvaluation, t: TargetResult, previous: str | None) -> None:
        self.apply(facts_from(ev, t), t.is_open)

    def apply(self, f: AlertFacts, is_open: bool) -> None:
        want = None
        if is_open and f.state == TargetState.BREACHED.value and f.lapse_severity != "none":
            want = LAPSED
        elif is_open and f.state == TargetState.AT_RISK.value and f.risk_severity != "none":
            want = AT_RISK
        with self._cond:
            for name in (LAPSED, AT_RISK):
                key = (f.source, f.conversation_id, f.target, f.seq, name)
                if name == want:
                    if name == LAPSED and key not in self.active:
                        self._handed[key] = self._monotonic()
                    self.active[key] = f
                    for url in self.urls:
                        self.changed[url].add(key)
                        self.resolved[url].pop(key, None)
                elif key in self.active:
                    self._resolve(key)
            self._dirty = True
            self._cond.notify()

    def load(self, rows: Iterable[AlertingTarget]) -> None:
        """After a restart: what is still breached or at risk is active again (re-sent, not
        a new delivery to measure)."""
        for r in rows:
            self.apply(_facts_of_row(r, self.severities), True)
        with self._cond:
            self._handed.clear()

    def reconcile(self, rows: Iterable[AlertingTarget]) -> None:
        """Make the active set exactly what the store says is breached or at risk (after
        the monitor re-read its memory): what is no longer there is resolved."""
        wanted: dict[AlertKey, AlertFacts] = {}
        for r in rows:
            f = _facts_of_row(r, self.severities)
            lapsed = f.state == TargetState.BREACHED.value
            if (f.lapse_severity if lapsed else f.risk_severity) == "none":
                continue
            wanted[
                (f.source, f.conversation_id, f.target, f.seq, LAPSED if lapsed else AT_RISK)
            ] = f
        with self._cond:
            for key in [k for k in self.active if k not in wanted]:
                self._resolve(key)
            self.active.update(wanted)
            for url in self.urls:  # everything again, as after a restart
                self._full_due[url] = 0.0
            self._dirty = True
            self._cond.notify()

    def _resolve(self, key: AlertKey) -> None:
        """(Under `_cond`.) No longer active: tell every Alertmanager it ended."""
        payload = self._payload(key, self.active.pop(key), resolved=True)
        for url in self.urls:
            self.resolved[url][key] = payload
            self.changed[url].discard(key)

    # -- payloads -------------------------------------------------------------------------

    def _link(self, f: AlertFacts) -> str | None:
        return contact_link(self.contact_urls.get(f.source), f.source, f.conversation_id)

    def _payload(self, key: AlertKey, f: AlertFacts, resolved: bool = False) -> dict[str, Any]:
        name = key[4]
        now = self.clock.now()
        contact = f"{f.source}:{f.conversation_id}"
        labels = {
            "alertname": name,
            "severity": f.lapse_severity if name == LAPSED else f.risk_severity,
            "channel": f.channel,
            "queue": f.queue,
            "target": f.target,
            "priority": f.priority,
            "contact": contact,
            "source": f.source,
        }
        who = f.customer or "a customer"
        if f.deadline is not None and name == LAPSED:
            late = _human(now - f.deadline)
            summary = (
                f"{f.target} lapsed for {f.channel} contact {contact} in {f.queue}: "
                f"{who} has waited {late} past the deadline"
            )
            how_late = late
        elif f.deadline is not None:
            left = _human(f.deadline - now)
            summary = (
                f"{f.target} at risk for {f.channel} contact {contact} in {f.queue}: "
                f"{left} left to answer {who}"
            )
            how_late = f"due in {left}"
        else:
            summary = f"{f.target} for {f.channel} contact {contact} in {f.queue} needs attention"
            how_late = "unknown"
        annotations = {
            "summary": summary,
            "customer": f.customer or "",
            "how_late": how_late,
            "started_at": iso(f.started_at),
            "deadline": iso(f.deadline) if f.deadline else "",
            "description": f"Explain it with: sla-monitor explain {contact}",
        }
        link = self._link(f)
        if link:
            annotations["link"] = link
        if self.runbooks_url:
            annotations["runbook_url"] = f"{self.runbooks_url}/{name}"
        real_now = self.clock.to_real(now)
        starts = self.clock.to_real(f.deadline) if f.deadline and name == LAPSED else real_now
        payload: dict[str, Any] = {
            "labels": labels,
            "annotations": annotations,
            "startsAt": iso(min(starts, real_now)),
            # auto-resolves only if the monitor stops re-sending (its own absence alerts then)
            "endsAt": iso(
                real_now if resolved else real_now + timedelta(seconds=4 * self.resend_interval)
            ),
        }
        if link:
            payload["generatorURL"] = link
        return payload

    # -- delivery ---------------------------------------------------------------------------

    def flush(self) -> bool:
        """Post to every Alertmanager what it has not accepted (the whole active set when a
        re-send is due); True if all accepted. Only copies are made under the lock; the
        payloads are built and posted outside it."""
        now = self._monotonic()
        todo: dict[str, tuple[bool, list[tuple[AlertKey, AlertFacts]], dict[AlertKey, Any]]] = {}
        with self._cond:
            handed = dict(self._handed)
            for url in self.urls:
                full = now >= self._full_due[url]
                keys = self.active if full else self.changed[url]
                firing = [(k, self.active[k]) for k in keys]
                self.changed[url] = set()  # put back below if this url does not accept
                todo[url] = (full, firing, dict(self.resolved[url]))
            self._dirty = False
        ok_all = True
        for url, (full, firing, resolved) in todo.items():
            ok = self._post(url, [self._payload(k, f) for k, f in firing], resolved)
            with self._cond:
                if ok:
                    for key in resolved:
                        self.resolved[url].pop(key, None)
                    if full:
                        self._full_due[url] = now + self.resend_interval
                    accepted = self._monotonic()
                    for key, at in handed.items():  # first acceptance of each page
                        if self._handed.pop(key, None) is not None:
                            self.delivery.add(max(accepted - at, 0.0))
                else:  # still owed: after an outage, everything (it may have restarted)
                    self.changed[url].update(k for k, _f in firing if k in self.active)
                    self._full_due[url] = 0.0
            ok_all = ok_all and ok
        return ok_all

    def _post(self, url: str, firing: list[dict[str, Any]], resolved: dict[AlertKey, Any]) -> bool:
        batch = firing + list(resolved.values())
        if not batch:
            return True
        shown = _without_credentials(url)
        try:
            resp = self.client.post(f"{url}/api/v2/alerts", json=batch)
            ok = resp.status_code == 200
            if not ok and self.delivered_ok[url]:  # once, until it takes them again
                hint = (
                    " (check alerting.basic_auth / bearer_token)"
                    if resp.status_code
                    in (
                        401,
                        403,
                    )
                    else ""
                )
                log.warning(
                    "alertmanager %s refused %d alerts: %d %s%s; kept and re-sent",
                    shown,
                    len(batch),
                    resp.status_code,
                    _scrub(resp.text[:200], url),
                    hint,
                )
        except httpx.HTTPError as exc:
            ok = False
            if self.delivered_ok[url]:
                log.warning(
                    "alertmanager %s unreachable (%s); alerts kept and re-sent",
                    shown,
                    _scrub(str(exc), url),
                )
        if ok and not self.delivered_ok[url]:
            log.info("alertmanager %s reachable again; %d alerts delivered", shown, len(batch))
        self.delivered_ok[url] = ok
        return ok

    def _run(self) -> None:
        backoff = 1.0
        while True:
            with self._cond:
                if not self._dirty and not self._stop:
                    due = min(self._full_due.values(), default=0.0) - self._monotonic()
                    self._cond.wait(max(min(due, self.resend_interval), 0.0))
                if self._stop:
                    return
            if self.flush():
                backoff = 1.0
            else:  # retry soon, then less often, while Alertmanager is down
                with self._cond:
                    self._dirty = True
                    self._cond.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def delivery_snapshot(self) -> tuple[list[tuple[str, float]], float]:
        with self._cond:
            return self.delivery.cumulative(), self.delivery.total

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="alertmanager", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.client.close()


class DeliveryCollector(Collector):
    """`sla_alert_delivery_seconds`, from whichever publisher is current (it changes with
    leadership in cluster mode)."""

    def __init__(self, current: Callable[[], AlertmanagerPublisher | None]) -> None:
        self.current = current

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(
            "sla_alert_delivery_seconds",
            "From a page's hand-over (after the commit that decided it) to its acceptance by "
            "the first Alertmanager.",
        )
        publisher = self.current()
        if publisher is not None:
            buckets, total = publisher.delivery_snapshot()
            family.add_metric([], buckets, total)
        yield family
