"""The program's figures: the LTV inputs of the customers who bought in the window, and the
top referrers (CAC is the report's acquisition spend over its customers acquired)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Float, and_, case, cast, func, literal, or_, select
from sqlalchemy.orm import Session

from engine.report.rows import Ltv, TopReferrer
from engine.report.window import Dialect, Window
from engine.store.models import Contact, Purchase, Referral, UtcDateTime

TOP_REFERRERS = 10
DAYS_PER_YEAR = 365.25


def ltv(session: Session, sql: Dialect, window: Window, now: datetime) -> Ltv:
    """The LTV inputs of customers who bought in the window (see README "Metrics")."""
    buyers = (
        select(
            Purchase.contact_id,
            func.count().label("purchases"),
            func.sum(Purchase.amount).label("revenue"),
            func.min(Purchase.occurred_at).label("first"),
        )
        .where(Purchase.contact_id.is_not(None), window.holds(Purchase.occurred_at))
        .group_by(Purchase.contact_id)
        .subquery()
    )
    # A customer since their customer_since date, or their first purchase if earlier (or
    # unknown); never before the window opens.
    start: Any = case(
        (
            and_(Contact.customer_since.is_not(None), Contact.customer_since < buyers.c.first),
            Contact.customer_since,
        ),
        else_=buyers.c.first,
    )
    if window.since is not None:
        since = literal(window.since, UtcDateTime())
        start = case((start < since, since), else_=start)
    customers, purchases, revenue, start_days = session.execute(
        select(
            func.count(),
            func.coalesce(func.sum(buyers.c.purchases), 0),
            func.coalesce(func.sum(buyers.c.revenue), 0),
            func.coalesce(func.sum(cast(sql.epoch_days(start), Float)), 0.0),
        ).select_from(buyers.join(Contact, Contact.id == buyers.c.contact_id))
    ).one()
    end_days = window.end(now).timestamp() / 86400
    years = max(customers * end_days - float(start_days), 0.0) / DAYS_PER_YEAR
    return Ltv(int(customers), int(purchases), float(revenue), years)


def top_referrers(session: Session, window: Window) -> list[TopReferrer]:
    """The referrers with the most converted, then recorded, unflagged referrals."""
    fair = and_(Referral.flag.is_(None), Referral.status != "detected")
    converted = and_(Referral.status == "converted", window.holds(Referral.converted_at))
    made = func.count(case((window.holds(Referral.created_at), 1)))
    won = func.count(case((converted, 1)))
    value = func.coalesce(func.sum(case((converted, Referral.value))), 0)
    ranked = (
        select(Referral.referrer_id, made.label("made"), won.label("won"), value.label("value"))
        .where(fair)
        .group_by(Referral.referrer_id)
        .having(or_(made > 0, won > 0))
        .order_by(won.desc(), made.desc(), Referral.referrer_id)
        .limit(TOP_REFERRERS)
        .subquery()
    )
    return [
        TopReferrer(email, made_count, won_count, float(won_value))
        for email, made_count, won_count, won_value in session.execute(
            select(Contact.email, ranked.c.made, ranked.c.won, ranked.c.value)
            .join(ranked, ranked.c.referrer_id == Contact.id)
            .order_by(ranked.c.won.desc(), ranked.c.made.desc(), Contact.id)
        )
    ]
