"""TLS and basic auth for /metrics, from a web config file in the format of Prometheus
exporter-toolkit's `web-config.yml` (operators reuse what they know):

    tls_server_config:
      cert_file: server.crt          # relative paths: to this file's folder
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # or NoClientCert (default), ...
      client_ca_file: ca.crt
      min_version: TLS12
    basic_auth_users:
      prometheus: $2y$10$...         # bcrypt hashes (htpasswd -nBC 10 "" | tr -d ':')

/healthz and /readyz stay open (probes carry no credentials); /metrics needs them.
"""

from __future__ import annotations

import base64
import hmac
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import bcrypt
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

# exporter-toolkit's values that verify what they ask for (RequestClientCert and
# RequireAnyClientCert take a certificate without verifying it: not offered here)
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}


class WebConfigError(Exception):
    pass


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TlsServerConfig(_Strict):
    cert_file: str
    key_file: str
    client_auth_type: Literal[
        "NoClientCert", "VerifyClientCertIfGiven", "RequireAndVerifyClientCert"
    ] = "NoClientCert"
    client_ca_file: str | None = None
    min_version: Literal["TLS10", "TLS11", "TLS12", "TLS13"] = "TLS12"
    max_version: Literal["TLS10", "TLS11", "TLS12", "TLS13"] | None = None


class WebConfigFile(_Strict):
    tls_server_config: TlsServerConfig | None = None
    basic_auth_users: dict[str, str] = {}
    http_server_config: dict[str, Any] = {}  # accepted for compatibility; nothing in it used


@dataclass
class WebConfig:
    tls: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)  # user -> bcrypt hash
    _verified: set[tuple[str, bytes]] = field(default_factory=set)  # bcrypt once per pair
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def allows(self, authorization: str | None) -> bool:
        """Whether an `Authorization` header carries a user and password of the file."""
        if not self.users:
            return True
        if not authorization or not authorization.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        hashed = self.users.get(user)
        if hashed is None:
            bcrypt.checkpw(b"x", _DUMMY)  # the same time for an unknown user
            return False
        digest = hmac.digest(hashed, password.encode(), "sha256")
        with self._lock:
            if (user, digest) in self._verified:
                return True
        if not bcrypt.checkpw(password.encode(), hashed):
            return False
        with self._lock:  # a scrape every few seconds must not pay bcrypt each time
            self._verified.add((user, digest))
        return True


_DUMMY = bcrypt.hashpw(b"x", bcrypt.gensalt(rounds=4))


def load_web_config(path: str | Path) -> WebConfig:
    """Read and check a web config file; every problem names the file and the key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise WebConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise WebConfigError(f"{path}: not valid YAML: {exc}") from None
    try:
        parsed = WebConfigFile.model_validate(raw)
    except ValidationError as exc:
        problems = [
            f"{path}: {'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}"
            for e in exc.errors()
        ]
        raise WebConfigError("; ".join(problems)) from None
    users: dict[str, bytes] = {}
    for user, hashed in parsed.basic_auth_users.items():
        if not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise WebConfigError(
                f"{path}: basic_auth_users.{user}: not a bcrypt hash (make one with "
                "`htpasswd -nBC 10 \"\" | tr -d ':'`); passwords are never stored in clear"
            )
        users[user] = hashed.encode()
    return WebConfig(_tls(path, parsed.tls_server_config), users)


def _tls(path: Path, cfg: TlsServerConfig | None) -> ssl.SSLContext | None:
    if cfg is None:
        return None
    here = path.parent

    def file(key: str, value: str) -> str:
        found = here / value
        if not found.is_file():
            raise WebConfigError(f"{path}: tls_server_config.{key}: no such file: {found}")
        return str(found)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = VERSIONS[cfg.min_version]
    if cfg.max_version:
        context.maximum_version = VERSIONS[cfg.max_version]
    try:
        context.load_cert_chain(file("cert_file", cfg.cert_file), file("key_file", cfg.key_file))
    except ssl.SSLError as exc:
        raise WebConfigError(f"{path}: tls_server_config: cert or key unusable: {exc}") from None
    context.verify_mode = CLIENT_AUTH[cfg.client_auth_type]
    if cfg.client_ca_file:
        context.load_verify_locations(file("client_ca_file", cfg.client_ca_file))
    elif cfg.client_auth_type in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert"):
        raise WebConfigError(
            f"{path}: tls_server_config.client_ca_file: needed to verify client certificates"
        )
    return context
