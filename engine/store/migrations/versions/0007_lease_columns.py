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
    for table in QUEUES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("lease_owner", sa.String(length=64), nullable=True))
            batch_op.add_column(
                sa.Column("lease_until", engine.store.models.UtcDateTime(), nullable=True)
            )
            batch_op.add_column(
                sa.Column("fence", sa.BigInteger(), server_default="0", nullable=False)
            )


def downgrade() -> None:
    for table, due in QUEUES.items():
        # A row leased now is out of reach the old way: due again when its lease ends.
        op.execute(
            f"UPDATE {table} SET {due} = lease_until"
            f" WHERE lease_until IS NOT NULL AND lease_until > {due}"
        )
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("fence")
            batch_op.drop_column("lease_until")
            batch_op.drop_column("lease_owner")
