"""Answers for people: why a contact is (not) in each sequence, and what a sequence would send.

Both are read-only: ``simulate`` walks the steps in memory with the real eligibility rules and
send windows, and writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.plan.planner import Planner
from engine.program.audience import Decision, PastEnrollment, blocked, check_audience
from engine.program.sequences import BranchStep, NotifyStep, SendStep, Sequence, WaitStep
from engine.store.models import Contact, Enrollment, Message, Suppression


@dataclass(frozen=True)
class Explanation:
    sequence: str
    state: str  # in it | due | done | stopped | held | eligible | not eligible | on event
    why: str


def _audience_decision(
    session: Session, contact: Contact, seq: Sequence, runs: list[Enrollment], now: datetime
) -> Decision:
    assert seq.audience is not None
    return check_audience(
        contact,
        seq.audience,
        now,
        suppressed=session.get(Suppression, contact.email) is not None,
        active=any(r.status in ("active", "held") for r in runs),
        last=PastEnrollment(runs[-1].status, runs[-1].started_at) if runs else None,
    )


def explain_contact(planner: Planner, email: str) -> list[Explanation]:
    """One line per sequence: the contact's state in it and exactly why."""
    now = planner.clock.now()
    out: list[Explanation] = []
    with planner.db.session() as session:
        contact = session.scalar(select(Contact).where(Contact.email == email.strip().lower()))
        if contact is None:
            raise LookupError(f"no contact {email}")
        suppressed = session.get(Suppression, contact.email) is not None
        for seq in sorted(planner.sequences.values(), key=lambda s: s.id):
            runs = list(
                session.scalars(
                    select(Enrollment)
                    .where(Enrollment.contact_id == contact.id, Enrollment.sequence_id == seq.id)
                    .order_by(Enrollment.started_at, Enrollment.id)
                )
            )
            current = runs[-1] if runs else None
            if current is not None and current.status in {"active", "held"}:
                out.append(Explanation(seq.id, *_progress(session, seq, current, now)))
                continue
            history = ""
            if current is not None:
                history = (
                    f"last run {current.status} on {current.ended_at:%Y-%m-%d} ({current.reason}); "
                    if current.ended_at
                    else ""
                )
            if seq.trigger is not None:
                stop = blocked(contact, suppressed)
                why = str(stop) if stop else f"starts when {seq.trigger.event} happens"
                if seq.trigger.nps and not stop:
                    why += f" to a {' or '.join(sorted(seq.trigger.nps))}"
                out.append(
                    Explanation(seq.id, "not eligible" if stop else "on event", history + why)
                )
                continue
            decision = _audience_decision(session, contact, seq, runs, now)
            state = "eligible" if decision.eligible else "not eligible"
            if decision.eligible:
                why = f"{decision.detail}; enters on the next tick"
            else:
                why = str(decision)
            out.append(Explanation(seq.id, state, history + why))
    return out


def _progress(
    session: Session, seq: Sequence, enrollment: Enrollment, now: datetime
) -> tuple[str, str]:
    if enrollment.status == "held":
        return "held", enrollment.reason or "held"
    waiting = session.scalar(
        select(Message)
        .where(
            Message.enrollment_id == enrollment.id,
            Message.status.in_(("queued", "sending", "render_failed")),
        )
        .order_by(Message.id.desc())
        .limit(1)
    )
    if waiting is not None:
        state = "due" if waiting.due_at <= now else "in it"
        return (
            state,
            f"step {waiting.step_id} {waiting.status}, due {waiting.due_at:%Y-%m-%d %H:%M} UTC",
        )
    at = seq.resume_at(enrollment.step, enrollment.position)
    nxt = seq.steps[at].id if at < len(seq.steps) else "end"
    when = f"{enrollment.next_at:%Y-%m-%d %H:%M} UTC" if enrollment.next_at else "after the send"
    state = "due" if enrollment.next_at and enrollment.next_at <= now else "in it"
    return state, f"next: {nxt} at {when} (entered {enrollment.started_at:%Y-%m-%d})"


