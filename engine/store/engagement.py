"""What happened to each email, kept on its outbox row as a bitmask (``messages.engaged``).

Reports count emails opened, clicked, replied to, bounced, complained about... per step;
counting distinct emails over the events table costs a pass over every event. Instead each
engagement event sets one bit on its email, and a report is one pass over the outbox. The
database maintains the mask with triggers (migration 0005; 0006 added complaints), so every way
an event is written (tracking app, IMAP poller, sender, CLI, API, bulk SQL) keeps it right:

- an INSERT into ``events`` with a ``message_id`` sets the event's bit (an UPDATE only when the
  bit is not set yet: repeated opens write nothing);
- an UPDATE of ``events.machine`` (a click reclassified as a link scanner's) works the open and
  click bits out again from that email's events.

Deleting events leaves the mask as it is: erasure keeps anonymous counts. A migration that
recreates ``events`` (Alembic batch mode on SQLite) must create the triggers again.

The bit values are stored data: never renumber them. A new bit takes a migration that creates
the triggers again and sets the bit from the events already recorded (as 0006 did).
"""

from __future__ import annotations

OPENED = 1
OPENED_MACHINE = 2  # by an image proxy (Apple Mail Privacy Protection, Gmail's)
CLICKED = 4
CLICKED_MACHINE = 8  # by a link scanner
REPLIED = 16
UNSUBSCRIBED = 32
HARD_BOUNCED = 64
SOFT_BOUNCED = 128
AUTO_REPLIED = 256
COMPLAINED = 512  # marked as spam by the recipient (a feedback-loop report)

# Event type -> its bit (opens and clicks: the human one; the machine one is the next bit).
TYPES = {
    "opened": OPENED,
    "clicked": CLICKED,
    "replied": REPLIED,
    "unsubscribed": UNSUBSCRIBED,
    "bounced": HARD_BOUNCED,
    "auto_replied": AUTO_REPLIED,
    "complained": COMPLAINED,
}
_MACHINE_TYPES = ("opened", "clicked")
_OPEN_CLICK_BITS = OPENED | OPENED_MACHINE | CLICKED | CLICKED_MACHINE


def _names(types: tuple[str, ...]) -> str:
    return ", ".join(f"'{t}'" for t in types)


def _any_of(types: tuple[str, ...]) -> str:
    """SQL: ``NEW.type`` is one of ``types``. Equalities, not ``IN (...)``: in a trigger's WHEN
    SQLite builds a temporary index of an IN list for every row written."""
    return "(" + " OR ".join(f"NEW.type = '{t}'" for t in types) + ")"


def _hard(row: str, dialect: str) -> str:
    """SQL: the event's ``data.hard`` is true."""
    if dialect == "postgresql":
        return f"({row}.data ->> 'hard') = 'true'"
    return f"json_extract({row}.data, '$.hard') = 1"  # JSON true reads as 1


def bit_sql(row: str, dialect: str) -> str:
    """SQL for the one bit an event (``row``: a table alias or ``NEW``) sets on its email."""
    return (
        f"CASE {row}.type"
        f" WHEN 'opened' THEN CASE WHEN {row}.machine THEN {OPENED_MACHINE} ELSE {OPENED} END"
        f" WHEN 'clicked' THEN CASE WHEN {row}.machine THEN {CLICKED_MACHINE} ELSE {CLICKED} END"
        f" WHEN 'replied' THEN {REPLIED}"
        f" WHEN 'unsubscribed' THEN {UNSUBSCRIBED}"
        f" WHEN 'bounced' THEN CASE WHEN {_hard(row, dialect)} THEN {HARD_BOUNCED}"
        f" ELSE {SOFT_BOUNCED} END"
        f" WHEN 'auto_replied' THEN {AUTO_REPLIED}"
        f" WHEN 'complained' THEN {COMPLAINED}"
        " ELSE 0 END"
    )


def backfill_sql(dialect: str) -> str:
    """SQL that sets every email's mask from its events (each event sets one bit, so the OR
    of an email's bits is the sum of its distinct ones)."""
    return (
        "UPDATE messages SET engaged = found.mask FROM ("
        f"SELECT e.message_id, sum(DISTINCT {bit_sql('e', dialect)}) AS mask FROM events e"
        f" WHERE e.message_id IS NOT NULL AND e.type IN ({_names(tuple(TYPES))})"
        " GROUP BY e.message_id) AS found WHERE messages.id = found.message_id"
    )


def _set_bit(dialect: str) -> str:
    bit = bit_sql("NEW", dialect)
    return (
        f"UPDATE messages SET engaged = engaged | ({bit})"
        f" WHERE id = NEW.message_id AND (engaged & ({bit})) = 0"
    )


def _recount_open_click(dialect: str) -> str:
    return (
        f"UPDATE messages SET engaged = (engaged & ~{_OPEN_CLICK_BITS}) | ("
        f"SELECT coalesce(sum(DISTINCT {bit_sql('e', dialect)}), 0) FROM events e"
        f" WHERE e.message_id = NEW.message_id AND e.type IN ({_names(_MACHINE_TYPES)}))"
        " WHERE id = NEW.message_id"
    )


_ON_INSERT = f"NEW.message_id IS NOT NULL AND {_any_of(tuple(TYPES))}"
_ON_MACHINE = (
    f"NEW.message_id IS NOT NULL AND {_any_of(_MACHINE_TYPES)}"
    " AND NEW.machine IS DISTINCT FROM OLD.machine"
)
# name -> (timing and event, condition, body)
_TRIGGERS = {
    "tr_events_engaged": ("AFTER INSERT ON events", _ON_INSERT, _set_bit),
    "tr_events_engaged_machine": (
        "AFTER UPDATE OF machine ON events",
        _ON_MACHINE,
        _recount_open_click,
    ),
}


def create_triggers_sql(dialect: str) -> list[str]:
    """The statements creating the triggers that keep ``messages.engaged`` right."""
    statements = []
    for name, (timing, condition, body) in _TRIGGERS.items():
        if dialect == "postgresql":
            statements += [
                f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$"
                f" BEGIN {body(dialect)}; RETURN NULL; END $$",
                f"CREATE TRIGGER {name} {timing} FOR EACH ROW WHEN ({condition})"
                f" EXECUTE FUNCTION {name}()",
            ]
        else:
            # SQLite 3.40 has no IS DISTINCT FROM; IS NOT compares NULLs the same way.
            when = condition.replace("IS DISTINCT FROM", "IS NOT")
            statements.append(
                f"CREATE TRIGGER {name} {timing} WHEN {when} BEGIN {body(dialect)}; END"
            )
    return statements


def drop_triggers_sql(dialect: str) -> list[str]:
    """The statements removing those triggers (a downgrade)."""
    statements = []
    for name in _TRIGGERS:
        if dialect == "postgresql":
            statements += [
                f"DROP TRIGGER IF EXISTS {name} ON events",
                f"DROP FUNCTION IF EXISTS {name}()",
            ]
        else:
            statements.append(f"DROP TRIGGER IF EXISTS {name}")
    return statements


# Report field -> the bits that count an email in it.
FIELDS = {
    "opened": OPENED,
    "opened_machine": OPENED_MACHINE,
    "clicked": CLICKED,
    "clicked_machine": CLICKED_MACHINE,
    "replied": REPLIED,
    "unsubscribed": UNSUBSCRIBED,
    "bounced": HARD_BOUNCED | SOFT_BOUNCED,
    "hard_bounced": HARD_BOUNCED,
    "soft_bounced": SOFT_BOUNCED,
    "auto_replied": AUTO_REPLIED,
    "complained": COMPLAINED,
}
