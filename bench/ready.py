"""Time to ready in a fresh process, as a restart is: `python -m bench.ready URL CONFIG NOW`.

Prints the seconds from the monitor's construction to ready (its load, the heap settled,
the active pages read) and the open targets loaded, as JSON."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime

from sla_monitor.adapters.sql import SqlStore
from sla_monitor.config import load_config
from sla_monitor.service_layer.clock import FixedClock
from sla_monitor.service_layer.monitor import Monitor
from sla_monitor.service_layer.runtime import settle_heap


def main() -> None:
    url, config_path, now = sys.argv[1:4]
    config = load_config(config_path)
    store = SqlStore(url)
    t = time.perf_counter()
    monitor = Monitor(store, config, FixedClock(datetime.fromisoformat(now)))
    monitor.load()
    settle_heap()
    with store.begin() as tx:
        tx.state.alerting()
    seconds = time.perf_counter() - t
    print(json.dumps({"seconds": seconds, "open": len(monitor.live.open)}))
    store.close()


if __name__ == "__main__":
    main()
