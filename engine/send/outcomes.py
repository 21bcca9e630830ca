"""What becomes of a claimed email that did not simply go out: held back (a template error, a
step gone), deferred to its send window, retried with backoff, failed or bounced, rejected as
unsendable, or requeued while sending pauses (the relay cannot be reached, or refuses us).

Only an answer about an email (a 4xx or 5xx to its MAIL, RCPT or DATA) counts against that
email. A relay that cannot be reached at all (refused, timed out, a refused login or TLS) is no
email's fault: the email goes back to the queue untouched and sending pauses as a whole until
the next probe (engine.records.pauses).

Each is one fenced result write through the lease queue (engine.store.lease) plus its effects
(an enrollment held or stopped, a suppression, an alert), in one transaction; a worker that is
no longer the row's holder changes nothing and counts the email as skipped.
"""

from __future__ import annotations

import logging
import ssl
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import aiosmtplib
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from engine.base.clock import Clock
from engine.base.errors import PermanentFailure, PolicyFailure, TemporaryFailure, TransportError
from engine.base.retry import retry_delay
from engine.program.sequences import Sequence
from engine.program.settings import Settings
from engine.records.events import record_event, schedule_reentry, suppress
from engine.records.health import short_reason
from engine.records.pauses import PauseKind, active_pause, relay_failed
from engine.send.batch import Loaded
from engine.store.db import Database
from engine.store.lease import OUTBOX, Claimed
from engine.store.models import Alert, Contact, Enrollment, Message

log = logging.getLogger("engine.sender")

# A retry's wait is shortened by up to this much of it, so that emails refused together
# (a greylisting server) do not all come back at the same second.
RETRY_JITTER = 0.2


@dataclass
class SendStats:
    sent: int = 0
    retried: int = 0
    failed: int = 0
    bounced: int = 0
    render_failed: int = 0
    skipped: int = 0  # lost the lease or cancelled meanwhile
    deferred: int = 0  # due while the send window was closed: queued for its opening
    paused: bool = False
    pause_reason: str | None = None  # why sending paused during this pass
    errors: list[str] = field(default_factory=list)
    retry_reasons: Counter[str] = field(default_factory=Counter)  # why emails wait for a retry
    held_reasons: Counter[str] = field(default_factory=Counter)  # why emails are held back

    def top_reasons(self, count: int = 3) -> list[str]:
        """The most frequent reasons for retrying and holding, ``retrying 12: 451 4.3.0 ...``."""
        lines = [f"retrying {n}: {r}" for r, n in self.retry_reasons.most_common(count)]
        return lines + [f"held {n}: {r}" for r, n in self.held_reasons.most_common(count)]


def relay_problem(exc: TransportError) -> PauseKind | None:
    """The pause kind of a failure to reach the relay at all (before any MAIL FROM), or None
    for an answer about one email.

    engine.mail.smtp raises the connection's failures from aiosmtplib's own: a refused or
    timed-out connection and a 4xx greeting (``SMTPConnectError``), a refused login
    (``SMTPAuthenticationError``) or an untrusted certificate (``ssl.SSLError`` in the chain).
    """
    cause: BaseException | None = exc.__cause__
    if isinstance(cause, aiosmtplib.SMTPAuthenticationError):
        return PauseKind.LOGIN_REFUSED
    if isinstance(exc, TemporaryFailure) and isinstance(cause, aiosmtplib.SMTPConnectError):
        return PauseKind.RELAY_DOWN
    while isinstance(exc, PolicyFailure) and cause is not None:
        if isinstance(cause, ssl.SSLError):
            return PauseKind.TLS_FAILED
        cause = cause.__cause__ or cause.__context__
    return None


