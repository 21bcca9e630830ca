"""Turning a classified email into what the engine acts on: events, suppressions, alerts,
notes to the owner, postponed steps. One write transaction per batch of emails (or per email).

Idempotent by construction: every email is entered once in a ledger (``meta`` rows keyed by a
digest of its Message-ID) in the same transaction as its effects, and each bounce once per
(our email, recipient, severity), so the same email or the same DSN seen twice (a restart, a
UIDVALIDITY change, a copy in two folders, an MTA that re-sends its DSN) counts once. The
poller's position in the mailbox is saved in that transaction too.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table, false, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session

from engine.base.clock import Clock
from engine.inbound.replies.classify import Bounce, Rules, Verdict, classify_message
from engine.inbound.replies.parse import DEFAULT_TEXT_LIMIT, Incoming, parse_message
from engine.inbound.replies.phrases import load_phrases
from engine.program.sequences import Sequence, WaitStep
from engine.program.settings import ImapSettings, NotifySettings, ScheduleSettings, Settings
from engine.records.events import record_event, suppress
from engine.records.notes import notify
from engine.records.pauses import active_pause
from engine.records.referrals import record_detected_referral
from engine.store.db import Database
from engine.store.models import Alert, Contact, Enrollment, Event, Message, Meta

log = logging.getLogger("engine.replies")

LEDGER = "inbound:"
_META = cast(Table, Meta.__table__)  # Core: no ORM flush before these statements
NOTE_TEXT = 2000  # characters of a reply quoted in the note to the owner
EVENT_TEXT = 500  # characters of a reply kept in its event


@dataclass(frozen=True)
class Outcome:
    """What processing one email did."""

    kind: str  # the verdict's kind: reply, not_interested, auto_reply, bounce, ignored ...
    why: str
    contact: str | None = None  # the contact it was about
    duplicate: bool = False  # seen before: nothing was recorded again
    bounces: tuple[str, ...] = ()  # severity of each bounce recorded: hard, soft, policy
    introductions: int = 0
    suppressed: bool = False
    postponed: int = 0  # enrollments and queued emails moved later (auto-replies)


@dataclass(frozen=True)
class Cursor:
    """Where the poller stands in a mailbox; saved with the email's effects, atomically."""

    key: str
    uidvalidity: int
    uid: int

    def save(self, session: Session) -> None:
        """Record that every UID up to ``uid`` is done (an upsert: two pollers may race)."""
        value = json.dumps({"uidvalidity": self.uidvalidity, "last_uid": self.uid})
        stmt = _dialect(session).insert(_META).values(key=self.key, value=value)
        session.execute(stmt.on_conflict_do_update(index_elements=["key"], set_={"value": value}))


@dataclass(frozen=True, kw_only=True)
class ReplyContext:
    """What reading the reply mailbox needs: the store, the clock, the sequences (their send
    windows), the classification rules and the settings sections it follows."""

    db: Database
    clock: Clock
    sequences: Mapping[str, Sequence]
    rules: Rules
    imap: ImapSettings
    notify: NotifySettings
    schedule: ScheduleSettings
    policy_pause_seconds: float
    base_dir: Path


def rules_for(settings: Settings) -> Rules:
    """Classification rules from the settings: the phrases file and our own addresses."""
    phrases = load_phrases(settings.path(settings.imap.phrases) if settings.imap.phrases else None)
    own = {
        settings.sender.from_email,
        settings.sender.reply_to,
        settings.sender.unsubscribe_mailto.removeprefix("mailto:").partition("?")[0],
        settings.notify.owner,
        settings.notify.sales,
        settings.notify.account_manager,
    }
    if "@" in settings.imap.username:
        own.add(settings.imap.username)
    addresses = frozenset(a.strip().lower() for a in own if "@" in a)
    domains = frozenset(
        a.rpartition("@")[2].lower() for a in (settings.sender.from_email, settings.sender.reply_to)
    )
    return Rules(phrases, addresses, domains)


def read_message(
    raw: bytes, rules: Rules, now: datetime, *, text_limit: int = DEFAULT_TEXT_LIMIT
) -> tuple[Incoming | None, Verdict]:
    """Parse and classify; an email that breaks the parser is "unreadable", never an error."""
    try:
        incoming = parse_message(raw, text_limit=text_limit)
        return incoming, classify_message(incoming, rules, now)
    except Exception as exc:  # one bad email must never stop the mailbox
        log.exception("reply_unreadable error=%s", exc)
        return None, Verdict("unreadable", f"cannot be parsed: {type(exc).__name__}: {exc}")


