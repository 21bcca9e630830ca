"""complained bit on the engagement mask; trigger conditions as equalities, not IN lists

Revision ID: 0006
Revises: 0005
"""

from alembic import op

from engine.store import engagement

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

COMPLAINED = 512  # the bit this revision adds (bits are stored data: it never changes)


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    for statement in [
        *engagement.drop_triggers_sql(dialect),
        *engagement.create_triggers_sql(dialect),
    ]:
        op.execute(statement)
    # The complaints recorded before: 0005's triggers did not count them.
    op.execute(
        f"UPDATE messages SET engaged = engaged | {COMPLAINED} WHERE (engaged & {COMPLAINED}) = 0"
        " AND id IN (SELECT message_id FROM events WHERE type = 'complained')"
    )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for statement in engagement.drop_triggers_sql(dialect):
        op.execute(statement)
    op.execute(
        f"UPDATE messages SET engaged = engaged & ~{COMPLAINED} WHERE (engaged & {COMPLAINED}) <> 0"
    )
    for statement in _triggers_0005(dialect):
        op.execute(statement)


# 0005's triggers as 0005 created them, frozen here: the engagement module builds today's.
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
