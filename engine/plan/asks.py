"""Ask fatigue: the contact's referral asks across every sequence, and when the next may come.

``load_asks`` reads a batch's last 12 months of asks in one query; ``ask_fatigue`` is the pure
rule (``[program] max_asks_per_year``, ``ask_spacing_days`` doubled per ignored ask) that the
planner, ``explain`` and ``simulate`` all apply through the step interpreter.
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from engine.program.settings import ProgramSettings
from engine.store import engagement
from engine.store.models import Message

YEAR = timedelta(days=365)
# An ask the contact clicked or answered (a person, not a link scanner): not ignored.
ANSWERED = engagement.CLICKED | engagement.REPLIED


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


def load_asks(
    session: Session, ask_steps: Set[tuple[str, str]], contact_ids: Set[int], now: datetime
) -> AskHistory:
    """The last 12 months of referral asks (``ask_steps``: sequence and step ids) of these
    contacts: one query for a batch."""
    history = AskHistory()
    if not ask_steps or not contact_ids:
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
        if (seq, step) in ask_steps:
            history.add(contact_id, run, at, message_id)
            if mask & ANSWERED:
                history.engaged.add(message_id)
    return history


def ask_fatigue(
    history: AskHistory, contact_id: int, run: int | None, now: datetime, rules: ProgramSettings
) -> str | None:
    """Why the contact must not be asked for a referral again yet (program rules across every
    sequence), else None. An ask is a run that sent (or queued) a referral-ask email; its own
    reminders are part of it, so the asking ``run`` itself does not count (None: a new run)."""
    runs = {
        other: ask
        for other, ask in history.runs.get(contact_id, {}).items()
        # A run whose last ask is over a year before ``now`` no longer counts (a simulated
        # moment later than the history was read at).
        if other != run and now - ask.last < YEAR
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
