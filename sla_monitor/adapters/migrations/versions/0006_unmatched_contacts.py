"""contacts.unmatched: opened while no policy rule matched (sla_contacts_unmatched_total)

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("contacts", sa.Column("unmatched", sa.Boolean(), nullable=True))


def downgrade() -> None:
    op.drop_column("contacts", "unmatched")
