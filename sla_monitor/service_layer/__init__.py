"""Use cases: ingest a poll, wake at deadlines, replay, report."""
