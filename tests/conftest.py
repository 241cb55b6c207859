"""Shared fixtures: configs, stores on SQLite and on a real PostgreSQL the tests start."""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from glob import glob
from pathlib import Path
from typing import Any

import pytest

from sla_monitor.adapters.sql import SqlStore
from sla_monitor.config import Config, load_config

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_CONFIG = ROOT / "config" / "sla-monitor.yaml"
DATA = Path(__file__).parent / "data"


@pytest.fixture
def shipped_config() -> Config:
    return load_config(SHIPPED_CONFIG)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """A throwaway PostgreSQL cluster on loopback (run as `postgres` when we are root)."""

    def __init__(self) -> None:
        bins = sorted(glob("/usr/lib/postgresql/*/bin/initdb"))
        if not bins:
            raise RuntimeError(
                "PostgreSQL is not installed: `apt-get install -y postgresql` "
                "(the README's test command does this)"
            )
        self.bindir = Path(bins[-1]).parent
        self.tmp = Path(tempfile.mkdtemp(prefix="sla-pg-"))
        self.port = free_port()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.tmp, "postgres", "postgres")
        self._counter = itertools.count()

    def _run(self, *args: str) -> None:
        cmd = [str(a) for a in args]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, cwd=self.tmp)

    def start(self) -> None:
        data = self.tmp / "data"
        self._run(self.bindir / "initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")
        opts = self._opts = (
            f"-p {self.port} -k {self.tmp} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            self.bindir / "pg_ctl", "-D", data, "-o", opts, "-l", self.tmp / "log", "-w", "start"
        )

    def halt(self) -> None:
        """Stop the server, keeping its data (an outage); `resume` starts it again."""
        self._run(self.bindir / "pg_ctl", "-D", self.tmp / "data", "-m", "fast", "-w", "stop")

    def resume(self) -> None:
        self._run(
            self.bindir / "pg_ctl",
            "-D",
            self.tmp / "data",
            "-o",
            self._opts,
            "-l",
            self.tmp / "log",
            "-w",
            "start",
        )

    def stop(self) -> None:
        try:
            self._run(
                self.bindir / "pg_ctl", "-D", self.tmp / "data", "-m", "immediate", "-w", "stop"
            )
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def new_database(self) -> str:
        import psycopg

        name = f"t{os.getpid()}_{next(self._counter)}"
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"


def _running_postgres() -> Iterator[PostgresServer]:
    if os.environ.get("SLA_MONITOR_SKIP_POSTGRES"):
        pytest.skip("SLA_MONITOR_SKIP_POSTGRES is set")
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    yield from _running_postgres()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sla.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.new_database()


@pytest.fixture
def store(db_url: str) -> Iterator[SqlStore]:
    s = SqlStore(db_url)
    s.migrate()
    yield s
    s.close()


@pytest.fixture
def alertmanager() -> Iterator[Any]:
    """A real Alertmanager on a free loopback port, for the test alone."""
    from .promstack import AM_CONFIG, Alertmanager

    am = Alertmanager(AM_CONFIG)
    am.start()
    try:
        yield am
    finally:
        am.cleanup()


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL of the test's own, so that it can be stopped, started or attacked."""
    yield from _running_postgres()
