"""Outbox maintenance: give held emails another go once the cause is fixed, when a person
asks (``retry_held``: a template fixed) or by itself (``recheck_held``: a sequence file that
loads again)."""

from __future__ import annotations

from collections.abc import Mapping, Set
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

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


GONE = " no longer exists"


def step_gone(sequence_id: str, step_id: str) -> str:
    """Why an email is held when its sequence or step is not loaded (a file that no longer
    loads, or a step renamed): the one wording, which ``recheck_held`` recognises."""
    return f"step {sequence_id}/{step_id}{GONE}"


def sequence_gone(sequence_id: str) -> str:
    """Why a run due for its next step is held: its file is missing or does not load."""
    return f"sequence {sequence_id!r} is missing or invalid"


def held_for_file(reason: str | None, sequence_id: str) -> bool:
    """Was a run of ``sequence_id`` held only because its file did not load?"""
    return reason == sequence_gone(sequence_id) or (
        reason is not None and reason.startswith(f"step {sequence_id}/") and reason.endswith(GONE)
    )


def recheck_held(session: Session, steps: Mapping[str, Set[str]], now: datetime) -> int:
    """Give another look to what was held only because its sequence file did not load, now
    that the file loads (``steps``: each loaded sequence's send step ids). An email whose step
    is back goes out (same row, same Message-ID); one whose step is gone for good is
    cancelled with the reason, and its run goes on from where it stood. Returns rows changed."""
    if not steps:
        return 0
    emails = session.scalars(
        select(Message).where(
            Message.status == "render_failed",
            Message.sequence_id.in_(steps.keys()),
            Message.last_error.like("step %"),
        )
    ).all()
    changed = 0
    for email in emails:
        if email.last_error != step_gone(email.sequence_id, email.step_id):
            continue
        run = session.get(Enrollment, email.enrollment_id)
        if email.step_id in steps[email.sequence_id]:
            email.status, email.due_at, email.attempts = "queued", now, 0
            email.last_error, email.lease_owner, email.lease_until = None, None, None
        else:
            email.status = "cancelled"
            email.last_error = f"step {email.step_id!r} is no longer in the sequence file"
            if run is not None:
                run.next_at = now  # its place is past this email: the run goes on
        if run is not None and run.status == "held":
            run.status, run.reason = "active", None
        changed += 1
    # Held before its email was planned: due again, as it stood.
    for run in session.scalars(
        select(Enrollment).where(
            Enrollment.status == "held", Enrollment.sequence_id.in_(steps.keys())
        )
    ):
        if run.reason == sequence_gone(run.sequence_id):
            run.status, run.reason = "active", None
            changed += 1
    return changed
