"""contacts.repeat_counted: counted in sla_repeat_contacts_total (once, for good)

A link can still change when an event fills in what happened before it (an agent reply at
the same instant as the later contact, a late event); the counter must not go down then.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("contacts", sa.Column("repeat_counted", sa.Boolean(), nullable=True))
    op.execute("UPDATE contacts SET repeat_counted = (repeat_of_source IS NOT NULL)")


def downgrade() -> None:
    op.drop_column("contacts", "repeat_counted")
