"""Opening the database: engine options per dialect and automatic Alembic migrations."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, Select, bindparam, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from engine.base.errors import EngineError
from engine.store.prepared import Prepared

MIGRATIONS = Path(__file__).with_name("migrations")
WRITE_OPTION = "engine_write"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Autocommit at the driver level: _sqlite_begin issues BEGIN itself.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL: readers never block the writer; busy_timeout: a second scheduler waits, not fails.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    # Checkpoints fold the WAL into the file with an fsync; inside a writer's commit they stall
    # planning or sending. The scheduler checkpoints between ticks and SQLite does when the
    # last connection closes; this high threshold only bounds the WAL (about 80 MB) for
    # processes that never do either.
    cursor.execute("PRAGMA wal_autocheckpoint=20000")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    # Writers take the write lock up front: a transaction that reads then writes never fails
    # with SQLITE_BUSY when another process wrote in between (two schedulers on one file).
    # Readers stay deferred, so a read inside another session never waits on a lock.
    # On the driver's connection: a statement through SQLAlchemy would cost more than SQLite
    # spends beginning the transaction, and the sender begins one per email.
    immediate = conn.get_execution_options().get(WRITE_OPTION, False)
    conn.connection.driver_connection.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")  # type: ignore[union-attr]


class DatabaseUnavailable(EngineError, ConnectionError):
    """The database cannot be opened or reached (a missing folder, a server that is down)."""


# What a database that is down, restarting or locked raises: the scheduler waits these out.
OUTAGE_ERRORS: tuple[type[Exception], ...] = (
    OperationalError,
    InterfaceError,
    DatabaseUnavailable,
)


def outage_reason(exc: BaseException) -> str:
    """One line saying why the database did not answer, without the statement or its
    parameters: ``connection to server at "127.0.0.1", port 5432 failed: Connection refused``."""
    orig = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(orig).splitlines() if line.strip()]
    return (lines[0] if lines else type(orig).__name__)[:300]


def create_db_engine(url: str) -> Engine:
    """An Engine for ``url``; SQLite gets WAL. A SQLite file's folder must exist: a typo in
    the URL must not create an empty database somewhere else (DatabaseUnavailable)."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:" and not Path(path).parent.is_dir():
            raise DatabaseUnavailable(
                f"database: the folder {Path(path).parent} does not exist: create it, or fix "
                "database.url (relative paths are relative to the settings file)"
            )
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, pool_pre_ping=True)


def _alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (cheap when it already is)."""
    cfg = _alembic_config(engine)
    head = ScriptDirectory.from_config(cfg).get_current_head()
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    if current != head:
        command.upgrade(cfg, "head")


# PostgreSQL: deadlock_detected, serialization_failure. The victim may simply run again.
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})
T = TypeVar("T")


def transaction(conn: Connection, work: Callable[[Connection], T], *, attempts: int = 5) -> T:
    """Run ``work`` in one transaction on ``conn``; retry it when the database picked this
    transaction as a deadlock or serialization victim. ``work`` must only touch the database
    (its effects are rolled back before a retry)."""
    for attempt in range(attempts):
        try:
            with conn.begin():
                return work(conn)
        except DBAPIError as exc:
            code = getattr(exc.orig, "sqlstate", None)
            if code not in RETRYABLE_SQLSTATES or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


class Database:
    """The store handle: an Engine, a session factory and the dialect's capabilities."""

    def __init__(self, url: str, *, auto_migrate: bool = True) -> None:
        self.url = url
        self.engine = create_db_engine(url)
        if auto_migrate:
            try:
                migrate(self.engine)
            except (OperationalError, InterfaceError) as exc:
                self.engine.dispose()
                shown = self.engine.url.render_as_string(hide_password=True)
                raise DatabaseUnavailable(
                    f"database: cannot open {shown}: {outage_reason(exc)}"
                ) from None
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.writers = sessionmaker(
            self.engine.execution_options(**{WRITE_OPTION: True}), expire_on_commit=False
        )

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def session(self) -> Session:
        """A session for reading (its transaction does not take SQLite's write lock)."""
        return self.sessions()

    def write_connection(self) -> Connection:
        """A Core connection whose transactions write (SQLite: BEGIN IMMEDIATE)."""
        return self.engine.execution_options(**{WRITE_OPTION: True}).connect()

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A session inside one write transaction: committed on success, rolled back on error."""
        with self.writers() as session, session.begin():
            yield session

    def checkpoint(self) -> None:
        """Fold SQLite's write-ahead log into the database file (between ticks, not mid-work)."""
        if self.engine.dialect.name != "sqlite":
            return
        raw = self.engine.raw_connection()
        try:
            raw.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            raw.close()

    def dispose(self) -> None:
        self.engine.dispose()


def insert_ignore(session: Session, db: Database, model: Any, rows: list[dict[str, Any]]) -> int:
    """INSERT rows whose unique key is not taken yet (idempotent writes); returns how many.

    Every row has the same keys. One statement per table and set of keys is compiled once and
    run as the driver's executemany (store.prepared): the planner inserts a row per enrolled
    contact and per email, and Core's insertmanyvalues cost more than the inserts themselves.
    """
    if not rows:
        return 0
    table = model.__table__
    keys = tuple(rows[0])
    prepared = _INSERTS.get((db.engine.dialect.name, table.name, keys))
    if prepared is None:
        dialect = postgresql if db.is_postgres else sqlite
        stmt = dialect.insert(table).values({k: bindparam(k) for k in keys})
        prepared = Prepared(stmt.on_conflict_do_nothing())
        _INSERTS[(db.engine.dialect.name, table.name, keys)] = prepared
    return prepared.run_many(session.connection(), rows)


_INSERTS: dict[tuple[str, str, tuple[str, ...]], Prepared] = {}


def lock_rows(db: Database, stmt: Select[Any], *, of: Any = None) -> Select[Any]:
    """Let concurrent PostgreSQL workers take disjoint rows; SQLite has one writer anyway.

    ``of``: lock only that table's rows (those of a joined table stay free for others).
    """
    return stmt.with_for_update(skip_locked=True, of=of) if db.is_postgres else stmt
