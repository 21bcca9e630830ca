"""engagement mask on each email, kept by triggers; the report reads the outbox alone

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

from engine.store import engagement
from engine.store.models import placed_on

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    # Plain ALTER TABLE and index statements: nothing here needs the table copied.
    op.add_column(
        "messages", sa.Column("engaged", sa.Integer(), server_default=sa.text("0"), nullable=False)
    )
    op.drop_index("ix_messages_report", table_name="messages")
    op.create_index(
        "ix_messages_report",
        "messages",
        [
            "sequence_id",
            "step_id",
            "status",
            "engaged",
            placed_on(sa.column("sent_at"), sa.column("created_at")),
            "sent_at",
            "created_at",
            "contact_id",
        ],
    )

    # Engagement is counted from messages.engaged now; visits by people or machines come off
    # the (type, time) index.
    op.drop_index("ix_events_report", table_name="events")
    op.drop_index("ix_events_type_time", table_name="events")
    op.create_index("ix_events_type_time", "events", ["type", "occurred_at", "machine"])

    op.execute(engagement.backfill_sql(dialect))
    for statement in engagement.create_triggers_sql(dialect):
        op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for statement in engagement.drop_triggers_sql(dialect):
        op.execute(statement)
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_type_time")
        batch_op.create_index("ix_events_type_time", ["type", "occurred_at"], unique=False)
        batch_op.create_index(
            "ix_events_report",
            ["type", "sequence_id", "step_id", "machine", "message_id", "occurred_at"],
            unique=False,
        )

    # The expression index goes first: batch mode cannot reflect it (SQLite rebuilds the
    # table to drop a column).
    op.drop_index("ix_messages_report", table_name="messages")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("engaged")
    op.create_index(
        "ix_messages_report",
        "messages",
        ["sequence_id", "step_id", "status", "sent_at", "contact_id", "created_at"],
    )