def process_message(ctx: ReplyContext, raw: bytes, *, now: datetime | None = None) -> Outcome:
    """Classify one raw RFC 5322 email (a reply, an auto-reply, a DSN ...) and record what it
    means, exactly as the IMAP poller does for each email it reads. Safe to call twice with
    the same email: the second call records nothing (``Outcome.duplicate``)."""
    now = now or ctx.clock.now()
    incoming, verdict = read_message(raw, ctx.rules, now)
    return record(ctx, incoming, verdict, now=now)


def record(
    ctx: ReplyContext,
    incoming: Incoming | None,
    verdict: Verdict,
    *,
    now: datetime,
    cursor: Cursor | None = None,
) -> Outcome:
    """Apply ``verdict`` in one write transaction (with ``cursor`` saved in it)."""
    with ctx.db.write() as session:
        (outcome,) = _apply_all(ctx, session, [(incoming, verdict)], now)
        if cursor is not None:
            cursor.save(session)
    _log(outcome)
    return outcome


def record_batch(
    ctx: ReplyContext,
    batch: Seq[tuple[Cursor, Incoming | None, Verdict]],
    *,
    now: datetime,
) -> list[Outcome]:
    """Apply several verdicts in one transaction, the last cursor saved with them (the
    poller's way: a commit and a few lookups per email would cost more than the email).
    When the database refuses one of them, each is applied in a transaction of its own
    instead, and the refused one is reported unreadable: one bad email never holds back the
    others."""
    if not batch:
        return []
    try:
        with ctx.db.write() as session:
            outcomes = _apply_all(ctx, session, [(i, v) for _, i, v in batch], now)
            batch[-1][0].save(session)
    except (DataError, IntegrityError) as exc:
        log.warning("reply_batch_refused error=%s: recording one email at a time", exc)
        outcomes = []
        for cursor, incoming, verdict in batch:
            try:
                outcomes.append(record(ctx, incoming, verdict, now=now, cursor=cursor))
            except (DataError, IntegrityError) as refused:
                log.error("reply_unrecordable uid=%s error=%s", cursor.uid, refused)
                with ctx.db.write() as session:
                    cursor.save(session)
                outcomes.append(Outcome("unreadable", f"the database refused it: {refused}"))
        return outcomes
    for outcome in outcomes:
        _log(outcome)
    return outcomes


def _apply_all(
    ctx: ReplyContext,
    session: Session,
    items: Seq[tuple[Incoming | None, Verdict]],
    now: datetime,
) -> list[Outcome]:
    readable = [
        (incoming, verdict)
        for incoming, verdict in items
        if incoming is not None and verdict.kind != "unreadable"
    ]
    new = first_times(session, [(f"email:{i.identity}", v.kind) for i, v in readable], now)
    lookups = _Lookups.load(ctx, session, [i for i, _ in readable])
    outcomes = []
    # New rows wait for one flush at the end (a flush before every query would cost more
    # than the rest); what the batch itself must see is kept in ``lookups``.
    with session.no_autoflush:
        for incoming, verdict in items:
            if incoming is None or verdict.kind == "unreadable":
                outcomes.append(Outcome("unreadable", verdict.why))
            elif not new.pop(f"email:{incoming.identity}", False):
                outcomes.append(Outcome(verdict.kind, verdict.why, duplicate=True))
            else:
                recorder = _Recorder(ctx, session, lookups, incoming, verdict, now)
                outcomes.append(recorder.apply())
    session.flush()
    for work in lookups.later:
        work()
    return outcomes


def _log(outcome: Outcome) -> None:
    log.info(
        "reply_processed kind=%s contact=%s duplicate=%s why=%s",
        outcome.kind,
        outcome.contact,
        outcome.duplicate,
        outcome.why,
    )


def _ledger_key(name: str) -> str:
    return LEDGER + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:48]


