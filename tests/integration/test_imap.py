"""IMAP against a real Dovecot: auto-replies told from people, threading by References,
a UIDVALIDITY reset, and the outcomes through the engine."""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sla_monitor.adapters.sql import SqlStore
from sla_monitor.config import Config
from sla_monitor.service_layer.clock import FixedClock
from sla_monitor.service_layer.monitor import Monitor
from sla_monitor.service_layer.recompute import report
from sla_monitor.sources.abc import AuthFailed, Rejected, SourceContext
from sla_monitor.sources.imap import ImapOptions, ImapSource, Skipped

from ..dovecot import PASSWORD, USER, Dovecot
from ..mailfixtures import Fixture, fixtures

T0 = datetime(2026, 11, 2, 9, tzinfo=UTC)
NOW = T0 + timedelta(days=1)


@pytest.fixture(scope="module")
def dovecot() -> Iterator[Dovecot]:
    server = Dovecot()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def message(frm: str, to: str, subject: str, msgid: str, **headers: str) -> bytes:
    lines = [
        f"From: {frm}",
        f"To: {to}",
        f"Subject: {subject}",
        f"Message-ID: {msgid}",
        "Date: Mon, 02 Nov 2026 09:00:00 +0000",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
    ]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\nHello.\r\n").encode()


def append(client: Any, folder: str, minutes: float, raw: bytes) -> None:
    client.append(folder, raw, msg_time=T0 + timedelta(minutes=minutes))


def imap(server: Dovecot, **kw: Any) -> ImapSource:
    options = ImapOptions.model_validate(
        {
            "host": "127.0.0.1",
            "port": server.port,
            "tls": "starttls",
            "ca_file": str(server.cert),
            "username": USER,
            "password": {"env": "TEST_IMAP_PASSWORD"},
            "extra_folders": ["Archive"],
            "team_addresses": ["support@acme.test"],
            "team_domains": ["acme.test"],
            "queue": "support",
            **kw,
        }
    )
    return ImapSource(SourceContext("mailbox", None, ()), options)


@pytest.fixture(autouse=True)
def password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_IMAP_PASSWORD", PASSWORD)


def test_mailbox_end_to_end(dovecot: Dovecot, tmp_path: Path, shipped_config: Config) -> None:
    c = dovecot.client()
    support = "Acme Support <support@acme.test>"
    append(
        c,
        "INBOX",
        0,
        message("Alice <alice@example.com>", support, "Invoice wrong", "<c1@example.com>"),
    )
    append(c, "INBOX", 60, message("bob@example.org", support, "Login broken", "<c2@example.org>"))
    append(
        c,
        "INBOX",
        120,
        message(
            "carol@example.net",
            support,
            "Automatic reply: your invoice",
            "<oof@example.net>",
            Auto_Submitted="auto-replied",
        ),
    )
    append(c, "INBOX", 180, message("dave@example.com", support, "Refund", "<c4@example.com>"))
    # Exchange out-of-office from the team's mailbox: a machine, not a person
    append(
        c,
        "Sent",
        0.7,
        message(
            support,
            "alice@example.com",
            "Automatic reply: Invoice wrong",
            "<oof1@acme.test>",
            In_Reply_To="<c1@example.com>",
            References="<c1@example.com>",
            Auto_Submitted="auto-generated",
            X_MS_Exchange_Generated_Message_Source="Mailbox Rules Agent",
        ),
    )
    append(
        c,
        "Sent",
        60.5,
        message(
            support,
            "bob@example.org",
            "Re: Login broken",
            "<ack2@acme.test>",
            In_Reply_To="<c2@example.org>",
            Auto_Submitted="auto-replied",
        ),
    )
    # a person's reply, threaded by References only; X-Auto-Response-Suppress is no marker
    append(
        c,
        "Sent",
        45,
        message(
            "Jo <jo@acme.test>",
            "alice@example.com",
            "Re: Invoice wrong",
            "<r1@acme.test>",
            References="<c1@example.com>",
            X_Auto_Response_Suppress="All",
        ),
    )
    append(
        c,
        "Archive",
        210,
        message(
            support,
            "dave@example.com",
            "Re: Refund",
            "<r4@acme.test>",
            References="<c4@example.com>",
        ),
    )
    c.logout()

    src = imap(dovecot)
    first = src.poll(None, NOW)
    kinds = sorted((e.conversation_id, e.kind.value, e.event_id) for e in first.events)
    assert kinds == [
        ("<c1@example.com>", "agent_reply", "<r1@acme.test>"),
        ("<c1@example.com>", "auto_reply", "<oof1@acme.test>"),
        ("<c1@example.com>", "customer_message", "<c1@example.com>"),
        ("<c2@example.org>", "auto_reply", "<ack2@acme.test>"),
        ("<c2@example.org>", "customer_message", "<c2@example.org>"),
        ("<c4@example.com>", "agent_reply", "<r4@acme.test>"),
        ("<c4@example.com>", "customer_message", "<c4@example.com>"),
    ]  # carol's out-of-office is not a customer asking for anything
    alice = next(e for e in first.events if e.event_id == "<c1@example.com>")
    assert alice.occurred_at == T0 and alice.customer_id == "alice@example.com"
    # who replied: the From display name (reports per person); nobody for machines
    by = {e.event_id: e.agent for e in first.events if e.kind.value != "customer_message"}
    assert by["<r1@acme.test>"] == "Jo" and by["<oof1@acme.test>"] is None
    assert alice.queue == "support" and first.watermark == NOW

    # UIDVALIDITY reset of the archive: re-read from the start, without duplicates
    c = dovecot.client()
    c.delete_folder("Archive")
    c.create_folder("Archive")
    append(
        c,
        "Archive",
        210,
        message(
            support,
            "dave@example.com",
            "Re: Refund",
            "<r4@acme.test>",
            References="<c4@example.com>",
        ),
    )
    append(
        c,
        "Archive",
        240,
        message(
            "jo@acme.test",
            "bob@example.org",
            "Re: Login broken",
            "<r2@acme.test>",
            In_Reply_To="<ack2@acme.test>",
        ),
    )
    c.logout()
    second = src.poll(first.cursor, NOW)
    assert sorted(e.event_id for e in second.events) == ["<r2@acme.test>", "<r4@acme.test>"]
    late = next(e for e in second.events if e.event_id == "<r2@acme.test>")
    assert late.conversation_id == "<c2@example.org>"  # via In-Reply-To to the auto-reply
    assert src.poll(second.cursor, NOW).events == []

    store = SqlStore(f"sqlite:///{tmp_path / 'mail.db'}")
    store.migrate()
    monitor = Monitor(store, shipped_config, FixedClock(NOW))
    monitor.load()
    for r in (first, second):
        monitor.apply_poll("mailbox", "imap", r, 0.0)
    assert monitor.live.ingested[("mailbox", "agent_reply")] == 3  # r4 stored once
    rows = {x["target"]: x for x in report(store, shipped_config, NOW, None, None)["targets"]}
    # alice: OOF at 42 s, reply at 45 min; bob: auto-reply at 30 s, person at 3 h (late);
    # dave: nothing automatic, a person at 30 min
    assert (rows["auto_ack"]["met"], rows["auto_ack"]["breached"]) == (2, 1)
    assert (rows["first_reply"]["met"], rows["first_reply"]["breached"]) == (2, 1)
    assert rows["first_reply"]["response_seconds"]["max"] == 3 * 3600
    store.close()


