"""The store's own guarantees: a deadlock victim runs again instead of failing a batch."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from sqlalchemy import Connection, select, update

from engine.store.db import Database, transaction
from engine.store.models import Alert
from tests.pg import PostgresServer


def test_a_deadlock_victim_is_retried_and_both_transactions_commit(
    postgres: PostgresServer,
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
    assert sorted(attempts.values()) == [1, 2]  # PostgreSQL aborted one; it ran again
    with db.session() as s:
        rows = {a.id: (a.message, a.kind) for a in s.scalars(select(Alert))}
    # both transactions committed whole
    assert rows == {first: (f"by {first}", f"by {second}"), second: (f"by {second}", f"by {first}")}
    db.dispose()
