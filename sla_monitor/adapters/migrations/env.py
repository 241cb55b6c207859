"""Alembic environment: runs on the connection the store hands over (see store.migrate)."""

from alembic import context

from sla_monitor.adapters.orm import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
