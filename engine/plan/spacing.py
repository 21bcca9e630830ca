"""Spacing: at most one email from the program's sequences per contact within
``[program] min_hours_between_emails``.

``load_mailings`` reads a batch's recent and queued emails in one query; ``spacing`` is the pure
rule that the planner, ``explain`` and ``simulate`` all apply through the step interpreter.
A sequence with ``spaced: false`` (by default one started by a trigger: a thank-you for what
the contact just did, a reward) never waits, but its emails count for the others. Emails of
the same run never count: a sequence's own waits set its pace. Of two runs due together, the
planner walks the higher ``priority`` first, so the other is the one that waits.
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from engine.store.models import Message

# Emails that went or will go out; a held or cancelled one may never go.
COUNTED = ("queued", "sending", "sent")


@dataclass(frozen=True)
class Mailed:
    """One email of a contact: when it went (or is due), and which run and step it is."""

    at: datetime
    run: int
    sequence: str
    step: str
    sent: bool


@dataclass
class Mailings:
    """The contacts' emails that count for spacing, by contact."""

    by_contact: dict[int, list[Mailed]] = field(default_factory=dict)

    def add(self, contact_id: int, mailed: Mailed) -> None:
        self.by_contact.setdefault(contact_id, []).append(mailed)


def load_mailings(
    session: Session, contact_ids: Set[int], now: datetime, gap: timedelta
) -> Mailings:
    """These contacts' emails sent within ``gap`` before ``now`` or queued for later: one
    query for a batch (ix_messages_contact)."""
    mailings = Mailings()
    if not contact_ids or gap <= timedelta(0):
        return mailings
    when = func.coalesce(Message.sent_at, Message.due_at)
    rows = session.execute(
        select(
            Message.contact_id,
            when,
            Message.enrollment_id,
            Message.sequence_id,
            Message.step_id,
            Message.status,
        ).where(
            Message.contact_id.in_(contact_ids),
            Message.status.in_(COUNTED),
            when > now - gap,
        )
    ).all()
    for contact_id, at, run, seq, step, status in rows:
        mailings.add(contact_id, Mailed(at, run, seq, step, status == "sent"))
    return mailings


def spacing(
    mailings: Mailings, contact_id: int, run: int | None, at: datetime, gap: timedelta
) -> tuple[datetime, str] | None:
    """When an email of ``run`` (None: a new run) that would go out at ``at`` must wait for the
    contact's other emails: the first moment it may go and why; None when it may go at ``at``.
    With a 24 h gap and another email at Monday 09:00, one at Monday 10:00 waits until
    Tuesday 09:00."""
    if gap <= timedelta(0):
        return None
    until, culprit = at, None
    # In time order, each email too close pushes the moment past itself; an earlier one is
    # then at least ``gap`` behind, so one pass settles it.
    others = sorted(
        (m for m in mailings.by_contact.get(contact_id, ()) if m.run != run),
        key=lambda m: m.at,
    )
    for mailed in others:
        if abs(mailed.at - until) < gap:
            until, culprit = mailed.at + gap, mailed
    if culprit is None:
        return None
    hours = f"{gap.total_seconds() / 3600:g}"
    state = "sent" if culprit.sent else "due"
    return until, (
        f"waits until {until:%Y-%m-%d %H:%M} UTC: {culprit.sequence}/{culprit.step} {state}"
        f" {culprit.at:%Y-%m-%d %H:%M} UTC, one email per {hours} h"
        " (program.min_hours_between_emails)"
    )
