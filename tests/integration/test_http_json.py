"""The generic HTTP JSON poller against a local API: paging, duplicates, out-of-order items,
429 with Retry-After, a 5xx burst, an expired cursor and refused credentials."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sla_monitor.adapters.sql import SqlStore
from sla_monitor.bootstrap import build_app
from sla_monitor.config import Config
from sla_monitor.domain.events import Channel
from sla_monitor.entrypoints.http import MetricsServer
from sla_monitor.service_layer.clock import FixedClock
from sla_monitor.service_layer.monitor import Monitor
from sla_monitor.service_layer.recompute import report
from sla_monitor.sources.abc import AuthFailed, SourceContext, SourceError
from sla_monitor.sources.http_json import HttpJsonOptions, HttpJsonSource

from ..conftest import SHIPPED_CONFIG
from ..fakeapi import Reply, Request, fake_api

T0 = datetime(2026, 11, 2, 9, tzinfo=UTC)
NOW = T0 + timedelta(days=1)


def item(i: int, conv: str, kind: str, minutes: float) -> dict[str, Any]:
    return {
        "id": i,
        "type": kind,
        "thread": {"id": conv, "inbox": "mentions"},
        "from": {"handle": f"@user{conv}"},
        "ts": (T0 + timedelta(minutes=minutes)).isoformat(),
    }


# thread A: a person replies in 10 min; B: only the bot; out of order, duplicated across pages
PAGES = [
    [item(1, "A", "inbound", 0), item(3, "A", "outbound_agent", 10)],
    [
        item(2, "A", "bot_greeting", 0.1),
        item(3, "A", "outbound_agent", 10),
        item(4, "B", "inbound", 30),
    ],
    [item(5, "B", "bot_greeting", 30.1), item(6, "B", "like", 31), {"id": 7, "type": "inbound"}],
]


def options(url: str, **extra: Any) -> HttpJsonOptions:
    return HttpJsonOptions.model_validate(
        {
            "url": url + "/v1/events",
            "items": "data",
            "cursor": {"param": "after", "from": "meta.next"},
            "auth": {"secret": {"env": "TEST_SOCIAL_TOKEN"}},
            "map": {
                "event_id": "id",
                "conversation_id": "thread.id",
                "occurred_at": "ts",
                "queue": "thread.inbox",
                "customer_id": "from.handle",
                "kind": {
                    "path": "type",
                    "values": {
                        "inbound": "customer_message",
                        "outbound_agent": "agent_reply",
                        "bot_greeting": "auto_reply",
                    },
                },
            },
            **extra,
        }
    )


def source(url: str, **extra: Any) -> HttpJsonSource:
    return HttpJsonSource(SourceContext("social", Channel.SOCIAL, ()), options(url, **extra))


def paged(req: Request) -> Reply:
    page = int(req.params.get("after", "0"))
    nxt = page + 1 if page + 1 < len(PAGES) else None
    return 200, {}, {"data": PAGES[page], "meta": {"next": None if nxt is None else str(nxt)}}


@pytest.fixture(autouse=True)
def token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SOCIAL_TOKEN", "s3cret-token")


def test_pages_duplicates_and_order_end_to_end(tmp_path: Path, shipped_config: Config) -> None:
    with fake_api(paged) as api:
        src = source(api.url)
        result = src.poll(None, NOW)
        again = src.poll(result.cursor, NOW)
    assert api.requests[0].headers["authorization"] == "Bearer s3cret-token"
    assert [r.params.get("after") for r in api.requests] == [None, "1", "2", "2"]
    assert sorted({e.event_id for e in result.events}) == ["1", "2", "3", "4", "5"]
    assert [r.reason for r in result.rejected] == ["missing_field"]  # item 7: no thread, no ts
    assert result.watermark == NOW
    # the last page is read again until the API gives a newer cursor: nothing new, only
    # duplicates, which the store drops
    assert {e.event_id for e in again.events} <= {e.event_id for e in result.events}
    store = SqlStore(f"sqlite:///{tmp_path / 's.db'}")
    store.migrate()
    monitor = Monitor(store, shipped_config, FixedClock(NOW))
    monitor.load()
    monitor.apply_poll("social", "http_json", result, 0.0)
    rows = {r["target"]: r for r in report(store, shipped_config, NOW, None, None)["targets"]}
    assert (rows["first_reply"]["met"], rows["first_reply"]["breached"]) == (1, 1)
    store.close()


def test_rate_limit_mid_poll_keeps_what_was_read_and_resumes(tmp_path: Path) -> None:
    calls = {"n": 0}

    def limited(req: Request) -> Reply:
        calls["n"] += 1
        if calls["n"] == 2:
            return 429, {"Retry-After": "7"}, {"error": "slow down"}
        return paged(req)

    with fake_api(limited) as api:
        src = source(api.url)
        first = src.poll(None, NOW)
        assert first.more and first.next_poll_after == 7.0 and first.watermark is None
        assert {e.event_id for e in first.events} == {"1", "3"}
        second = src.poll(first.cursor, NOW)
    assert {e.event_id for e in second.events} == {"2", "3", "4", "5"}
    assert second.watermark == NOW


def test_server_errors_and_expired_cursors(tmp_path: Path) -> None:
    state = {"fail": 3}

    def flaky(req: Request) -> Reply:
        if state["fail"] > 0:
            state["fail"] -= 1
            return 503, {}, {"error": "maintenance"}
        if req.params.get("after") == "stale":
            return 410, {}, {"error": "cursor expired"}
        return paged(req)

    with fake_api(flaky) as api:
        src = source(api.url)
        for _ in range(3):
            with pytest.raises(SourceError, match="server error 503"):
                src.poll(None, NOW)
        result = src.poll('{"cursor": "stale"}', NOW)
    assert sorted({e.event_id for e in result.events}) == ["1", "2", "3", "4", "5"]


def test_refused_credentials_are_named_but_not_shown(tmp_path: Path) -> None:
    with (
        fake_api(lambda req: (401, {}, {"error": "bad token"})) as api,
        pytest.raises(AuthFailed) as exc,
    ):
        source(api.url).poll(None, NOW)
    assert "TEST_SOCIAL_TOKEN" in str(exc.value) and "s3cret" not in str(exc.value)


def test_runtime_backs_off_per_retry_after_and_on_auth_errors(tmp_path: Path) -> None:
    replies = iter([(429, {"Retry-After": "120"}, {}), (401, {}, {})])

    with fake_api(lambda req: next(replies)) as api:
        config = tmp_path / "c.yaml"
        config.write_text(
            SHIPPED_CONFIG.read_text().split("sources:")[0]
            + f"""sources:
  - name: social
    kind: http_json
    channel: social
    interval: 30s
    options:
      url: {api.url}/v1/events
      items: data
      auth: {{secret: {{env: TEST_SOCIAL_TOKEN}}}}
      map: {{event_id: id, conversation_id: thread.id, occurred_at: ts, kind: type, queue: q}}
