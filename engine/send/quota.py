"""A sender's limits, shared by every worker through the database: the send rate and the
daily cap with its warm-up ramp.

Both live in one ``sender_quotas`` row per sender id (``DEFAULT_SENDER`` for ``[sender]``; the
``[[senders]]`` of later settings get a row each), so they hold across processes and hosts:

- **The rate** (``SharedRate``): the row holds the next free send slot, in seconds on the
  database's clock. A worker advances it atomically by a few slots at a time (``1 / rate``
  apart) and sends at those instants, so any second sees at most ``rate + 1`` sends whatever
  the number of workers, while the hot path pays one round trip per few emails.
- **The daily cap** (``DailyQuota``): the row counts the emails claimed on the sender's day
  (``[schedule] timezone``), in the claim's own transaction and under the row's lock, so
  concurrent claims can never take more than the day allows. What a batch did not send is
  given back when the batch ends. A new sender ramps up: ``warmup.start`` on the day of its
  first send, ``warmup.step`` more each day after, until ``daily_cap``. What does not fit
  stays queued, oldest due first, for the next day: never failed, no attempt counted.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, Connection, Update, case, func, select, text, update
from sqlalchemy.orm import Session

from engine.program.settings import Warmup
from engine.store.db import Database, insert_ignore, transaction
from engine.store.models import Message, SenderQuota

DEFAULT_SENDER = "default"
# A worker reserves this many seconds' worth of rate slots per round trip (at most one per
# connection, so a worker that stops wastes few).
RESERVE_SECONDS = 0.25

# The slot reservation, on the database's clock (one clock for every host), read once the row
# is ours: SQLite's 'now' after BEGIN IMMEDIATE took the lock; PostgreSQL's clock_timestamp()
# when the row is updated (statement_timestamp() would be as old as a wait for the row's lock,
# and the slots handed out that much late).
_DB_NOW = {
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
    "postgresql": "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)",
}
_MAX = {"sqlite": "MAX", "postgresql": "GREATEST"}


def _reserve_sql(dialect: str) -> str:
    now = _DB_NOW[dialect]
    return (
        f"UPDATE sender_quotas SET next_slot = {_MAX[dialect]}(next_slot, {now}) + :span "
        f"WHERE sender_id = :sender RETURNING next_slot, {now}"
    )


def cap_on(day: date, first_day: date | None, daily_cap: int, warmup: Warmup) -> int | None:
    """Emails the sender may send on ``day`` (None: no cap): ``daily_cap``, ramped up from
    ``first_day`` (the day of its first send; None: ``day`` is that day).

    ``cap_on(date(2026, 3, 4), date(2026, 3, 2), 1000, Warmup(50, 50))`` -> 150.
    """
    if daily_cap <= 0:
        return None
    if warmup.start <= 0:
        return daily_cap
    days = 0 if first_day is None else max(0, (day - first_day).days)
    return min(daily_cap, warmup.start + warmup.step * days)


@dataclass(frozen=True, kw_only=True)
class DailyQuota:
    """The daily cap of one sender (``daily_cap`` 0: none), counted in ``sender_quotas``."""

    db: Database
    daily_cap: int
    warmup: Warmup
    timezone: ZoneInfo
    sender_id: str = DEFAULT_SENDER

    def today(self, now: datetime) -> date:
        """The sender's day at ``now`` (its time zone's calendar day)."""
        return now.astimezone(self.timezone).date()

    def room(self, now: datetime) -> int | None:
        """How many more emails fit today (None: no cap); a read, for reports."""
        if self.daily_cap <= 0:
            return None
        with self.db.session() as session:
            row = session.get(SenderQuota, self.sender_id)
            first = row.first_day if row is not None else None
            today = self.today(now)
            used = row.used if row is not None and row.day == today else 0
            cap = cap_on(today, first or self._first_day(session), self.daily_cap, self.warmup)
        return max(0, (cap or 0) - used)

    def take(self, session: Session, now: datetime, wanted: int) -> int:
        """Lock the sender's row in the claim's transaction and say how many of ``wanted``
        emails fit today; ``charge`` then counts those the claim took."""
        if self.daily_cap <= 0:
            return wanted
        row = self._locked(session)
        today = self.today(now)
        if row.day != today:
            row.day, row.used = today, 0
        if row.first_day is None:
            row.first_day = self._first_day(session) or today
        cap = cap_on(today, row.first_day, self.daily_cap, self.warmup)
        return max(0, min(wanted, (cap or 0) - row.used))

    def charge(self, session: Session, claimed: int) -> None:
        """Count ``claimed`` emails against today (after ``take``, same transaction)."""
        if self.daily_cap > 0 and claimed:
            session.execute(self._used(SenderQuota.used + claimed))

    def refund(self, day: date, unsent: int) -> None:
        """Give back what a batch claimed on ``day`` but did not send (retried, held,
        deferred, released, lost): the cap counts emails that went out."""
        if self.daily_cap <= 0 or unsent <= 0:
            return
        left = case((SenderQuota.used > unsent, SenderQuota.used - unsent), else_=0)
        with self.db.write() as session:
            session.execute(self._used(left).where(SenderQuota.day == day))

    def _used(self, value: ColumnElement[int]) -> Update:
        return update(SenderQuota).where(SenderQuota.sender_id == self.sender_id).values(used=value)

    def _locked(self, session: Session) -> SenderQuota:
        insert_ignore(session, self.db, SenderQuota, [{"sender_id": self.sender_id}])
        query = select(SenderQuota).where(SenderQuota.sender_id == self.sender_id)
        return session.scalars(query.with_for_update()).one()

    def _first_day(self, session: Session) -> date | None:
        """The day of the earliest email ever sent (a database from before quotas kept its
        history: an established sender is not put back on its first day's ramp)."""
        first = session.scalar(select(func.min(Message.sent_at)))
        return None if first is None else self.today(first)


class SharedRate:
    """The send rate of one sender across every worker (``rate_per_second`` 0: unlimited).

    ``slot`` hands out this worker's next send instant, reserving a few more through ``conn``
    when none is left. A slot more than half an interval in the past is dropped rather than
    used late (``missed``), so no send bunches up with the slots other workers hold.
    """

    def __init__(
        self, db: Database, *, rate_per_second: float, connections: int, sender_id: str
    ) -> None:
        self.db = db
        self.sender_id = sender_id
        self.interval = 1.0 / rate_per_second if rate_per_second > 0 else 0.0
        self.batch = max(1, min(connections, int(rate_per_second * RESERVE_SECONDS)))
        self._reserve = text(_reserve_sql(db.engine.dialect.name))
        self._slots: deque[float] = deque()  # on time.monotonic()
        self._row_made = False

    def slot(self, conn: Connection) -> float:
        """This worker's next send slot on time.monotonic() (reserving more through ``conn``
        when none is left); 0.0 when the rate is unlimited."""
        if not self.interval:
            return 0.0
        now = time.monotonic()
        while self._slots and self.missed(self._slots[0], now):
            self._slots.popleft()  # too late to use without crowding others' slots
        if not self._slots:
            if not self._row_made:  # before conn's transaction: SQLite has one writer
                with self.db.write() as session:
                    insert_ignore(session, self.db, SenderQuota, [{"sender_id": self.sender_id}])
                self._row_made = True
            self._slots.extend(transaction(conn, self._reserved))
        return self._slots.popleft()

    def missed(self, slot: float, now: float | None = None) -> bool:
        """True when ``slot`` is more than half an interval gone (the worker waited for the
        database meanwhile): sending now would crowd the slots of other workers."""
        late = (time.monotonic() if now is None else now) - slot
        return bool(self.interval) and late > self.interval / 2

    def _reserved(self, conn: Connection) -> list[float]:
        """Advance the row's next free slot by ``batch`` slots; ours, on time.monotonic()."""
        span = self.batch * self.interval
        next_slot, db_now = conn.execute(
            self._reserve, {"span": span, "sender": self.sender_id}
        ).one()
        first = time.monotonic() + (next_slot - span - db_now)
        return [first + i * self.interval for i in range(self.batch)]
