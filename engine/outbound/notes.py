"""Notes to the team, sent: ``Notifier`` delivers the notes ``engine.records.notes`` queued,
through the same SMTP transport as campaign emails, with retries; a note never delays or
blocks a campaign email.

The notes are a fenced lease queue, as the outbox is (engine.store.lease): a claim leases due
notes to the worker for ``LEASE`` (a worker that dies leaves them to be claimed again then);
before each SMTP transaction the worker renews its lease, and it writes the result only while
the note is still its claim's. A worker that lost its lease neither sends nor records.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select

from engine.base.clock import Clock
from engine.base.errors import TemporaryFailure, TransportError
from engine.base.retry import retry_delay
from engine.mail.mime import OutgoingEmail, build_message, make_message_id
from engine.mail.smtp import Transport
from engine.program.settings import SenderSettings
from engine.store.db import Database
from engine.store.lease import NOTES, Claimed
from engine.store.models import Notification

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
BATCH = 100
# A note claimed by a worker that died is sent again after this long.
LEASE = timedelta(minutes=10)
# After a temporary failure: 2 minutes, doubled per attempt, at most 256 (no jitter: notes
# are few, and they do not come back in crowds).
RETRY_BASE_SECONDS = 120.0
RETRY_MAX_SECONDS = 256 * 60.0


@dataclass(frozen=True)
class Note:
    """A claimed note: the claim (its fencing token) and what to send."""

    claimed: Claimed
    to_email: str
    subject: str
    body: str


@dataclass(kw_only=True)
class Notifier:
    """Sends due notes; one pass per ``send_due`` call."""

    db: Database
    sender: SenderSettings
    clock: Clock
    transport: Transport
    worker_id: str

    async def send_due(self) -> int:
        """Send every due note; returns how many went out."""
        sent = 0
        for note in self.claim():
            sent += await self.send(note)
        return sent

    def claim(self, limit: int = BATCH) -> list[Note]:
        """Lease up to ``limit`` due notes to this worker, the oldest due first."""
        now = self.clock.now()
        with self.db.write() as session:
            claimed = NOTES.claim(
                session,
                self.db,
                NOTES.select_due(Notification.id, now),
                owner=self.worker_id,
                until=now + LEASE,
                limit=limit,
            )
            by_id = {c.id: c for c in claimed}
            rows = session.execute(
                select(
                    Notification.id, Notification.to_email, Notification.subject, Notification.body
                )
                .where(Notification.id.in_(by_id))
                .order_by(Notification.due_at, Notification.id)
            )
            return [
                Note(by_id[id_], to_email, subject, body) for id_, to_email, subject, body in rows
            ]

    async def send(self, note: Note) -> bool:
        """Send one claimed note and record the result; True when it went out and was
        recorded. A note whose lease this worker lost is neither sent nor recorded."""
        now = self.clock.now()
        with self.db.write() as session:
            ours = NOTES.extend(session, note.claimed, now=now, until=now + LEASE)
        if not ours:
            log.warning(
                "notification_lease_lost id=%s fence=%s", note.claimed.id, note.claimed.fence
            )
            return False
        sender = self.sender
        data = build_message(
            OutgoingEmail(
                message_id=make_message_id(sender.from_email.rpartition("@")[2]),
                from_name=f"{sender.from_name} referral engine",
                from_email=sender.from_email,
                reply_to="",
                to_name="",
                to_email=note.to_email,
                subject=note.subject,
                html="",
                text=note.body,
                date=now,
                list_unsubscribe_url="",
                note=True,
            )
        )
        try:
            await self.transport.send(sender.from_email, note.to_email, data)
        except TransportError as exc:
            self.record(note, exc)
            return False
        return self.record(note, None)

    def record(self, note: Note, failure: TransportError | None) -> bool:
        """Write an attempt's result (``failure`` None: sent), fenced on the claim: False,
        and nothing written, when the note is no longer this claim's."""
        now = self.clock.now()
        attempt = note.claimed.attempt
        values: dict[str, object]
        if failure is None:
            values = {"status": "sent", "sent_at": now, "last_error": None}
        elif isinstance(failure, TemporaryFailure):
            delay = retry_delay(
                attempt, RETRY_BASE_SECONDS, RETRY_MAX_SECONDS, retry_after=failure.retry_after
            )
            values = {
                "status": "failed" if attempt >= MAX_ATTEMPTS else "queued",
                "due_at": now + timedelta(seconds=delay),
                "last_error": str(failure),
            }
        else:
            values = {"status": "failed", "last_error": str(failure)}
        with self.db.write() as session:
            recorded = NOTES.finish(session, note.claimed, **values)
        if not recorded:
            log.warning(
                "notification_lease_lost id=%s fence=%s", note.claimed.id, note.claimed.fence
            )
        elif isinstance(failure, TemporaryFailure):
            log.warning("notification_retry id=%s error=%s", note.claimed.id, failure)
        elif failure is not None:
            log.error("notification_failed id=%s error=%s", note.claimed.id, failure)
        return recorded
