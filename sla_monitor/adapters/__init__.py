"""The imperative shell's outside world: the database."""
