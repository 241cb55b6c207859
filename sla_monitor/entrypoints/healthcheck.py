"""The container's HEALTHCHECK: `python -m sla_monitor.entrypoints.healthcheck` asks
/healthz where `run` serves ($SLA_MONITOR_LISTEN, the same variable `run` reads), over
https when $SLA_MONITOR_HEALTH_TLS is set (a web config with TLS; the probe does not
verify the certificate: it only asks the process on this host whether it is alive)."""

from __future__ import annotations

import os
import ssl
import sys
import urllib.request

from sla_monitor.config import DEFAULT_LISTEN, parse_listen


def main() -> int:
    _host, port = parse_listen(os.environ.get("SLA_MONITOR_LISTEN") or DEFAULT_LISTEN)
    scheme = "https" if os.environ.get("SLA_MONITOR_HEALTH_TLS") else "http"
    context = ssl._create_unverified_context() if scheme == "https" else None
    try:
        with urllib.request.urlopen(
            f"{scheme}://127.0.0.1:{port}/healthz", timeout=4, context=context
        ) as response:
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
