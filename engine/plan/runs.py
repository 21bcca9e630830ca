"""A run (enrollment) begins and ends: the row that starts it, the close that cancels its mail."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from engine.program.sequences import Sequence
from engine.records.events import schedule_reentry
from engine.store.models import Enrollment, Message

log = logging.getLogger("engine.planner")


def new_run(
    contact_id: int, sequence_id: str, key: str, now: datetime, event_id: int | None
) -> dict[str, Any]:
    """The enrollment row of a run starting now (inserted ignoring a duplicate ``key``)."""
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


def end_run(
    session: Session,
    sequences: dict[str, Sequence],
    enrollment: Enrollment,
    status: str,
    reason: str,
    now: datetime,
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
        session, sequences, enrollment.contact_id, enrollment.sequence_id, enrollment.started_at
    )
