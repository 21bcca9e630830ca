"""What the tracking app writes, one short transaction per call (run in worker threads).

Every lookup goes through a message's random public ``ref`` (from a verified token) or a
contact's referral code: no sequential id or address ever comes from a URL.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time
from typing import Any, cast

from sqlalchemy import Connection, Table, select, update
from sqlalchemy.orm import Session

from engine.inbound.tracking.bots import HONEYPOT_WINDOW, classify_click
from engine.inbound.tracking.buffer import Hit
from engine.records.contacts import apply_nps_answer
from engine.records.events import record_event
from engine.store.db import Database, transaction
from engine.store.models import Contact, Event, Message
from engine.store.prepared import bind_processor

_events = cast(Table, Event.__table__)
_messages = cast(Table, Message.__table__)
LOOKUP_CHUNK = 500
HONEYPOT = "honeypot"


@dataclass(frozen=True)
class Target:
    """The message a page token points at, and its contact (a snapshot for rendering)."""

    email: str
    locale: str | None
    unsubscribed: bool
    fields: Mapping[str, Any]


def _target(contact: Contact) -> Target:
    return Target(
        email=contact.email,
        locale=contact.locale,
        unsubscribed=contact.unsubscribed_at is not None,
        fields=dict(contact.fields or {}),
    )


def _load(session: Session, ref: bytes, *, lock: bool = False) -> tuple[Message, Contact] | None:
    message = session.scalar(select(Message).where(Message.ref == ref))
    if message is None:
        return None
    query = select(Contact).where(Contact.id == message.contact_id)
    # Two posts for one contact at once (a mail provider's one-click and the person's own
    # click): the second waits for the first and then sees its result.
    contact = session.scalar(query.with_for_update() if lock else query)
    return None if contact is None else (message, contact)


def load_target(db: Database, ref: bytes) -> Target | None:
    """The message with public id ``ref`` and its contact, or None when there is none."""
    with db.session() as session:
        found = _load(session, ref)
        return None if found is None else _target(found[1])


# -- opens and clicks (HitBuffer's writer) ----------------------------------------------------


def _honeypot_hits(
    conn: Connection | Session, message_ids: Iterable[int], start: datetime, end: datetime
) -> dict[int, list[datetime]]:
    """When each message's hidden link was requested between ``start`` and ``end``."""
    found: dict[int, list[datetime]] = defaultdict(list)
    ids = list(message_ids)
    for i in range(0, len(ids), LOOKUP_CHUNK):
        rows = conn.execute(
            select(_events.c.message_id, _events.c.occurred_at, _events.c.data).where(
                _events.c.message_id.in_(ids[i : i + LOOKUP_CHUNK]),
                _events.c.type == "clicked",
                _events.c.machine.is_(True),
                _events.c.occurred_at.between(start, end),
            )
        )
        for message_id, at, data in rows:
            if (data or {}).get("machine") == HONEYPOT and message_id is not None:
                found[message_id].append(at)
    return found


# Opens written per INSERT ... SELECT (4 parameters each, far below every driver's limit).
OPENS_PER_STATEMENT = 500


