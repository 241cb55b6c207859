"""Notifications reaching on-call per lapsed contact, on the demo desk (issue 12).

`python -m bench.notifications [--seconds 300] [--repo DIR]`: runs the demo (`make run`'s
config, clock at 60x) against a real Alertmanager with the shipped
`config/alertmanager/alertmanager.yml`, its webhook receivers pointed at a local counter,
and prints how many notifications arrived and for how many lapsed contacts. `--repo` runs
another checkout (e.g. a worktree of an older commit) for a before/after comparison.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(repo: Path, seconds: float) -> dict[str, Any]:
    received: list[tuple[str, dict[str, Any]]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append((self.path, body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    hook = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    tmp = Path(tempfile.mkdtemp(prefix="sla-notify-"))
    config = (repo / "config" / "alertmanager" / "alertmanager.yml").read_text()
    (tmp / "am.yml").write_text(
        config.replace("http://webhook:8080", f"http://127.0.0.1:{hook.server_port}")
    )
    am_port = _port()
    am = subprocess.Popen(
        [
            "prometheus-alertmanager",
            f"--config.file={tmp / 'am.yml'}",
            f"--storage.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{am_port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ]
    )
    command = [sys.executable, "-m", "sla_monitor.entrypoints.cli", "run"]
    command += ["--config", "config/sla-monitor.yaml", "--db", f"sqlite:///{tmp / 'demo.db'}"]
    command += ["--listen", f"127.0.0.1:{_port()}", "--alertmanager", f"http://127.0.0.1:{am_port}"]
    command += ["--log-level", "WARNING"]
    monitor = subprocess.Popen(
        command,
        cwd=repo,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(seconds)
    finally:
        monitor.send_signal(signal.SIGTERM)
        monitor.wait(30)
        time.sleep(1)
        am.terminate()
        am.wait(10)
        hook.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    lapsed: set[str] = set()
    pages = 0
    for _path, body in received:
        alerts = body.get("alerts", [])
        mine = [a for a in alerts if a["labels"].get("alertname") == "AcknowledgementLapsed"]
        pages += bool(mine)
        lapsed |= {a["labels"]["contact"] for a in mine if a["status"] == "firing"}
    return {
        "repo": str(repo),
        "seconds": seconds,
        "notifications": len(received),
        "notifications_with_lapsed_pages": pages,
        "lapsed_contacts_paged": len(lapsed),
        "per_lapsed_contact": round(pages / max(len(lapsed), 1), 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=300)
    p.add_argument("--repo", type=Path, default=ROOT)
    args = p.parse_args()
    print(json.dumps(measure(args.repo.resolve(), args.seconds)))


if __name__ == "__main__":
    main()