def first_times(session: Session, entries: Seq[tuple[str, str]], now: datetime) -> dict[str, bool]:
    """Enter each (name, kind) in the ledger in one statement; {name: True} for the names
    not there before (safe under races: ON CONFLICT DO NOTHING)."""
    if not entries:
        return {}
    at = now.isoformat()
    keys = {_ledger_key(name): name for name, _ in entries}
    rows = [
        {"key": _ledger_key(name), "value": json.dumps({"kind": kind, "at": at})}
        for name, kind in dict(entries).items()
    ]
    stmt = _dialect(session).insert(_META).values(rows).on_conflict_do_nothing()
    inserted = session.execute(stmt.returning(_META.c.key)).scalars()
    return {keys[key]: True for key in inserted}


def first_time(session: Session, name: str, kind: str, now: datetime) -> bool:
    """Enter ``name`` in the ledger; False when it was there already."""
    return bool(first_times(session, [(name, kind)], now))


def _dialect(session: Session) -> Any:
    return postgresql if session.get_bind().dialect.name == "postgresql" else sqlite


@dataclass
class _Lookups:
    """Our emails and the contacts a batch of incoming emails refers to, loaded with a few
    queries for the batch rather than a few per email."""

    ctx: ReplyContext
    session: Session
    messages: dict[str, Message]  # by Message-ID
    contacts: dict[str, Contact]  # by address
    newest: dict[int, Message | None] = field(default_factory=dict)  # by contact id
    # What needs the batch's events inserted first (their ids): notes to the owner.
    later: list[Callable[[], None]] = field(default_factory=list)
    soft_bounces: dict[int, int] = field(default_factory=dict)  # by contact id, this batch's too
    paused: bool = False  # a pause is in force (or this batch raised one)

    @classmethod
    def load(cls, ctx: ReplyContext, session: Session, emails: Seq[Incoming]) -> _Lookups:
        ids = {r for e in emails for r in (*e.refs[:20], e.original_message_id) if r}
        addresses = {
            a
            for e in emails
            for a in (
                e.from_addr,
                *(d.recipient for d in e.delivery),
                *(e.feedback.recipients if e.feedback else ()),
            )
            if a
        }
        messages: dict[str, Message] = {}
        for chunk in _chunks(sorted(ids)):
            for message in session.scalars(select(Message).where(Message.message_id.in_(chunk))):
                messages[message.message_id] = message
        contact_ids = {m.contact_id for m in messages.values()}
        contacts: dict[str, Contact] = {}
        for chunk in _chunks(sorted(addresses)):
            for contact in session.scalars(select(Contact).where(Contact.email.in_(chunk))):
                contacts[contact.email] = contact
        missing = contact_ids - {c.id for c in contacts.values()}
        for chunk in _chunks(sorted(missing)):
            for contact in session.scalars(select(Contact).where(Contact.id.in_(chunk))):
                contacts[contact.email] = contact
        return cls(ctx, session, messages, contacts)

    def sent(self, refs: Seq[str]) -> Message | None:
        """The newest of our emails among ``refs``."""
        found = [self.messages[r] for r in refs if r in self.messages]
        return max(found, key=lambda m: m.id) if found else None

    def contact(self, address: str) -> Contact | None:
        """The contact with this address (looked up when the batch did not name it)."""
        if not address:
            return None
        if address not in self.contacts:
            found = self.session.scalars(select(Contact).where(Contact.email == address)).first()
            if found is None:
                return None
            self.contacts[address] = found
        return self.contacts[address]

    def contact_of(self, message: Message) -> Contact | None:
        return self.session.get(Contact, message.contact_id)

    def latest(self, contact: Contact) -> Message | None:
        """The contact's last email: from a running sequence when there is one."""
        if contact.id not in self.newest:
            self.newest[contact.id] = self.session.scalars(
                select(Message)
                .join(Enrollment, Enrollment.id == Message.enrollment_id)
                .where(Message.contact_id == contact.id, Message.status == "sent")
                .order_by(Enrollment.status.in_(("active", "held")).desc(), Message.sent_at.desc())
                .limit(1)
            ).first()
        return self.newest[contact.id]


