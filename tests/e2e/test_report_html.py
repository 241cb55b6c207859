"""`report --format html`: the page a support lead forwards. Built from a stored week with
known answers, opened in a real headless Chromium: it renders without a console error,
every chart is there, it fits a phone's width and prints; a screenshot is kept."""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ..conftest import SHIPPED_CONFIG
from .test_cli_errors import cli

DAY0 = datetime(2026, 11, 2, tzinfo=UTC)  # a Monday


def week(tmp_path: Path) -> Path:
    """Five days of a desk: each day ten e-mails (auto-reply at once; the first `day + 1`
    answered after 90 minutes, the rest after 20), five calls (four answered in 10 s, one
    abandoned after a minute); on Friday a customer writes again while still unanswered."""
    lines: list[dict[str, Any]] = []

    def event(conv: str, n: int, kind: str, at: datetime, **extra: Any) -> None:
        phone = conv.startswith("call")
        lines.append(
            {
                "source": "desk",
                "event_id": f"{conv}-{n}",
                "conversation_id": conv,
                "kind": kind,
                "occurred_at": at.isoformat().replace("+00:00", "Z"),
                "channel": "phone" if phone else "email",
                "queue": "support-line" if phone else "billing",
                **extra,
            }
        )

    for day in range(5):
        start = DAY0 + timedelta(days=day, hours=9)
        for j in range(10):
            conv, at = f"mail-{day}-{j}", start + timedelta(minutes=30 * j)
            who = {"customer_id": f"cust-{day}-{j}", "priority": "urgent" if j % 2 else "normal"}
            event(conv, 1, "customer_message", at, **who)
            event(conv, 2, "auto_reply", at + timedelta(seconds=30), **who)
            late = j < day + 1
            agent = {0: "Dana", 1: "Lee"}.get(j % 3)
            reply = {"agent": agent} if agent else {}
            after = timedelta(minutes=90 if late else 20)
            event(conv, 3, "agent_reply", at + after, **who, **reply)
        for k in range(5):
            conv, at = f"call-{day}-{k}", start + timedelta(hours=1, minutes=20 * k)
            caller = {"customer_id": f"+44 20 7946 0{day}{k}"}
            event(conv, 1, "call_queued", at, **caller)
            if k < 4:
                event(conv, 2, "call_answered", at + timedelta(seconds=10), agent="PJSIP/1001")
            else:
                event(conv, 2, "call_abandoned", at + timedelta(seconds=60), reason="ABANDON")
    again = DAY0 + timedelta(days=4, hours=9, minutes=40)  # cust-4-0 is still waiting
    event("mail-4-again", 1, "customer_message", again, customer_id="cust-4-0")
    event("mail-4-again", 2, "auto_reply", again + timedelta(seconds=30), customer_id="cust-4-0")
    event("mail-4-again", 3, "agent_reply", again + timedelta(minutes=15), customer_id="cust-4-0")
    path = tmp_path / "week.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


@pytest.fixture
def stored_week(tmp_path: Path) -> list[str]:
    config = tmp_path / "sla.yaml"
    config.write_text(
        SHIPPED_CONFIG.read_text().replace(
            "  - name: demo\n    kind: demo",
            "  - name: desk\n    kind: demo\n"
            "    contact_url: https://desk.example.com/tickets/{conversation_id}",
        )
    )
    args = ["--config", str(config), "--db", f"sqlite:///{tmp_path / 'week.db'}"]
    done = cli("ingest", str(week(tmp_path)), *args, "--watermark", "2026-11-07T00:00:00Z")
    assert done.returncode == 0, done.stderr
    return [*args, "--as-of", "2026-11-08T00:00:00Z", "--tz", "Europe/London"]


def test_the_report_counts_days_and_priorities_as_computed_by_hand(stored_week: list[str]) -> None:
    done = cli("report", *stored_week, "--format", "json")
    assert done.returncode == 0, done.stderr
    r = json.loads(done.stdout)
    # per day: 10 auto-acks met, 10 - (day + 1) first replies met, the rest breached; calls:
    # 4 answered in time, 1 abandoned after its 20 s (breached); Friday's second e-mail: 2 met
    by_day = {d["day"]: (d["met"], d["breached"]) for d in r["daily"]}
    assert by_day == {
        "2026-11-02": (10 + 9 + 4, 1 + 1),
        "2026-11-03": (10 + 8 + 4, 2 + 1),
        "2026-11-04": (10 + 7 + 4, 3 + 1),
        "2026-11-05": (10 + 6 + 4, 4 + 1),
        "2026-11-06": (10 + 5 + 4 + 2, 5 + 1),
    }
    # urgent are the odd-numbered e-mails: breached (late) are j < day + 1, so urgent ones
    # are j = 1 (days 1-4) and j = 3 (days 3-4): 6 of 25 first replies, plus 25 auto-acks
    urgent = next(p for p in r["priorities"] if p["priority"] == "urgent")
    assert (urgent["met"], urgent["breached"]) == (25 + 19, 6)
    first = next(t for t in r["targets"] if t["target"] == "first_reply")
    assert (first["met"], first["breached"], first["objective"]) == (35 + 1, 15, 0.95)


def test_the_html_report_renders_in_chromium_fits_a_phone_and_prints(
    stored_week: list[str], tmp_path: Path
) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed (the README's test command installs it)")
    from playwright.sync_api import sync_playwright

    page_file = tmp_path / "week.html"
    done = cli("report", *stored_week, "--format", "html", "--out", str(page_file))
    assert done.returncode == 0, done.stderr
    html = page_file.read_text()
    assert "<script" not in html and "http://" not in html.replace("http://www.w3.org", "")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        errors: list[str] = []
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on(
            "request",
            lambda r: errors.append(f"fetched {r.url}") if not r.url.startswith("file:") else None,
        )
        page.goto(page_file.as_uri())
        assert errors == []
        for chart in ("compliance", "response", "daily"):
            box = page.locator(f'svg[data-chart="{chart}"]').bounding_box()
            assert box is not None and box["width"] > 300 and box["height"] > 60, chart
        # the gap per queue target, and the worst lapses with links to the contacts
        assert page.locator("text=Promise and delivery").count() == 1
        links = page.locator('a[href^="https://desk.example.com/tickets/"]')
        assert links.count() == 15  # the 15 worst of 20 lapses
        assert page.locator("text=mail-4-0").count() >= 1  # Friday's 90-minute reply
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 20_000
        if target := os.environ.get("SLA_MONITOR_SCREENSHOTS"):  # docs/ (README)
            shutil.copy(shot, Path(target) / "report-example.png")
        # a phone: nothing wider than the screen but the tables, which scroll inside
        phone = browser.new_page(viewport={"width": 390, "height": 844})
        phone.goto(page_file.as_uri())
        width = phone.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, width
        # printed: the PDF has its pages
        pdf = page.pdf(format="A4")
        assert pdf.startswith(b"%PDF") and pdf.count(b"/Type /Page") >= 2
        browser.close()
