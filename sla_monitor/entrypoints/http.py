"""/metrics, /healthz and /readyz on a small threaded HTTP server."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from sla_monitor.config import parse_listen

log = logging.getLogger(__name__)


def serve(
    host: str,
    port: int,
    registry: CollectorRegistry,
    healthy: Callable[[], bool],
    ready: Callable[[], tuple[bool, str]],
) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                ok = healthy()
                self._send(200 if ok else 503, b"ok\n" if ok else b"scheduler stopped\n")
            elif path == "/readyz":
                ok, why = ready()
                self._send(200 if ok else 503, (why + "\n").encode())
            elif path == "/":
                self._send(200, b"sla-monitor: see /metrics, /healthz, /readyz\n")
            else:
                self._send(404, b"not found\n")

        def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # scrapes every few seconds would drown the log

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server


class MetricsServer:
    """The runtime's endpoint (service_layer/runtime.py `Endpoint`) on `serve`."""

    def __init__(self, registry: CollectorRegistry, listen: str) -> None:
        self.registry = registry
        self.host, self.port = parse_listen(listen)
        self.server: ThreadingHTTPServer | None = None

    def start(self, healthy: Callable[[], bool], readiness: Callable[[], tuple[bool, str]]) -> None:
        self.server = serve(self.host, self.port, self.registry, healthy, readiness)
        self.port = self.server.server_port
        log.info("serving /metrics, /healthz, /readyz on %s:%d", self.host, self.port)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
