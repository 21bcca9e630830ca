"""The ledger of what the reply mailbox has already done, and the poller's place in it.

Every email is entered once (a ``meta`` row keyed by a digest of its Message-ID), in the same
transaction as its effects, and each bounce or complaint once per email it is about; the
poller's position (``Cursor``) is saved in that transaction too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from engine.store.models import Meta

LEDGER = "inbound:"
_META = cast(Table, Meta.__table__)  # Core: no ORM flush before these statements


@dataclass(frozen=True)
class Cursor:
    """Where the poller stands in a mailbox; saved with the email's effects, atomically."""

    key: str
    uidvalidity: int
    uid: int

    def save(self, session: Session) -> None:
        """Record that every UID up to ``uid`` is done (an upsert: two pollers may race)."""
        value = json.dumps({"uidvalidity": self.uidvalidity, "last_uid": self.uid})
        stmt = _dialect(session).insert(_META).values(key=self.key, value=value)
        session.execute(stmt.on_conflict_do_update(index_elements=["key"], set_={"value": value}))


def _ledger_key(name: str) -> str:
    return LEDGER + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:48]


def first_times(session: Session, entries: Seq[tuple[str, str]], now: datetime) -> dict[str, bool]:
    """Enter each (name, kind) in the ledger in one statement; {name: True} for the names
    not there before (safe under races: ON CONFLICT DO NOTHING)."""
    if not entries:
        return {}
    at = now.isoformat()
    keys = {_ledger_key(name): name for name, _ in entries}
    rows = [
        {"key": _ledger_key(name), "value": json.dumps({"kind": kind, "at": at})}
        for name, kind in dict(entries).items()
    ]
    stmt = _dialect(session).insert(_META).values(rows).on_conflict_do_nothing()
    inserted = session.execute(stmt.returning(_META.c.key)).scalars()
    return {keys[key]: True for key in inserted}


def first_time(session: Session, name: str, kind: str, now: datetime) -> bool:
    """Enter ``name`` in the ledger; False when it was there already."""
    return bool(first_times(session, [(name, kind)], now))


def _dialect(session: Session) -> Any:
    return postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
