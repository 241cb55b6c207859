"""Real Prometheus and Alertmanager (Debian packages) on loopback, in temp dirs."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from .conftest import free_port


def _need(binary: str, package: str) -> str:
    path = shutil.which(binary) or f"/usr/bin/{binary}"
    if not Path(path).exists():
        raise RuntimeError(
            f"{binary} is not installed: `apt-get install -y {package}` "
            "(the README's test command does this)"
        )
    return path


class Process:
    auth: tuple[str, str] | None = None  # basic auth the server asks for (its web config)

    def __init__(self, name: str) -> None:
        self.name = name
        self.tmp = Path(tempfile.mkdtemp(prefix=f"sla-{name}-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.tmp / "log"

    def _spawn(self, cmd: list[str]) -> None:
        self.proc = subprocess.Popen(cmd, stdout=self.log.open("wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log.read_text()[-3000:]}")
            try:
                ready = httpx.get(self.url + "/-/ready", timeout=1, auth=self.auth)
                if ready.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready in 30 s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


class Alertmanager(Process):
    def __init__(self, config: str, web_config: str | None = None) -> None:
        super().__init__("alertmanager")
        self.binary = _need("prometheus-alertmanager", "prometheus-alertmanager")
        self.config = self.tmp / "alertmanager.yml"
        self.config.write_text(config)
        self.web_config = None
        if web_config is not None:  # exporter-toolkit's web config: TLS, basic auth
            self.web_config = self.tmp / "web.yml"
            self.web_config.write_text(web_config)

    def start(self) -> None:
        web = [f"--web.config.file={self.web_config}"] if self.web_config else []
        self._spawn(
            [
                self.binary,
                f"--config.file={self.config}",
                f"--storage.path={self.tmp}/data",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
                "--log.level=warn",
                *web,
            ]
        )

    def alerts(self, **filters: str) -> list[dict]:  # type: ignore[type-arg]
        resp = httpx.get(self.url + "/api/v2/alerts", params=filters, timeout=5, auth=self.auth)
        resp.raise_for_status()
        return list(resp.json())


class Prometheus(Process):
    def __init__(self, config: str) -> None:
        super().__init__("prometheus")
        self.binary = _need("prometheus", "prometheus")
        self.config = self.tmp / "prometheus.yml"
        self.config.write_text(config)

    def start(self) -> None:
        self._spawn(
            [
                self.binary,
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.tmp}/data",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ]
        )

    def query(self, expr: str) -> list[dict]:  # type: ignore[type-arg]
        resp = httpx.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10)
        body = resp.json()
        if body.get("status") != "success":
            raise AssertionError(f"query failed: {expr}: {body.get('error')}")
        return list(body["data"]["result"])

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict]:  # type: ignore[type-arg]
        params = {"query": expr, "start": start, "end": end, "step": step}
        body = httpx.get(self.url + "/api/v1/query_range", params=params, timeout=10).json()
        if body.get("status") != "success":
            raise AssertionError(f"query failed: {expr}: {body.get('error')}")
        return list(body["data"]["result"])


AM_CONFIG = """
route:
  receiver: default
  group_by: [alertname, queue]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: default
"""
