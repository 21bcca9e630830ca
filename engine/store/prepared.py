"""Core statements compiled once and run at the driver's cost, for the per-email hot paths.

SQLAlchemy runs a Core statement by first walking it to compute its cache key, on every
execution. For the sender's fenced updates (nested EXISTS) that walk and the parameter handling
cost about four times what SQLite spends running them. A ``Prepared`` statement is compiled
once per dialect into the driver's SQL and parameter format; a run only converts its parameters
(through the same column-type bind processors Core would use) and hands them to the driver.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnDefault, Connection, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BindParameter, ClauseElement
from sqlalchemy.types import TypeEngine

from engine.store.models import UtcDateTime

Processor = Callable[[Any], Any]

# SQLite's text for a naive UTC timestamp, and instants on which formatting it here must give
# what the column type's own bind processor gives.
_ISO = "%04d-%02d-%02d %02d:%02d:%02d.%06d"
_PROBES = (
    datetime(2026, 3, 2, 10, 0, tzinfo=UTC),
    datetime(2026, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
)


def _identity(value: Any) -> Any:
    return value


def bind_processor(type_: TypeEngine[Any], dialect: Dialect) -> Processor:
    """What Core does to a Python value of ``type_`` before handing it to the driver.

    For ``UtcDateTime`` on a database that stores timestamps as text (SQLite), an equal but
    several times cheaper formatter, checked against the type's own when it is made.
    """
    core = type_.dialect_impl(dialect).bind_processor(dialect) or _identity
    if not isinstance(type_, UtcDateTime):
        return core

    def iso(v: datetime | None) -> Any:
        if v is not None and v.tzinfo is UTC:
            return _ISO % (v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond)
        return core(v)

    return iso if all(iso(p) == core(p) for p in _PROBES) else core


class _Compiled:
    """One statement in one dialect: its SQL, and how a call's values become parameters."""

    def __init__(self, statement: ClauseElement, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
        # A statement compiles to an SQLCompiler (bind names, prefetch, positional order).
        assert isinstance(compiled, SQLCompiler)
        self.sql = compiled.string
        # Each parameter is a slot: (name, how to fill it, what with). A value written into
        # the statement is converted once; a value each call supplies goes through its
        # column type's processor; a callable column default is called per execution.
        slots: dict[str, tuple[str, int, Any]] = {}
        bind: BindParameter[Any]
        for bind, name in compiled.bind_names.items():
            process = bind_processor(bind.type, dialect)
            if bind.required:
                slots[name] = (name, _GIVEN, process)
            else:
                slots[name] = (name, _FIXED, process(bind.effective_value))
        for column in compiled.insert_prefetch:  # Python-side defaults of an INSERT
            default, process = column.default, bind_processor(column.type, dialect)
            # A prefetched column has a Python-side ColumnDefault: a value or a callable.
            assert isinstance(default, ColumnDefault)
            if default.is_scalar:
                slots[column.key] = (column.key, _FIXED, process(default.arg))
            else:  # SQLAlchemy hands the callable the execution context
                slots[column.key] = (column.key, _DEFAULT, (default.arg, process))
        if compiled.update_prefetch:
            raise NotImplementedError("Python-side onupdate defaults are not supported")
        self.given = frozenset(name for name, how, _ in slots.values() if how == _GIVEN)
        self.positional = compiled.positional
        order = compiled.positiontup if compiled.positional else slots
        self.slots = [slots[name] for name in order or ()]

    def parameters(self, values: dict[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        """The driver's parameters for one call (a tuple in positional order, or a dict)."""
        if len(values) != len(self.given) or not self.given.issuperset(values):
            missing = sorted(self.given - values.keys())
            unknown = sorted(values.keys() - self.given)
            raise TypeError(f"parameters missing {missing} or unknown {unknown}")
        filled: list[Any] = []
        for name, how, what in self.slots:
            if how == _FIXED:
                filled.append(what)
            elif how == _GIVEN:
                filled.append(what(values[name]))
            else:
                make, process = what
                filled.append(process(make(None)))
        if self.positional:
            return tuple(filled)
        return {slot[0]: value for slot, value in zip(self.slots, filled, strict=True)}


_FIXED, _GIVEN, _DEFAULT = range(3)


class Prepared:
    """A Core statement with ``bindparam`` placeholders, compiled once per dialect.

    ``Prepared(update(t).where(t.c.id == bindparam("b_id")).values(x=1)).run(conn, b_id=7)``
    runs exactly the SQL and parameters Core would, on the driver's connection inside the
    caller's transaction, and returns the driver's cursor (``rowcount``, ``fetchall``): column
    types do not convert results, so keep RETURNING to plain integers and text, and count a
    RETURNING's rows rather than trust its ``rowcount``. Driver errors come out as
    SQLAlchemy's (``DBAPIError`` with ``orig``), and a lost connection is invalidated, as with
    ``conn.execute``.
    """

    def __init__(self, statement: ClauseElement) -> None:
        self.statement = statement
        self._compiled: dict[tuple[str, str], _Compiled] = {}

    def run(self, conn: Connection, **values: Any) -> Any:
        """Run once with ``values``; the driver's cursor."""
        compiled = self._for(conn.dialect)
        return _execute(conn, compiled.sql, compiled.parameters(values), many=False)

    def run_many(self, conn: Connection, rows: list[dict[str, Any]]) -> int:
        """Run once per row (the driver's executemany); the number of rows changed in all."""
        if not rows:
            return 0
        compiled = self._for(conn.dialect)
        params = [compiled.parameters(row) for row in rows]
        return int(_execute(conn, compiled.sql, params, many=True).rowcount)

    def _for(self, dialect: Dialect) -> _Compiled:
        key = (dialect.name, dialect.driver)
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._compiled[key] = _Compiled(self.statement, dialect)
        return compiled


def _execute(conn: Connection, sql: str, params: Any, *, many: bool) -> Any:
    """``sql`` on the connection's driver cursor, inside the caller's transaction; a driver
    error comes out as SQLAlchemy's, and a lost connection is invalidated."""
    dialect = conn.dialect
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        if many:
            cursor.executemany(sql, params)
        else:
            cursor.execute(sql, params)
    except dialect.loaded_dbapi.Error as exc:
        if dialect.is_disconnect(exc, conn.connection.dbapi_connection, cursor):
            conn.invalidate(exc)
        raise DBAPIError.instance(
            sql, params, exc, dialect.loaded_dbapi.Error, dialect=dialect
        ) from exc
    return cursor
