"""Tables. Every email is a row (``messages``, the outbox) before it is an SMTP transaction.

Times are stored as naive UTC (``UtcDateTime`` converts at the boundary) so SQLite and
PostgreSQL compare them the same way.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    func,
    text,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.functions import FunctionElement

# Integer primary keys that are 64-bit on PostgreSQL and ROWID aliases on SQLite.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in Python, naive UTC in the database."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use aware UTC")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Leased:
    """The lease columns of a queue worked through engine.store.lease (the outbox, the notes,
    the webhook deliveries): who holds a row, until when, and the fence every claim bumps."""

    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    fence: Mapped[int] = mapped_column(BigInteger, default=0)


# The columns templates see as ``contact.<name>`` (besides the custom fields).
TEMPLATE_FIELDS = (
    "email",
    "first_name",
    "last_name",
    "company",
    "locale",
    "timezone",
    "kind",
    "nps_score",
    "referral_code",
)


class Contact(Base):
    __tablename__ = "contacts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    first_name: Mapped[str | None] = mapped_column(String(200))
    last_name: Mapped[str | None] = mapped_column(String(200))
    company: Mapped[str | None] = mapped_column(String(200))
    timezone: Mapped[str | None] = mapped_column(String(64))
    locale: Mapped[str | None] = mapped_column(String(35))
    kind: Mapped[str] = mapped_column(String(16), default="customer")
    nps_score: Mapped[int | None] = mapped_column(Integer)
    nps_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # Indexed for the report: customers acquired in a period (CAC).
    customer_since: Mapped[datetime | None] = mapped_column(UtcDateTime, index=True)
    last_complaint_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    fields: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    referral_code: Mapped[str] = mapped_column(String(32), unique=True)
    unsubscribed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # When audience eligibility must next be evaluated (NULL: only a change to the contact can
    # make it eligible). The planner reads this index, so its cost follows due work.
    check_at: Mapped[datetime | None] = mapped_column(UtcDateTime, index=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    # GDPR erasure: the row stays (anonymous counts keep adding up), its personal data goes.
    erased_at: Mapped[datetime | None] = mapped_column(UtcDateTime)

    def template_context(self) -> dict[str, Any]:
        """What templates see as ``contact``: custom fields, then the standard ones; an absent
        value is absent (StrictUndefined holds the email back), never an empty string."""
        ctx: dict[str, Any] = {k: v for k, v in (self.fields or {}).items() if v not in (None, "")}
        for name in TEMPLATE_FIELDS:
            value = getattr(self, name)
            if value not in (None, ""):
                ctx[name] = value
        return ctx


class Enrollment(Base):
    """A contact's run through one sequence. ``key`` makes re-entries and triggers idempotent."""

    __tablename__ = "enrollments"
    __table_args__ = (
        UniqueConstraint("contact_id", "sequence_id", "key"),
        Index("ix_enrollments_due", "status", "next_at"),
        Index("ix_enrollments_contact_seq", "contact_id", "sequence_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    sequence_id: Mapped[str] = mapped_column(String(100))
    key: Mapped[str] = mapped_column(String(64))  # "cycle-N" (audience) or "event-ID" (trigger)
    status: Mapped[str] = mapped_column(
        String(16), default="active"
    )  # active|completed|stopped|held
    position: Mapped[int] = mapped_column(Integer, default=0)  # index of the next step to run
    # The id of that step: a sequence file edited while people are in it keeps them at the same
    # step (found by id); ``position`` is the fallback when the step was removed.
    step: Mapped[str | None] = mapped_column(String(100))
    next_at: Mapped[datetime | None] = mapped_column(UtcDateTime)  # NULL: waiting for a send
    reason: Mapped[str | None] = mapped_column(Text)
    trigger_event_id: Mapped[int | None] = mapped_column(BigId)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class Message(Leased, Base):
    """The outbox. One row per enrollment and step; Message-ID fixed when the row is written."""

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("enrollment_id", "step_id"),
        Index("ix_messages_claim", "status", "due_at"),
        Index("ix_messages_contact", "contact_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    enrollment_id: Mapped[int] = mapped_column(ForeignKey("enrollments.id", ondelete="CASCADE"))
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    sequence_id: Mapped[str] = mapped_column(String(100))
    step_id: Mapped[str] = mapped_column(String(100))
    message_id: Mapped[str] = mapped_column(String(250), unique=True)
    ref: Mapped[bytes] = mapped_column(LargeBinary(16), unique=True)  # opaque id in tracking URLs
    subject: Mapped[str | None] = mapped_column(Text)  # as rendered, kept for threading and reports
    in_reply_to: Mapped[str | None] = mapped_column(String(250))
    references: Mapped[str | None] = mapped_column(Text)
    # queued -> sending -> sent | failed | render_failed | cancelled
    status: Mapped[str] = mapped_column(String(16), default="queued")
    due_at: Mapped[datetime] = mapped_column(UtcDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # Opened, clicked, replied, bounced...: bits of engine.store.engagement, set by database
    # triggers on events (never written by the application).
    engaged: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))


class day(FunctionElement[str]):
    """The UTC day of a stored time, as an expression an index can hold: ``2026-03-02``
    (a string on SQLite, a date on PostgreSQL)."""

    type = String()
    inherit_cache = True


@compiles(day, "sqlite")
def _day_sqlite(element: day, compiler: Any, **kw: Any) -> str:
    # Literal bounds: SQLite matches a query's expression to an index's only without binds.
    return f"substr({compiler.process(element.clauses, **kw)}, 1, 10)"


@compiles(day, "postgresql")
def _day_postgresql(element: day, compiler: Any, **kw: Any) -> str:
    return f"CAST({compiler.process(element.clauses, **kw)} AS DATE)"


def placed_on(sent_at: Any, created_at: Any) -> day:
    """The day an email is placed in time: when it was sent, or written if it never was."""
    return day(func.coalesce(sent_at, created_at))


# Covers the report (engine.report.figures): counts per step, status, engagement and day, the
# contacts asked, and any window, read from the index alone; grouped by day in index order,
# a report by week or month sorts nothing.
Index(
    "ix_messages_report",
    Message.sequence_id,
    Message.step_id,
    Message.status,
    Message.engaged,
    placed_on(Message.sent_at, Message.created_at),
    Message.sent_at,
    Message.created_at,
    Message.contact_id,
)


class Event(Base):
    """Something that happened to a contact; ``handled_at`` NULL: the planner has not reacted."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_contact_type", "contact_id", "type", "occurred_at"),
        Index("ix_events_message", "message_id", "type"),
        Index("ix_events_pending", "handled_at", "id"),
        # Events of a type in a time range; covers the report's people / machine split.
        Index("ix_events_type_time", "type", "occurred_at", "machine"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    type: Mapped[str] = mapped_column(String(40))
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id", ondelete="SET NULL"))
    message_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id", ondelete="SET NULL"))
    sequence_id: Mapped[str | None] = mapped_column(String(100))
    step_id: Mapped[str | None] = mapped_column(String(100))
    occurred_at: Mapped[datetime] = mapped_column(UtcDateTime)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    handled_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # Machine traffic (image proxies such as Apple Mail Privacy Protection, link scanners):
    # recorded, counted apart, never taken as a person's open or click.
    machine: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class Referral(Base):
    __tablename__ = "referrals"
    __table_args__ = (UniqueConstraint("referrer_id", "friend_email"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    referrer_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    friend_email: Mapped[str] = mapped_column(String(320), index=True)
    friend_name: Mapped[str | None] = mapped_column(String(200))
    friend_contact_id: Mapped[int | None] = mapped_column(
        ForeignKey("contacts.id", ondelete="SET NULL")
    )
    channel: Mapped[str] = mapped_column(String(16), default="cli")
    # introduced -> contacted -> converted | lost; "detected" (found in a reply) until reviewed
    status: Mapped[str] = mapped_column(String(16), default="introduced")
    value: Mapped[Decimal | None] = mapped_column(Numeric(12, 2))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    converted_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # Recognised and never rewarded: self_referral | duplicate | existing_customer
    flag: Mapped[str | None] = mapped_column(String(32))
    # The friend's own consent (a referrer's word is not consent): the wording they agreed to.
    consent_text: Mapped[str | None] = mapped_column(Text)
    consent_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class Reward(Base):
    """A thank-you gift, issued once per converted referral and role (referrer, friend)."""

    __tablename__ = "rewards"
    __table_args__ = (UniqueConstraint("referral_id", "role"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    referral_id: Mapped[int] = mapped_column(ForeignKey("referrals.id", ondelete="CASCADE"))
    contact_id: Mapped[int | None] = mapped_column(
        ForeignKey("contacts.id", ondelete="SET NULL"), index=True
    )
    role: Mapped[str] = mapped_column(String(16))  # referrer | friend
    kind: Mapped[str] = mapped_column(String(16))  # credit | code
    amount: Mapped[Decimal | None] = mapped_column(Numeric(12, 2))
    code: Mapped[str | None] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text)
    issued_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Purchase(Base):
    """A purchase (CSV import, events API): the base of referral rate, revenue and LTV."""

    __tablename__ = "purchases"
    __table_args__ = (Index("ix_purchases_occurred", "occurred_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    external_id: Mapped[str | None] = mapped_column(String(200), unique=True)  # order id
    contact_id: Mapped[int | None] = mapped_column(
        ForeignKey("contacts.id", ondelete="SET NULL"), index=True
    )
    referral_id: Mapped[int | None] = mapped_column(
        ForeignKey("referrals.id", ondelete="SET NULL"), index=True
    )
    amount: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    currency: Mapped[str] = mapped_column(String(3), default="")
    occurred_at: Mapped[datetime] = mapped_column(UtcDateTime)
    source: Mapped[str] = mapped_column(String(16))  # import | api | cli
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class WebhookDelivery(Leased, Base):
    """One event for one webhook URL: a durable queue, retried with backoff."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("event_id", "url"),
        Index("ix_webhook_deliveries_due", "status", "next_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2000))
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|delivered|failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_at: Mapped[datetime] = mapped_column(UtcDateTime)
    last_status: Mapped[int | None] = mapped_column(Integer)  # HTTP status of the last try
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class Suppression(Base):
    __tablename__ = "suppressions"

    email: Mapped[str] = mapped_column(String(320), primary_key=True)
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Notification(Leased, Base):
    """An email to a person on the team (owner, sales, account manager), e.g. "X replied".

    Its own small outbox: ``key`` makes each notification idempotent (one per event and role).
    """

    __tablename__ = "notifications"
    __table_args__ = (Index("ix_notifications_due", "status", "due_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    key: Mapped[str] = mapped_column(String(200), unique=True)
    role: Mapped[str] = mapped_column(String(32))
    to_email: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id", ondelete="SET NULL"))
    event_id: Mapped[int | None] = mapped_column(ForeignKey("events.id", ondelete="SET NULL"))
    status: Mapped[str] = mapped_column(String(16), default="queued")  # queued|sent|failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    due_at: Mapped[datetime] = mapped_column(UtcDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class Meta(Base):
    """Small facts the engine keeps about itself (e.g. the audience rules last planned with)."""

    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Alert(Base):
    """Something a person must look at; ``pause_until`` set means sending is paused until then."""

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(40))
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    pause_until: Mapped[datetime | None] = mapped_column(UtcDateTime, index=True)


class SenderQuota(Base):
    """A sender's shared sending limits (engine.send.quota), one row per sender id ("default"
    for ``[sender]``): the rate's next free slot and the day's count under the daily cap."""

    __tablename__ = "sender_quotas"

    sender_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    # Seconds since the epoch on the database's clock: every process and host reads one clock.
    next_slot: Mapped[float] = mapped_column(Double, default=0.0, server_default=text("0"))
    first_day: Mapped[date | None] = mapped_column(Date)  # the sender's day of its first send
    day: Mapped[date | None] = mapped_column(Date)  # the day ``used`` counts
    used: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
