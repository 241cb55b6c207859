"""/metrics over TLS with basic auth, configured by an exporter-toolkit web-config.yml,
scraped by a real Prometheus; a wrong password gets 401; the probes stay open."""

from __future__ import annotations

import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest

from sla_monitor.bootstrap import build_app
from sla_monitor.entrypoints.http import MetricsServer
from sla_monitor.entrypoints.webconfig import WebConfigError, load_web_config

from ..conftest import SHIPPED_CONFIG, free_port
from ..promstack import Prometheus

PASSWORD = "scrape-Pa55-word"


def certificates(tmp: Path) -> None:
    """A CA, and a server certificate it signed for 127.0.0.1 (openssl, as Dovecot's)."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=tmp, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
            "/CN=sla test CA", "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", "server.key", "-out", "server.csr")  # fmt: skip
    (tmp / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "1", "-extfile", "san.ext",
            "-out", "server.crt")  # fmt: skip


def wait_for(what: str, check: Callable[[], Any], seconds: float) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {seconds} s")


def test_prometheus_scrapes_over_tls_with_basic_auth(tmp_path: Path) -> None:
    certificates(tmp_path)
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()
    web = tmp_path / "web-config.yml"
    web.write_text(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        f"basic_auth_users:\n  prometheus: '{hashed}'\n"
    )
    port = free_port()
    app = build_app(
        str(SHIPPED_CONFIG),
        f"sqlite:///{tmp_path / 'sla.db'}",
        f"127.0.0.1:{port}",
        serve=MetricsServer,
        web_config=str(web),
    )
    app.start()
    ca = str(tmp_path / "ca.crt")
    prom = Prometheus(f"""
global: {{scrape_interval: 1s}}
scrape_configs:
  - job_name: right
    scheme: https
    tls_config: {{ca_file: "{ca}"}}
    basic_auth: {{username: prometheus, password: "{PASSWORD}"}}
    static_configs: [{{targets: ["127.0.0.1:{port}"]}}]
  - job_name: wrong
    scheme: https
    tls_config: {{ca_file: "{ca}"}}
    basic_auth: {{username: prometheus, password: "not-it"}}
    static_configs: [{{targets: ["127.0.0.1:{port}"]}}]
""")
    prom.start()
    try:
        up = wait_for(
            "a successful scrape",
            lambda: prom.query('up{job="right"} == 1 and on() sla_build_info'),
            60,
        )
        assert up
        assert wait_for("a refused scrape", lambda: prom.query('up{job="wrong"} == 0'), 60)
        base = f"https://127.0.0.1:{port}"
        with httpx.Client(verify=ssl.create_default_context(cafile=ca), timeout=10) as client:
            assert client.get(base + "/metrics").status_code == 401
            wrong = client.get(base + "/metrics", auth=("prometheus", "nope"))
            assert wrong.status_code == 401 and "Basic" in wrong.headers["WWW-Authenticate"]
            right = client.get(base + "/metrics", auth=("prometheus", PASSWORD))
            assert right.status_code == 200 and b"sla_build_info" in right.content
            assert client.get(base + "/healthz").status_code == 200  # probes stay open
            # the list of lapsing contacts names customers: behind the same lock
            assert client.get(base + "/lapsing").status_code == 401
            listed = client.get(base + "/lapsing?format=json", auth=("prometheus", PASSWORD))
            assert listed.status_code == 200 and "lapsing" in listed.json()
        with pytest.raises(httpx.HTTPError):  # plain HTTP is not served on a TLS port
            httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    finally:
        prom.cleanup()
        app.stop()


def test_a_web_config_with_a_clear_password_or_a_missing_file_is_refused(
    tmp_path: Path,
) -> None:
    web = tmp_path / "web-config.yml"
    web.write_text("basic_auth_users:\n  prometheus: secret\n")
    with pytest.raises(WebConfigError, match=r"basic_auth_users\.prometheus: not a bcrypt hash"):
        load_web_config(web)
    web.write_text("tls_server_config:\n  cert_file: nope.crt\n  key_file: nope.key\n")
    with pytest.raises(WebConfigError, match=r"tls_server_config\.cert_file: no such file"):
        load_web_config(web)
    web.write_text("tls_server_config:\n  cert_file: a\n  key_file: b\n  colour: red\n")
    with pytest.raises(WebConfigError, match="colour"):
        load_web_config(web)
