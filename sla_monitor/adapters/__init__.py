"""Adapters: the store (`abc.py` its seam; `sql.py`, `memory.py` its implementations)."""

from __future__ import annotations

from sla_monitor.adapters.abc import Store


def open_store(url: str) -> Store:
    """The store at `url`: `memory://`, or a SQLAlchemy URL (sqlite, postgresql)."""
    if url.startswith("memory:"):
        from sla_monitor.adapters.memory import MemoryStore

        return MemoryStore()
    from sla_monitor.adapters.sql import SqlStore

    return SqlStore(url)
