"""Sending from the outbox: claim with a lease, render, build MIME, deliver, record.

A claim bumps the row's ``fence``. Before talking SMTP and when recording the result, the
worker proves it still holds the lease with ``WHERE id = :id AND fence = :fence``: a worker that
wakes up after its lease expired (and someone else re-claimed the row) can neither send nor
record. The check before SMTP also repeats the claim's conditions (enrollment active, contact
not unsubscribed or suppressed, no event pending), since a batch can take minutes; a row that
fails only those goes back to the queue. A crash leaves rows in ``sending``; once their lease
runs out they are claimed again and go out with the same Message-ID.

Per email the database sees one write transaction: a claimed batch is loaded with a few
queries, and each worker renders its next email before sending the current one, so that the
transaction marking the current one sent (right after the server accepted it, with no await in
between) also fences the next one.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar, cast

from sqlalchemy import (
    Connection,
    CursorResult,
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
from sqlalchemy.orm import Session

from engine.base.clock import Clock
from engine.base.errors import PermanentFailure, PolicyFailure, TemplateError, TemporaryFailure
from engine.mail.mime import OutgoingEmail, build_message
from engine.mail.smtp import Transport
from engine.program.sequences import SendStep, Sequence
from engine.program.settings import Settings
from engine.records.events import record_event, schedule_reentry, suppress
from engine.records.pauses import active_pause
from engine.send.render import Renderer
from engine.store.db import Database, transaction
from engine.store.models import Alert, Contact, Enrollment, Event, Message, Referral, Suppression
from engine.store.prepared import Prepared

log = logging.getLogger("engine.sender")
T = TypeVar("T")


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
    errors: list[str] = field(default_factory=list)


class SendProgress(Protocol):
    """Told how much a ``send_due`` has ahead of it and how far it got (a progress bar)."""

    def start(self, due: int) -> None:
        """``due`` emails can be claimed now (more may fall due while sending)."""

    def advance(self, emails: int) -> None:
        """That many claimed emails were dealt with: sent, retried, failed, held or skipped."""


@dataclass(frozen=True)
class Claimed:
    id: int
    fence: int


@dataclass(frozen=True, slots=True)
class _Loaded:
    """What rendering one claimed message needs, read for the whole batch in one go."""

    message: Message
    contact: Contact
    trigger: Event | None
    parent_subject: str | None
    advocate: bool = False  # see advocates()


@dataclass(frozen=True, slots=True)
class _Ready:
    """A rendered message, ready for SMTP."""

    recipient: str
    subject: str
    data: bytes


# The per-message writes are Core statements compiled once (store.prepared): they skip the
# ORM's bulk-update machinery and Core's per-execution cache-key walk, which cost several
# times what SQLite spends running them.
_messages = cast(Table, Message.__table__)
_enrollments = cast(Table, Enrollment.__table__)
_contacts = cast(Table, Contact.__table__)
_events = cast(Table, Event.__table__)
_suppressions = cast(Table, Suppression.__table__)
_ours = and_(_messages.c.id == bindparam("b_id"), _messages.c.fence == bindparam("b_fence"))
_mine = and_(_ours, _messages.c.status == "sending")
_leased = and_(_mine, _messages.c.lease_until > bindparam("b_now"))
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
_EXTEND_LEASE = Prepared(
    update(_messages).where(_leased, _still_wanted).values(lease_until=bindparam("b_until"))
)
# A leased row that failed only the re-check goes back to the queue at once (no attempt was
# made); the claim skips it until the planner has dealt with what stopped it.
_GIVE_BACK = Prepared(
    update(_messages)
    .where(_leased)
    .values(
        status="queued",
        lease_owner=None,
        lease_until=None,
        attempts=_messages.c.attempts - 1,
    )
)
# Cancelling (planner.end_enrollment) does not bump the fence: an email whose enrollment was
# stopped while its SMTP transaction was under way did go out, and is recorded as sent.
_MARK_SENT = Prepared(
    update(_messages)
    .where(_ours, or_(_messages.c.status == "sending", _messages.c.status == "cancelled"))
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
# Claimed rows are loaded this many at a time (bound parameters per IN list stay modest).
LOAD_CHUNK = 500


def _nothing(emails: int) -> None:
    """No progress to report."""


class Sender:
    """Delivers due outbox rows through a Transport, ``connections`` at a time."""

    def __init__(
        self,
        db: Database,
        sequences: dict[str, Sequence],
        renderer: Renderer,
        transport: Transport,
        settings: Settings,
        clock: Clock,
        *,
        worker_id: str,
    ) -> None:
        self.db = db
        self.sequences = sequences
        self.renderer = renderer
        self.transport = transport
        self.settings = settings
        self.clock = clock
        self.worker_id = worker_id
        self.lease = timedelta(seconds=settings.schedule.lease_seconds)

    # -- claiming ----------------------------------------------------------------------------

    @staticmethod
    def _claimable(columns: Any, now: datetime) -> Select[Any]:
        """Rows ``claim`` may take at ``now``: due (or their lease expired) and still wanted."""
        pending_event = exists().where(
            Event.contact_id == Message.contact_id, Event.handled_at.is_(None)
        )
        suppressed = exists().where(Suppression.email == Contact.email)
        return (
            select(columns)
            .select_from(Message)
            .join(Enrollment, Enrollment.id == Message.enrollment_id)
            .join(Contact, Contact.id == Message.contact_id)
            .where(
                or_(
                    and_(Message.status == "queued", Message.due_at <= now),
                    and_(Message.status == "sending", Message.lease_until < now),
                ),
                Enrollment.status == "active",
                Contact.unsubscribed_at.is_(None),
                ~suppressed,
                ~pending_event,
            )
        )

    def count_due(self) -> int:
        """How many emails ``claim`` could take now (for a progress bar; not a promise)."""
        with self.db.session() as session:
            return session.scalar(self._claimable(func.count(), self.clock.now())) or 0

    def claim(self, limit: int) -> list[Claimed]:
        """Take up to ``limit`` due rows (or rows whose lease expired) under a fresh lease."""
        now = self.clock.now()
        candidates = self._claimable(Message.id, now).order_by(Message.due_at).limit(limit)
        if self.db.is_postgres:
            candidates = candidates.with_for_update(skip_locked=True, of=Message)
        stmt = (
            update(Message)
            .where(Message.id.in_(candidates.scalar_subquery()))
            .values(
                status="sending",
                lease_owner=self.worker_id,
                lease_until=now + self.lease,
                fence=Message.fence + 1,
                attempts=Message.attempts + 1,
            )
            .returning(Message.id, Message.fence)
            .execution_options(synchronize_session=False)
        )
        with self.db.write() as session:
            if active_pause(session, now) is not None:
                return []
            rows = session.execute(stmt).all()
        return [Claimed(r[0], r[1]) for r in rows]

    def release(self, claimed: list[Claimed]) -> None:
        """Give rows back unsent (shutdown, pause); they keep their Message-ID and attempts-1."""
        if not claimed:
            return
        with self.db.write() as session:
            for c in claimed:
                session.execute(
                    update(Message)
                    .where(
                        Message.id == c.id, Message.fence == c.fence, Message.status == "sending"
                    )
                    .values(
                        status="queued",
                        lease_owner=None,
                        lease_until=None,
                        attempts=Message.attempts - 1,
                    )
                )

    # -- the loop ----------------------------------------------------------------------------

    async def send_due(
        self, stop: asyncio.Event | None = None, progress: SendProgress | None = None
    ) -> SendStats:
        """Send everything due now, batch by batch, until none is left, a pause, or ``stop``."""
        stats = SendStats()
        batch_size = self.settings.schedule.batch_size
        if progress is not None:
            progress.start(await asyncio.to_thread(self.count_due))
        while not (stop and stop.is_set()) and not stats.paused:
            claimed = self.claim(batch_size)
            if not claimed:
                break
            await self.deliver(claimed, stats, stop, progress)
        return stats

    async def deliver(
        self,
        claimed: list[Claimed],
        stats: SendStats,
        stop: asyncio.Event | None,
        progress: SendProgress | None = None,
    ) -> None:
        """Send a claimed batch over ``connections`` workers; release what a stop left unsent."""
        loaded = self._load(claimed)
        pending = deque(claimed)
        untouched: list[Claimed] = []
        dealt_with = progress.advance if progress is not None else _nothing

        def halted() -> bool:
            return stats.paused or (stop is not None and stop.is_set())

        def prepare_next() -> tuple[Claimed, _Ready] | None:
            """Render the next email that can go out; None when none is left or we stop."""
            while pending:
                c = pending.popleft()
                row = loaded.get(c.id)
                if halted():
                    untouched.append(c)
                elif row is None:  # claimed again by another worker before the batch was loaded
                    stats.skipped += 1
                    dealt_with(1)
                elif (ready := self._prepare(c, row, stats)) is not None:
                    return c, ready
                else:  # held, deferred to the window's opening, or its step is gone
                    dealt_with(1)
            return None

        async def worker(conn: Connection) -> None:
            unrecorded: tuple[Claimed, str] | None = None  # sent, its row not marked yet
            upcoming = prepare_next()
            while upcoming is not None:
                c, ready = upcoming
                if halted():
                    untouched.append(c)
                    upcoming = prepare_next()
                    continue

                # One transaction marks the previous email sent and fences this one. No await
                # runs between a send and this point, so a cancellation cannot lose the mark.
                def mark_and_fence(
                    tx: Connection,
                    c: Claimed = c,
                    done: tuple[Claimed, str] | None = unrecorded,
                ) -> tuple[bool | None, bool | None]:
                    marked = None if done is None else self._mark_sent(tx, *done)
                    return marked, self._fence(tx, c)

                marked, mine = transaction(conn, mark_and_fence)
                self._count_sent(marked, stats)
                unrecorded = None
                # Render the next email now, before this send, so its fence can share the
                # transaction that marks this one sent as soon as the server accepted it.
                upcoming = prepare_next()
                if not mine:
                    stats.skipped += 1
                    dealt_with(1)
                    if mine is None:
                        log.info("email_stopped_before_smtp message=%s", c.id)
                    else:
                        log.warning("lease_lost message=%s fence=%s", c.id, c.fence)
                    continue
                try:
                    await self.transport.send(
                        self.settings.sender.from_email, ready.recipient, ready.data
                    )
                except TemporaryFailure as exc:
                    self._retry(c, exc, stats, loaded[c.id])
                except PolicyFailure as exc:
                    self._pause(c, exc, stats, loaded[c.id])
                except PermanentFailure as exc:
                    self._fail(c, exc, stats)
                else:
                    unrecorded = (c, ready.subject)
                dealt_with(1)
            if unrecorded is not None:
                await self._record_sent(unrecorded[0], stats, unrecorded[1], conn)

        workers = max(1, min(self.settings.smtp.connections, len(claimed)))
        # One connection for the batch's per-message writes, shared by the workers: each
        # transaction runs without an await inside, so they never interleave.
        with self.db.write_connection() as conn:
            async with asyncio.TaskGroup() as group:
                for _ in range(workers):
                    group.create_task(worker(conn))
        self.release(untouched)

    async def _record_sent(
        self,
        c: Claimed,
        stats: SendStats,
        subject: str | None = None,
        conn: Connection | None = None,
    ) -> None:
        """Mark the row sent in a transaction of its own (on ``conn`` when given).

        It never awaits: once called after a send, a cancellation cannot stop it.
        """

        def mark(tx: Connection) -> bool:
            return self._mark_sent(tx, c, subject)

        if conn is None:
            with self.db.write_connection() as fresh:
                marked = transaction(fresh, mark)
        else:
            marked = transaction(conn, mark)
        self._count_sent(marked, stats)

    def _mark_sent(self, conn: Connection, c: Claimed, subject: str | None) -> bool:
        """Mark the row sent (with the subject it went out with) and start the next wait,
        unless the row is no longer ours (fenced off). True if it was marked."""
        now = self.clock.now()
        marked = _MARK_SENT.run(conn, b_id=c.id, b_fence=c.fence, b_now=now, b_subject=subject)
        if not marked.rowcount:
            return False
        _START_NEXT_WAIT.run(conn, b_id=c.id, b_now=now)
        return True

    @staticmethod
    def _count_sent(marked: bool | None, stats: SendStats) -> None:
        """Count a mark once its transaction committed (a retried one must not count twice)."""
        if marked is True:
            stats.sent += 1
        elif marked is False:
            stats.skipped += 1

    def _fence(self, conn: Connection, c: Claimed) -> bool | None:
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

    # -- preparing ---------------------------------------------------------------------------

    def _load(self, claimed: list[Claimed]) -> dict[int, _Loaded]:
        """Message, contact, trigger event and parent subject of every claimed row, by id.

        A few queries per batch instead of several per message; a row whose fence moved on
        (claimed again meanwhile) is left out.
        """
        fences = {c.id: c.fence for c in claimed}
        found: list[tuple[Message, Contact, int | None]] = []
        triggers: dict[int, Event] = {}
        subjects: dict[str, str | None] = {}
        with self.db.session() as session:
            for ids in _chunks(list(fences)):
                rows = session.execute(
                    select(Message, Contact, Enrollment.trigger_event_id)
                    .join(Contact, Contact.id == Message.contact_id)
                    .join(Enrollment, Enrollment.id == Message.enrollment_id)
                    .where(Message.id.in_(ids))
                )
                found.extend((m, ct, t) for m, ct, t in rows if m.fence == fences[m.id])
            for ids in _chunks(sorted({t for _, _, t in found if t is not None})):
                for event in session.scalars(select(Event).where(Event.id.in_(ids))):
                    triggers[event.id] = event
            parents = select(Message.message_id, Message.subject)
            for keys in _chunks(sorted({m.in_reply_to for m, _, _ in found if m.in_reply_to})):
                for message_id, subject in session.execute(
                    parents.where(Message.message_id.in_(keys))
                ):
                    subjects[message_id] = subject
            known = advocates(session, [contact.id for _, contact, _ in found])
        return {
            m.id: _Loaded(
                m,
                contact,
                triggers.get(trigger_id) if trigger_id is not None else None,
                subjects.get(m.in_reply_to) if m.in_reply_to else None,
                contact.id in known,
            )
            for m, contact, trigger_id in found
        }

    def _prepare(self, c: Claimed, loaded: _Loaded, stats: SendStats) -> _Ready | None:
        """Render and build the MIME bytes; a render failure holds back this one email only."""
        message, contact, trigger = loaded.message, loaded.contact, loaded.trigger
        seq = self.sequences.get(message.sequence_id)
        step = None
        if seq is not None:
            step = next(
                (s for s in seq.steps if isinstance(s, SendStep) and s.id == message.step_id), None
            )
        if seq is None or step is None:
            self._hold(c, f"step {message.sequence_id}/{message.step_id} no longer exists", stats)
            return None
        # A backlog (the scheduler was down, sending was paused) waits for the window to open
        # again rather than going out at 3 a.m. on the contact's clock.
        now = self.clock.now()
        opens = self._in_window(now, loaded)
        if opens > now:
            self._defer(c, opens, stats)
            return None
        context: dict[str, Any] = {
            "contact": contact.template_context() | ({"advocate": True} if loaded.advocate else {}),
            "sequence": seq.id,
            "step": step.id,
            "referral": _referral_context(trigger),
            "reward": (trigger.data or {}).get("reward") if trigger else None,
        }
        subject_source = step.subject_for(contact.locale)
        try:
            rendered = self.renderer.render(
                step.template, subject_source, context, locale=contact.locale, ref=message.ref
            )
        except TemplateError as exc:
            self._hold(c, f"render_failed: {exc}", stats)
            return None
        parent_subject = loaded.parent_subject
        subject = rendered.subject or (f"Re: {parent_subject}" if parent_subject else "")
        name = " ".join(filter(None, [contact.first_name, contact.last_name]))
        email = OutgoingEmail(
            message_id=message.message_id,
            from_name=self.settings.sender.from_name,
            from_email=self.settings.sender.from_email,
            reply_to=self.settings.sender.reply_to,
            to_name=name,
            to_email=contact.email,
            subject=subject,
            html=rendered.html,
            text=rendered.text,
            date=now,
            list_unsubscribe_url=rendered.unsubscribe_url,
            list_unsubscribe_mailto=self.settings.sender.unsubscribe_mailto,
            feedback_id=f"{step.id}:{seq.id}:{seq.category}:{self.settings.sender.feedback_id}",
            in_reply_to=message.in_reply_to,
            references=tuple((message.references or "").split()),
        )
        try:
            data = build_message(email)
        except ValueError as exc:  # an address that cannot be sent to safely
            self._reject(c, f"invalid message: {exc}", stats)
            return None
        return _Ready(contact.email, subject, data)

    # -- outcomes ----------------------------------------------------------------------------

    def _finish(self, session: Session, c: Claimed, **values: Any) -> bool:
        result = session.execute(
            update(Message)
            .where(Message.id == c.id, Message.fence == c.fence, Message.status == "sending")
            .values(lease_owner=None, lease_until=None, **values)
        )
        return bool(cast(CursorResult[Any], result).rowcount)

    def _hold(self, c: Claimed, reason: str, stats: SendStats) -> None:
        """Keep this email back with its reason; the enrollment waits for a person (a fixed
        template or sequence file, then `outbox retry`)."""
        log.warning("email_held message=%s reason=%s", c.id, reason)
        with self.db.write() as session:
            if not self._finish(session, c, status="render_failed", last_error=reason):
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
        stats.errors.append(reason)

    def _reject(self, c: Claimed, reason: str, stats: SendStats) -> None:
        """This email can never be sent (an unusable address): fail it and end its run, which
        no retry could resume."""
        log.warning("email_failed message=%s reason=%s", c.id, reason)
        with self.db.write() as session:
            if not self._finish(session, c, status="failed", last_error=reason):
                return
            self._stop_enrollment(session, c, reason, self.clock.now())
        stats.failed += 1
        stats.errors.append(reason)

    def _defer(self, c: Claimed, due: datetime, stats: SendStats) -> None:
        """Give the row back for ``due``: not an attempt, just too early or too late today."""
        with self.db.write() as session:
            done = self._finish(
                session, c, status="queued", due_at=due, attempts=Message.attempts - 1
            )
        if done:
            log.info("email_outside_window message=%s due=%s", c.id, due.isoformat())
            stats.deferred += 1

    def _in_window(self, instant: datetime, row: _Loaded) -> datetime:
        """The first instant at or after ``instant`` when the message's sequence may send to
        its contact (the sequence's window, else the settings one, on the contact's clock)."""
        seq = self.sequences.get(row.message.sequence_id)
        window = seq.window if seq is not None else None
        return self.settings.schedule.next_open(instant, window, row.contact.timezone)

    def _retry(self, c: Claimed, exc: TemporaryFailure, stats: SendStats, row: _Loaded) -> None:
        now = self.clock.now()
        smtp = self.settings.smtp
        with self.db.write() as session:
            attempts = session.scalar(select(Message.attempts).where(Message.id == c.id)) or 1
            if attempts >= smtp.max_attempts:
                reason = f"gave up after {attempts} attempts: {exc}"
                if not self._finish(session, c, status="failed", last_error=reason):
                    stats.skipped += 1  # no longer ours: its enrollment is not ours to stop
                    return
                self._stop_enrollment(session, c, reason, now)
                stats.failed += 1
                return
            delay = min(smtp.retry_max_seconds, smtp.retry_base_seconds * 2 ** (attempts - 1))
            delay = max(delay * random.uniform(0.8, 1.2), exc.retry_after or 0.0)
            due = self._in_window(now + timedelta(seconds=delay), row)
            if not self._finish(session, c, status="queued", last_error=str(exc), due_at=due):
                stats.skipped += 1
                return
        log.info("email_deferred message=%s due=%s reason=%s", c.id, due.isoformat(), exc)
        stats.retried += 1

    def _fail(self, c: Claimed, exc: PermanentFailure, stats: SendStats) -> None:
        now = self.clock.now()
        with self.db.write() as session:
            ours = self._finish(session, c, status="failed", last_error=str(exc))
            message = session.get(Message, c.id)
            assert message is not None
            if not ours:
                stats.skipped += 1
                # Cancelled while the SMTP transaction ran (an unsubscribe, a reply): the
                # server's word on the address holds all the same. A row claimed again by
                # another worker is that worker's to record.
                if exc.hard_bounce and message.status == "cancelled":
                    self._bounced(session, message, exc, now)
                    stats.bounced += 1
                return
            self._bounced(session, message, exc, now)
            if exc.hard_bounce:
                stats.bounced += 1
            self._stop_enrollment(session, c, f"delivery failed: {exc}", now)
        log.warning("email_failed message=%s hard=%s reason=%s", c.id, exc.hard_bounce, exc)
        stats.failed += 1

    @staticmethod
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

    def _pause(self, c: Claimed, exc: PolicyFailure, stats: SendStats, row: _Loaded) -> None:
        """The server refuses *us*: stop sending for a while and tell a person; keep the contact.

        The email goes back to the queue for the first moment of its send window after the
        pause, so it does not go out in the middle of the contact's night once the pause ends.
        """
        now = self.clock.now()
        until = now + timedelta(seconds=self.settings.smtp.policy_pause_seconds)
        with self.db.write() as session:
            self._finish(
                session,
                c,
                status="queued",
                last_error=str(exc),
                attempts=Message.attempts - 1,
                due_at=self._in_window(until, row),
            )
            if active_pause(session, now) is None:
                session.add(
                    Alert(
                        kind="sending_paused",
                        created_at=now,
                        pause_until=until,
                        message=f"SMTP policy rejection, sending paused until "
                        f"{until:%Y-%m-%d %H:%M} UTC: {exc}",
                    )
                )
        log.error("sending_paused until=%s reason=%s", until.isoformat(), exc)
        stats.paused = True
        stats.errors.append(f"sending paused: {exc}")


def _chunks(values: list[T]) -> Iterator[list[T]]:
    """``values`` in slices of LOAD_CHUNK: IN lists with a bounded number of parameters."""
    for start in range(0, len(values), LOAD_CHUNK):
        yield values[start : start + LOAD_CHUNK]


def advocates(session: Session, contact_ids: list[int]) -> set[int]:
    """Which of these contacts are advocates (a promoter who already introduced someone, or
    who scored 10 twice): templates see ``contact.advocate`` and can be more personal."""
    found: set[int] = set()
    for ids in _chunks(sorted(set(contact_ids))):
        found.update(
            session.scalars(
                select(Referral.referrer_id).where(
                    Referral.referrer_id.in_(ids), Referral.flag.is_(None)
                )
            )
        )
        found.update(
            session.scalars(
                select(Event.contact_id)
                .where(
                    Event.contact_id.in_(ids),
                    Event.type == "nps.answered",
                    Event.data["score"].as_integer() == 10,
                )
                .group_by(Event.contact_id)
                .having(func.count() >= 2)
            )
        )
    return found


def _referral_context(trigger: Event | None) -> dict[str, Any] | None:
    if trigger is None or not trigger.type.startswith("referral."):
        return None
    data = trigger.data or {}
    return {
        k: data.get(k)
        for k in ("friend_name", "friend_email", "status", "value")
        if data.get(k) is not None
    }