"""
        )
        app = build_app(
            str(config), f"sqlite:///{tmp_path / 'db.sqlite'}", "127.0.0.1:0", serve=MetricsServer
        )
        app.start()
        try:
            job = app.scheduler.get_job("poll:social")
            app.scheduler.pause_job("poll:social")  # drive the polls by hand
            app.poll("social")
            wait = (job.next_run_time - datetime.now(UTC)).total_seconds()
            assert 110 < wait <= 120
            app.poll("social")
            wait = (
                app.scheduler.get_job("poll:social").next_run_time - datetime.now(UTC)
            ).total_seconds()
            assert 290 < wait <= 300  # refused credentials: retried slowly, not in a loop
            polls = app.monitor.live.polls
            assert polls[("social", "rate_limited")] == 1 and polls[("social", "auth_error")] == 1
            assert not app.monitor.live.sources["social"].up
        finally:
            app.stop()


def test_next_link_pagination(tmp_path: Path) -> None:
    def linked(req: Request) -> Reply:
        page = int(req.params.get("page", "0"))
        nxt = f"{api_url[0]}/v1/events?page={page + 1}" if page + 1 < len(PAGES) else None
        return 200, {}, {"data": PAGES[page], "links": {"next": nxt}}

    api_url: list[str] = []
    with fake_api(linked) as api:
        api_url.append(api.url)
        src = HttpJsonSource(
            SourceContext("social", Channel.SOCIAL, ()),
            options(api.url, cursor=None, next_link="links.next"),
        )
        result = src.poll(None, NOW)
    assert [r.params.get("page") for r in api.requests] == [None, "1", "2"]
    assert sorted({e.event_id for e in result.events}) == ["1", "2", "3", "4", "5"]
