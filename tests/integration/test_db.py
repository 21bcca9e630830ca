"""The store's own guarantees: a deadlock victim runs again instead of failing a batch, and a
prepared statement stores exactly what Core would."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta, timezone
from typing import cast

import pytest
from sqlalchemy import Connection, Table, Text, bindparam, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from engine.store.db import Database, insert_ignore, transaction
from engine.store.models import Alert, Contact
from engine.store.prepared import Prepared
from tests.support.pg import PostgresServer

_SET_KIND = Prepared(
    update(cast(Table, Alert.__table__))
    .where(Alert.id == bindparam("b_id"))
    .values(kind=bindparam("b_kind"))
)


@pytest.mark.parametrize("prepared", [False, True], ids=["core", "prepared"])
def test_a_deadlock_victim_is_retried_and_both_transactions_commit(
    postgres: PostgresServer, prepared: bool
) -> None:
    db = Database(postgres.new_database())
    now = datetime(2026, 3, 2, tzinfo=UTC)
    with db.write() as s:
        s.add_all([Alert(kind="a", message="", created_at=now) for _ in range(2)])
    with db.session() as s:
        first, second = sorted(s.scalars(select(Alert.id)).all())
    both_locked = threading.Barrier(2, timeout=10)
    attempts = {first: 0, second: 0}

    def crosswise(mine: int, theirs: int) -> None:
        def work(conn: Connection) -> None:
            attempts[mine] += 1
            conn.execute(update(Alert).where(Alert.id == mine).values(message=f"by {mine}"))
            if attempts[mine] == 1:
                both_locked.wait()  # each holds its row and now wants the other's: a deadlock
            if prepared:  # the driver's error comes out as SQLAlchemy's, with its SQLSTATE
                _SET_KIND.run(conn, b_id=theirs, b_kind=f"by {mine}")
            else:
                conn.execute(update(Alert).where(Alert.id == theirs).values(kind=f"by {mine}"))

        with db.write_connection() as conn:
            transaction(conn, work)

    threads = [
        threading.Thread(target=crosswise, args=pair) for pair in ((first, second), (second, first))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    # PostgreSQL aborted one and it ran again. On a busy machine the retry can meet the other
    # transaction before it commits and deadlock once more (then that one is retried too):
    # what matters is that a victim was retried and both committed whole.
    assert max(attempts.values()) >= 2 and min(attempts.values()) >= 1
    with db.session() as s:
        rows = {a.id: (a.message, a.kind) for a in s.scalars(select(Alert))}
    # both transactions committed whole
    assert rows == {first: (f"by {first}", f"by {second}"), second: (f"by {second}", f"by {first}")}
    db.dispose()


_alerts = cast(Table, Alert.__table__)
_RESET = (
    update(_alerts)
    .where(
        _alerts.c.id == bindparam("b_id"),
        or_(_alerts.c.kind == "new", _alerts.c.kind == bindparam("b_kind")),
    )
    .values(
        kind="paused",  # a value written into the statement
        message=func.coalesce(bindparam("b_message", type_=Text), _alerts.c.message),
        created_at=bindparam("b_at"),
        pause_until=bindparam("b_until"),
    )
    .returning(_alerts.c.id)
)


@pytest.mark.parametrize(
    "at",
    [
        datetime(2026, 3, 2, 10, 0, tzinfo=UTC),
        datetime(2026, 12, 31, 23, 59, 59, 999_999, tzinfo=timezone(timedelta(hours=-3))),
    ],
)
def test_a_prepared_statement_stores_exactly_what_core_stores(db_url: str, at: datetime) -> None:
    db = Database(db_url)
    with db.write() as s:
        s.add_all([Alert(kind="new", message="before", created_at=at) for _ in range(3)])
    with db.session() as s:
        core_id, prepared_id, other_id = sorted(s.scalars(select(Alert.id)).all())
    prepared = Prepared(_RESET)
    values = {"b_kind": "x", "b_message": None, "b_at": at, "b_until": at + timedelta(days=1)}
    with db.write_connection() as conn, conn.begin():
        core = conn.execute(_RESET, {"b_id": core_id, **values}).all()
        ran = prepared.run(conn, b_id=prepared_id, **values).fetchall()
        # the same statement again: the row no longer matches (kind is "paused" now)
        again = prepared.run(conn, b_id=prepared_id, **values)
        assert again.fetchall() == []  # (sqlite3 sets rowcount of a RETURNING once rows are read)
        assert len(prepared.run(conn, b_id=other_id, **values | {"b_until": None}).fetchall()) == 1
        with pytest.raises(TypeError, match=r"missing \['b_until'\].*unknown \['b_unknown'\]"):
            prepared.run(conn, b_id=other_id, b_kind="x", b_message=None, b_at=at, b_unknown=1)
    assert [tuple(r) for r in core] == [(core_id,)] and [tuple(r) for r in ran] == [(prepared_id,)]
    with db.write_connection() as conn:
        # the stored values as the driver sees them: text on SQLite, timestamps on PostgreSQL
        stored = {
            row[0]: tuple(row[1:])
            for row in conn.exec_driver_sql(
                "SELECT id, kind, message, created_at, pause_until FROM alerts"
            )
        }
    assert stored[prepared_id] == stored[core_id]
    assert stored[prepared_id][:2] == ("paused", "before")
    assert stored[other_id][-1] is None
    with db.session() as s:
        assert s.get(Alert, prepared_id).created_at == at  # type: ignore[union-attr]
    db.dispose()


def test_a_driver_error_in_a_prepared_statement_is_sqlalchemys_and_rolls_back(db_url: str) -> None:
    db = Database(db_url)
    now = datetime(2026, 3, 2, tzinfo=UTC)
    with db.write() as s:
        s.add(Alert(kind="a", message="", created_at=now))
    with db.session() as s:
        alert_id = s.scalars(select(Alert.id)).one()
    with db.write_connection() as conn:
        with pytest.raises(IntegrityError), conn.begin():  # kind is NOT NULL
            _SET_KIND.run(conn, b_id=alert_id, b_kind="changed")
            _SET_KIND.run(conn, b_id=alert_id, b_kind=None)
        with conn.begin():  # the connection is usable again
            assert _SET_KIND.run(conn, b_id=alert_id + 1, b_kind="x").rowcount == 0
    with db.session() as s:
        assert s.get(Alert, alert_id).kind == "a"  # type: ignore[union-attr]
    db.dispose()


def test_insert_ignore_counts_new_rows_and_applies_column_defaults(db_url: str) -> None:
    db = Database(db_url)
    now = datetime(2026, 3, 2, tzinfo=UTC)

    def contact(i: int) -> dict[str, object]:
        return {
            "email": f"c{i}@example.com",
            "referral_code": f"r{i}",
            "created_at": now,
            "updated_at": now,
        }

    with db.write() as s:
        assert insert_ignore(s, db, Contact, [contact(1), contact(2)]) == 2
    with db.write() as s:
        # one new row, one already stored, and one twice in the same call
        assert insert_ignore(s, db, Contact, [contact(2), contact(3), contact(3)]) == 1
        assert insert_ignore(s, db, Contact, []) == 0
    with db.session() as s:
        stored = s.scalars(select(Contact).order_by(Contact.email)).all()
    assert [c.email for c in stored] == ["c1@example.com", "c2@example.com", "c3@example.com"]
    # Python-side defaults, a constant (kind) and a callable (fields), as Core would apply them
    assert {(c.kind, json.dumps(c.fields)) for c in stored} == {("customer", "{}")}
    db.dispose()
