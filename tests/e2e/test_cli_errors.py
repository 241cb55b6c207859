"""The operator's first hour, through the real console script: options anywhere, instants
as people type them, and every operator error as one clear line and a non-zero exit —
never a traceback (unless --log-level debug)."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ..conftest import DATA, SHIPPED_CONFIG

# the console script of the Python running the tests (not whichever is first on PATH)
_BESIDE = Path(sys.executable).parent / "sla-monitor"
SCRIPT = str(_BESIDE) if _BESIDE.exists() else shutil.which("sla-monitor") or "sla-monitor"
CFG = str(SHIPPED_CONFIG)


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SCRIPT, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    """The process failed with one clear line on stderr naming `words`, and no traceback."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    last = lines[-1]
    assert all(w in last for w in words), proc.stderr
    return last


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    done = cli(
        "ingest",
        str(DATA / "acceptance.jsonl"),
        "--config",
        CFG,
        "--db",
        url,
        "--watermark",
        "2026-11-03",
    )
    assert done.returncode == 0, done.stderr
    return url


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_shared_options_work_before_or_after_the_command(db: str) -> None:
    before = cli("--config", CFG, "--db", db, "report", "--format", "json", "--as-of", "2026-11-10")
    after = cli("report", "--config", CFG, "--db", db, "--format", "json", "--as-of", "2026-11-10")
    assert before.returncode == after.returncode == 0, before.stderr + after.stderr
    assert json.loads(before.stdout) == json.loads(after.stdout)
    assert json.loads(before.stdout)["targets"]  # the ingested contacts, not an empty db


def test_instants_as_people_type_them(db: str) -> None:
    def report(*args: str) -> dict[str, object]:
        done = cli("report", "--config", CFG, "--db", db, "--format", "json", *args)
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout))

    iso = report("--from", "2026-11-02T00:00:00Z", "--as-of", "2026-11-10T00:00:00Z")
    dates = report("--from", "2026-11-02", "--as-of", "2026-11-10")
    assert dates == iso
    berlin = report("--from", "2026-11-02 01:00", "--tz", "Europe/Berlin", "--as-of", "2026-11-10")
    assert berlin["from"] == iso["from"] == "2026-11-02T00:00:00Z"  # 01:00 CET is 00:00 UTC
    since = report("--since", "7d")
    assert since["from"] < since["as_of"]
    wrong = cli("report", "--config", CFG, "--db", db, "--from", "last tuesday")
    assert wrong.returncode == 2
    one_line_error(wrong, "--from", "last tuesday", "2026-11-24")
    zone = cli("report", "--config", CFG, "--db", db, "--since", "7d", "--tz", "Mars/Olympus")
    one_line_error(zone, "--tz", "Mars/Olympus")


def test_help_names_what_each_option_takes_and_shows_an_example() -> None:
    for command in ("run", "ingest", "replay", "report", "explain", "archive", "due"):
        text = cli(command, "--help").stdout
        assert "example:" in text, command
        assert "FROM_" not in text and "TO_" not in text and "AS_OF" not in text, command
    report = cli("report", "--help").stdout
    assert "--from WHEN" in report and "--since WHEN" in report and "--tz ZONE" in report


def test_a_malformed_listen_address_is_one_line(tmp_path: Path) -> None:
    done = cli("run", "--config", CFG, "--db", f"sqlite:///{tmp_path}/x.db", "--listen", "oops")
    assert done.returncode == 2
    one_line_error(done, "--listen", "HOST:PORT")


