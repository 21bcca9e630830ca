"""What every figure is counted over: the window of days, the periods (ISO weeks, months) a
report is broken down by, and the few SQL expressions SQLite and PostgreSQL spell differently."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func

from engine.store.db import Database

PERIODS = ("week", "month")


@dataclass(frozen=True)
class Window:
    """The time the report covers: ``since`` inclusive, ``until`` exclusive (None: open)."""

    since: datetime | None = None
    until: datetime | None = None

    @classmethod
    def of_days(cls, since: date | None, until: date | None) -> Window:
        """Whole UTC days, both inclusive: ``(2026-03-01, 2026-03-31)`` -> March."""
        start = datetime.combine(since, time(), UTC) if since else None
        end = datetime.combine(until + timedelta(days=1), time(), UTC) if until else None
        if start and end and start >= end:
            raise ValueError(f"--since {since} is after --until {until}")
        return cls(start, end)

    def holds(self, column: Any) -> ColumnElement[bool]:
        """``column`` inside the window (NULL never is)."""
        conditions = [column.is_not(None)]
        if self.since is not None:
            conditions.append(column >= self.since)
        if self.until is not None:
            conditions.append(column < self.until)
        return and_(*conditions)

    @property
    def bounded(self) -> bool:
        return self.since is not None or self.until is not None

    def end(self, now: datetime) -> datetime:
        return min(now, self.until) if self.until else now


class Dialect:
    """The few expressions SQLite and PostgreSQL spell differently."""

    def __init__(self, db: Database) -> None:
        self.postgres = db.is_postgres

    def period(self, column: Any, period: str) -> ColumnElement[str]:
        """A sortable key: the Monday of the ISO week ("2026-03-02") or the month ("2026-03")."""
        if self.postgres:
            if period == "week":
                return func.to_char(func.date_trunc("week", column), "YYYY-MM-DD")
            return func.to_char(column, "YYYY-MM")
        if period == "week":
            # SQLite 3.40 has no %V: forward to Sunday (or stay), then back to its Monday.
            return func.date(column, "weekday 0", "-6 days")
        return func.strftime("%Y-%m", column)

    def epoch_days(self, column: Any) -> ColumnElement[Any]:
        """Days since 1970-01-01 00:00 UTC, fractional."""
        if self.postgres:
            return func.extract("epoch", column) / 86400.0
        return func.julianday(column) - 2440587.5


def fold(day: date | str, period: str | None) -> str:
    """A day's period key, as ``Dialect.period`` gives it: its ISO week's Monday or month."""
    on = day if isinstance(day, date) else date.fromisoformat(day)
    if period == "week":
        return (on - timedelta(days=on.weekday())).isoformat()
    return on.strftime("%Y-%m")


def label(key: str, period: str) -> str:
    """``("2026-03-02", "week")`` -> ``"2026-W10"``; a month key is its own label."""
    if period == "month":
        return key
    iso = date.fromisoformat(key).isocalendar()
    return f"{iso.year}-W{iso.week:02d}"
