"""sla-monitor: responsiveness SLA monitor for customer-support teams."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sla-monitor")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+src"
