"""IMAP with OAuth 2.0, as Microsoft 365 and Google require: a real Dovecot checks every
token against an RFC 7662 introspection endpoint served here (`passdb oauth2`), and a token
endpoint here grants them (client credentials, or a refresh token). Login, a token expiring
and renewed mid-run, a revoked token (an auth error, a new token next time, no spinning), a
refused grant named by client and endpoint — never by its secret."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import pytest

from sla_monitor.sources.abc import AuthFailed, SourceContext
from sla_monitor.sources.imap import ImapOptions, ImapSource

from ..dovecot import USER, Dovecot

NOW = datetime(2026, 11, 3, 9, tzinfo=UTC)
CLIENT, SECRET, REFRESH = "3f1c2a9e-app", "client-secret-value-xyz", "refresh-token-value-abc"


@dataclass
class Authority:
    """The identity provider: grants tokens, answers introspection; its clock is ours."""

    now: float = 0.0
    lifetime: float = 3600.0
    tokens: dict[str, float] = field(default_factory=dict)  # token -> expires at
    revoked: set[str] = field(default_factory=set)
    grants: list[dict[str, str]] = field(default_factory=list)
    introspected: list[str] = field(default_factory=list)
    refuse: bool = False
    url: str = ""

    def grant(self, form: dict[str, str], basic: str | None) -> tuple[int, dict[str, Any]]:
        self.grants.append(form)
        secret = form.get("client_secret")
        if basic:
            _cid, _, secret = base64.b64decode(basic).decode().partition(":")
        if self.refuse or secret != SECRET:
            return 401, {
                "error": "invalid_client",
                "error_description": "AADSTS7000215: Invalid client secret provided.",
            }
        if form["grant_type"] == "refresh_token" and form.get("refresh_token") != REFRESH:
            return 400, {"error": "invalid_grant", "error_description": "Token has been expired"}
        token = f"tok-{len(self.grants)}"
        self.tokens[token] = self.now + self.lifetime
        return 200, {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": int(self.lifetime),
        }

    def introspect(self, token: str) -> dict[str, Any]:
        self.introspected.append(token)
        live = token in self.tokens and token not in self.revoked and self.now < self.tokens[token]
        return {"active": True, "username": USER} if live else {"active": False}


@pytest.fixture(scope="module")
def authority() -> Iterator[Authority]:
    auth = Authority()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            form = {k: v[-1] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            header = self.headers.get("Authorization") or ""
            basic = header[6:] if header.startswith("Basic ") else None
            if self.path == "/token":
                status, body = auth.grant(form, basic)
            elif self.path == "/introspect":
                status, body = 200, auth.introspect(form.get("token", ""))
            else:
                status, body = 404, {}
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    auth.url = f"http://127.0.0.1:{server.server_port}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield auth
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def dovecot(authority: Authority) -> Iterator[Dovecot]:
    server = Dovecot(introspection_url=f"{authority.url}/introspect")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def fresh(authority: Authority, monkeypatch: pytest.MonkeyPatch) -> None:
    authority.now, authority.refuse = 0.0, False
    authority.tokens.clear(), authority.revoked.clear(), authority.grants.clear()
    monkeypatch.setenv("SLA_TEST_OAUTH_SECRET", SECRET)
    monkeypatch.setenv("SLA_TEST_OAUTH_REFRESH", REFRESH)


def mailbox(server: Dovecot, authority: Authority, **oauth: Any) -> ImapSource:
    options = ImapOptions.model_validate(
        {
            "host": "127.0.0.1",
            "port": server.port,
            "tls": "starttls",
            "ca_file": str(server.cert),
            "username": USER,
            "oauth2": {
                "token_url": f"{authority.url}/token",
                "client_id": CLIENT,
                "client_secret": {"env": "SLA_TEST_OAUTH_SECRET"},
                "scope": ["https://outlook.office365.com/.default"],
                **oauth,
            },
            "team_domains": ["acme.test"],
        }
    )
    src = ImapSource(SourceContext("mailbox", None, ()), options)
    assert src.tokens is not None
    src.tokens.clock = lambda: authority.now  # one clock for both sides
    return src


def test_client_credentials_log_in_and_a_token_is_renewed_before_it_expires(
    dovecot: Dovecot, authority: Authority
) -> None:
    src = mailbox(dovecot, authority)
    first = src.poll(None, NOW)
    assert first.watermark == NOW  # read the mailbox: logged in
    assert [g["grant_type"] for g in authority.grants] == ["client_credentials"]
    assert authority.grants[0]["scope"] == "https://outlook.office365.com/.default"
    src.poll(first.cursor, NOW)  # the same token, still valid
    assert len(authority.grants) == 1 and authority.introspected[-1] == "tok-1"
    authority.now = 3600 - 30  # within a minute of expiry: renewed before use
    src.poll(first.cursor, NOW)
    assert len(authority.grants) == 2 and authority.introspected[-1] == "tok-2"


@pytest.mark.parametrize("mechanism", ["xoauth2", "oauthbearer"])
def test_a_refresh_token_grant_with_either_mechanism(
    dovecot: Dovecot, authority: Authority, mechanism: str
) -> None:
    src = mailbox(
        dovecot, authority, refresh_token={"env": "SLA_TEST_OAUTH_REFRESH"}, mechanism=mechanism
    )
    assert src.poll(None, NOW).watermark == NOW
    assert authority.grants[0]["grant_type"] == "refresh_token"
    assert authority.grants[0]["refresh_token"] == REFRESH


def test_a_revoked_token_is_an_auth_error_then_a_new_token_not_a_loop(
    dovecot: Dovecot, authority: Authority
) -> None:
    src = mailbox(dovecot, authority)
    src.poll(None, NOW)
    authority.revoked.add("tok-1")
    with pytest.raises(AuthFailed, match=f"IMAP login refused for {USER} .*client {CLIENT}"):
        src.poll(None, NOW)
    assert len(authority.grants) == 1  # refused once: no retry inside the poll
    assert src.poll(None, NOW).watermark == NOW  # the next poll asks for a new token
    assert len(authority.grants) == 2


def test_a_refused_grant_names_the_client_and_endpoint_never_the_secret(
    dovecot: Dovecot, authority: Authority
) -> None:
    authority.refuse = True
    src = mailbox(dovecot, authority)
    with pytest.raises(AuthFailed) as refused:
        src.poll(None, NOW)
    message = str(refused.value)
    assert CLIENT in message and "127.0.0.1" in message and "invalid_client" in message
    assert SECRET not in message and "AADSTS7000215" in message


def test_password_or_oauth_one_of_them(dovecot: Dovecot) -> None:
    base = {"host": "h", "username": "u"}
    with pytest.raises(ValueError, match="give password, or oauth2"):
        ImapOptions.model_validate(base)
    oauth = {"token_url": "https://login.example/token", "client_id": "c"}
    with pytest.raises(ValueError, match="give password, or oauth2"):
        ImapOptions.model_validate(base | {"password": {"env": "P"}, "oauth2": oauth})
    assert ImapOptions.model_validate(base | {"oauth2": oauth}).oauth2 is not None
