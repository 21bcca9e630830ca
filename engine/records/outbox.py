"""Outbox maintenance a person asks for: give held emails another go once the cause is fixed."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import update

from engine.store.db import Database
from engine.store.models import Enrollment, Message


def retry_held(db: Database, now: datetime, *, sequence: str | None = None) -> int:
    """Requeue emails held by a render failure (same row, same Message-ID) and resume their
    enrollments; enrollments held for a missing sequence resume too. Returns emails requeued."""
    only = [Message.sequence_id == sequence] if sequence else []
    held = [
        Enrollment.status == "held",
        *([Enrollment.sequence_id == sequence] if sequence else []),
    ]
    with db.write() as session:
        ids = session.scalars(
            update(Message)
            .where(Message.status == "render_failed", *only)
            .values(status="queued", due_at=now, last_error=None, attempts=0)
            .returning(Message.id)
        ).all()
        # Waiting for its email (next_at NULL): resumes as it was. Held before planning (its
        # sequence file was missing): due again now.
        session.execute(
            update(Enrollment)
            .where(*held, Enrollment.next_at.is_(None))
            .values(status="active", reason=None)
        )
        session.execute(
            update(Enrollment)
            .where(*held, Enrollment.next_at.is_not(None))
            .values(status="active", reason=None, next_at=now)
        )
    return len(ids)
