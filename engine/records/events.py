"""The writes every stage shares: append an event, suppress an address, schedule a re-check.

Planning, sending, the reply side, the tracking app and the CLI all record what happened
through these few functions, so an event or a suppression always looks the same whoever
wrote it. The planner reacts to events on its next pass.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import or_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from engine.program.sequences import Sequence
from engine.store.models import Contact, Event, Message, Suppression


def is_suppressed(session: Session, email: str) -> bool:
    return session.get(Suppression, email) is not None


def suppress(session: Session, email: str, reason: str, at: datetime) -> None:
    """Put ``email`` on the suppression list unless it is there (safe when two workers race)."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    session.execute(
        dialect.insert(Suppression)
        .values(email=email, reason=reason, created_at=at)
        .on_conflict_do_nothing()
    )


def schedule_reentry(
    session: Session,
    sequences: dict[str, Sequence],
    contact_id: int,
    sequence_id: str,
    started_at: datetime,
) -> None:
    """Re-check the contact's audience when the ended enrollment allows re-entry, unless a
    re-check is already due sooner."""
    seq = sequences.get(sequence_id)
    if seq is None or seq.audience is None or seq.audience.reenter_after is None:
        return
    again = started_at + seq.audience.reenter_after
    session.execute(
        update(Contact)
        .where(
            Contact.id == contact_id,
            or_(Contact.check_at.is_(None), Contact.check_at > again),
        )
        .values(check_at=again)
        .execution_options(synchronize_session=False)
    )


def record_event(
    session: Session,
    type_: str,
    occurred_at: datetime,
    *,
    contact_id: int | None,
    message: Message | None = None,
    data: dict[str, Any] | None = None,
) -> Event:
    """Append an event; the planner reacts to it on its next pass."""
    ev = Event(
        type=type_,
        contact_id=contact_id,
        message_id=message.id if message else None,
        sequence_id=message.sequence_id if message else None,
        step_id=message.step_id if message else None,
        occurred_at=occurred_at,
        data=data or {},
    )
    session.add(ev)
    return ev
