"""Planning: react to events, enroll eligible contacts, and turn due steps into outbox rows.

Each pass works in batches read through indexes (pending events, contacts whose ``check_at``
is due, enrollments whose ``next_at`` is due), so its cost follows the due work, not the size
of the contact list. Every write is idempotent (unique keys plus guarded updates), so two
planners on one database, or a planner restarted after a crash, never plan a step twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections import defaultdict
from collections.abc import Callable, Mapping
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, exists, func, or_, select, update
from sqlalchemy.orm import Session

from engine.base.clock import Clock
from engine.base.errors import TemplateError
from engine.mail.mime import make_message_id
from engine.program.audience import (
    Decision,
    PastEnrollment,
    blocked,
    check_audience,
    check_trigger,
    trigger_lapsed,
)
from engine.program.sequences import BranchStep, NotifyStep, SendStep, Sequence, WaitStep
from engine.program.settings import Settings
from engine.records.events import is_suppressed, record_event, schedule_reentry, suppress
from engine.records.notes import notify
from engine.records.rewards import issue_rewards
from engine.store import engagement
from engine.store.db import Database, insert_ignore, lock_rows
from engine.store.models import (
    Contact,
    Enrollment,
    Event,
    Message,
    Meta,
    Referral,
    Suppression,
)
from engine.store.prepared import Prepared

log = logging.getLogger("engine.planner")
YEAR = timedelta(days=365)
# An ask the contact clicked or answered (a person, not a link scanner): not ignored.
ANSWERED = engagement.CLICKED | engagement.REPLIED

BATCH = 1000
_contacts = cast(Table, Contact.__table__)
_SET_CHECK_AT = Prepared(
    update(_contacts).where(_contacts.c.id == bindparam("b_id")).values(check_at=bindparam("b_at"))
)
# Events after which every sequence of the contact stops, whatever its stop_when says.
GLOBAL_STOPS = frozenset({"unsubscribed", "complained"})
# Events that change what audience rules see: re-evaluate the contact at once.
RECHECK_EVENTS = frozenset({"nps.answered", "referral.created", "referral.converted", "purchase"})
END = "end"


@dataclass
class PlanStats:
    events: int = 0
    checked: int = 0
    enrolled: int = 0
    stopped: int = 0
    planned: int = 0
    completed: int = 0
    detail: dict[str, int] = field(default_factory=dict)

    def __iadd__(self, other: PlanStats) -> PlanStats:
        for name in ("events", "checked", "enrolled", "stopped", "planned", "completed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self


@dataclass
class Ask:
    """One run that asked a contact for a referral: its last ask and its emails."""

    last: datetime
    message_ids: list[int] = field(default_factory=list)


@dataclass
class AskHistory:
    """Referral asks by contact and run, and the ask emails a person clicked or answered."""

    runs: dict[int, dict[int, Ask]] = field(default_factory=dict)
    engaged: set[int] = field(default_factory=set)

    def add(self, contact_id: int, run: int, at: datetime, message_id: int | None = None) -> None:
        ask = self.runs.setdefault(contact_id, {}).setdefault(run, Ask(at))
        ask.last = max(ask.last, at)
        if message_id is not None:
            ask.message_ids.append(message_id)


# Renders a note's Jinja text (subject or body) in the sandbox; TemplateError when it cannot.
NoteRenderer = Callable[[str, Mapping[str, Any]], str]


class Planner:
    """Turns sequences, contacts and events into enrollments and outbox rows."""

    def __init__(
        self,
        *,
        db: Database,
        sequences: dict[str, Sequence],
        settings: Settings,
        clock: Clock,
        render_note: NoteRenderer,
    ) -> None:
        self.db = db
        self.render_note = render_note  # the text of notify steps
        self.sequences = sequences
        self.settings = settings
        self.clock = clock
        self.domain = settings.sender.from_email.rpartition("@")[2] or "localhost"
        self.by_trigger: dict[str, list[Sequence]] = defaultdict(list)
        for seq in sequences.values():
            if seq.trigger is not None:
                self.by_trigger[seq.trigger.event].append(seq)
        self.audience_sequences = [s for s in sequences.values() if s.audience and not s.trigger]
        self.ask_steps = {
            (seq.id, step.id)
            for seq in sequences.values()
            for step in seq.steps
            if isinstance(step, SendStep) and step.referral_ask
        }
        self.asking_sequences = {seq_id for seq_id, _ in self.ask_steps}
        # Event types the planner reacts to; the rest (most opens and clicks) are only marked
        # handled, without a query, since branches read events directly.
        self.reactive_types = (
            GLOBAL_STOPS
            | RECHECK_EVENTS
            | {"bounced", "referral.converted"}
            | set(self.by_trigger)
            | {t for seq in sequences.values() for t in seq.stop_when}
        )

    # -- the pass ---------------------------------------------------------------------------

    def plan(self) -> PlanStats:
        """One planning pass at the clock's now: events, then enrollment, then due steps."""
        stats = PlanStats()
        with self.db.write() as session:
            self.recheck_if_audiences_changed(session, self.clock.now())
        while (part := self._batch(self.process_events)).events:
            stats += part
        while (part := self._batch(self.enroll_due_contacts)).checked:
            stats += part
        while (part := self._batch(self.advance_due_enrollments)).detail.get("due"):
            stats += part
        return stats

    def _batch(self, work: Any) -> PlanStats:
        stats = PlanStats()
        with self.db.write() as session:
            work(session, self.clock.now(), stats)
        return stats

    def audience_fingerprint(self) -> str:
        """A digest of every audience rule in force (stable across processes)."""
        rules = [
            [
                seq.id,
                a.kind,
                sorted(a.nps),
                a.min_score,
                a.customer_for_at_least.total_seconds(),
                a.no_complaint_within.total_seconds(),
                a.reenter_after.total_seconds() if a.reenter_after is not None else None,
                a.nps_older_than.total_seconds() if a.nps_older_than is not None else None,
                sorted([name, sorted(map(str, values))] for name, values in a.where),
            ]
            for seq in sorted(self.audience_sequences, key=lambda s: s.id)
            if (a := seq.audience) is not None
        ]
        return hashlib.sha256(json.dumps(rules).encode()).hexdigest()

    def recheck_if_audiences_changed(self, session: Session, now: datetime) -> None:
        """A sequence added, fixed or widened must see every contact again, once."""
        fingerprint = self.audience_fingerprint()
        stored = session.get(Meta, "audience_fingerprint")
        if stored is not None and stored.value == fingerprint:
            return
        session.execute(
            update(Contact)
            .where(or_(Contact.check_at.is_(None), Contact.check_at > now))
            .values(check_at=now)
        )
        if stored is None:
            session.add(Meta(key="audience_fingerprint", value=fingerprint))
        else:
            stored.value = fingerprint

    # -- events ------------------------------------------------------------------------------

    def process_events(self, session: Session, now: datetime, stats: PlanStats) -> None:
        """Stop, start and re-check sequences for events not handled yet (oldest first)."""
        events = session.scalars(
            lock_rows(
                self.db,
                select(Event).where(Event.handled_at.is_(None)).order_by(Event.id).limit(BATCH),
            )
        ).all()
        stats.events = len(events)
        for ev in events:
            # Machine traffic (an image proxy's open, a link scanner's click) is no act of the
            # contact: it neither stops nor starts a sequence, as it takes no branch.
            if ev.type not in self.reactive_types or ev.machine:
                ev.handled_at = now
                continue
            contact = session.get(Contact, ev.contact_id) if ev.contact_id else None
            if ev.type == "referral.converted":
                self._reward(session, ev, now)
            if contact is not None:
                self._apply_contact_state(session, ev, contact)
                stats.stopped += self._apply_stops(session, ev, contact, now)
                rows = self._apply_triggers(session, ev, contact, now)
                stats.enrolled += insert_ignore(session, self.db, Enrollment, rows)
                if ev.type in RECHECK_EVENTS:
                    contact.check_at = now
            ev.handled_at = now

    def _reward(self, session: Session, ev: Event, now: datetime) -> None:
        """Give the thank-you gifts of a conversion (once, whoever reported it) and put them
        in the event, where the reward email reads ``reward.description``."""
        referral = session.get(Referral, (ev.data or {}).get("referral_id"))
        if referral is None or referral.status != "converted":
            return
        given = issue_rewards(session, self.db, self.settings, referral, now)
        if given:
            gifts = {"reward": {"description": given["referrer"]}} if "referrer" in given else {}
            if "friend" in given:
                gifts["friend_reward"] = {"description": given["friend"]}
            ev.data = {**(ev.data or {}), **gifts}  # a new dict: JSON columns track assignment

    @staticmethod
    def _apply_contact_state(session: Session, ev: Event, contact: Contact) -> None:
        """Whoever recorded an unsubscribe or a complaint, the contact's state follows it."""
        if ev.type == "unsubscribed" and contact.unsubscribed_at is None:
            contact.unsubscribed_at = ev.occurred_at
        elif ev.type == "complained":
            suppress(session, contact.email, "complaint", ev.occurred_at)

    def _apply_stops(self, session: Session, ev: Event, contact: Contact, now: datetime) -> int:
        """Stop what this event ends: stop_when, global stops, and asks the contact no longer
        qualifies for (a promoter who just answered the survey with a 2)."""
        hard = ev.type == "bounced" and bool((ev.data or {}).get("hard"))
        running = session.scalars(
            select(Enrollment).where(
                Enrollment.contact_id == ev.contact_id,
                Enrollment.status.in_(("active", "held")),
                # An enrollment is never stopped by the event that started it; any other
                # event counts, even one dated earlier (a backdated import or reply).
                or_(Enrollment.trigger_event_id.is_(None), Enrollment.trigger_event_id != ev.id),
            )
        ).all()
        stopped = 0
        for enrollment in running:
            seq = self.sequences.get(enrollment.sequence_id)
            # A soft bounce (mailbox full, a 4.x.x) keeps the run going; repeated ones
            # suppress the address, which stops it through the suppression list.
            wanted = seq is not None and ev.type in seq.stop_when and (ev.type != "bounced" or hard)
            if wanted or ev.type in GLOBAL_STOPS or hard:
                reason = f"{ev.type} at {ev.occurred_at:%Y-%m-%d %H:%M}"
            elif (
                seq is not None
                and ev.type in RECHECK_EVENTS
                and (lapsed := self.lapsed(session, seq, contact, now))
            ):
                reason = lapsed
            else:
                continue
            self.end_enrollment(session, enrollment, "stopped", reason, now)
            stopped += 1
        return stopped

    def lapsed(
        self,
        session: Session,
        seq: Sequence,
        contact: Contact,
        now: datetime,
        suppressed: bool | None = None,
    ) -> str | None:
        """Why a contact already in ``seq`` no longer qualifies for its next step, or None."""
        if suppressed is None:
            suppressed = is_suppressed(session, contact.email)
        if seq.audience is not None:
            decision = check_audience(
                contact, seq.audience, now, suppressed=suppressed, entering=False
            )
        else:
            decision = (
                blocked(contact, suppressed)
                or trigger_lapsed(contact, seq.trigger)
                or Decision(True, "eligible", "")
            )
        return None if decision.eligible else f"no longer eligible: {decision}"

    def _apply_triggers(
        self, session: Session, ev: Event, contact: Contact, now: datetime
    ) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for seq in self.by_trigger.get(ev.type, ()):
            assert seq.trigger is not None
            if blocked(contact, is_suppressed(session, contact.email)) is not None:
                continue
            if not check_trigger(contact, seq.trigger, ev.type, ev.data or {}).eligible:
                continue
            if seq.trigger.max_age is not None and now - ev.occurred_at > seq.trigger.max_age:
                log.info("trigger_too_old %s %s event=%s", seq.id, contact.email, ev.id)
                continue
            if seq.audience is not None:
                decision = check_audience(contact, seq.audience, now)
                if not decision.eligible:
                    log.info("enrollment_skipped %s %s %s", seq.id, contact.email, decision)
                    continue
            rows.append(self._enrollment(contact.id, seq.id, f"event-{ev.id}", now, ev.id))
        return rows

    # -- audience ----------------------------------------------------------------------------

    def enroll_due_contacts(self, session: Session, now: datetime, stats: PlanStats) -> None:
        """Evaluate audience rules for contacts whose ``check_at`` has come."""
        contacts = session.scalars(
            lock_rows(
                self.db,
                select(Contact)
                .where(Contact.check_at <= now)
                .order_by(Contact.check_at)
                .limit(BATCH),
            )
        ).all()
        stats.checked = len(contacts)
        if not contacts:
            return
        ids = [c.id for c in contacts]
        history: dict[tuple[int, str], list[Enrollment]] = defaultdict(list)
        for e in session.scalars(
            select(Enrollment).where(Enrollment.contact_id.in_(ids)).order_by(Enrollment.started_at)
        ):
            history[(e.contact_id, e.sequence_id)].append(e)
        suppressed = set(
            session.scalars(
                select(Suppression.email).where(Suppression.email.in_([c.email for c in contacts]))
            )
        )
        rows: list[dict[str, Any]] = []
        checks: list[dict[str, Any]] = []
        for contact in contacts:
            recheck: list[datetime] = []
            for seq in self.audience_sequences:
                assert seq.audience is not None
                runs = history[(contact.id, seq.id)]
                decision = check_audience(
                    contact,
                    seq.audience,
                    now,
                    suppressed=contact.email in suppressed,
                    active=any(r.status in ("active", "held") for r in runs),
                    last=PastEnrollment(runs[-1].status, runs[-1].started_at) if runs else None,
                )
                if decision.eligible:
                    key = f"cycle-{len(runs) + 1}"
                    rows.append(self._enrollment(contact.id, seq.id, key, now, None))
                elif decision.recheck_at is not None:
                    recheck.append(decision.recheck_at)
            checks.append({"b_id": contact.id, "b_at": min(recheck) if recheck else None})
        # One executemany rather than the ORM's flush of every contact (several times dearer).
        _SET_CHECK_AT.run_many(session.connection(), checks)
        stats.enrolled += insert_ignore(session, self.db, Enrollment, rows)

    @staticmethod
    def _enrollment(
        contact_id: int, sequence_id: str, key: str, now: datetime, event_id: int | None
    ) -> dict[str, Any]:
        log.info("enroll contact=%s sequence=%s key=%s", contact_id, sequence_id, key)
        return {
            "contact_id": contact_id,
            "sequence_id": sequence_id,
            "key": key,
            "status": "active",
            "position": 0,
            "step": None,
            "next_at": now,
            "trigger_event_id": event_id,
            "started_at": now,
            "reason": None,
            "ended_at": None,
        }

    def end_enrollment(
        self, session: Session, enrollment: Enrollment, status: str, reason: str, now: datetime
    ) -> None:
        """Close an enrollment, cancel what it still had queued, and schedule the re-check."""
        enrollment.status = status
        enrollment.reason = reason
        enrollment.ended_at = now
        enrollment.next_at = None
        session.execute(
            update(Message)
            .where(
                Message.enrollment_id == enrollment.id,
                Message.status.in_(("queued", "sending", "render_failed")),
            )
            .values(status="cancelled", last_error=reason, lease_owner=None, lease_until=None)
        )
        schedule_reentry(
            session,
            self.sequences,
            enrollment.contact_id,
            enrollment.sequence_id,
            enrollment.started_at,
        )

    # -- steps -------------------------------------------------------------------------------

    def advance_due_enrollments(self, session: Session, now: datetime, stats: PlanStats) -> None:
        """Run the steps of enrollments whose ``next_at`` has come, up to the next wait or send."""
        due = session.scalars(
            lock_rows(
                self.db,
                select(Enrollment)
                .where(Enrollment.status == "active", Enrollment.next_at <= now)
                .order_by(Enrollment.next_at)
                .limit(BATCH),
            )
        ).all()
        stats.detail["due"] = len(due)
        if not due:
            return
        contacts = {
            c.id: c
            for c in session.scalars(
                select(Contact).where(Contact.id.in_({e.contact_id for e in due}))
            )
        }
        suppressed = set(
            session.scalars(
                select(Suppression.email).where(
                    Suppression.email.in_([c.email for c in contacts.values()])
                )
            )
        )
        sent = self._sent_messages(session, [e.id for e in due])
        asking = {e.contact_id for e in due if e.sequence_id in self.asking_sequences}
        asks = self.ask_history(session, asking, now)
        planned: list[dict[str, Any]] = []
        for enrollment in due:
            seq = self.sequences.get(enrollment.sequence_id)
            if seq is None:
                enrollment.status = "held"
                enrollment.reason = f"sequence {enrollment.sequence_id!r} is missing or invalid"
                continue
            self._run_steps(
                session,
                seq,
                enrollment,
                contacts[enrollment.contact_id],
                sent.get(enrollment.id, {}),
                now,
                stats,
                planned,
                suppressed,
                asks,
            )
        stats.planned += insert_ignore(session, self.db, Message, planned)

    def _sent_messages(self, session: Session, ids: Seq[int]) -> dict[int, dict[str, Message]]:
        found: dict[int, dict[str, Message]] = defaultdict(dict)
        for m in session.scalars(select(Message).where(Message.enrollment_id.in_(ids))):
            found[m.enrollment_id][m.step_id] = m
        return found

    def _run_steps(
        self,
        session: Session,
        seq: Sequence,
        enrollment: Enrollment,
        contact: Contact,
        messages: dict[str, Message],
        now: datetime,
        stats: PlanStats,
        planned: list[dict[str, Any]],
        suppressed: set[str],
        asks: AskHistory,
    ) -> None:
        assert enrollment.next_at is not None
        base = enrollment.next_at  # when the previous step finished: waits count from here
        pos = seq.resume_at(enrollment.step, enrollment.position)
        for _ in range(len(seq.steps) * 2 + 2):  # a branch loop cannot spin forever
            if pos >= len(seq.steps):
                self.end_enrollment(session, enrollment, "completed", "all steps done", now)
                stats.completed += 1
                return
            step = seq.steps[pos]
            if isinstance(step, WaitStep):
                base += step.duration
                pos += 1
                if base > now:
                    self._stand(seq, enrollment, pos, base)
                    return
            elif isinstance(step, NotifyStep):
                self._notify(session, seq, step, enrollment, contact, now)
                pos += 1
            elif isinstance(step, BranchStep):
                target = step.then if self._happened(session, messages, step) else step.otherwise
                if target == END:
                    self.end_enrollment(session, enrollment, "completed", f"branch {step.id}", now)
                    stats.completed += 1
                    return
                pos = pos + 1 if target is None else seq.index(target)
            else:
                assert isinstance(step, SendStep)
                # Eligibility is checked again before every email, not only on entry.
                reason = self.lapsed(session, seq, contact, now, contact.email in suppressed)
                if reason is None and step.referral_ask:
                    reason = self.ask_fatigue(asks, enrollment, now)
                if reason is not None:
                    self.end_enrollment(session, enrollment, "stopped", reason, now)
                    stats.stopped += 1
                    return
                row = self._plan_send(seq, step, enrollment, contact, messages, base)
                if step.referral_ask:  # the next run in this batch sees this ask
                    asks.add(contact.id, enrollment.id, row["due_at"])
                planned.append(row)
                self._stand(seq, enrollment, pos + 1, None)
                return
        enrollment.status, enrollment.reason = "held", "branches loop without a wait or send"

    @staticmethod
    def _stand(seq: Sequence, enrollment: Enrollment, pos: int, next_at: datetime | None) -> None:
        """Save where the run stands: the next step's index and id (see Sequence.resume_at)."""
        enrollment.position, enrollment.step, enrollment.next_at = pos, seq.mark_of(pos), next_at

    def ask_history(self, session: Session, contact_ids: set[int], now: datetime) -> AskHistory:
        """The last 12 months of referral asks of these contacts: one query for a batch."""
        history = AskHistory()
        if not self.ask_steps or not contact_ids:
            return history
        when = func.coalesce(Message.sent_at, Message.due_at)
        rows = session.execute(
            select(
                Message.id,
                Message.contact_id,
                Message.enrollment_id,
                Message.sequence_id,
                Message.step_id,
                when,
                Message.engaged,
            ).where(
                Message.contact_id.in_(contact_ids),
                Message.status.in_(("queued", "sending", "sent")),
                when > now - YEAR,
            )
        ).all()
        for message_id, contact_id, run, seq, step, at, mask in rows:
            if (seq, step) in self.ask_steps:
                history.add(contact_id, run, at, message_id)
                if mask & ANSWERED:
                    history.engaged.add(message_id)
        return history

    def ask_fatigue(self, history: AskHistory, enrollment: Enrollment, now: datetime) -> str | None:
        """Why the contact must not be asked for a referral again yet (program rules across
        every sequence), else None. An ask is a run that sent (or queued) a referral-ask
        email; its own reminders are part of it."""
        rules = self.settings.program
        runs = {
            run: ask
            for run, ask in history.runs.get(enrollment.contact_id, {}).items()
            if run != enrollment.id
        }
        if not runs:
            return None
        if len(runs) >= rules.max_asks_per_year:
            return f"asked {len(runs)} times in 12 months (program.max_asks_per_year)"
        latest = sorted(runs.values(), key=lambda ask: ask.last, reverse=True)
        ignored = 0
        for ask in latest:
            if history.engaged.intersection(ask.message_ids):
                break
            ignored += 1
        spacing = timedelta(days=rules.ask_spacing_days * 2**ignored)
        if now - latest[0].last < spacing:
            return (
                f"asked {latest[0].last:%Y-%m-%d}; the next ask waits {spacing.days} days"
                f" ({ignored} ignored before, program.ask_spacing_days)"
            )
        return None

    def _notify(
        self,
        session: Session,
        seq: Sequence,
        step: NotifyStep,
        enrollment: Enrollment,
        contact: Contact,
        now: datetime,
    ) -> None:
        """Queue the note (once per run and step) and record the ``notified`` event. A note
        whose text fails to render still goes out, as the standard summary with the error:
        the team hears about the customer either way."""
        context = self._note_context(session, seq, step, enrollment, contact)
        try:
            subject = " ".join(self.render_note(step.subject, context).split())
            body = self.render_note(step.body or DEFAULT_NOTE, context)
        except TemplateError as exc:
            log.warning("note_render_failed %s/%s: %s", seq.id, step.id, exc)
            subject = f"[{step.role}] {contact.email} ({seq.id})"
            body = self.render_note(DEFAULT_NOTE, context)
            body += f"\n(The note in {seq.path} step {step.id} failed to render: {exc})\n"
        ev = record_event(
            session,
            "notified",
            now,
            contact_id=contact.id,
            data={"role": step.role, "subject": subject, "sequence": seq.id, "step": step.id},
        )
        ev.handled_at = now  # for webhooks and reports; no sequence reacts to it
        session.flush()
        notify(
            session,
            self.db,
            self.settings.notify,
            step.role,
            key=f"step:{enrollment.id}:{step.id}",
            subject=subject,
            body=body,
            now=now,
            contact_id=contact.id,
            event_id=ev.id,
        )

    @staticmethod
    def _note_context(
        session: Session, seq: Sequence, step: NotifyStep, enrollment: Enrollment, contact: Contact
    ) -> dict[str, Any]:
        """contact, sequence, step, event (the trigger's data) and nps: the latest answer
        with what the contact wrote on the survey page for that score."""
        trigger = (
            session.get(Event, enrollment.trigger_event_id) if enrollment.trigger_event_id else None
        )
        comment = session.scalar(
            select(Event)
            .where(Event.contact_id == contact.id, Event.type == "nps.comment")
            .order_by(Event.occurred_at.desc(), Event.id.desc())
            .limit(1)
        )
        written = (comment.data or {}) if comment is not None else {}
        if written.get("score") != contact.nps_score:
            written = {}
        return {
            "contact": contact.template_context(),
            "sequence": seq.id,
            "step": step.id,
            "event": dict(trigger.data or {}) if trigger is not None else {},
            "nps": {
                "score": contact.nps_score,
                "answered_at": f"{contact.nps_at:%Y-%m-%d %H:%M} UTC" if contact.nps_at else "",
                "improve": written.get("improve") or "",
                "other": written.get("other") or "",
            },
        }

    def _happened(self, session: Session, messages: dict[str, Message], step: BranchStep) -> bool:
        """Did the contact open, click or reply to the step's email? Only a person counts: an
        image proxy (Apple Mail Privacy Protection) opens every email it receives and a link
        scanner clicks every link, so their visits say nothing about the contact."""
        message = messages.get(step.step)
        if message is None:
            return False
        # ix_events_message (message_id, type) finds the email's events of that type; machine
        # is checked on those few rows, and EXISTS stops at the first human one.
        found = session.scalar(
            select(
                exists().where(
                    Event.message_id == message.id,
                    Event.type == step.condition,
                    Event.machine.is_(False),
                )
            )
        )
        return bool(found)

    def _plan_send(
        self,
        seq: Sequence,
        step: SendStep,
        enrollment: Enrollment,
        contact: Contact,
        messages: dict[str, Message],
        base: datetime,
    ) -> dict[str, Any]:
        """The outbox row for this step; its Message-ID is fixed here, once."""
        due = self.settings.schedule.next_open(base, seq.window, contact.timezone)
        in_reply_to = references = None
        if step.reply_to_previous and (parent := messages.get(step.reply_to_previous)):
            in_reply_to = parent.message_id
            references = " ".join(filter(None, [parent.references, parent.message_id]))
        return {
            "enrollment_id": enrollment.id,
            "contact_id": contact.id,
            "sequence_id": seq.id,
            "step_id": step.id,
            "message_id": make_message_id(self.domain),
            "ref": secrets.token_bytes(12),
            "in_reply_to": in_reply_to,
            "references": references,
            "status": "queued",
            "due_at": due,
            "attempts": 0,
            "fence": 0,
            "created_at": self.clock.now(),
        }


# The body of a note whose step sets none.
DEFAULT_NOTE = """\
{{ contact.first_name | default("") }} {{ contact.last_name | default("") }} <{{ contact.email }}>\
{% if contact.company is defined %} ({{ contact.company }}){% endif %}
NPS: {{ nps.score if nps.score is not none else "no answer yet" }}\
{% if nps.answered_at %} (answered {{ nps.answered_at }}){% endif %}
What would move the score closer to 10: {{ nps.improve or "(nothing written)" }}
Anything else: {{ nps.other or "(nothing written)" }}

Sequence {{ sequence }}, step {{ step }}.
"""
