"""The interpreter's answers about one contact, from the real rules: the planner, ``explain``
and ``simulate`` build them here alike, so they can never disagree about what is sent."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from collections.abc import Sequence as Seq
from datetime import datetime, timedelta

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from engine.plan.asks import AskHistory, ask_fatigue
from engine.plan.interpreter import Answers
from engine.plan.spacing import Mailings, spacing
from engine.program.audience import (
    Decision,
    PastEnrollment,
    blocked,
    check_audience,
    trigger_lapsed,
)
from engine.program.sequences import BranchStep, Sequence
from engine.program.settings import Settings
from engine.store.models import Contact, Enrollment, Event, Message


def entry(
    seq: Sequence, contact: Contact, runs: Seq[Enrollment], now: datetime, suppressed: bool
) -> Decision:
    """May ``contact`` enter the audience sequence ``seq`` now, given its ``runs`` through it
    (oldest first)?"""
    assert seq.audience is not None
    return check_audience(
        contact,
        seq.audience,
        now,
        suppressed=suppressed,
        active=any(r.status in ("active", "held") for r in runs),
        last=PastEnrollment(runs[-1].status, runs[-1].started_at) if runs else None,
    )


def lapsed(seq: Sequence, contact: Contact, now: datetime, suppressed: bool) -> str | None:
    """Why a contact already in ``seq`` no longer qualifies for its next step, or None."""
    if seq.audience is not None:
        decision = check_audience(contact, seq.audience, now, suppressed=suppressed, entering=False)
    else:
        decision = (
            blocked(contact, suppressed)
            or trigger_lapsed(contact, seq.trigger)
            or Decision(True, "eligible", "")
        )
    return None if decision.eligible else f"no longer eligible: {decision}"


def happened(session: Session, messages: Mapping[str, Message], step: BranchStep) -> bool:
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


def answers(
    settings: Settings,
    seq: Sequence,
    contact: Contact,
    *,
    suppressed: bool,
    asks: AskHistory,
    run: int | None,
    engaged: Callable[[BranchStep], bool],
    mailings: Mailings,
) -> Answers:
    """The rules of a tick for ``contact`` in a run (``run``: its id, None for a new one):
    re-eligibility, ask fatigue from ``asks`` (which later asks may join), the send window,
    spacing from the contact's other emails in ``mailings`` (which later emails may join)."""
    schedule, program = settings.schedule, settings.program
    gap = spacing_gap(settings)
    return Answers(
        happened=engaged,
        lapsed=lambda now: lapsed(seq, contact, now, suppressed),
        too_soon=lambda now: ask_fatigue(asks, contact.id, run, now, program),
        opens=lambda at: schedule.next_open(at, seq.window, contact.timezone),
        spacing=lambda at: spacing(mailings, contact.id, run, at, gap),
    )


def spacing_gap(settings: Settings) -> timedelta:
    """The least time between two of a contact's emails (program.min_hours_between_emails)."""
    return timedelta(hours=settings.program.min_hours_between_emails)