@dataclass(frozen=True)
class TimelineEntry:
    at: datetime
    contact: str
    step: str
    what: str


def timeline(
    planner: Planner, seq: Sequence, contact: Contact, start: datetime, horizon: datetime
) -> list[TimelineEntry]:
    """What the sequence would send this contact from ``start``, assuming no engagement."""
    schedule = planner.settings.schedule
    zone = (seq.window or schedule.window).zone(contact.timezone, schedule.timezone)
    entries: list[TimelineEntry] = []
    at, pos = start, 0
    for _ in range(len(seq.steps) * 2 + 2):
        if pos >= len(seq.steps) or at > horizon:
            break
        step = seq.steps[pos]
        if isinstance(step, WaitStep):
            at += step.duration
            pos += 1
        elif isinstance(step, BranchStep):
            target = step.otherwise
            entries.append(
                TimelineEntry(
                    at,
                    contact.email,
                    step.id,
                    f"if {step.condition} ({step.step}) -> "
                    f"{step.then or 'next'}, else -> {target or 'next'}",
                )
            )
            if target == "end":
                break
            pos = pos + 1 if target is None else seq.index(target)
        elif isinstance(step, NotifyStep):
            entries.append(TimelineEntry(at, contact.email, step.id, f"notify {step.role}"))
            pos += 1
        else:
            assert isinstance(step, SendStep)
            at = schedule.next_open(at, seq.window, contact.timezone)
            if at > horizon:
                break
            local = at.astimezone(zone)
            thread = f", in reply to {step.reply_to_previous}" if step.reply_to_previous else ""
            entries.append(
                TimelineEntry(
                    at,
                    contact.email,
                    step.id,
                    f"send {step.template} ({local:%a %H:%M} {zone.key}{thread})",
                )
            )
            pos += 1
    return entries


def simulate(
    planner: Planner, seq: Sequence, *, email: str | None, days: int, limit: int = 200
) -> tuple[list[TimelineEntry], list[str]]:
    """The timeline for one contact, or for every contact that would enter within ``days``."""
    now = planner.clock.now()
    horizon = now + timedelta(days=days)
    entries: list[TimelineEntry] = []
    notes: list[str] = []
    with planner.db.session() as session:
        query = select(Contact).order_by(Contact.id)
        if email:
            query = query.where(Contact.email == email.strip().lower())
        contacts = session.scalars(query).all()
        if email and not contacts:
            raise LookupError(f"no contact {email}")
        shown = 0
        for contact in contacts:
            suppressed = session.get(Suppression, contact.email) is not None
            if seq.trigger is not None:
                stop = blocked(contact, suppressed)
                if stop:
                    notes.append(f"{contact.email}: never: {stop}")
                    continue
                start = now
                if email:
                    notes.append(f"{contact.email}: as if {seq.trigger.event} happened now")
            else:
                runs = list(
                    session.scalars(
                        select(Enrollment)
                        .where(
                            Enrollment.contact_id == contact.id, Enrollment.sequence_id == seq.id
                        )
                        .order_by(Enrollment.started_at)
                    )
                )
                decision = _audience_decision(session, contact, seq, runs, now)
                if decision.eligible:
                    start = now
                elif decision.recheck_at is not None and decision.recheck_at <= horizon:
                    start = decision.recheck_at
                    if email:
                        notes.append(f"{contact.email}: enters {start:%Y-%m-%d} ({decision.rule})")
                else:
                    if email or len(notes) < limit:
                        notes.append(f"{contact.email}: not within {days} days: {decision}")
                    continue
            if shown >= limit:
                notes.append(f"... more contacts not shown (limit {limit})")
                break
            entries.extend(timeline(planner, seq, contact, start, horizon))
            shown += 1
    entries.sort(key=lambda e: (e.at, e.contact))
    return entries, notes
