"""What a classified email means, recorded in the batch's session: a reply (and the people
it introduces), "not interested", an auto-reply (the contact's sequences postponed), a bounce
(suppression after a hard one or too many soft ones; a pause after a policy refusal) or a
spam complaint; the owner is told of each reply, refusal and complaint."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any

from sqlalchemy import false, func, select
from sqlalchemy.orm import Session

from engine.inbound.replies.classify import Bounce, Verdict
from engine.inbound.replies.context import Outcome, ReplyContext
from engine.inbound.replies.ledger import first_time
from engine.inbound.replies.lookups import Lookups
from engine.inbound.replies.parse import Incoming
from engine.program.sequences import WaitStep
from engine.records.events import record_event, suppress
from engine.records.notes import notify
from engine.records.pauses import active_pause
from engine.records.referrals import record_detected_referral
from engine.store.models import Alert, Contact, Enrollment, Event, Message

log = logging.getLogger("engine.replies")

NOTE_TEXT = 2000  # characters of a reply quoted in the note to the owner
EVENT_TEXT = 500  # characters of a reply kept in its event


@dataclass
class Recorder:
    """Records one classified email (``apply``) in ``session``, with the batch's ``lookups``."""

    ctx: ReplyContext
    session: Session
    lookups: Lookups
    incoming: Incoming
    verdict: Verdict
    now: datetime

    def apply(self) -> Outcome:
        """Record what the verdict means for this email; what was done."""
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
