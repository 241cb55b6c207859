"""The unit layer: no servers, no files. The store is the in-memory one."""

from __future__ import annotations

import pytest

from sla_monitor.adapters.memory import MemoryStore


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()
