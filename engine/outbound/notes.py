"""Notes to the team, sent: ``Notifier`` delivers the notes ``engine.records.notes`` queued,
through the same SMTP transport as campaign emails, with retries; a note never delays or
blocks a campaign email.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, update

from engine.base.clock import Clock
from engine.base.errors import PermanentFailure, PolicyFailure, TemporaryFailure
from engine.mail.mime import OutgoingEmail, build_message, make_message_id
from engine.mail.smtp import Transport
from engine.program.settings import SenderSettings
from engine.store.db import Database, lock_rows
from engine.store.models import Notification

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
BATCH = 100
# A note claimed by a worker that died is sent again after this long.
LEASE = timedelta(minutes=10)


@dataclass(kw_only=True)
class Notifier:
    """Sends due notes; one pass per ``send_due`` call."""

    db: Database
    sender: SenderSettings
    clock: Clock
    transport: Transport

    def _claim(self) -> list[Notification]:
        now = self.clock.now()
        with self.db.write() as session:
            rows = list(
                session.scalars(
                    lock_rows(
                        self.db,
                        select(Notification)
                        .where(Notification.status == "queued", Notification.due_at <= now)
                        .order_by(Notification.due_at)
                        .limit(BATCH),
                    )
                )
            )
            for row in rows:
                # Pushed past the lease: a worker that dies mid-send leaves it due again later.
                row.due_at = now + LEASE
                row.attempts += 1
            session.flush()
            session.expunge_all()
            return rows

    def _finish(self, note_id: int, **values: object) -> None:
        with self.db.write() as session:
            session.execute(update(Notification).where(Notification.id == note_id).values(**values))

    async def send_due(self) -> int:
        """Send every due note; returns how many went out."""
        sent = 0
        sender = self.sender
        for note in self._claim():
            now = self.clock.now()
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
            except TemporaryFailure as exc:
                retry = now + timedelta(minutes=2 ** min(note.attempts, 8))
                final = note.attempts >= MAX_ATTEMPTS
                self._finish(
                    note.id,
                    status="failed" if final else "queued",
                    due_at=retry,
                    last_error=str(exc),
                )
                log.warning("notification_retry id=%s error=%s", note.id, exc)
            except (PermanentFailure, PolicyFailure) as exc:
                self._finish(note.id, status="failed", last_error=str(exc))
                log.error("notification_failed id=%s error=%s", note.id, exc)
            else:
                self._finish(note.id, status="sent", sent_at=now, last_error=None)
                sent += 1
        return sent
