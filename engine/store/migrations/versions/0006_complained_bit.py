"""complained bit on the engagement mask; trigger conditions as equalities, not IN lists

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

COMPLAINED = 512  # the bit this revision adds (bits are stored data: it never changes)

# The SQL below is written out as this revision ran it (frozen from the engagement module): what
# a revision creates must not follow later edits of the package.


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    for statement in [*_DROP_TRIGGERS[dialect], *map(_one_line, _CREATE_TRIGGERS[dialect])]:
        op.execute(statement)
    # The complaints recorded before: 0005's triggers did not count them.
    op.execute(
        f"UPDATE messages SET engaged = engaged | {COMPLAINED} WHERE (engaged & {COMPLAINED}) = 0"
        " AND id IN (SELECT message_id FROM events WHERE type = 'complained')"
    )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for statement in _DROP_TRIGGERS[dialect]:
        op.execute(statement)
    op.execute(
        f"UPDATE messages SET engaged = engaged & ~{COMPLAINED} WHERE (engaged & {COMPLAINED}) <> 0"
    )
    for statement in _triggers_0005(dialect):
        op.execute(statement)


# 0005's triggers as 0005 created them before this revision existed (since then 0005 creates
# the ones of _CREATE_TRIGGERS, as this revision does).
_BIT_0005 = (
    "CASE {r}.type"
    " WHEN 'opened' THEN CASE WHEN {r}.machine THEN 2 ELSE 1 END"
    " WHEN 'clicked' THEN CASE WHEN {r}.machine THEN 8 ELSE 4 END"
    " WHEN 'replied' THEN 16 WHEN 'unsubscribed' THEN 32"
    " WHEN 'bounced' THEN CASE WHEN {hard} THEN 64 ELSE 128 END"
    " WHEN 'auto_replied' THEN 256 ELSE 0 END"
)
_HARD_0005 = {
    "sqlite": "json_extract({r}.data, '$.hard') = 1",
    "postgresql": "({r}.data ->> 'hard') = 'true'",
}
_TYPES_0005 = "'opened', 'clicked', 'replied', 'unsubscribed', 'bounced', 'auto_replied'"


def _triggers_0005(dialect: str) -> list[str]:
    """The statements 0005 ran to create its two triggers (and, on PostgreSQL, functions)."""

    def bit(r: str) -> str:
        return _BIT_0005.format(r=r, hard=_HARD_0005[dialect].format(r=r))

    set_bit = (
        f"UPDATE messages SET engaged = engaged | ({bit('NEW')})"
        f" WHERE id = NEW.message_id AND (engaged & ({bit('NEW')})) = 0"
    )
    recount = (
        "UPDATE messages SET engaged = (engaged & ~15) | ("
        f"SELECT coalesce(sum(DISTINCT {bit('e')}), 0) FROM events e"
        " WHERE e.message_id = NEW.message_id AND e.type IN ('opened', 'clicked'))"
        " WHERE id = NEW.message_id"
    )
    changed = "IS DISTINCT FROM" if dialect == "postgresql" else "IS NOT"
    triggers = [
        (
            "tr_events_engaged",
            "AFTER INSERT ON events",
            f"NEW.message_id IS NOT NULL AND NEW.type IN ({_TYPES_0005})",
            set_bit,
        ),
        (
            "tr_events_engaged_machine",
            "AFTER UPDATE OF machine ON events",
            "NEW.message_id IS NOT NULL AND NEW.type IN ('opened', 'clicked')"
            f" AND NEW.machine {changed} OLD.machine",
            recount,
        ),
    ]
    statements = []
    for name, timing, condition, body in triggers:
        if dialect == "postgresql":
            statements += [
                f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$"
                f" BEGIN {body}; RETURN NULL; END $$",
                f"CREATE TRIGGER {name} {timing} FOR EACH ROW WHEN ({condition})"
                f" EXECUTE FUNCTION {name}()",
            ]
        else:
            statements.append(f"CREATE TRIGGER {name} {timing} WHEN {condition} BEGIN {body}; END")
    return statements


def _one_line(sql: str) -> str:
    """A statement below as it was run: on one line, words one space apart (SQLite keeps a
    trigger's text as written)."""
    return " ".join(sql.split())


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
