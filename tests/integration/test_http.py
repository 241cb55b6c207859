"""/metrics as Prometheus expects it (its own exposition: OpenMetrics, gzip, HEAD, name[]
filter) on a server that half-open or idle connections cannot exhaust."""

from __future__ import annotations

import gzip
import http.client
import socket
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter

from sla_monitor.entrypoints.http import BoundedServer, serve


@pytest.fixture
def server() -> Iterator[BoundedServer]:
    registry = CollectorRegistry()
    Counter("sla_demo_things", "Things.", registry=registry).inc(3)
    Counter("sla_other_things", "Other things.", registry=registry).inc()
    s = serve("127.0.0.1", 0, registry, lambda: True, lambda: (True, "ready"), 4, 0.5)
    yield s
    s.shutdown()
    s.server_close()


def get(
    server: BoundedServer, path: str, method: str = "GET", **headers: str
) -> tuple[http.client.HTTPResponse, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10)
    conn.request(method, path, headers=headers)
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response, body


def test_text_format_by_default_openmetrics_when_asked(server: BoundedServer) -> None:
    response, body = get(server, "/metrics")
    assert response.status == 200
    assert response.getheader("Content-Type", "").startswith("text/plain; version=0.0.4")
    assert b"sla_demo_things_total 3.0" in body and not body.endswith(b"# EOF\n")
    accept = "application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5"
    response, body = get(server, "/metrics", Accept=accept)
    assert response.getheader("Content-Type", "").startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n") and b"sla_demo_things_total 3.0" in body


def test_gzip_when_the_scraper_accepts_it(server: BoundedServer) -> None:
    plain = get(server, "/metrics")[1]
    response, body = get(server, "/metrics", **{"Accept-Encoding": "gzip"})
    assert response.getheader("Content-Encoding") == "gzip"
    assert gzip.decompress(body) == plain


def test_head_and_the_name_filter(server: BoundedServer) -> None:
    response, body = get(server, "/metrics", method="HEAD")
    assert response.status == 200 and body == b""
    assert int(response.getheader("Content-Length", "0")) > 0
    assert get(server, "/healthz", method="HEAD")[0].status == 200
    only = get(server, "/metrics?name[]=sla_other_things_total")[1]
    assert b"sla_other_things_total" in only and b"sla_demo_things" not in only


def test_connections_beyond_the_cap_are_closed_not_queued(server: BoundedServer) -> None:
    idle = [socket.create_connection(("127.0.0.1", server.server_port)) for _ in range(4)]
    try:
        # the cap is reached once the server has taken them; one more is closed at once
        extra = socket.create_connection(("127.0.0.1", server.server_port), timeout=10)
        extra.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert extra.recv(100) == b""
        extra.close()
        assert server.refused >= 1
    finally:
        for s in idle:
            s.close()
    assert get(server, "/metrics")[0].status == 200  # slots come back


def test_an_idle_connection_is_dropped(server: BoundedServer) -> None:
    """A half-open connection that never sends a request does not hold a thread forever."""
    s = socket.create_connection(("127.0.0.1", server.server_port), timeout=30)
    try:
        assert s.recv(100) == b""  # the server gave up on it (after its 0.5 s timeout)
    finally:
        s.close()


def test_the_runbooks_every_alert_links_to_are_served(server: BoundedServer) -> None:
    """Each alert's `runbook_url` is <external_url>/runbooks/<alert>: the running version's
    own page, whatever the deployment (no repository URL to go stale)."""
    response, body = get(server, "/runbooks/SLASourceDown")
    assert response.status == 200 and body.startswith(b"# SLASourceDown")
    assert response.getheader("Content-Type") == "text/plain; charset=utf-8"
    assert get(server, "/runbooks/AcknowledgementLapsed.md")[1].startswith(b"# ")
    index = get(server, "/runbooks/")[1]
    assert b"AcknowledgementLapsed" in index and b"SLAMonitorAbsent" in index
    for bad in ("/runbooks/NoSuchAlert", "/runbooks/..%2Fconfig", "/runbooks/../__init__"):
        assert get(server, bad)[0].status == 404, bad