class HitWriter:
    """Records hits as ``opened`` / ``clicked`` events (the ``HitBuffer``'s writer).

    Opens, nearly all the traffic, go in as one ``INSERT ... SELECT`` per 500 that joins their
    refs to ``messages`` inside the database (hits for unknown messages, e.g. a preview's, join
    nothing); ``prepare`` builds its parameters on the event loop, through the column types' own
    bind processors (SQLite timestamps: a cheaper equal one, checked against the type's when the
    writer is made), so values are stored exactly as Core would store them.

    Clicks (few) are classified again in ``write`` with what only the database knows: a click
    within seconds of the email's delivery, or next to a request for its honeypot link, is a
    scanner's. A honeypot hit also marks the email's "human" clicks around it as machine traffic.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        dialect = db.engine.dialect
        self.mark = "?" if dialect.paramstyle == "qmark" else "%s"
        self.postgres = dialect.name == "postgresql"

        self.ref = bind_processor(_messages.c.ref.type, dialect)
        self.at = bind_processor(_events.c.occurred_at.type, dialect)
        self.data = bind_processor(_events.c.data.type, dialect)
        self.machine = bind_processor(_events.c.machine.type, dialect)
        self._encoded: dict[str | None, tuple[Any, Any]] = {}  # machine reason -> data, flag
        self._opens: dict[int, str] = {}
        self.insert = (
            "INSERT INTO events (type, contact_id, message_id, sequence_id, step_id, "
            f"occurred_at, data, machine, handled_at) VALUES ({', '.join([self.mark] * 8)}, NULL)"
        )

    def lookup(self, n: int) -> str:
        """The messages (id, ref, contact_id, sequence_id, step_id) with ``n`` given refs."""
        return (
            "SELECT id, ref, contact_id, sequence_id, step_id FROM messages "
            f"WHERE ref IN ({', '.join([self.mark] * n)})"
        )

    def prepare(self, hits: list[Hit]) -> tuple[list[tuple[str, tuple[Any, ...]]], list[Hit]]:
        """The open statements with their parameters, and the clicks (written as they are)."""
        statements: list[tuple[str, tuple[Any, ...]]] = []
        opens = [h for h in hits if h.kind == "opened"]
        clicks = [h for h in hits if h.kind != "opened"]
        ref, at, encoded = self.ref, self.at, self._encoded
        for i in range(0, len(opens), OPENS_PER_STATEMENT):
            chunk = opens[i : i + OPENS_PER_STATEMENT]
            params: list[Any] = []
            for h in chunk:
                values = encoded.get(h.machine)
                if values is None:
                    data = {"machine": h.machine} if h.machine else {}
                    values = encoded[h.machine] = (
                        self.data(data),
                        self.machine(h.machine is not None),
                    )
                params += (ref(h.ref), at(h.at), *values)
            statements.append((self._opens_statement(len(chunk)), tuple(params)))
        return statements, clicks

    def write(self, prepared: tuple[list[tuple[str, tuple[Any, ...]]], list[Hit]]) -> int:
        """Run what ``prepare`` made in one transaction; the number of events written."""
        statements, clicks = prepared

        def work(conn: Connection) -> int:
            written = sum(conn.exec_driver_sql(sql, params).rowcount for sql, params in statements)
            return written + (_write_clicks(conn, self, clicks) if clicks else 0)

        with self.db.write_connection() as conn:
            return transaction(conn, work)

    def _opens_statement(self, n: int) -> str:
        """INSERT ... SELECT of ``n`` opens given as (ref, occurred_at, data, machine)."""
        found = self._opens.get(n)
        if found is None:
            m = self.mark
            # SQLite names a VALUES table's columns column1, column2 ...; PostgreSQL gets the
            # same names, and casts (a parameter alone has no type there).
            if self.postgres:
                row = f"({m}::bytea, {m}::timestamp, {m}::json, {m}::boolean)"
                source = "v(column1, column2, column3, column4)"
            else:
                row = f"({m}, {m}, {m}, {m})"
                source = "v"
            found = self._opens[n] = (
                "INSERT INTO events (type, contact_id, message_id, sequence_id, step_id, "
                "occurred_at, data, machine, handled_at) "
                "SELECT 'opened', m.contact_id, m.id, m.sequence_id, m.step_id, v.column2, "
                f"v.column3, v.column4, NULL FROM (VALUES {', '.join([row] * n)}) AS {source} "
                "JOIN messages AS m ON m.ref = v.column1"
            )
        return found


def _write_clicks(conn: Connection, writer: HitWriter, clicks: list[Hit]) -> int:
    """Clicks (few): each is looked at with its email's delivery time and honeypot hits."""
    refs = list({h.ref for h in clicks})
    messages: dict[bytes, Any] = {}
    for i in range(0, len(refs), LOOKUP_CHUNK):
        chunk = refs[i : i + LOOKUP_CHUNK]
        params = tuple(writer.ref(ref) for ref in chunk)
        for row in conn.exec_driver_sql(writer.lookup(len(chunk)), params).all():
            messages[bytes(row[1])] = row
    known = [h for h in clicks if h.ref in messages]
    if not known:
        return 0
    # sent_at read through Core: its result type turns the stored value back into UTC.
    ids = {messages[h.ref][0] for h in known}
    query = select(_messages.c.id, _messages.c.sent_at).where(_messages.c.id.in_(ids))
    sent_at = {message_id: at for message_id, at in conn.execute(query)}
    start = min(h.at for h in known) - HONEYPOT_WINDOW
    end = max(h.at for h in known) + HONEYPOT_WINDOW
    honeypots = _honeypot_hits(conn, ids, start, end)
    for h in known:
        if h.honeypot:
            honeypots[messages[h.ref][0]].append(h.at)
    rows: list[tuple[Any, ...]] = []
    for h in known:
        m = messages[h.ref]
        reason = HONEYPOT if h.honeypot else h.machine
        if reason is None:
            reason = classify_click(h.at, sent_at.get(m[0]), honeypots.get(m[0], []))
        data: dict[str, Any] = {}
        if h.url:
            data["url"] = h.url
        if reason is not None:
            data["machine"] = reason
        at, payload, machine = (
            writer.at(h.at),
            writer.data(data),
            writer.machine(reason is not None),
        )
        rows.append((h.kind, m[2], m[0], m[3], m[4], at, payload, machine))
    conn.exec_driver_sql(writer.insert, rows)
    for h in known:
        if h.honeypot:
            conn.execute(
                update(_events)
                .where(
                    _events.c.message_id == messages[h.ref][0],
                    _events.c.type == "clicked",
                    _events.c.machine.is_(False),
                    _events.c.occurred_at.between(h.at - HONEYPOT_WINDOW, h.at + HONEYPOT_WINDOW),
                )
                .values(machine=True)
            )
    return len(rows)


