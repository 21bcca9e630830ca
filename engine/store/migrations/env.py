"""Alembic environment: the engine is handed in by engine.store.db.migrate."""

from alembic import context
from sqlalchemy import Connection

from engine.store.models import Base


def _foreign_keys(connection: Connection, on: bool) -> None:
    # On the driver's connection: through SQLAlchemy the statement would open a transaction
    # first, and SQLite ignores this pragma inside one.
    driver = connection.connection.driver_connection
    assert driver is not None  # a live pooled connection always has one
    driver.execute(f"PRAGMA foreign_keys={int(on)}")


def _run(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    # SQLite does roll DDL back; without transactional_ddl Alembic would commit as it goes,
    # and a failed check (or migration) would leave the store half upgraded.
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=sqlite,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()
        if sqlite:
            broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise RuntimeError(f"the migration broke foreign keys: {broken[:5]}")


engine = context.config.attributes["engine"]
with engine.connect() as connection:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        # Batch mode rebuilds a table by copying it and dropping the old one; with foreign
        # keys on, that DROP would cascade to, or null, every row pointing at it (events lost
        # their email that way). SQLite's own procedure for such changes: keys off outside
        # the transaction, a foreign_key_check before it commits.
        _foreign_keys(connection, False)
    try:
        _run(connection)
    finally:
        connection.rollback()  # nothing left open (a no-op after Alembic's commit)
        if sqlite:
            _foreign_keys(connection, True)
