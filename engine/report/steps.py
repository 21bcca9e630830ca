"""Per sequence and step: emails by outbox status and by what their recipients did."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from engine.report.rows import StepRow
from engine.report.window import Window, fold
from engine.store import engagement
from engine.store.models import Message, placed_on

STATUS_FIELD = {"sending": "queued", "render_failed": "held", "suppressed": "cancelled"}


def step_rows(
    session: Session, window: Window, period: str | None
) -> dict[tuple[str | None, str, str], StepRow]:
    """Step rows keyed by (period key, sequence, step): one pass over ``ix_messages_report``.

    An email is placed in time when it was sent, or written to the outbox if it never was;
    its opens, clicks, replies and bounces count with it (the emails of March that were
    opened, whenever they were), so every rate compares emails with the same emails.
    """
    rows: dict[tuple[str | None, str, str], StepRow] = {}
    placed = func.coalesce(Message.sent_at, Message.created_at)
    # By day in index order (no sort of every email); days fold into weeks or months here.
    days = [placed_on(Message.sent_at, Message.created_at)] if period else []
    query = select(
        Message.sequence_id, Message.step_id, Message.status, Message.engaged, *days, func.count()
    )
    if window.bounded:
        query = query.where(window.holds(placed))
    query = query.group_by(
        Message.sequence_id, Message.step_id, Message.status, Message.engaged, *days
    )
    for seq, step, status, mask, *day, count in session.execute(query):
        key = fold(day[0], period) if period else None
        target = rows.setdefault((key, seq, step), StepRow(seq, step, period=key))
        attr = STATUS_FIELD.get(status, status)
        setattr(target, attr, getattr(target, attr) + count)
        for name, bits in engagement.FIELDS.items():
            if mask & bits:
                setattr(target, name, getattr(target, name) + count)
    return rows