# -- unsubscribe ---------------------------------------------------------------------------


def unsubscribe(db: Database, ref: bytes, now: datetime, *, via: str) -> Target | None:
    """Unsubscribe the contact of message ``ref`` at once (None: an unknown message); repeating
    it is harmless.

    In one transaction: ``contacts.unsubscribed_at``, the ``unsubscribed`` event (the planner
    then stops every enrollment) and the cancellation of every email still queued or held for
    them. An email already handed to a sending worker is stopped by the sender's own re-check.
    """
    with db.write() as session:
        found = _load(session, ref, lock=True)
        if found is None:
            return None
        message, contact = found
        if contact.unsubscribed_at is not None:
            return _target(contact)
        contact.unsubscribed_at = now
        contact.updated_at = now
        record_event(
            session, "unsubscribed", now, contact_id=contact.id, message=message, data={"via": via}
        )
        session.execute(
            update(Message)
            .where(
                Message.contact_id == contact.id,
                Message.status.in_(("queued", "render_failed")),
            )
            .values(status="cancelled", last_error="unsubscribed", lease_owner=None)
            .execution_options(synchronize_session=False)
        )
        return _target(contact)


# -- NPS -------------------------------------------------------------------------------------


def answer_nps(
    db: Database, ref: bytes, score: int, now: datetime, machine: str | None
) -> Target | None:
    """A click on score ``score`` in the survey email; None for an unknown message.

    A person's click is the answer (latest wins; the same click twice is one answer). A
    scanner's (``machine``, a click within seconds of delivery or next to the honeypot) is
    recorded as a machine click only, so scanners never answer surveys.
    """
    with db.write() as session:
        found = _load(session, ref, lock=True)
        if found is None:
            return None
        message, contact = found
        if machine is None:
            honeypots = _honeypot_hits(
                session, [message.id], now - HONEYPOT_WINDOW, now + HONEYPOT_WINDOW
            )
            machine = classify_click(now, message.sent_at, honeypots.get(message.id, []))
        if machine is not None:
            scanned = record_event(
                session,
                "clicked",
                now,
                contact_id=contact.id,
                message=message,
                data={"nps": score, "machine": machine},
            )
            scanned.machine = True
        else:
            apply_nps_answer(session, contact, score, now, source="email", message=message)
        return _target(contact)