@dataclass(frozen=True, kw_only=True)
class Outcomes:
    """Records the outcomes of one sender's emails."""

    db: Database
    sequences: dict[str, Sequence]
    settings: Settings
    clock: Clock

    def in_window(self, instant: datetime, row: Loaded) -> datetime:
        """The first instant at or after ``instant`` when the message's sequence may send to
        its contact (the sequence's window, else the settings one, on the contact's clock)."""
        seq = self.sequences.get(row.message.sequence_id)
        window = seq.window if seq is not None else None
        return self.settings.schedule.next_open(instant, window, row.contact.timezone)

    def hold(self, c: Claimed, reason: str, stats: SendStats) -> None:
        """Keep this email back with its reason; the enrollment waits for a person (a fixed
        template or sequence file, then `outbox retry`)."""
        log.warning("email_held message=%s reason=%s", c.id, reason)
        with self.db.write() as session:
            if not OUTBOX.finish(session, c, status="render_failed", last_error=reason):
                return
            session.execute(
                update(Enrollment)
                .where(
                    Enrollment.id
                    == select(Message.enrollment_id).where(Message.id == c.id).scalar_subquery(),
                    Enrollment.status == "active",
                )
                .values(status="held", reason=reason)
            )
        stats.render_failed += 1
        stats.held_reasons[short_reason(reason)] += 1
        stats.errors.append(reason)

    def reject(self, c: Claimed, reason: str, stats: SendStats) -> None:
        """This email can never be sent (an unusable address): fail it and end its run, which
        no retry could resume."""
        log.warning("email_failed message=%s reason=%s", c.id, reason)
        with self.db.write() as session:
            if not OUTBOX.finish(session, c, status="failed", last_error=reason):
                return
            self._stop_enrollment(session, c, reason, self.clock.now())
        stats.failed += 1
        stats.errors.append(reason)

    def defer(self, c: Claimed, due: datetime, stats: SendStats) -> None:
        """Give the row back for ``due``: not an attempt, just too early or too late today."""
        with self.db.write() as session:
            done = OUTBOX.finish(
                session, c, status="queued", due_at=due, attempts=Message.attempts - 1
            )
        if done:
            log.info("email_outside_window message=%s due=%s", c.id, due.isoformat())
            stats.deferred += 1

    def retry(self, c: Claimed, exc: TemporaryFailure, stats: SendStats, row: Loaded) -> None:
        """A temporary refusal: back to the queue after the backoff (within the send window),
        or failed once ``smtp.max_attempts`` attempts were made. A relay that cannot be reached
        is no refusal of this email: see ``relay_down``."""
        if (kind := relay_problem(exc)) is not None:
            self.relay_down(c, kind, exc, stats)
            return
        now = self.clock.now()
        smtp = self.settings.smtp
        with self.db.write() as session:
            attempts = session.scalar(select(Message.attempts).where(Message.id == c.id)) or 1
            if attempts >= smtp.max_attempts:
                reason = f"gave up after {attempts} attempts: {exc}"
                if not OUTBOX.finish(session, c, status="failed", last_error=reason):
                    stats.skipped += 1  # no longer ours: its enrollment is not ours to stop
                    return
                self._stop_enrollment(session, c, reason, now)
                stats.failed += 1
                return
            delay = retry_delay(
                attempts,
                smtp.retry_base_seconds,
                smtp.retry_max_seconds,
                jitter=RETRY_JITTER,
                retry_after=exc.retry_after,
            )
            due = self.in_window(now + timedelta(seconds=delay), row)
            if not OUTBOX.finish(session, c, status="queued", last_error=str(exc), due_at=due):
                stats.skipped += 1
                return
        log.info("email_deferred message=%s due=%s reason=%s", c.id, due.isoformat(), exc)
        stats.retried += 1
        stats.retry_reasons[short_reason(str(exc))] += 1

    def relay_down(
        self, c: Claimed, kind: PauseKind, exc: TransportError, stats: SendStats
    ) -> None:
        """The relay could not be reached: the email goes back to the queue untouched (its
        attempt uncounted, its due time and Message-ID kept) and sending pauses as a whole
        until the next probe, with backoff (engine.records.pauses.relay_failed)."""
        now = self.clock.now()
        smtp = self.settings.smtp
        with self.db.write() as session:
            OUTBOX.finish(session, c, status="queued", attempts=Message.attempts - 1)
            pause = relay_failed(
                session,
                now,
                kind,
                str(exc),
                base=smtp.retry_base_seconds,
                cap=smtp.retry_max_seconds,
            )
        if not stats.paused:
            log.error("sending_paused kind=%s next_probe=%s reason=%s", kind, pause.until, exc)
            stats.errors.append(f"sending paused: {pause.describe()}")
        stats.paused = True
        stats.pause_reason = pause.describe()

    def fail(self, c: Claimed, exc: PermanentFailure, stats: SendStats) -> None:
        """A permanent refusal: fail the email, record the bounce (a hard one suppresses the
        address) and stop the enrollment."""
        now = self.clock.now()
        with self.db.write() as session:
            ours = OUTBOX.finish(session, c, status="failed", last_error=str(exc))
            message = session.get(Message, c.id)
            assert message is not None
            if not ours:
                stats.skipped += 1
                # Cancelled while the SMTP transaction ran (an unsubscribe, a reply): the
                # server's word on the address holds all the same. A row claimed again by
                # another worker is that worker's to record.
                if exc.hard_bounce and message.status == "cancelled":
                    _bounced(session, message, exc, now)
                    stats.bounced += 1
                return
            _bounced(session, message, exc, now)
            if exc.hard_bounce:
                stats.bounced += 1
            self._stop_enrollment(session, c, f"delivery failed: {exc}", now)
        log.warning("email_failed message=%s hard=%s reason=%s", c.id, exc.hard_bounce, exc)
        stats.failed += 1

    def pause(self, c: Claimed, exc: PolicyFailure, stats: SendStats, row: Loaded) -> None:
        """The server refuses *us*: stop sending for a while and tell a person; keep the contact.

        The email goes back to the queue for the first moment of its send window after the
        pause, so it does not go out in the middle of the contact's night once the pause ends.
        A refused login or TLS handshake is the relay's problem, not the email's: see
        ``relay_down``.
        """
        if (kind := relay_problem(exc)) is not None:
            self.relay_down(c, kind, exc, stats)
            return
        now = self.clock.now()
        until = now + timedelta(seconds=self.settings.smtp.policy_pause_seconds)
        with self.db.write() as session:
            OUTBOX.finish(
                session,
                c,
                status="queued",
                last_error=str(exc),
                attempts=Message.attempts - 1,
                due_at=self.in_window(until, row),
            )
            if active_pause(session, now) is None:
                session.add(
                    Alert(
                        kind=PauseKind.POLICY,
                        created_at=now,
                        pause_until=until,
                        message=f"SMTP policy rejection, sending paused until "
                        f"{until:%Y-%m-%d %H:%M} UTC: {exc}",
                    )
                )
        log.error("sending_paused until=%s reason=%s", until.isoformat(), exc)
        stats.paused = True
        stats.pause_reason = f"policy rejection, until {until:%Y-%m-%d %H:%M} UTC: {exc}"
        stats.errors.append(f"sending paused: {exc}")

    def _stop_enrollment(self, session: Session, c: Claimed, reason: str, now: datetime) -> None:
        """Stop the message's enrollment (delivery failed) and schedule the contact's re-check,
        as planner.end_enrollment does for the enrollments it ends."""
        stopped = session.execute(
            update(Enrollment)
            .where(
                Enrollment.id
                == select(Message.enrollment_id).where(Message.id == c.id).scalar_subquery(),
                Enrollment.status == "active",
            )
            .values(status="stopped", reason=reason, ended_at=now, next_at=None)
            .returning(Enrollment.contact_id, Enrollment.sequence_id, Enrollment.started_at)
            .execution_options(synchronize_session=False)
        ).first()
        if stopped is not None:
            schedule_reentry(session, self.sequences, *stopped)


def _bounced(session: Session, message: Message, exc: PermanentFailure, now: datetime) -> None:
    """Record the refusal; a hard bounce also suppresses the address."""
    contact = session.get(Contact, message.contact_id)
    assert contact is not None
    if exc.hard_bounce:
        suppress(session, contact.email, f"hard bounce: {exc}", now)
    record_event(
        session,
        "bounced",
        now,
        contact_id=contact.id,
        message=message,
        data={"hard": exc.hard_bounce, "code": exc.code, "reason": str(exc), "source": "smtp"},
    )
