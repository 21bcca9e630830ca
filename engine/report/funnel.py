"""The referral funnel (asked, page visits, referrals, conversions) and the purchases, for the
whole window or per period."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy import Executable, and_, case, distinct, exists, func, or_, select
from sqlalchemy.orm import Session

from engine.report.rows import FunnelRow
from engine.report.window import Dialect, Window
from engine.store.models import Contact, Event, Message, Purchase, Referral


def keyed(session: Session, query: Executable, period: str | None) -> Iterator[tuple[Any, ...]]:
    """The rows of ``query``, each led by its period key (None without a period); a query
    grouped by period has that key as its first column."""
    for found in session.execute(query):
        yield tuple(found) if period else (None, *found)


def funnel_rows(
    session: Session,
    sql: Dialect,
    window: Window,
    period: str | None,
    ask_steps: list[tuple[str, str]],
) -> dict[str | None, FunnelRow]:
    """Funnel rows keyed by period key (None: one row for the whole window)."""
    rows: dict[str | None, FunnelRow] = {}

    def row(key: str | None) -> FunnelRow:
        return rows.setdefault(key, FunnelRow(period=key))

    if period is None:
        row(None)  # a window with no activity still has its all-zero row

    def grouped(column: Any, *figures: Any, where: Iterable[Any] = ()) -> Iterator[Any]:
        """``figures`` over the rows whose ``column`` is in the window, per period of it."""
        when = [sql.period(column, period)] if period else []
        query = select(*when, *figures).where(window.holds(column), *where).group_by(*when)
        return keyed(session, query, period)

    if ask_steps:
        # One (sequence, step, "sent") prefix of ix_messages_report per ask step.
        asked = or_(
            *[
                and_(Message.sequence_id == a, Message.step_id == b, Message.status == "sent")
                for a, b in ask_steps
            ]
        )
        for k, count in grouped(
            Message.sent_at, func.count(distinct(Message.contact_id)), where=[asked]
        ):
            row(k).asked = count

    machine = Event.machine.is_(True)
    for k, people, machines in grouped(
        Event.occurred_at,
        func.count(case((~machine, 1))),
        func.count(case((machine, 1))),
        where=[Event.type == "referral.visited"],
    ):
        row(k).visits, row(k).machine_visits = people, machines

    recorded = Referral.status != "detected"  # found in a reply: awaits a person's review
    for k, count, flagged in grouped(
        Referral.created_at,
        func.count(case((recorded, 1))),
        func.count(case((and_(recorded, Referral.flag.is_not(None)), 1))),
    ):
        row(k).referrals, row(k).flagged = count, flagged

    # A conversion's value counts as referral revenue only when no purchase carries it.
    unpurchased = ~exists().where(Purchase.referral_id == Referral.id)
    for k, count, value, value_alone in grouped(
        Referral.converted_at,
        func.count(),
        func.coalesce(func.sum(Referral.value), 0),
        func.coalesce(func.sum(case((unpurchased, Referral.value))), 0),
        where=[Referral.status == "converted"],
    ):
        row(k).converted, row(k).value = count, float(value)
        row(k).referral_revenue += float(value_alone)

    referred = Purchase.referral_id.is_not(None)
    for k, count, revenue, referred_count, referred_revenue in grouped(
        Purchase.occurred_at,
        func.count(),
        func.coalesce(func.sum(Purchase.amount), 0),
        func.count(case((referred, 1))),
        func.coalesce(func.sum(case((referred, Purchase.amount))), 0),
    ):
        target = row(k)
        target.purchases, target.revenue = count, float(revenue)
        target.referred_purchases = referred_count
        target.referral_revenue += float(referred_revenue)

    for k, count in grouped(Contact.customer_since, func.count()):
        row(k).customers_acquired = count
    return rows
