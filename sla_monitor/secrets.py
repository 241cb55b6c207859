"""Secrets come from an env var or a file, never from the config itself (connectors,
Alertmanager credentials)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, model_validator


class SecretRef(BaseModel):
    """`{env: NAME}` or `{file: /run/secrets/x}`."""

    model_config = {"extra": "forbid", "frozen": True}
    env: str | None = None
    file: str | None = None

    @model_validator(mode="after")
    def _one(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of env (a variable name) or file (a path)")
        return self

    def read(self) -> str:
        """The secret's value; raises ValueError naming the variable or file (not the value)."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if not value:
                raise ValueError(f"environment variable {self.env} is not set")
            return value.strip()
        assert self.file is not None
        try:
            return Path(self.file).read_text().strip()
        except OSError as exc:
            raise ValueError(f"cannot read secret file {self.file}: {exc.strerror}") from None

    def describe(self) -> str:
        return f"env {self.env}" if self.env else f"file {self.file}"
