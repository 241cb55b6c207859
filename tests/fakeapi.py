"""A local HTTP server that answers like a vendor API, scripted per test (loopback only)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    method: str = "GET"
    body: Any = None  # a POST's JSON


Reply = tuple[int, dict[str, str], Any]  # status, headers, JSON body


@dataclass
class FakeApi:
    handler: Callable[[Request], Reply]
    requests: list[Request] = field(default_factory=list)
    url: str = ""


@contextmanager
def fake_api(handler: Callable[[Request], Reply]) -> Iterator[FakeApi]:
    api = FakeApi(handler)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            self.do_GET(method="POST", body=json.loads(raw) if raw else None)

        def do_GET(self, method: str = "GET", body: Any = None) -> None:
            parts = urlsplit(self.path)
            req = Request(
                parts.path,
                {k: v[-1] for k, v in parse_qs(parts.query).items()},
                {k.lower(): v for k, v in self.headers.items()},
                method,
                body,
            )
            api.requests.append(req)
            status, headers, answer = api.handler(req)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    api.url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
