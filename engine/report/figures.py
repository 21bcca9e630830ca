"""The numbers a referral program is run by: per step delivery and engagement, the referral
funnel, referral rate, revenue, CAC, LTV and top referrers (README "Metrics" defines each).

Every figure is aggregated in the database (GROUP BY over covering indexes, see
``ix_messages_report``, and ``engine.store.engagement`` for what each email's row knows of its
opens, clicks, replies, bounces and complaints); no query returns a row per email or event.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Executable,
    Float,
    and_,
    case,
    cast,
    distinct,
    exists,
    func,
    literal,
    or_,
    select,
)
from sqlalchemy.orm import Session

from engine.program.sequences import SendStep, Sequence
from engine.store import engagement
from engine.store.db import Database
from engine.store.models import (
    Alert,
    Contact,
    Event,
    Message,
    Purchase,
    Referral,
    UtcDateTime,
    placed_on,
)

PERIODS = ("week", "month")
TOP_REFERRERS = 10
DAYS_PER_YEAR = 365.25
ALERT_DAYS = timedelta(days=30)  # how long an alert without a pause stays in the report


@dataclass
class StepRow:
    sequence: str
    step: str
    queued: int = 0
    sent: int = 0
    failed: int = 0
    held: int = 0
    cancelled: int = 0
    bounced: int = 0
    opened: int = 0  # by a person: image proxies and scanners are in ``opened_machine``
    clicked: int = 0  # by a person
    replied: int = 0
    unsubscribed: int = 0
    auto_replied: int = 0  # out-of-office answers (they do not count as replies)
    hard_bounced: int = 0  # of ``bounced``: the address is gone (suppressed)
    soft_bounced: int = 0  # of ``bounced``: mailbox full, delayed, refused for now
    opened_machine: int = 0  # emails with an open by an image proxy (Apple MPP, Gmail)
    clicked_machine: int = 0  # emails with a click by a link scanner
    complained: int = 0  # emails their recipient marked as spam (feedback-loop reports)
    period: str | None = None  # "2026-W10", "2026-03"; None: the whole window

    @property
    def delivered(self) -> int:
        """Emails sent minus emails that bounced."""
        return self.sent - self.bounced

    @property
    def ctr(self) -> float | None:
        """Click-through rate = emails clicked / emails opened, both by a person."""
        return self.clicked / self.opened if self.opened else None

    @property
    def reply_rate(self) -> float | None:
        """Response rate = emails replied to / emails sent."""
        return self.replied / self.sent if self.sent else None


def _rate(part: float, whole: float) -> float | None:
    return part / whole if whole else None


@dataclass
class FunnelRow:
    """The referral funnel and the purchases of one period (or of the whole window)."""

    period: str | None = None
    asked: int = 0  # contacts sent a referral-ask email
    visits: int = 0  # referral page visits by people
    machine_visits: int = 0  # by link scanners and previews, not in ``visits``
    referrals: int = 0  # introductions recorded (not the unconfirmed "detected" ones)
    flagged: int = 0  # of ``referrals``: self-referral, duplicate, existing customer
    converted: int = 0
    value: float = 0.0  # of the converted referrals
    purchases: int = 0
    revenue: float = 0.0  # of every purchase
    referred_purchases: int = 0
    referral_revenue: float = 0.0  # referred purchases + converted value without a purchase
    customers_acquired: int = 0  # contacts whose customer_since falls in the period

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "visit_rate": _rate(self.visits, self.asked),
            "referrals_per_visit": _rate(self.referrals, self.visits),
            "conversion_rate": _rate(self.converted, self.referrals),
            "referral_rate": _rate(self.referred_purchases, self.purchases),
        }


@dataclass
class Ltv:
    """Lifetime value = average purchase value x purchase frequency x average lifespan."""

    customers: int = 0  # contacts with a purchase in the window
    purchases: int = 0  # theirs
    revenue: float = 0.0  # theirs
    customer_years: float = 0.0  # sum of their lifespans

    @property
    def average_purchase_value(self) -> float | None:
        return _rate(self.revenue, self.purchases)

    @property
    def purchase_frequency(self) -> float | None:
        """Purchases per customer per year."""
        return _rate(self.purchases, self.customer_years)

    @property
    def average_lifespan_years(self) -> float | None:
        return _rate(self.customer_years, self.customers)

    @property
    def value(self) -> float | None:
        aov, frequency = self.average_purchase_value, self.purchase_frequency
        lifespan = self.average_lifespan_years
        if aov is None or frequency is None or lifespan is None:
            return None
        return aov * frequency * lifespan

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "average_purchase_value": self.average_purchase_value,
            "purchase_frequency": self.purchase_frequency,
            "average_lifespan_years": self.average_lifespan_years,
            "value": self.value,
        }


@dataclass(frozen=True)
class TopReferrer:
    email: str
    referrals: int  # unflagged introductions made in the window
    converted: int  # unflagged referrals converted in the window
    value: float  # of those conversions


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


@dataclass
class Report:
    steps: list[StepRow] = field(default_factory=list)
    funnel: FunnelRow = field(default_factory=FunnelRow)
    periods: list[FunnelRow] = field(default_factory=list)  # with a period only
    period: str | None = None  # week | month
    window: Window = field(default_factory=Window)
    acquisition_spend: float = 0.0
    ltv: Ltv = field(default_factory=Ltv)
    top_referrers: list[TopReferrer] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)  # what a person must look at now

    @property
    def cac(self) -> float | None:
        """Acquisition spend / customers acquired in the window (None: no spend given)."""
        if not self.acquisition_spend:
            return None
        return _rate(self.acquisition_spend, self.funnel.customers_acquired)

    def as_dict(self) -> dict[str, Any]:
        funnel = self.funnel.as_dict()
        return {
            "alerts": self.alerts,
            "period": self.period,
            "since": _day(self.window.since),
            "until": _day(self.window.until - timedelta(days=1) if self.window.until else None),
            "steps": [
                {**asdict(s), "delivered": s.delivered, "ctr": s.ctr, "reply_rate": s.reply_rate}
                for s in self.steps
            ],
            "referrals": {
                **{k: v for k, v in funnel.items() if k != "period"},
                "top_referrers": [asdict(t) for t in self.top_referrers],
            },
            "program": {
                "acquisition_spend": self.acquisition_spend,
                "customers_acquired": self.funnel.customers_acquired,
                "cac": self.cac,
                "ltv": self.ltv.as_dict(),
            },
            "periods": [p.as_dict() for p in self.periods],
        }


def _day(moment: datetime | None) -> str | None:
    return moment.date().isoformat() if moment else None


class _Dialect:
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


def _fold(day: date | str, period: str | None) -> str:
    """A day's period key, as ``_Dialect.period`` gives it: its ISO week's Monday or month."""
    on = day if isinstance(day, date) else date.fromisoformat(day)
    if period == "week":
        return (on - timedelta(days=on.weekday())).isoformat()
    return on.strftime("%Y-%m")


def _label(key: str, period: str) -> str:
    """``("2026-03-02", "week")`` -> ``"2026-W10"``; a month key is its own label."""
    if period == "month":
        return key
    iso = date.fromisoformat(key).isocalendar()
    return f"{iso.year}-W{iso.week:02d}"


def build_report(
    db: Database,
    sequences: dict[str, Sequence],
    now: datetime,
    *,
    period: str | None = None,
    since: date | None = None,
    until: date | None = None,
    acquisition_spend: float = 0.0,
) -> Report:
    """Count outbox states, engagement, the referral funnel and the program's figures.

    ``since``/``until``: whole UTC days, both inclusive. ``period``: ``week`` (ISO) or
    ``month`` breaks the step rows and the funnel down by the time of each send or event.
    """
    if period is not None and period not in PERIODS:
        raise ValueError(f"period must be one of {', '.join(PERIODS)}, not {period!r}")
    window = Window.of_days(since, until)
    sql = _Dialect(db)
    report = Report(period=period, window=window, acquisition_spend=acquisition_spend)
    ask_steps = [
        (s.id, step.id)
        for s in sequences.values()
        for step in s.steps
        if isinstance(step, SendStep) and step.referral_ask
    ]
    with db.session() as session:
        report.alerts = _alerts(session, now)
        rows = _steps(session, sql, window, period)
        report.funnel = _funnel(session, sql, window, None, ask_steps)[None]
        if period is not None:
            by_key = _funnel(session, sql, window, period, ask_steps)
            report.periods = sorted(by_key.values(), key=lambda r: str(r.period))
            for funnel_row in report.periods:
                funnel_row.period = _label(str(funnel_row.period), period)
        report.ltv = _ltv(session, sql, window, now)
        report.top_referrers = _top_referrers(session, window)
    order = {sid: i for i, sid in enumerate(sorted(sequences))}

    def position(row: StepRow) -> tuple[str, int, int]:
        seq = sequences.get(row.sequence)
        idx = next((i for i, s in enumerate(seq.steps) if s.id == row.step), 99) if seq else 99
        return row.period or "", order.get(row.sequence, 999), idx

    report.steps = sorted(rows.values(), key=position)
    if period is not None:
        for row in report.steps:
            row.period = _label(str(row.period), period)
    return report


def _alerts(session: Session, now: datetime) -> list[str]:
    return list(
        session.scalars(
            select(Alert.message)
            .where(
                # sending paused now, or something to act on (no pause) from the last 30 days
                or_(
                    Alert.pause_until > now,
                    and_(Alert.pause_until.is_(None), Alert.created_at > now - ALERT_DAYS),
                )
            )
            .order_by(Alert.created_at)
        )
    )


STATUS_FIELD = {"sending": "queued", "render_failed": "held", "suppressed": "cancelled"}


def _keyed(session: Session, query: Executable, period: str | None) -> Iterator[tuple[Any, ...]]:
    """The rows of ``query``, each led by its period key (None without a period); a query
    grouped by period has that key as its first column."""
    for found in session.execute(query):
        yield tuple(found) if period else (None, *found)


def _steps(
    session: Session, sql: _Dialect, window: Window, period: str | None
) -> dict[tuple[str | None, str, str], StepRow]:
    """Step rows keyed by (period key, sequence, step): one pass over ``ix_messages_report``.

    An email is placed in time when it was sent, or written to the outbox if it never was;
    its opens, clicks, replies and bounces count with it (the emails of March that were
    opened, whenever they were), so every rate compares emails with the same emails.
    """
    rows: dict[tuple[str | None, str, str], StepRow] = {}
    placed = func.coalesce(Message.sent_at, Message.created_at)
    # By day in index order (no sort of every email); days fold into weeks or months here.
    days = [placed_on(Message.sent_at, Message.created_at)] if period else []
    query = select(
        Message.sequence_id, Message.step_id, Message.status, Message.engaged, *days, func.count()
    )
    if window.bounded:
        query = query.where(window.holds(placed))
    query = query.group_by(
        Message.sequence_id, Message.step_id, Message.status, Message.engaged, *days
    )
    for seq, step, status, mask, *day, count in session.execute(query):
        key = _fold(day[0], period) if period else None
        target = rows.setdefault((key, seq, step), StepRow(seq, step, period=key))
        attr = STATUS_FIELD.get(status, status)
        setattr(target, attr, getattr(target, attr) + count)
        for name, bits in engagement.FIELDS.items():
            if mask & bits:
                setattr(target, name, getattr(target, name) + count)
    return rows


def _funnel(
    session: Session,
    sql: _Dialect,
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
        return _keyed(session, query, period)

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


def _ltv(session: Session, sql: _Dialect, window: Window, now: datetime) -> Ltv:
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


def _top_referrers(session: Session, window: Window) -> list[TopReferrer]:
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


COLUMNS = (
    "sequence",
    "step",
    "queued",
    "sent",
    "failed",
    "held",
    "cancelled",
    "bounced",
    "hard_bounced",
    "soft_bounced",
    "opened",
    "clicked",
    "replied",
    "reply_rate",
    "auto_replied",
    "unsubscribed",
    "ctr",
    # added with the metrics; the columns above keep their places
    "delivered",
    "opened_machine",
    "clicked_machine",
    "period",
    # added with complaints (migration 0006): after the period, so the columns above keep theirs
    "complained",
)

FUNNEL_COLUMNS = (
    "period",
    "asked",
    "visits",
    "machine_visits",
    "visit_rate",
    "referrals",
    "flagged",
    "referrals_per_visit",
    "converted",
    "conversion_rate",
    "value",
    "purchases",
    "revenue",
    "referred_purchases",
    "referral_rate",
    "referral_revenue",
    "customers_acquired",
    "cac",  # the program's figures: on the total row only
    "ltv",
)

REFERRER_COLUMNS = ("email", "referrals", "converted", "value")


def to_json(report: Report) -> str:
    return json.dumps(report.as_dict(), indent=2)


CSV_TABLES = ("steps", "funnel", "referrers")


def to_csv(report: Report, table: str = "steps") -> str:
    """One table as CSV: ``steps`` (the step rows, as before), ``funnel`` (a ``total`` row
    with CAC and LTV, then one row per period) or ``referrers`` (the top referrers)."""
    data = report.as_dict()
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")

    def cell(value: Any) -> Any:
        return "" if value is None else value

    if table == "steps":
        columns, entries = COLUMNS, data["steps"]
    elif table == "funnel":
        program = data["program"]
        total = {**data["referrals"], "period": "total", "cac": program["cac"]}
        columns = FUNNEL_COLUMNS
        entries = [{**total, "ltv": program["ltv"]["value"]}, *data["periods"]]
    elif table == "referrers":
        columns, entries = REFERRER_COLUMNS, data["referrals"]["top_referrers"]
    else:
        raise ValueError(f"table must be one of {', '.join(CSV_TABLES)}, not {table!r}")
    writer.writerow(columns)
    for entry in entries:
        writer.writerow([cell(entry.get(c)) for c in columns])
    return out.getvalue()