def test_subject_fallback_threads_a_reply_without_references(dovecot: Dovecot) -> None:
    c = dovecot.client()
    c.create_folder("Fallback")
    append(
        c,
        "Fallback",
        0,
        message("erin@example.com", "support@acme.test", "Password reset", "<c9@example.com>"),
    )
    append(
        c,
        "Fallback",
        20,
        message("support@acme.test", "erin@example.com", "RE: Password reset", "<r9@acme.test>"),
    )
    c.logout()
    r = imap(dovecot, inbox="Fallback", sent="Fallback", extra_folders=[]).poll(None, NOW)
    assert {e.conversation_id for e in r.events} == {"<c9@example.com>"}


def test_wrong_password_is_an_auth_error(dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_IMAP_PASSWORD", "wrong")
    with pytest.raises(AuthFailed, match="TEST_IMAP_PASSWORD"):
        imap(dovecot).poll(None, NOW)


# -- machine or person, on mail written the way real systems write it ------------------------


def _fixture_source(dovecot: Dovecot | None = None, **kw: Any) -> ImapSource:
    if dovecot is not None:
        return imap(dovecot, **kw)
    options = ImapOptions.model_validate(
        {
            "host": "imap.invalid",
            "username": "u",
            "password": {"env": "TEST_IMAP_PASSWORD"},
            "team_addresses": ["support@shop.example"],
            "team_domains": ["shop.example"],
            **kw,
        }
    )
    return ImapSource(SourceContext("mailbox", None, ()), options)


def _verdict(src: ImapSource, fx: Fixture, threads: Any) -> str:
    got = src.to_event(fx.folder, 1, T0, fx.raw.split(b"\r\n\r\n")[0] + b"\r\n\r\n", threads)
    if isinstance(got, Skipped):
        return f"skip:{got.reason}"
    assert not isinstance(got, Rejected), (fx.name, got)
    return got.kind.value


def test_the_fixture_set_is_large_and_varied() -> None:
    fx = fixtures()
    assert len(fx) >= 60
    assert len({f.name for f in fx}) == len(fx)
    kinds = {f.expect.split(":")[0] for f in fx}
    assert kinds == {"skip", "customer_message", "agent_reply", "auto_reply"}


@pytest.mark.parametrize("fx", fixtures(), ids=lambda f: f.name)
def test_machine_or_person(fx: Fixture) -> None:
    src = _fixture_source(team_addresses=["support@shop.example"], team_domains=["shop.example"])
    assert _verdict(src, fx, OrderedDict()) == fx.expect


def test_list_mail_can_be_skipped() -> None:
    src = _fixture_source(list_mail="skip")
    by_name = {f.name: f for f in fixtures()}
    assert _verdict(src, by_name["mailing-list-post"], OrderedDict()) == "skip:list"
    assert _verdict(src, by_name["gmail-web"], OrderedDict()) == "customer_message"


def test_the_fixture_set_through_dovecot(dovecot: Dovecot) -> None:
    c = dovecot.client()
    for folder in ("FxIn", "FxSent"):
        c.create_folder(folder)
    fx = fixtures()
    for i, f in enumerate(fx):
        append(c, "FxIn" if f.folder == "INBOX" else "FxSent", i, f.raw)
    c.logout()
    src = imap(
        dovecot,
        inbox="FxIn",
        sent="FxSent",
        extra_folders=[],
        team_addresses=["support@shop.example"],
        team_domains=["shop.example"],
    )
    result = src.poll(None, NOW)
    assert result.rejected == []
    got = {e.event_id: e.kind.value for e in result.events}
    want = {f.message_id: f.expect for f in fx if not f.expect.startswith("skip:")}
    assert got == want
    skips = Counter(f.expect.split(":")[1] for f in fx if f.expect.startswith("skip:"))
    assert result.skipped == skips
    # the customers behind the people's mail, the skipped senders nowhere
    assert {e.customer_id for e in result.events if e.kind.value == "customer_message"} >= {
        "wendy.park@gmail.test",
        "fay@customer.test",
        "x.ortiz@corp.test",
    }


# -- every thread can end ------------------------------------------------------------------


def test_moving_a_thread_to_the_done_folder_solves_it(
    dovecot: Dovecot, tmp_path: Path, shipped_config: Config
) -> None:
    c = dovecot.client()
    for folder in ("DoneIn", "DoneSent", "DoneArchive"):
        c.create_folder(folder)
    support = "Acme Support <support@acme.test>"
    append(c, "DoneIn", 0, message("lena@example.com", support, "Broken zip", "<d1@example.com>"))
    append(
        c,
        "DoneSent",
        20,
        message(
            support,
            "lena@example.com",
            "Re: Broken zip",
            "<dr1@acme.test>",
            References="<d1@example.com>",
        ),
    )
    # the customer says thanks: a next_reply clock starts (4 business hours)
    append(
        c,
        "DoneIn",
        30,
        message(
            "lena@example.com",
            support,
            "Re: Broken zip",
            "<d2@example.com>",
            References="<d1@example.com> <dr1@acme.test>",
        ),
    )
    c.logout()
    src = imap(
        dovecot, inbox="DoneIn", sent="DoneSent", extra_folders=[], done_folders=["DoneArchive"]
    )
    store = SqlStore(f"sqlite:///{tmp_path / 'done.db'}")
    store.migrate()
    clock = FixedClock(T0 + timedelta(minutes=40))
    monitor = Monitor(store, shipped_config, clock)
    monitor.load()
    first = src.poll(None, clock.now())
    monitor.apply_poll("mailbox", "imap", first, 0.0)
    assert (
        monitor.snapshot()["open_counts"][("email", "support", "none", "next_reply", "on_track")]
        == 1
    )
    # the agent archives the answered thread (both messages of the inbox move)
    c = dovecot.client()
    c.select_folder("DoneIn")
    c.move(c.search(["ALL"]), "DoneArchive")
    c.logout()
    clock.at = T0 + timedelta(minutes=45)
    second = src.poll(first.cursor, clock.now())
    assert {(e.kind.value, e.conversation_id) for e in second.events} == {
        ("status_changed", "<d1@example.com>")
    }
    monitor.apply_poll("mailbox", "imap", second, 0.0)
    clock.at = T0 + timedelta(days=3)  # long after the next_reply deadline
    monitor.apply_poll("mailbox", "imap", src.poll(second.cursor, clock.now()), 0.0)
    monitor.wake()
    snap = monitor.snapshot()
    assert not any(n for k, n in snap["open_counts"].items() if k[3] == "next_reply")
    outcomes = {k[3:]: n for k, n in snap["outcomes"].items() if n}
    assert outcomes.get(("next_reply", "cancelled")) == 1
    assert ("next_reply", "breached") not in outcomes
    # a later customer message reopens it
    c = dovecot.client()
    append(
        c,
        "DoneIn",
        3 * 24 * 60 + 10,
        message(
            "lena@example.com",
            support,
            "Re: Broken zip",
            "<d3@example.com>",
            References="<d1@example.com> <dr1@acme.test> <d2@example.com>",
        ),
    )
    c.logout()
    clock.at = T0 + timedelta(days=3, minutes=15)
    monitor.apply_poll("mailbox", "imap", src.poll(second.cursor, clock.now()), 0.0)
    snap = monitor.snapshot()
    assert sum(n for k, n in snap["open_counts"].items() if k[3] == "next_reply") == 1
    store.close()
