"""engagement mask on each email, kept by triggers; the report reads the outbox alone

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# The SQL below is written out as this revision ran it when it was frozen (it used to build it
# from the engagement module and the models' placed_on): what a revision creates must not follow
# later edits of the package. Its triggers and backfill know complaints (0006's bit), as the
# module did by then; 0006 recreates the same triggers over the older ones of databases
# migrated before it.

# The day an email is placed in time (models.placed_on) for the report index.
_PLACED_ON = {
    "sqlite": "substr(coalesce(sent_at, created_at), 1, 10)",
    "postgresql": "CAST(coalesce(sent_at, created_at) AS DATE)",
}


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
            sa.text(_PLACED_ON[dialect]),
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

    op.execute(_one_line(_BACKFILL[dialect]))
    for statement in _CREATE_TRIGGERS[dialect]:
        op.execute(_one_line(statement))


def downgrade() -> None:
    for statement in _DROP_TRIGGERS[op.get_bind().dialect.name]:
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


def _one_line(sql: str) -> str:
    """A statement below as it was run: on one line, words one space apart (SQLite keeps a
    trigger's text as written)."""
    return " ".join(sql.split())


# Each email's mask from its events: the OR of an email's distinct bits is their sum.
_BACKFILL = {
    "sqlite": """
        UPDATE messages SET engaged = found.mask FROM (SELECT e.message_id, sum(DISTINCT
        CASE e.type WHEN 'opened' THEN CASE WHEN e.machine THEN 2 ELSE 1 END
        WHEN 'clicked' THEN CASE WHEN e.machine THEN 8 ELSE 4 END
        WHEN 'replied' THEN 16 WHEN 'unsubscribed' THEN 32
        WHEN 'bounced' THEN CASE WHEN json_extract(e.data, '$.hard') = 1 THEN 64 ELSE 128 END
        WHEN 'auto_replied' THEN 256 WHEN 'complained' THEN 512 ELSE 0 END) AS mask
        FROM events e WHERE e.message_id IS NOT NULL AND e.type IN ('opened', 'clicked',
        'replied', 'unsubscribed', 'bounced', 'auto_replied', 'complained')
        GROUP BY e.message_id) AS found WHERE messages.id = found.message_id
    """,
    "postgresql": """
        UPDATE messages SET engaged = found.mask FROM (SELECT e.message_id, sum(DISTINCT
        CASE e.type WHEN 'opened' THEN CASE WHEN e.machine THEN 2 ELSE 1 END
        WHEN 'clicked' THEN CASE WHEN e.machine THEN 8 ELSE 4 END
        WHEN 'replied' THEN 16 WHEN 'unsubscribed' THEN 32
        WHEN 'bounced' THEN CASE WHEN (e.data ->> 'hard') = 'true' THEN 64 ELSE 128 END
        WHEN 'auto_replied' THEN 256 WHEN 'complained' THEN 512 ELSE 0 END) AS mask
        FROM events e WHERE e.message_id IS NOT NULL AND e.type IN ('opened', 'clicked',
        'replied', 'unsubscribed', 'bounced', 'auto_replied', 'complained')
        GROUP BY e.message_id) AS found WHERE messages.id = found.message_id
    """,
}

# An event inserted sets its bit on its email; a click or open reclassified as a machine's
# works that email's open and click bits out again.
_CREATE_TRIGGERS = {
    "sqlite": [
        """
        CREATE TRIGGER tr_events_engaged AFTER INSERT ON events
        WHEN NEW.message_id IS NOT NULL AND (NEW.type = 'opened' OR NEW.type = 'clicked'
        OR NEW.type = 'replied' OR NEW.type = 'unsubscribed' OR NEW.type = 'bounced'
        OR NEW.type = 'auto_replied' OR NEW.type = 'complained')
        BEGIN UPDATE messages SET engaged = engaged |
        (CASE NEW.type WHEN 'opened' THEN CASE WHEN NEW.machine THEN 2 ELSE 1 END
        WHEN 'clicked' THEN CASE WHEN NEW.machine THEN 8 ELSE 4 END
        WHEN 'replied' THEN 16 WHEN 'unsubscribed' THEN 32
        WHEN 'bounced' THEN CASE WHEN json_extract(NEW.data, '$.hard') = 1 THEN 64 ELSE 128 END
        WHEN 'auto_replied' THEN 256 WHEN 'complained' THEN 512 ELSE 0 END)
        WHERE id = NEW.message_id AND (engaged &
        (CASE NEW.type WHEN 'opened' THEN CASE WHEN NEW.machine THEN 2 ELSE 1 END
        WHEN 'clicked' THEN CASE WHEN NEW.machine THEN 8 ELSE 4 END
        WHEN 'replied' THEN 16 WHEN 'unsubscribed' THEN 32
        WHEN 'bounced' THEN CASE WHEN json_extract(NEW.data, '$.hard') = 1 THEN 64 ELSE 128 END
        WHEN 'auto_replied' THEN 256 WHEN 'complained' THEN 512 ELSE 0 END)) = 0; END
        """,
        """
        CREATE TRIGGER tr_events_engaged_machine AFTER UPDATE OF machine ON events
        WHEN NEW.message_id IS NOT NULL AND (NEW.type = 'opened' OR NEW.type = 'clicked')
        AND NEW.machine IS NOT OLD.machine
        BEGIN UPDATE messages SET engaged = (engaged & ~15) | (SELECT coalesce(sum(DISTINCT
        CASE e.type WHEN 'opened' THEN CASE WHEN e.machine THEN 2 ELSE 1 END
        WHEN 'clicked' THEN CASE WHEN e.machine THEN 8 ELSE 4 END
        WHEN 'replied' THEN 16 WHEN 'unsubscribed' THEN 32
        WHEN 'bounced' THEN CASE WHEN json_extract(e.data, '$.hard') = 1 THEN 64 ELSE 128 END
        WHEN 'auto_replied' THEN 256 WHEN 'complained' THEN 512 ELSE 0 END), 0)
        FROM events e WHERE e.message_id = NEW.message_id AND e.type IN ('opened', 'clicked'))
        WHERE id = NEW.message_id; END
        """,
    ],
    "postgresql": [
        """
        CREATE FUNCTION tr_events_engaged() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN UPDATE messages SET engaged = engaged |
        (CASE NEW.type WHEN 'opened' THEN CASE WHEN NEW.machine THEN 2 ELSE 1 END
        WHEN 'clicked' THEN CASE WHEN NEW.machine THEN 8 ELSE 4 END
        WHEN 'replied' THEN 16 WHEN 'unsubscribed' THEN 32
        WHEN 'bounced' THEN CASE WHEN (NEW.data ->> 'hard') = 'true' THEN 64 ELSE 128 END
        WHEN 'auto_replied' THEN 256 WHEN 'complained' THEN 512 ELSE 0 END)
        WHERE id = NEW.message_id AND (engaged &
        (CASE NEW.type WHEN 'opened' THEN CASE WHEN NEW.machine THEN 2 ELSE 1 END
        WHEN 'clicked' THEN CASE WHEN NEW.machine THEN 8 ELSE 4 END
        WHEN 'replied' THEN 16 WHEN 'unsubscribed' THEN 32
        WHEN 'bounced' THEN CASE WHEN (NEW.data ->> 'hard') = 'true' THEN 64 ELSE 128 END
        WHEN 'auto_replied' THEN 256 WHEN 'complained' THEN 512 ELSE 0 END)) = 0;
        RETURN NULL; END $$
        """,
        """
        CREATE TRIGGER tr_events_engaged AFTER INSERT ON events FOR EACH ROW
        WHEN (NEW.message_id IS NOT NULL AND (NEW.type = 'opened' OR NEW.type = 'clicked'
        OR NEW.type = 'replied' OR NEW.type = 'unsubscribed' OR NEW.type = 'bounced'
        OR NEW.type = 'auto_replied' OR NEW.type = 'complained'))
        EXECUTE FUNCTION tr_events_engaged()
        """,
        """
        CREATE FUNCTION tr_events_engaged_machine() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN UPDATE messages SET engaged = (engaged & ~15) | (SELECT coalesce(sum(DISTINCT
        CASE e.type WHEN 'opened' THEN CASE WHEN e.machine THEN 2 ELSE 1 END
        WHEN 'clicked' THEN CASE WHEN e.machine THEN 8 ELSE 4 END
        WHEN 'replied' THEN 16 WHEN 'unsubscribed' THEN 32
        WHEN 'bounced' THEN CASE WHEN (e.data ->> 'hard') = 'true' THEN 64 ELSE 128 END
        WHEN 'auto_replied' THEN 256 WHEN 'complained' THEN 512 ELSE 0 END), 0)
        FROM events e WHERE e.message_id = NEW.message_id AND e.type IN ('opened', 'clicked'))
        WHERE id = NEW.message_id; RETURN NULL; END $$
        """,
        """
        CREATE TRIGGER tr_events_engaged_machine AFTER UPDATE OF machine ON events FOR EACH ROW
        WHEN (NEW.message_id IS NOT NULL AND (NEW.type = 'opened' OR NEW.type = 'clicked')
        AND NEW.machine IS DISTINCT FROM OLD.machine)
        EXECUTE FUNCTION tr_events_engaged_machine()
        """,
    ],
}

_DROP_TRIGGERS = {
    "sqlite": [
        "DROP TRIGGER IF EXISTS tr_events_engaged",
        "DROP TRIGGER IF EXISTS tr_events_engaged_machine",
    ],
    "postgresql": [
        "DROP TRIGGER IF EXISTS tr_events_engaged ON events",
        "DROP FUNCTION IF EXISTS tr_events_engaged()",
        "DROP TRIGGER IF EXISTS tr_events_engaged_machine ON events",
        "DROP FUNCTION IF EXISTS tr_events_engaged_machine()",
    ],
}