def _chunks(values: list[Any], size: int = 500) -> Iterator[list[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


@dataclass
class _Recorder:
    ctx: ReplyContext
    session: Session
    lookups: _Lookups
    incoming: Incoming
    verdict: Verdict
    now: datetime

    def apply(self) -> Outcome:
        kind, why = self.verdict.kind, self.verdict.why
        if kind == "ignored":
            return Outcome(kind, why)
        if kind == "bounce":
            return self._bounces()
        if kind == "complaint":
            return self._complaint()
        message, contact, how = self._match()
        if contact is None:
            return Outcome("ignored", f"{why}; from {self.incoming.from_addr or '?'}: not ours")
        data = {"source": "imap", "matched": how, "from": self.incoming.from_addr}
        if kind == "auto_reply":
            return self._auto_reply(message, contact, data)
        if kind == "not_interested":
            return self._not_interested(message, contact, data)
        return self._reply(message, contact, data)

    def _match(self) -> tuple[Message | None, Contact | None, str]:
        """The email this one answers (In-Reply-To / References), else the sender's contact
        and their latest email."""
        message = self.lookups.sent(self.incoming.refs)
        if message is not None:
            return message, self.lookups.contact_of(message), "thread"
        contact = self.lookups.contact(self.incoming.from_addr)
        if contact is None:
            return None, None, ""
        return self.lookups.latest(contact), contact, "sender"

    # -- outcomes ----------------------------------------------------------------------------

    def _event(
        self, type_: str, contact: Contact, message: Message | None, data: dict[str, Any]
    ) -> Event:
        # Not flushed here: the batch's events are inserted together (see ``later``).
        return record_event(
            self.session, type_, self.now, contact_id=contact.id, message=message, data=data
        )

    def _who(self, contact: Contact) -> str:
        name = " ".join(filter(None, [contact.first_name, contact.last_name]))
        return f"{name} <{contact.email}>" if name else contact.email

    def _note(self, key: str, subject: str, contact: Contact, ev: Event, lead: str) -> None:
        """Tell the owner, once the event has its id (after the batch's flush)."""
        self.lookups.later.append(lambda: self._send_note(key, subject, contact, ev, lead))

    def _send_note(self, key: str, subject: str, contact: Contact, ev: Event, lead: str) -> None:
        text = self.verdict.reply_text or self.incoming.text.strip()
        if len(text) > NOTE_TEXT:
            text = text[:NOTE_TEXT] + " [...]"
        where = f"In answer to {ev.sequence_id} / {ev.step_id}. " if ev.sequence_id else ""
        body = (
            f"{lead}\n{where}Subject: {self.incoming.subject}\n\n{text}\n\n"
            "(The whole email is in the reply mailbox.)"
        )
        notify(
            self.session,
            self.ctx.db,
            self.ctx.notify,
            "owner",
            key=f"{key}:{ev.id}",
            subject=subject,
            body=body,
            now=self.now,
            contact_id=contact.id,
            event_id=ev.id,
        )

    def _reply(self, message: Message | None, contact: Contact, data: dict[str, Any]) -> Outcome:
        text = self.verdict.reply_text
        data |= {"subject": self.incoming.subject[:200], "text": text[:EVENT_TEXT]}
        intros = self.verdict.introductions
        if intros:
            data["introduced"] = [i.email for i in intros]
        ev = self._event("replied", contact, message, data)
        who = self._who(contact)
        lead = f"{who} replied: sequences that stop on a reply stopped; please follow up."
        recorded = 0
        if intros:
            self.session.flush()  # the referrals name the reply's event
        for intro in intros:
            referral = record_detected_referral(
                self.session,
                contact,
                intro.email,
                self.now,
                name=intro.name,
                channel="reply",
                evidence={"source": "reply", "reply_event_id": ev.id},
            )
            if referral is not None:
                recorded += 1
                named = f"{intro.name} <{intro.email}>" if intro.name else intro.email
                lead += f"\nIntroduced {named}: recorded as a referral to review."
        self._note("replied", f"{who} replied: {self.incoming.subject}"[:200], contact, ev, lead)
        return Outcome(
            "reply",
            self.verdict.why,
            contact.email,
            introductions=recorded,
        )

    def _not_interested(
        self, message: Message | None, contact: Contact, data: dict[str, Any]
    ) -> Outcome:
        said = self.verdict.match
        data |= {
            "source": "reply",
            "phrase": said.phrase if said else None,
            "language": said.language if said else None,
            "text": self.verdict.reply_text[:EVENT_TEXT],
        }
        ev = self._event("unsubscribed", contact, message, data)
        suppress(self.session, contact.email, "not interested", self.now)
        who = self._who(contact)
        lead = f"{who} is not interested ({self.verdict.why}): no more automatic emails."
        self._note("unsubscribed", f"{who} is not interested"[:200], contact, ev, lead)
        return Outcome(
            "not_interested",
            self.verdict.why,
            contact.email,
            suppressed=True,
        )

    def _auto_reply(
        self, message: Message | None, contact: Contact, data: dict[str, Any]
    ) -> Outcome:
        imap = self.ctx.imap
        back = self.verdict.return_date
        if back is not None:
            resume = datetime.combine(back, time(), UTC) + timedelta(days=imap.auto_reply_wait_days)
        else:
            resume = self.now + timedelta(days=imap.auto_reply_pause_days)
        moved = self._postpone(contact, resume)
        data |= {
            "reason": self.verdict.why,
            "return_date": back.isoformat() if back else None,
            "resume_at": resume.isoformat(),
            "postponed": moved,
        }
        self._event("auto_replied", contact, message, data)
        return Outcome(
            "auto_reply",
            self.verdict.why,
            contact.email,
            postponed=moved,
        )

    def _postpone(self, contact: Contact, resume: datetime) -> int:
        """Make the contact's running sequences take their next step no sooner than
        ``resume``: enrollments waiting on a timer, and emails already queued (moved to the
        first moment of their send window after it). Never brings anything forward."""
        moved = 0
        running = self.session.scalars(
            select(Enrollment).where(
                Enrollment.contact_id == contact.id, Enrollment.status == "active"
            )
        ).all()
        for enrollment in running:
            if enrollment.next_at is None:
                continue  # waiting for its queued email, moved below
            seq = self.ctx.sequences.get(enrollment.sequence_id)
            ahead = timedelta()
            if seq is not None:
                # Waits still ahead of the run count from next_at: take them off, so the next
                # email goes out at ``resume``, not that much later.
                position = seq.resume_at(enrollment.step, enrollment.position)
                for step in seq.steps[position:]:
                    if not isinstance(step, WaitStep):
                        break
                    ahead += step.duration
            if resume - ahead > enrollment.next_at:
                enrollment.next_at = resume - ahead
                moved += 1
        queued = self.session.scalars(
            select(Message)
            .join(Enrollment, Enrollment.id == Message.enrollment_id)
            .where(
                Message.contact_id == contact.id,
                Message.status == "queued",
                Enrollment.status == "active",
            )
        ).all()
        for message in queued:
            seq = self.ctx.sequences.get(message.sequence_id)
            window = seq.window if seq is not None else None
            due = self.ctx.schedule.next_open(resume, window, contact.timezone)
            if due > message.due_at:
                message.due_at = due
                moved += 1
        return moved

    # -- bounces -----------------------------------------------------------------------------

    def _complaint(self) -> Outcome:
        """A recipient marked our email as spam (a feedback-loop report): record it once per
        email and suppress the address; the planner stops every sequence of the contact on a
        ``complained`` event. The report's copy of our email says which email (its
        Message-ID); providers that redact it still name the recipient."""
        incoming = self.incoming
        report = incoming.feedback
        returned = [incoming.original_message_id] if incoming.original_message_id else []
        message = self.lookups.sent(returned)
        contact = self.lookups.contact_of(message) if message is not None else None
        how = "original"
        if contact is None:
            named = (*(report.recipients if report else ()), *incoming.original_to)
            contact = next(filter(None, map(self.lookups.contact, named)), None)
            message, how = (self.lookups.latest(contact), "recipient") if contact else (None, "")
        if contact is None:
            return Outcome("ignored", f"{self.verdict.why}; not about an email of ours")
        about = str(message.id) if message is not None else contact.email
        if not first_time(self.session, f"complaint:{about}", "complaint", self.now):
            return Outcome("complaint", f"{self.verdict.why}; already counted", duplicate=True)
        data = {
            "source": "feedback_loop",
            "matched": how,
            "feedback_type": report.type if report else "",
            "reporter": (report.reporter if report else "") or incoming.from_addr,
            "report_id": incoming.identity[:250],
        }
        ev = self._event("complained", contact, message, data)
        suppress(self.session, contact.email, "spam complaint", self.now)
        who = self._who(contact)
        lead = f"{who} marked our email as spam: the address is suppressed, every sequence stops."
        self._note("complained", f"{who} marked an email as spam"[:200], contact, ev, lead)
        return Outcome("complaint", self.verdict.why, contact.email, suppressed=True)

    def _bounces(self) -> Outcome:
        incoming = self.incoming
        returned = [incoming.original_message_id] if incoming.original_message_id else []
        original = self.lookups.sent(returned) or self.lookups.sent(incoming.refs)
        recorded: list[str] = []
        duplicates = 0
        contact: Contact | None = None
        suppressed = False
        for bounce in self.verdict.bounces:
            message, contact = self._bounced(bounce, original)
            if contact is None:
                continue
            if bounce.severity == "policy":
                self._policy_alert(bounce, contact)
                recorded.append("policy")
                continue
            about = str(message.id) if message is not None else incoming.identity
            key = f"bounce:{about}:{contact.email}:{bounce.severity}"
            if not first_time(self.session, key, "bounce", self.now):
                duplicates += 1
                continue
            suppressed |= self._bounced_event(bounce, message, contact)
            recorded.append(bounce.severity)
        if not recorded:
            why = "already counted" if duplicates else "no contact of ours bounced"
            return Outcome(
                "bounce" if duplicates else "ignored",
                f"{self.verdict.why}; {why}",
                duplicate=bool(duplicates),
            )
        return Outcome(
            "bounce",
            self.verdict.why,
            contact.email if contact else None,
            bounces=tuple(recorded),
            suppressed=suppressed,
        )

    def _bounced(
        self, bounce: Bounce, original: Message | None
    ) -> tuple[Message | None, Contact | None]:
        """Which of our emails and which contact a bounce is about: the returned email's
        recipient (whatever address the bounce names: a forward may have failed further on),
        else the contact with the address that failed."""
        contact = self.lookups.contact(bounce.recipient)
        if contact is None:
            if original is None:
                return None, None  # neither our email nor our contact: not ours to act on
            contact = self.lookups.contact_of(original)
        if contact is None:
            return None, None
        if original is not None and original.contact_id == contact.id:
            return original, contact
        return self.lookups.latest(contact), contact

    def _bounced_event(self, bounce: Bounce, message: Message | None, contact: Contact) -> bool:
        """Record a hard or soft bounce; True when the address got suppressed."""
        hard = bounce.severity == "hard"
        data = {
            "hard": hard,
            "status": bounce.status,
            "reason": bounce.diagnostic,
            "source": "dsn" if self.incoming.delivery else "bounce",
            "bounce_id": self.incoming.identity[:250],
        }
        self._event("bounced", contact, message, data)
        if hard:
            suppress(self.session, contact.email, f"hard bounce: {bounce.diagnostic}", self.now)
            return True
        counted = self.lookups.soft_bounces
        if contact.id not in counted:  # those recorded before this batch
            counted[contact.id] = (
                self.session.scalar(
                    select(func.count()).where(
                        Event.contact_id == contact.id,
                        Event.type == "bounced",
                        func.coalesce(Event.data["hard"].as_boolean(), false()) == false(),
                    )
                )
                or 0
            )
        counted[contact.id] += 1
        soft = counted[contact.id]
        limit = self.ctx.imap.soft_bounce_limit
        if soft >= limit:
            suppress(self.session, contact.email, f"{soft} soft bounces", self.now)
            log.warning("address_suppressed email=%s soft_bounces=%s", contact.email, soft)
            return True
        return False

    def _policy_alert(self, bounce: Bounce, contact: Contact) -> None:
        """A server refused us (not the address): pause sending and tell a person, as the
        sender does for a policy rejection at SMTP time; the contact is left alone."""
        if self.lookups.paused or active_pause(self.session, self.now) is not None:
            return
        self.lookups.paused = True
        until = self.now + timedelta(seconds=self.ctx.policy_pause_seconds)
        self.session.add(
            Alert(
                kind="bounce_policy",
                created_at=self.now,
                pause_until=until,
                message=(
                    f"A bounce from {self.incoming.from_addr or 'a mail server'} says our mail "
                    f"to {contact.email} was refused by policy ({bounce.status or '?'}: "
                    f"{bounce.diagnostic[:300]}); sending paused until {until:%Y-%m-%d %H:%M} UTC"
                ),
            )
        )
        log.error("bounce_policy contact=%s status=%s", contact.email, bounce.status)
