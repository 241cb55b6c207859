"""/metrics, /healthz and /readyz on a small, bounded HTTP server.

/metrics is rendered by prometheus_client's own exposition: the OpenMetrics or the text
format as the scraper's Accept header asks, gzip when its Accept-Encoding allows, and the
`name[]` filter. The server holds at most MAX_CONNECTIONS connections at once (more are
closed at once, not queued as threads) and drops a connection idle for TIMEOUT_SECONDS,
so half-open connections cannot pile up threads and memory.
"""

from __future__ import annotations

import gzip
import json
import logging
import ssl
import threading
from collections.abc import Callable
from datetime import timedelta
from html import escape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from sla_monitor.config import parse_listen
from sla_monitor.domain.timeutil import format_duration
from sla_monitor.entrypoints.webconfig import WebConfig, load_web_config


def runbook(name: str) -> bytes | None:
    """A runbook shipped with the package (sla_monitor/runbooks/NAME.md), if there is one."""
    if not name.replace("_", "").isalnum():  # a bare page name: no path of any kind
        return None
    page = files("sla_monitor").joinpath("runbooks", f"{name}.md")
    return page.read_bytes() if page.is_file() else None


log = logging.getLogger(__name__)

Lapsing = Callable[[], list[dict[str, Any]]]  # the contacts lapsed or at risk now


def lapsing_page(rows: list[dict[str, Any]]) -> str:
    """/lapsing for a person: one table, oldest deadline first, links to the contacts."""
    cells = []
    for r in rows:
        contact = escape(r["contact"])
        if r["link"]:
            contact = f'<a href="{escape(r["link"])}">{contact}</a>'
        late = r["late_seconds"]
        when = (
            "paused"
            if late is None
            else (f"{_took(late)} late" if late >= 0 else f"due in {_took(-late)}")
        )
        cells.append(
            f'<tr class="{escape(r["state"])}"><td>{escape(r["state"].replace("_", " "))}</td>'
            f"<td>{contact}</td><td>{escape(r['channel'])}/{escape(r['queue'])}</td>"
            f"<td>{escape(r['priority'])}</td><td>{escape(r['target'])}</td><td>{when}</td>"
            f"<td>{escape(r['deadline'] or '')}</td></tr>"
        )
    table = (
        "<table><tr><th>state</th><th>contact</th><th>queue</th><th>priority</th>"
        "<th>target</th><th>when</th><th>deadline (UTC)</th></tr>" + "".join(cells) + "</table>"
        if rows
        else "<p>Nothing lapsed or at risk now.</p>"
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="refresh" content="30">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>Lapsing now: sla-monitor</title><style>"
        "body{font:15px system-ui,sans-serif;margin:1rem}table{border-collapse:collapse}"
        "td,th{padding:.25rem .5rem;border-bottom:1px solid #ddd;text-align:left}"
        "tr.breached td:first-child{color:#c62828;font-weight:600}"
        "tr.at_risk td:first-child{color:#b26a00}</style></head><body>"
        f"<h1>Lapsing now ({len(rows)})</h1>{table}"
        "<p>Each breached contact is also paged to on-call (AcknowledgementLapsed). "
        'This page refreshes every 30 s; <a href="?format=json">as JSON</a>.</p>'
        "</body></html>"
    )


def _took(seconds: float) -> str:
    return format_duration(timedelta(seconds=round(seconds))) if seconds >= 1 else "0s"


MAX_CONNECTIONS = 64
TIMEOUT_SECONDS = 10.0


