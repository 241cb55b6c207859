"""Secrets for connectors (the one model every secret uses: sla_monitor/secrets.py)."""

from sla_monitor.secrets import SecretRef

__all__ = ["SecretRef"]