def test_a_port_in_use_is_one_line_and_the_process_ends(tmp_path: Path, busy_port: int) -> None:
    args = ["run", "--config", CFG, "--db", f"sqlite:///{tmp_path}/x.db"]
    done = cli(*args, "--listen", f"127.0.0.1:{busy_port}")
    assert done.returncode == 1
    one_line_error(done, "cannot listen", "--listen")
    debug = cli(*args, "--listen", f"127.0.0.1:{busy_port}", "--log-level", "debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr  # asked for: shown


def test_a_database_unreachable_at_start_is_one_line_without_its_password() -> None:
    done = cli("run", "--config", CFG, "--db", "postgresql://sla:s3cret-pw@127.0.0.1:1/sla")
    one_line_error(done, "database unavailable")
    assert "s3cret-pw" not in done.stderr + done.stdout


def test_a_closed_pipe_ends_output_quietly(db: str) -> None:
    """`sla-monitor explain … | head`: the reader goes away; no BrokenPipeError."""
    proc = subprocess.Popen(
        [SCRIPT, "explain", "desk:A", "--config", CFG, "--db", db, "--as-of", "2026-11-10"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before it writes a line
    err = proc.stderr.read()
    proc.wait(timeout=60)
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_ingest_prints_each_rejection_once(tmp_path: Path) -> None:
    lines = (DATA / "acceptance.jsonl").read_text().splitlines()[:3]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([*lines, "{not json", lines[0].replace("a1", "a1b")]) + "\n")
    done = cli("ingest", str(bad), "--config", CFG, "--db", f"sqlite:///{tmp_path}/i.db")
    assert done.returncode == 0, done.stderr
    mentions = [line for line in done.stderr.splitlines() if "bad.jsonl:4" in line]
    assert len(mentions) == 1, done.stderr


def test_json_logs_for_containers(tmp_path: Path, busy_port: int) -> None:
    done = cli(
        "run",
        "--config",
        CFG,
        "--db",
        f"sqlite:///{tmp_path}/j.db",
        "--listen",
        f"127.0.0.1:{busy_port}",
        "--log-format",
        "json",
    )
    logged = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert logged and all({"time", "level", "logger", "message"} <= set(e) for e in logged)
    assert any("60x faster" in e["message"] for e in logged)  # the demo clock's notice
    # libraries (migrations, the scheduler, HTTP clients) speak only to warn
    chatter = [e for e in logged if not e["logger"].startswith("sla_monitor")]
    assert all(e["level"] in ("warning", "error", "critical") for e in chatter), chatter


def with_sources(tmp_path: Path, sources: str) -> Path:
    """The shipped config with these sources instead of the demo."""
    text = SHIPPED_CONFIG.read_text()
    head = text.split("\nsources:")[0]
    path = tmp_path / "sla.yaml"
    path.write_text(head + "\nsources:\n" + sources)
    return path


HELPDESK = """\
  - name: desk
    kind: zendesk
    options: {subdomain: acme, email: bot@acme.example, token: {env: SLA_TEST_ZD_TOKEN}}
  - name: pbx
    kind: asterisk_queue_log
    options: {path: /nonexistent/asterisk/queue_log}
"""


def test_check_config_finds_what_run_would_fail_on(tmp_path: Path) -> None:
    """An unset secret and a missing file pass every syntax check; `check-config` names
    both at once (file:line, key), and `run` refuses to start without the secret."""
    config = with_sources(tmp_path, HELPDESK)
    done = cli("check-config", "--config", str(config))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "sources[0].options.token: environment variable SLA_TEST_ZD_TOKEN is not set" in (
        done.stderr
    )
    assert "sources[1].options.path: /nonexistent/asterisk/queue_log: no such file" in (done.stderr)
    lines = config.read_text().splitlines()
    token_line = next(i for i, s in enumerate(lines, 1) if "SLA_TEST_ZD_TOKEN" in s)
    assert f"sla.yaml:{token_line}: sources[0].options.token" in done.stderr
    run = cli("run", "--config", str(config), "--db", f"sqlite:///{tmp_path}/r.db")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "SLA_TEST_ZD_TOKEN is not set" in run.stderr


def test_replay_refuses_to_run_under_a_running_monitor(tmp_path: Path) -> None:
    """Replay rewrites every contact: under a live monitor both would write the same
    records (the monitor then failed on a UNIQUE constraint). It says so and waits."""
    import httpx

    from ..conftest import free_port
    from .test_runtime import monitor_process, wait_for

    port = free_port()
    db = f"sqlite:///{tmp_path / 'sla.db'}"
    with monitor_process(tmp_path, port) as proc:

        def ready() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 60, "the monitor to be ready")
        refused = cli("replay", "--config", CFG, "--db", db)
        assert refused.returncode == 2
        one_line_error(refused, "a monitor is running on this database", "stop it first")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    done = cli("replay", "--config", CFG, "--db", db, "--workers", "1")
    assert done.returncode == 0, done.stderr  # stopped cleanly: replay runs at once


def test_no_secret_reaches_a_log_line_a_metric_or_an_error(tmp_path: Path) -> None:
    """A run with known secrets everywhere they can be given (a helpdesk token, Alertmanager
    basic auth and credentials in its URL, /metrics basic auth), logging at DEBUG, while
    every one of those peers refuses or is away: its output, /metrics and `explain` and
    `report` never show them."""
    import os

    import bcrypt
    import httpx

    from ..conftest import free_port

    secrets = {
        "SLA_TEST_ZD_TOKEN": "zd-Token-9f8e7d",
        "SLA_TEST_AM_PASSWORD": "am-Pass-6c5b4a",
    }
    in_url = "url-Pass-3a2b1c"
    scrape_password = "scrape-Pass-0z9y8x"
    dead = free_port()  # nothing listens there
    web = tmp_path / "web.yml"
    hashed = bcrypt.hashpw(scrape_password.encode(), bcrypt.gensalt(rounds=4)).decode()
    web.write_text(f"basic_auth_users:\n  prom: '{hashed}'\n")
    calls = tmp_path / "calls.jsonl"  # a call that lapsed: a page to send
    queued = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    calls.write_text(
        json.dumps(
            {
                "event_id": "q1",
                "conversation_id": "c1",
                "kind": "call_queued",
                "occurred_at": queued,
                "channel": "phone",
                "queue": "support-line",
            }
        )
        + "\n"
    )
    config = with_sources(
        tmp_path,
        f"""\
  - name: desk
    kind: zendesk
    interval: 1s
    options:
      base_url: http://127.0.0.1:{dead}
      email: bot@acme.example
      token: {{env: SLA_TEST_ZD_TOKEN}}
  - name: pbx
    kind: jsonl
    options: {{path: {calls}}}
""",
    )
    text = config.read_text().replace(
        "\nsources:",
        "\nweb_config_file: web.yml\nalerting:\n"
        f"  alertmanager_urls: [http://sla:{in_url}@127.0.0.1:{dead}]\n"
        "  basic_auth: {username: sla, password: {env: SLA_TEST_AM_PASSWORD}}\n"
        "\nsources:",
        1,
    )
    config.write_text(text)
    port = free_port()
    db = f"sqlite:///{tmp_path / 's.db'}"
    env = {**os.environ, **secrets}
    cmd = [SCRIPT, "run", "--config", str(config), "--db", db, "--listen", f"127.0.0.1:{port}"]
    proc = subprocess.Popen(
        [*cmd, "--log-level", "debug"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen = ""
    try:
        deadline = time.monotonic() + 60
        metrics = None
        while time.monotonic() < deadline:  # until the failed polls are on /metrics
            try:
                got = httpx.get(
                    f"http://127.0.0.1:{port}/metrics", auth=("prom", scrape_password), timeout=2
                )
                failed = 'sla_source_polls_total{result="error",source="desk"}' in got.text
                if failed and "sla_alert_delivery" in got.text and "breached" in got.text:
                    metrics = got.text
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert metrics is not None, "no failed poll on /metrics"
        seen += metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        seen += out
    for command in (["report", "--since", "1d"], ["explain", "desk:1"]):
        done = cli(*command, "--config", str(config), "--db", db, "--log-level", "debug")
        seen += done.stdout + done.stderr
    assert f"alertmanager http://***@127.0.0.1:{dead} unreachable" in seen  # it was said
    for secret in [*secrets.values(), in_url, scrape_password, hashed]:
        assert secret not in seen, f"a secret was shown: {secret[:4]}…"