def save_nps_page(
    db: Database, ref: bytes, score: int, improve: str, other: str, now: datetime
) -> Target | None:
    """The follow-up page: the score (a change is a new answer) and what they wrote, kept as
    an ``nps.comment`` event (its data: score, improve, other) for routing to pass on."""
    with db.write() as session:
        found = _load(session, ref, lock=True)
        if found is None:
            return None
        message, contact = found
        apply_nps_answer(session, contact, score, now, source="page", message=message)
        if improve or other:
            record_event(
                session,
                "nps.comment",
                now,
                contact_id=contact.id,
                message=message,
                data={"score": score, "improve": improve, "other": other},
            )
        return _target(contact)


# -- referral page and forms -----------------------------------------------------------------


@dataclass(frozen=True)
class Referrer:
    """The contact behind a referral code, as the referral page shows them."""

    email: str
    first_name: str | None
    locale: str | None


def visit_referral_page(
    db: Database, code: str, now: datetime, *, visitor: str | None, machine: str | None
) -> Referrer | None:
    """The referrer with referral code ``code`` (None: no such code). With ``visitor`` (a
    keyed hash naming one visitor of this page on this UTC day), a ``referral.visited`` event
    on them, unless that visitor was counted today already (by any copy of the app); machine
    traffic is flagged and counted apart."""
    if visitor is None:
        with db.session() as session:
            contact = session.scalar(select(Contact).where(Contact.referral_code == code))
    else:
        with db.write() as session:
            # Locked: two copies of the app counting one visitor at once count them once.
            contact = session.scalar(
                select(Contact).where(Contact.referral_code == code).with_for_update()
            )
            if contact is not None and not _visited_today(session, contact.id, visitor, now):
                data = {"visitor": visitor, **({"machine": machine} if machine else {})}
                ev = record_event(
                    session, "referral.visited", now, contact_id=contact.id, data=data
                )
                ev.machine = machine is not None
    if contact is None:
        return None
    return Referrer(contact.email, contact.first_name, contact.locale)


def _visited_today(session: Session, contact_id: int, visitor: str, now: datetime) -> bool:
    """Whether ``visitor`` was counted on this referrer's page since the start of ``now``'s
    UTC day (the referrer's visits of the day, by the contact/type/time index)."""
    day = datetime.combine(now.astimezone(UTC).date(), time.min, tzinfo=UTC)
    found = session.scalar(
        select(Event.id)
        .where(
            Event.contact_id == contact_id,
            Event.type == "referral.visited",
            Event.occurred_at >= day,
            Event.data["visitor"].as_string() == visitor,
        )
        .limit(1)
    )
    return found is not None


def save_partner(
    db: Database, ref: bytes, answers: Mapping[str, str], now: datetime
) -> Target | None:
    """The partner intake form: the answers go into the contact's ``fields`` (templates and
    audience rules see them as ``contact.ideal_client`` ...) and a ``form.submitted`` event
    (``{"form": "partner", ...answers}``) stops the partner reminder. Sending the same answers
    again records nothing new."""
    with db.write() as session:
        found = _load(session, ref, lock=True)
        if found is None:
            return None
        message, contact = found
        fields = dict(contact.fields or {})
        if any(fields.get(k, "") != v for k, v in answers.items()):
            contact.fields = {**fields, **answers}
            contact.updated_at = now
            contact.check_at = now  # audience rules may read these fields
            record_event(
                session,
                "form.submitted",
                now,
                contact_id=contact.id,
                message=message,
                data={"form": "partner", **answers},
            )
        return _target(contact)


def save_testimonial(
    db: Database, ref: bytes, text: str, publish: bool, now: datetime
) -> Target | None:
    """A testimonial, kept in a ``form.submitted`` event (``{"form": "testimonial", "text",
    "publish_with_name"}``); the same text sent twice is recorded once."""
    with db.write() as session:
        found = _load(session, ref, lock=True)
        if found is None:
            return None
        message, contact = found
        data = {"form": "testimonial", "text": text, "publish_with_name": publish}
        earlier = session.scalars(
            select(Event.data).where(
                Event.contact_id == contact.id,
                Event.message_id == message.id,
                Event.type == "form.submitted",
            )
        ).all()
        if data not in earlier:
            record_event(
                session, "form.submitted", now, contact_id=contact.id, message=message, data=data
            )
        return _target(contact)
