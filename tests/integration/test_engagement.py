"""Each email's engagement mask (``messages.engaged``), kept by database triggers on SQLite and
PostgreSQL: set by every kind of event insert, worked out again when a click turns out to be a
scanner's, filled in by migration 0005 for events recorded before it (and by 0006 for
complaints), the right triggers after every upgrade and downgrade, and a schema that matches
the models after every migration."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, text
from sqlalchemy.schema import CreateIndex

from engine.store import engagement as bits
from engine.store.db import Database, _alembic_config
from engine.store.models import Base

NOW = datetime(2026, 3, 2, 10, 0)  # naive UTC, as stored


@pytest.fixture
def bare(db_url: str) -> Iterator[Database]:
    """A database with no schema yet (migrated by the test)."""
    db = Database(db_url, auto_migrate=False)
    yield db
    db.dispose()


def migrate_to(db: Database, revision: str) -> None:
    command.upgrade(_alembic_config(db.engine), revision)


def back_to_0005(db: Database) -> None:
    """Head, then down to 0005: the triggers 0006's downgrade restores, which know no
    complaints. (Upgrading straight to 0005 would not do: 0005 already creates the
    complaint-aware triggers.)"""
    migrate_to(db, "head")
    command.downgrade(_alembic_config(db.engine), "0005")


def seed(conn: Connection, emails: int) -> None:
    """A contact with ``emails`` sent emails, ids 1..emails, through SQL that every revision
    from 0004 on accepts."""
    conn.execute(
        text(
            "INSERT INTO contacts (id, email, kind, referral_code, fields, created_at,"
            " updated_at) VALUES (1, 'ann@example.com', 'customer', 'ann', '{}', :now, :now)"
        ),
        {"now": NOW},
    )
    conn.execute(
        text(
            "INSERT INTO enrollments (id, contact_id, sequence_id, key, status, position,"
            " started_at) VALUES (1, 1, 'ask', 'cycle-1', 'active', 0, :now)"
        ),
        {"now": NOW},
    )
    for i in range(1, emails + 1):
        conn.execute(
            text(
                "INSERT INTO messages (id, enrollment_id, contact_id, sequence_id, step_id,"
                " message_id, ref, status, due_at, attempts, fence, created_at, sent_at)"
                " VALUES (:i, 1, 1, 'ask', :step, :mid, :ref, 'sent', :now, 1, 1, :now, :now)"
            ),
            {"i": i, "step": f"s{i}", "mid": f"<{i}@x>", "ref": bytes([i]) * 16, "now": NOW},
        )


def record(
    conn: Connection,
    type_: str,
    message: int | None,
    *,
    machine: bool = False,
    data: str = "{}",
) -> int:
    """Insert an event the way bulk SQL would (no application code in between); its id."""
    found = conn.execute(
        text(
            "INSERT INTO events (type, contact_id, message_id, occurred_at, data, machine)"
            " VALUES (:type, 1, :message, :now, :data, :machine) RETURNING id"
        ),
        {"type": type_, "message": message, "now": NOW, "data": data, "machine": machine},
    )
    return int(found.scalar_one())


def masks(conn: Connection) -> dict[int, int]:
    return dict(conn.execute(text("SELECT id, engaged FROM messages ORDER BY id")).all())


def triggers(conn: Connection) -> dict[str, str]:
    """The triggers on ``events``: name -> definition, as the database keeps it."""
    if conn.dialect.name == "sqlite":
        query = "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'events'"
    else:
        query = (
            "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger"
            " WHERE tgrelid = 'events'::regclass AND NOT tgisinternal"
        )
    return dict(conn.exec_driver_sql(query).all())


TRIGGERS = {"tr_events_engaged", "tr_events_engaged_machine"}


HARD = '{"hard": true, "code": 550}'
SOFT = '{"hard": false}'


def test_every_engagement_event_sets_its_one_bit(bare: Database) -> None:
    migrate_to(bare, "head")
    with bare.engine.begin() as conn:
        seed(conn, 8)
        record(conn, "opened", 1)
        record(conn, "opened", 1)  # a repeat changes nothing
        record(conn, "opened", 1, machine=True)
        record(conn, "clicked", 2, machine=True)
        record(conn, "replied", 3)
        record(conn, "unsubscribed", 3)
        record(conn, "bounced", 4, data=HARD)
        record(conn, "bounced", 5, data=SOFT)
        record(conn, "bounced", 5, data="{}")  # no flag: soft
        record(conn, "auto_replied", 6)
        record(conn, "purchase", 7)  # not engagement
        record(conn, "complained", 8)
        record(conn, "nps.answered", None)  # no email
        found = masks(conn)
    assert found == {
        1: bits.OPENED | bits.OPENED_MACHINE,
        2: bits.CLICKED_MACHINE,
        3: bits.REPLIED | bits.UNSUBSCRIBED,
        4: bits.HARD_BOUNCED,
        5: bits.SOFT_BOUNCED,
        6: bits.AUTO_REPLIED,
        7: 0,
        8: bits.COMPLAINED,
    }


def test_a_click_found_to_be_a_scanners_is_counted_again(bare: Database) -> None:
    migrate_to(bare, "head")
    with bare.engine.begin() as conn:
        seed(conn, 2)
        lone = record(conn, "clicked", 1)
        record(conn, "opened", 1)
        first = record(conn, "clicked", 2)
        record(conn, "clicked", 2)  # a second click by the person
        assert masks(conn) == {1: bits.CLICKED | bits.OPENED, 2: bits.CLICKED}
        # the honeypot shows both first clicks came from a link scanner
        conn.execute(
            text("UPDATE events SET machine = :t WHERE id IN (:a, :b)"),
            {
                "t": True,
                "a": lone,
                "b": first,
            },
        )
        found = masks(conn)
    # email 1 has no human click left; email 2 still has one
    assert found == {
        1: bits.CLICKED_MACHINE | bits.OPENED,
        2: bits.CLICKED | bits.CLICKED_MACHINE,
    }


def test_migration_0005_fills_in_the_masks_of_earlier_events(bare: Database) -> None:
    migrate_to(bare, "0004")
    with bare.engine.begin() as conn:
        seed(conn, 4)
        record(conn, "opened", 1)
        record(conn, "opened", 1, machine=True)
        record(conn, "clicked", 1)
        record(conn, "bounced", 2, data=HARD)
        record(conn, "bounced", 2, data=SOFT)
        record(conn, "replied", 3)
        record(conn, "referral.visited", 4)
    migrate_to(bare, "head")
    with bare.engine.begin() as conn:
        found = masks(conn)
        record(conn, "opened", 4)  # and the triggers work from then on
        after = masks(conn)[4]
    assert found == {
        1: bits.OPENED | bits.OPENED_MACHINE | bits.CLICKED,
        2: bits.HARD_BOUNCED | bits.SOFT_BOUNCED,
        3: bits.REPLIED,
        4: 0,
    }
    assert after == bits.OPENED


def test_downgrade_removes_the_triggers_and_upgrade_restores_them(bare: Database) -> None:
    migrate_to(bare, "head")
    with bare.engine.begin() as conn:
        seed(conn, 2)
        record(conn, "clicked", 2)
    # SQLite rebuilds messages to drop the column: the events keep pointing at their emails
    command.downgrade(_alembic_config(bare.engine), "0004")
    with bare.engine.begin() as conn:
        record(conn, "opened", 1)  # no trigger, no column: nothing to break
    migrate_to(bare, "head")
    with bare.engine.begin() as conn:
        assert masks(conn) == {1: bits.OPENED, 2: bits.CLICKED}
    if bare.engine.dialect.name == "sqlite":  # the pooled connection has its keys back on
        with bare.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_migration_0006_marks_the_complaints_recorded_before_it(bare: Database) -> None:
    back_to_0005(bare)
    with bare.engine.begin() as conn:
        seed(conn, 3)
        record(conn, "opened", 1)
        record(conn, "complained", 1)
        record(conn, "complained", 2)
        record(conn, "complained", 2)  # twice: still one bit
        record(conn, "complained", None)  # about no email: nothing to mark
        before = masks(conn)
    migrate_to(bare, "head")
    with bare.engine.begin() as conn:
        found = masks(conn)
    assert before == {1: bits.OPENED, 2: 0, 3: 0}
    assert found == {1: bits.OPENED | bits.COMPLAINED, 2: bits.COMPLAINED, 3: 0}


def test_downgrade_to_0005_puts_its_triggers_back_and_upgrade_the_new_ones(
    bare: Database,
) -> None:
    migrate_to(bare, "head")
    with bare.engine.begin() as conn:
        seed(conn, 4)
        record(conn, "clicked", 1)
        record(conn, "complained", 1)
        scanned = record(conn, "clicked", 4)
        assert masks(conn)[1] == bits.CLICKED | bits.COMPLAINED
    command.downgrade(_alembic_config(bare.engine), "0005")
    with bare.engine.begin() as conn:
        at_0005 = triggers(conn)
        cleared = masks(conn)
        record(conn, "opened", 2)  # 0005's insert trigger sets the bits it knows
        record(conn, "complained", 3)  # but not this one
        conn.execute(  # and its machine trigger recounts
            text("UPDATE events SET machine = :t WHERE id = :id"), {"t": True, "id": scanned}
        )
        found = masks(conn)
    assert set(at_0005) == TRIGGERS
    assert not any("complained" in definition for definition in at_0005.values())
    assert cleared == {1: bits.CLICKED, 2: 0, 3: 0, 4: bits.CLICKED}
    assert found == {1: bits.CLICKED, 2: bits.OPENED, 3: 0, 4: bits.CLICKED_MACHINE}

    migrate_to(bare, "head")
    with bare.engine.begin() as conn:
        back = masks(conn)
        record(conn, "complained", 2)
        after = masks(conn)[2]
        at_head = triggers(conn)
    assert back == {
        1: bits.CLICKED | bits.COMPLAINED,
        2: bits.OPENED,
        3: bits.COMPLAINED,
        4: bits.CLICKED_MACHINE,
    }
    assert after == bits.OPENED | bits.COMPLAINED
    assert set(at_head) == TRIGGERS
    assert "complained" in at_head["tr_events_engaged"]
    if bare.engine.dialect.name == "sqlite":
        assert sorted(at_head.values()) == sorted(bits.create_triggers_sql("sqlite"))
        # no IN list in a WHEN clause: SQLite would build a temporary index for every row
        assert not [d for d in at_head.values() if " IN (" in d.partition(" BEGIN ")[0]]


# SQLite's reflection skips expression indexes (ix_messages_report); PostgreSQL's compares it.
@pytest.mark.filterwarnings("ignore:Skipped unsupported reflection of expression-based index")
@pytest.mark.filterwarnings("ignore:autogenerate skipping metadata-specified expression-based")
def test_the_migrated_schema_is_the_models_schema(bare: Database) -> None:
    migrate_to(bare, "head")
    with bare.engine.connect() as conn:
        diff: list[Any] = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        if conn.dialect.name == "sqlite":
            created = conn.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE name = 'ix_messages_report'"
            ).scalar()
            (index,) = [
                i for i in Base.metadata.tables["messages"].indexes if i.name == created.split()[2]
            ]
            assert created == str(CreateIndex(index).compile(dialect=conn.dialect))
    assert diff == []


def test_report_fields_cover_every_bit() -> None:
    every = 0
    for name, mask in bits.FIELDS.items():
        assert mask, name
        every |= mask
    assert every == max(bits.TYPES.values()) * 2 - 1  # no bit left out of the report
    assert bits.FIELDS["bounced"] == bits.HARD_BOUNCED | bits.SOFT_BOUNCED


def test_a_migration_that_leaves_a_broken_reference_is_rolled_back_whole(
    tmp_path: Path,
) -> None:
    db = Database(f"sqlite:///{tmp_path / 'broken.db'}", auto_migrate=False)
    migrate_to(db, "0004")
    raw = sqlite3.connect(tmp_path / "broken.db")
    raw.execute("PRAGMA foreign_keys=OFF")
    raw.execute(  # an event pointing at an email that does not exist
        "INSERT INTO events (type, message_id, occurred_at, data, machine)"
        " VALUES ('opened', 99, '2026-03-02 10:00:00', '{}', 0)"
    )
    raw.commit()
    raw.close()
    with pytest.raises(RuntimeError, match=r"broke foreign keys.*'events'"):
        migrate_to(db, "head")
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == "0004"
        columns = {row[1] for row in conn.exec_driver_sql("PRAGMA table_info(messages)")}
        assert "engaged" not in columns
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    db.dispose()
