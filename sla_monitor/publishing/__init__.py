"""Where results go: Prometheus metrics (and, later, Alertmanager)."""
