"""HTTP for connectors: JSON GETs that turn every failure into a SourceError the runtime
knows how to back off from (timeouts, 5xx, 429 with Retry-After, refused credentials)."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from sla_monitor import __version__
from sla_monitor.sources.abc import AuthFailed, RateLimited, SourceError


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as delta-seconds or an HTTP-date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class JsonClient:
    def __init__(
        self,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
        auth: httpx.Auth | tuple[str, str] | None = None,
        credential: str = "the credentials",
    ) -> None:
        self.credential = credential
        self.client = httpx.Client(
            headers={
                "User-Agent": f"sla-monitor/{__version__}",
                "Accept": "application/json",
                **(headers or {}),
            },
            timeout=timeout,
            auth=auth,
            follow_redirects=True,
        )

    def get(self, url: str, params: dict[str, Any] | None = None) -> Any:
        return self.get_with_headers(url, params)[0]

    def get_with_headers(
        self, url: str, params: dict[str, Any] | None = None
    ) -> tuple[Any, httpx.Headers]:
        """The JSON body and the response headers (paging links, rate-limit budgets)."""
        return self._request("GET", url, params=params)

    def post_with_headers(self, url: str, payload: Any) -> tuple[Any, httpx.Headers]:
        """A JSON query sent as a POST (search APIs), answered like a GET."""
        return self._request("POST", url, payload=payload)

    def _request(
        self,
        method: str,
        url: str,
        params: dict[str, Any] | None = None,
        payload: Any = None,
    ) -> tuple[Any, httpx.Headers]:
        try:
            resp = self.client.request(method, url, params=params, json=payload)
        except httpx.TimeoutException:
            raise SourceError(f"timed out: {method} {_safe(url)}") from None
        except httpx.HTTPError as exc:
            raise SourceError(f"cannot reach {_safe(url)}: {exc}") from None
        # the standard header, or the one some APIs use instead (Help Scout)
        retry_after = parse_retry_after(
            resp.headers.get("Retry-After") or resp.headers.get("X-RateLimit-Retry-After")
        )
        if resp.status_code == 429:
            raise RateLimited(f"rate limited (429) by {_safe(url)}", retry_after, 429)
        if resp.status_code in (401, 403):
            raise AuthFailed(
                f"{resp.status_code} from {_safe(url)}: {self.credential} refused; "
                "check them and the account's permissions",
                status=resp.status_code,
            )
        if resp.status_code >= 500:
            raise SourceError(
                f"server error {resp.status_code} from {_safe(url)}", retry_after, resp.status_code
            )
        if resp.status_code >= 400:
            raise SourceError(
                f"{resp.status_code} from {_safe(url)}: {resp.text[:200]}", status=resp.status_code
            )
        try:
            return resp.json(), resp.headers
        except ValueError:
            raise SourceError(f"response from {_safe(url)} is not JSON") from None

    def close(self) -> None:
        self.client.close()


def json_object(value: Any) -> dict[str, Any]:
    """A JSON object from a payload, or an empty one where the payload has something else
    (vendors send null, lists or strings where the documentation shows an object)."""
    return value if isinstance(value, dict) else {}


def _safe(url: str) -> str:
    """The URL without its query (which may carry tokens) for error messages."""
    return url.split("?", 1)[0]
