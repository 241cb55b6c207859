"""OAuth 2.0 access tokens for connectors (IMAP with XOAUTH2/OAUTHBEARER; APIs that want a
bearer token): the client-credentials grant (Microsoft 365 app-only access) or the
refresh-token grant (Google, delegated Microsoft access). oauthlib builds the requests and
reads the answers; httpx carries them. Tokens live in memory only, are renewed a minute
before they expire, and a refused grant names the endpoint and the client, never a secret.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal
from urllib.parse import urlsplit

import httpx
from oauthlib.oauth2 import BackendApplicationClient, WebApplicationClient
from oauthlib.oauth2.rfc6749.errors import OAuth2Error
from pydantic import BaseModel, ConfigDict

from sla_monitor.sources._secrets import SecretRef
from sla_monitor.sources.abc import AuthFailed, SourceError

RENEW_BEFORE = 60.0  # seconds before expiry a token is renewed
DEFAULT_LIFETIME = 300.0  # a token whose answer gives no expires_in is kept this long


class OAuth2Options(BaseModel):
    """Where and as whom to get tokens (`oauth2:` in a connector's options)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    token_url: str  # e.g. https://login.microsoftonline.com/<tenant>/oauth2/v2.0/token
    client_id: str
    client_secret: SecretRef | None = None
    refresh_token: SecretRef | None = None  # given: the refresh-token grant
    scope: list[str] = []  # e.g. [https://outlook.office365.com/.default]
    mechanism: Literal["xoauth2", "oauthbearer"] = "xoauth2"  # the IMAP SASL mechanism


class AccessTokens:
    def __init__(
        self,
        options: OAuth2Options,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.options = options
        self.clock = clock
        self.http = httpx.Client(timeout=timeout, transport=transport)
        self._token: str | None = None
        self._expires = 0.0
        self.fetched = 0  # tokens obtained (tests, logs)
        self.host = urlsplit(options.token_url).netloc

    def who(self) -> str:
        """The client, as an error message names it (never its secret)."""
        grant = "refresh token" if self.options.refresh_token else "client credentials"
        return f"client {self.options.client_id} at {self.host} ({grant})"

    def token(self) -> str:
        """A valid access token: the cached one, or a new one near its expiry."""
        if self._token is None or self.clock() >= self._expires - RENEW_BEFORE:
            self._fetch()
        assert self._token is not None
        return self._token

    def forget(self) -> None:
        """The server refused the token (revoked): the next call asks for a new one."""
        self._token = None

    def _fetch(self) -> None:
        o = self.options
        secret = o.client_secret.read() if o.client_secret else None
        client: BackendApplicationClient | WebApplicationClient
        if o.refresh_token is not None:
            client = WebApplicationClient(o.client_id)
            body = client.prepare_refresh_body(
                refresh_token=o.refresh_token.read(),
                scope=o.scope or None,
                client_id=o.client_id,
                client_secret=secret,
            )
        else:
            client = BackendApplicationClient(o.client_id)
            body = client.prepare_request_body(
                scope=o.scope or None, include_client_id=True, client_secret=secret
            )
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        }
        try:
            resp = self.http.post(o.token_url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise SourceError(f"cannot reach the OAuth token endpoint {self.host}: {exc}") from None
        if resp.status_code >= 500:
            raise SourceError(f"OAuth token endpoint {self.host}: server error {resp.status_code}")
        try:
            # no scope check: providers answer with the scopes granted, named their way
            token = client.parse_request_body_response(resp.text)
        except OAuth2Error as exc:
            why = exc.error + (f": {exc.description}" if exc.description else "")
            raise AuthFailed(f"the OAuth token endpoint refused {self.who()}: {why}") from None
        except ValueError:
            raise SourceError(f"OAuth token endpoint {self.host}: not a token response") from None
        lifetime = float(token.get("expires_in") or DEFAULT_LIFETIME)
        self._token = str(token["access_token"])
        self._expires = self.clock() + lifetime
        self.fetched += 1

    def close(self) -> None:
        self.http.close()
