"""lease columns on notifications and webhook deliveries: one fenced lease queue

Notes and webhook deliveries used to be leased by pushing their due time past the lease; they
now carry the outbox's lease columns (engine.store.lease), and every result write is fenced.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

import engine.store.models

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# Each table with the column that holds when a waiting row is due.
QUEUES = {"notifications": "due_at", "webhook_deliveries": "next_at"}


def upgrade() -> None:
    # Plain ALTER TABLE on both databases: the new columns are in no index or constraint, so
    # SQLite needs no batch rebuild (a copy of the table) to add or drop them.
    for table in QUEUES:
        op.add_column(table, sa.Column("lease_owner", sa.String(length=64), nullable=True))
        op.add_column(
            table, sa.Column("lease_until", engine.store.models.UtcDateTime(), nullable=True)
        )
        op.add_column(
            table, sa.Column("fence", sa.BigInteger(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    for table, due in QUEUES.items():
        # A row leased now is out of reach the old way: due again when its lease ends.
        op.execute(
            f"UPDATE {table} SET {due} = lease_until"
            f" WHERE lease_until IS NOT NULL AND lease_until > {due}"
        )
        for column in ("fence", "lease_until", "lease_owner"):
            op.drop_column(table, column)
