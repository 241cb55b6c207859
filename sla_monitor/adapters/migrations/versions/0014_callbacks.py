"""contacts.callback_requested, contacts.callback_handled: callers who asked to be called
back, and whether the team got back to them (sla_callbacks_total). Contacts stored before
count from their next evaluation (or a replay).

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("contacts", sa.Column("callback_requested", sa.Boolean(), nullable=True))
    op.add_column("contacts", sa.Column("callback_handled", sa.Boolean(), nullable=True))


def downgrade() -> None:
    op.drop_column("contacts", "callback_handled")
    op.drop_column("contacts", "callback_requested")
