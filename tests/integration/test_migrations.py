"""Migrations are history: 0005 and 0006 create, on SQLite and PostgreSQL, exactly the schema
(tables, indexes, triggers, trigger functions) they created when their SQL was frozen into
them, whatever the live modules say today, and every step of upgrade -> downgrade -> upgrade
leaves the schema it left then.

``tests/support/migrated_schema.json`` holds that schema, read with ``schema`` below from the
migrations as they were before the freeze (when they still built their SQL from
``engine.store.engagement``), at each stop of ``WALK``.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection

from engine.store.db import MIGRATIONS, Database, _alembic_config

FIXTURE = Path(__file__).parents[1] / "support" / "migrated_schema.json"
FROZEN = ("0005_engagement_mask.py", "0006_complained_bit.py")

# Each stop: (name in the fixture, Alembic command, target revision).
Step = Callable[[Config, str], None]
WALK: list[tuple[str, Step, str]] = [
    ("upgrade 0004", command.upgrade, "0004"),
    ("upgrade 0005", command.upgrade, "0005"),
    ("upgrade 0006", command.upgrade, "0006"),
    ("downgrade 0005", command.downgrade, "0005"),
    ("downgrade 0004", command.downgrade, "0004"),
    ("upgrade 0006 again", command.upgrade, "0006"),
]

_SQLITE = "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
_PG_COLUMNS = """
SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid)
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE n.nspname = 'public' AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
"""
_PG_CONSTRAINTS = """
SELECT c.relname, k.conname, pg_get_constraintdef(k.oid)
FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'
"""
_PG_INDEXES = "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
_PG_TRIGGERS = """
SELECT t.tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t
JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND NOT t.tgisinternal
"""
_PG_FUNCTIONS = """
SELECT p.proname, pg_get_functiondef(p.oid) FROM pg_proc p
JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'
"""


def schema(conn: Connection) -> list[str]:
    """Every object of the database's schema as one entry of DDL, sorted (Alembic's own
    ``alembic_version`` left out): SQLite's ``sqlite_master`` (the text as it was run);
    PostgreSQL's catalogs, each definition as the server prints it back."""
    if conn.dialect.name == "sqlite":
        found = [
            f"{kind} {name} ON {table}: {_table(sql) if kind == 'table' else sql}"
            for kind, name, table, sql in conn.exec_driver_sql(_SQLITE)
            if table != "alembic_version"
        ]
    else:
        queries = {
            "column": _PG_COLUMNS,
            "constraint": _PG_CONSTRAINTS,
            "index": _PG_INDEXES,
            "trigger": _PG_TRIGGERS,
            "function": _PG_FUNCTIONS,
        }
        found = [
            f"{kind} {' '.join(str(field) for field in row)}"
            for kind, query in queries.items()
            for row in conn.exec_driver_sql(query)
            if "alembic_version" not in row[0]
        ]
    return sorted(found)


# A comma between a table's columns and constraints, not one inside parentheses.
_ELEMENT_COMMA = re.compile(r",\s*(?![^()]*\))")


def _table(sql: str) -> str:
    """SQLite's CREATE TABLE text with its columns in order, then its constraints sorted:
    Alembic's batch mode writes the constraints of a table it rebuilds in an order that
    varies from run to run (and ``ADD COLUMN`` adds a column in place, on the same line)."""
    head, _, body = sql.partition("(")
    elements = [" ".join(e.split()) for e in _ELEMENT_COMMA.split(body.rpartition(")")[0])]
    columns = [e for e in elements if not e.startswith("CONSTRAINT ")]
    constraints = sorted(e for e in elements if e.startswith("CONSTRAINT "))
    return f"{head.strip()} ({', '.join(columns + constraints)})"


@pytest.fixture
def empty(db_url: str) -> Iterator[Database]:
    """A database with no schema (PostgreSQL's test databases come migrated: taken down)."""
    db = Database(db_url, auto_migrate=False)
    command.downgrade(_alembic_config(db.engine), "base")
    yield db
    db.dispose()


def test_migrations_up_down_and_up_again_leave_the_schema_they_always_left(
    empty: Database,
) -> None:
    cfg = _alembic_config(empty.engine)
    frozen = json.loads(FIXTURE.read_text(encoding="utf-8"))[empty.engine.dialect.name]
    for name, step, revision in WALK:
        step(cfg, revision)
        with empty.engine.connect() as conn:
            found = schema(conn)
        assert found == frozen[name], f"the schema after {name} is not what it was"


def _imported(tree: ast.Module) -> list[str]:
    """The modules a source file imports."""
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append(node.module or "")
    return names


def test_the_frozen_migrations_import_nothing_of_the_engine() -> None:
    # What a revision creates must not follow later edits of the package (engagement bits,
    # model helpers): its SQL is written out in it.
    for filename in FROZEN:
        imported = _imported(ast.parse((MIGRATIONS / "versions" / filename).read_bytes()))
        assert not [m for m in imported if m.split(".")[0] == "engine"], (filename, imported)