class BoundedServer(ThreadingHTTPServer):
    """A thread per connection, up to `max_connections`; the rest are closed at once. With
    a TLS context, each connection's handshake runs in its own thread (a slow or silent
    client never holds up the others)."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: Any,
        max_connections: int,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(address, handler)
        self.slots = threading.BoundedSemaphore(max_connections)
        self.refused = 0
        if tls is not None:
            self.socket = tls.wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False
            )

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a failed handshake, a client that went away: theirs, not ours; no traceback
        log.debug("connection from %s failed", client_address, exc_info=True)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


def serve(
    host: str,
    port: int,
    registry: CollectorRegistry,
    healthy: Callable[[], bool],
    ready: Callable[[], tuple[bool, str]],
    max_connections: int = MAX_CONNECTIONS,
    idle_timeout: float = TIMEOUT_SECONDS,
    web: WebConfig | None = None,
    lapsing: Lapsing | None = None,
) -> BoundedServer:
    access = web or WebConfig()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: Prometheus reuses its connection
        timeout = idle_timeout  # a connection idle this long is dropped

        def setup(self) -> None:
            super().setup()  # sets the timeout, which bounds the handshake too
            if isinstance(self.connection, ssl.SSLSocket):
                self.connection.do_handshake()

        def do_GET(self) -> None:
            self._respond(body=True)

        def do_HEAD(self) -> None:
            self._respond(body=False)

        def _respond(self, body: bool) -> None:
            url = urlsplit(self.path)
            if url.path in ("/metrics", "/lapsing"):
                # both say what the desk is doing (the list names customers): one lock
                if not access.allows(self.headers.get("Authorization")):
                    headers = {"WWW-Authenticate": 'Basic realm="sla-monitor"'}
                    self._send(401, b"unauthorized\n", body, headers=headers)
                    return
                if url.path == "/metrics":
                    self._metrics(parse_qs(url.query), body)
                else:
                    self._lapsing(parse_qs(url.query), body)
            elif url.path == "/healthz":
                ok = healthy()
                self._send(200 if ok else 503, b"ok\n" if ok else b"scheduler stopped\n", body)
            elif url.path == "/readyz":
                ok, why = ready()
                self._send(200 if ok else 503, (why + "\n").encode(), body)
            elif url.path == "/runbooks" or url.path.startswith("/runbooks/"):
                self._runbook(url.path.removeprefix("/runbooks").strip("/"), body)
            elif url.path == "/":
                self._send(200, b"sla-monitor: see /metrics, /healthz, /readyz, /runbooks\n", body)
            else:
                self._send(404, b"not found\n", body)

        def _lapsing(self, params: dict[str, list[str]], body: bool) -> None:
            """The contacts lapsed or at risk now, with links: HTML for a person (it
            refreshes itself), JSON for a tool (`?format=json` or Accept)."""
            if lapsing is None:
                self._send(404, b"not found\n", body)
                return
            rows = lapsing()
            wants_json = params.get("format") == ["json"] or "application/json" in (
                self.headers.get("Accept") or ""
            )
            if wants_json:
                payload = json.dumps({"lapsing": rows}, indent=2).encode()
                self._send(200, payload, body, "application/json")
            else:
                self._send(200, lapsing_page(rows).encode(), body, "text/html; charset=utf-8")

        def _runbook(self, name: str, body: bool) -> None:
            """The runbooks of the running version (every alert's `runbook_url`), as the
            Markdown they are written in: readable as plain text."""
            page = runbook(name.removesuffix(".md") or "README")
            if page is None:
                self._send(404, b"no such runbook: see /runbooks\n", body)
                return
            self._send(200, page, body)

        def _metrics(self, params: dict[str, list[str]], body: bool) -> None:
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            names = params.get("name[]")
            source = registry.restricted_registry(names) if names else registry
            output = encoder(source)
            headers = {}
            if "gzip" in self.headers.get("Accept-Encoding", ""):
                output = gzip.compress(output, compresslevel=6)
                headers["Content-Encoding"] = "gzip"
            self._send(200, output, body, content_type, headers)

        def _send(
            self,
            code: int,
            payload: bytes,
            body: bool = True,
            ctype: str = "text/plain; charset=utf-8",
            headers: dict[str, str] | None = None,
        ) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            if body:
                self.wfile.write(payload)

        def handle_one_request(self) -> None:
            try:
                super().handle_one_request()
            except ConnectionError:
                self.close_connection = True  # the scraper went away: nothing to say

        def log_message(self, format: str, *args: object) -> None:
            pass  # scrapes every few seconds would drown the log

    server = BoundedServer((host, port), Handler, max_connections, access.tls)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server


class MetricsServer:
    """The runtime's endpoint (service_layer/runtime.py `Endpoint`) on `serve`."""

    def __init__(
        self,
        registry: CollectorRegistry,
        listen: str,
        web_config: str | None = None,
        lapsing: Lapsing | None = None,
    ) -> None:
        self.registry = registry
        self.lapsing = lapsing
        self.host, self.port = parse_listen(listen)
        self.web = load_web_config(web_config) if web_config else WebConfig()
        self.server: BoundedServer | None = None

    def start(self, healthy: Callable[[], bool], readiness: Callable[[], tuple[bool, str]]) -> None:
        self.server = serve(
            self.host,
            self.port,
            self.registry,
            healthy,
            readiness,
            web=self.web,
            lapsing=self.lapsing,
        )
        self.port = self.server.server_port
        log.info(
            "serving /metrics, /healthz, /readyz on %s://%s:%d%s",
            "https" if self.web.tls else "http",
            self.host,
            self.port,
            " (basic auth on /metrics)" if self.web.users else "",
        )

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
