"""The outbox as a fenced lease queue (engine.store.lease): claiming due emails for a worker,
the fencing check before SMTP, marking an email sent, giving rows back.

A claim bumps the row's ``fence``. Before talking SMTP and when recording the result, the
worker proves it still holds the lease with ``WHERE id = :id AND fence = :fence``: a worker that
wakes up after its lease expired (and someone else re-claimed the row) can neither send nor
record. The check before SMTP also repeats the claim's conditions (enrollment active, contact
not unsubscribed or suppressed, no event pending), since a batch can take minutes; a row that
fails only those goes back to the queue. A crash leaves rows in ``sending``; once their lease
runs out they are claimed again and go out with the same Message-ID.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Select,
    Table,
    and_,
    bindparam,
    exists,
    func,
    or_,
    select,
    update,
)

from engine.base.clock import Clock
from engine.records.pauses import active_pause
from engine.send.quota import DailyQuota
from engine.store.db import Database
from engine.store.lease import OUTBOX, Claimed
from engine.store.models import Contact, Enrollment, Event, Message, Suppression
from engine.store.prepared import Prepared

# The per-message writes are Core statements compiled once (store.prepared): they skip the
# ORM's bulk-update machinery and Core's per-execution cache-key walk, which cost several
# times what SQLite spends running them.
_messages = OUTBOX.table
_enrollments = cast(Table, Enrollment.__table__)
_contacts = cast(Table, Contact.__table__)
_events = cast(Table, Event.__table__)
_suppressions = cast(Table, Suppression.__table__)
# The claim's conditions, checked again right before SMTP: a batch takes minutes, and a
# reply, unsubscribe, complaint or stop recorded meanwhile must hold back an email not yet sent.
_still_wanted = and_(
    exists().where(
        _enrollments.c.id == _messages.c.enrollment_id, _enrollments.c.status == "active"
    ),
    exists().where(
        _contacts.c.id == _messages.c.contact_id,
        _contacts.c.unsubscribed_at.is_(None),
        ~exists().where(_suppressions.c.email == _contacts.c.email),
    ),
    ~exists().where(_events.c.contact_id == _messages.c.contact_id, _events.c.handled_at.is_(None)),
)
_EXTEND_LEASE = Prepared(OUTBOX.extend_statement(_still_wanted))
# A leased row that failed only the re-check goes back to the queue at once (no attempt was
# made); the claim skips it until the planner has dealt with what stopped it.
_GIVE_BACK = Prepared(OUTBOX.give_back_statement(live=True))
# Cancelling (planner.end_enrollment) does not bump the fence: an email whose enrollment was
# stopped while its SMTP transaction was under way did go out, and is recorded as sent.
_MARK_SENT = Prepared(
    update(_messages)
    .where(OUTBOX.fenced, or_(_messages.c.status == "sending", _messages.c.status == "cancelled"))
    .values(
        status="sent",
        sent_at=bindparam("b_now"),
        # None keeps the subject already stored (a caller that did not render).
        subject=func.coalesce(
            bindparam("b_subject", type_=_messages.c.subject.type), _messages.c.subject
        ),
        lease_owner=None,
        lease_until=None,
        last_error=None,
    )
)
# The next step's wait counts from the moment this email actually left.
_START_NEXT_WAIT = Prepared(
    update(_enrollments)
    .where(
        _enrollments.c.id
        == select(_messages.c.enrollment_id)
        .where(_messages.c.id == bindparam("b_id"))
        .scalar_subquery(),
        _enrollments.c.status == "active",
        _enrollments.c.next_at.is_(None),
    )
    .values(next_at=bindparam("b_now"))
)


@dataclass(frozen=True, kw_only=True)
class Claims:
    """One worker's claims on the outbox: ``worker_id`` holds what it claims for ``lease``,
    within the sender's daily cap (``quota``, counted in the claim's transaction)."""

    db: Database
    clock: Clock
    worker_id: str
    lease: timedelta
    quota: DailyQuota | None = None

    @staticmethod
    def claimable(columns: Any, now: datetime) -> Select[Any]:
        """Rows ``claim`` may take at ``now``: due (or their lease expired) and still wanted."""
        pending_event = exists().where(
            Event.contact_id == Message.contact_id, Event.handled_at.is_(None)
        )
        suppressed = exists().where(Suppression.email == Contact.email)
        return (
            OUTBOX.select_due(columns, now)
            .join(Enrollment, Enrollment.id == Message.enrollment_id)
            .join(Contact, Contact.id == Message.contact_id)
            .where(
                Enrollment.status == "active",
                Contact.unsubscribed_at.is_(None),
                ~suppressed,
                ~pending_event,
            )
        )

    def count_due(self) -> int:
        """How many emails ``claim`` could take now (for a progress bar; not a promise)."""
        with self.db.session() as session:
            return session.scalar(self.claimable(func.count(), self.clock.now())) or 0

    def claim(self, limit: int, now: datetime | None = None) -> list[Claimed]:
        """Take up to ``limit`` due rows (or rows whose lease expired) under a fresh lease, at
        most what today's cap has room for; none while sending is paused."""
        now = now or self.clock.now()
        with self.db.write() as session:
            if active_pause(session, now) is not None:
                return []
            if self.quota is not None and (limit := self.quota.take(session, now, limit)) <= 0:
                return []
            claimed = OUTBOX.claim(
                session,
                self.db,
                self.claimable(Message.id, now),
                owner=self.worker_id,
                until=now + self.lease,
                limit=limit,
            )
            if self.quota is not None:
                self.quota.charge(session, len(claimed))
            return claimed

    def release(self, claimed: list[Claimed]) -> None:
        """Give rows back unsent (shutdown, pause); they keep their Message-ID and attempts-1."""
        if claimed:
            with self.db.write() as session:
                OUTBOX.give_back(session, claimed)

    def fence(self, conn: Connection, c: Claimed) -> bool | None:
        """Fencing check before SMTP: extend the lease only if nobody re-claimed the row and
        the email is still wanted (enrollment active, contact neither unsubscribed nor
        suppressed, no event waiting for the planner).

        True: send it. None: still ours but no longer wanted, so it went back to the queue.
        False: the lease is lost (re-claimed, expired or the row was cancelled).
        """
        now = self.clock.now()
        ours = {"b_id": c.id, "b_fence": c.fence, "b_now": now}
        if _EXTEND_LEASE.run(conn, **ours, b_until=now + self.lease).rowcount:
            return True
        if _GIVE_BACK.run(conn, **ours).rowcount:
            return None
        return False

    def mark_sent(self, conn: Connection, c: Claimed, subject: str | None) -> bool:
        """Mark the row sent (with the subject it went out with) and start the next wait,
        unless the row is no longer ours (fenced off). True if it was marked."""
        now = self.clock.now()
        marked = _MARK_SENT.run(conn, b_id=c.id, b_fence=c.fence, b_now=now, b_subject=subject)
        if not marked.rowcount:
            return False
        _START_NEXT_WAIT.run(conn, b_id=c.id, b_now=now)
        return True
