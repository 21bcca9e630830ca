"""Advancing due runs: the step interpreter walks each run whose ``next_at`` has come, and its
outcome is written here (an outbox row, the next wake-up, a note, the end of the run).

A batch takes every due run of its contacts, walked in sequence ``priority`` order, so of two
emails due to one contact the higher priority is queued first and the other waits (spacing).
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Mapping
from collections.abc import Sequence as Seq
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.mail.mime import make_message_id
from engine.plan.asks import load_asks
from engine.plan.context import BATCH, PlanContext, PlanStats
from engine.plan.interpreter import (
    Complete,
    Hold,
    Notify,
    Place,
    Send,
    Stop,
    Wait,
    Walk,
    interpret,
)
from engine.plan.notes import send_note
from engine.plan.rules import answers, happened, spacing_gap
from engine.plan.runs import end_run
from engine.plan.spacing import Mailed, load_mailings
from engine.program.sequences import SendStep, Sequence
from engine.records.outbox import sequence_gone
from engine.store.db import insert_ignore, lock_rows
from engine.store.models import Contact, Enrollment, Message, Suppression


def advance_due_enrollments(
    ctx: PlanContext, session: Session, now: datetime, stats: PlanStats
) -> None:
    """Run the steps of enrollments whose ``next_at`` has come, up to the next wait or send."""
    due = _due_runs(ctx, session, now)
    stats.detail["due"] = len(due)
    if not due:
        return
    contacts = {
        c.id: c
        for c in session.scalars(select(Contact).where(Contact.id.in_({e.contact_id for e in due})))
    }
    suppressed = set(
        session.scalars(
            select(Suppression.email).where(
                Suppression.email.in_([c.email for c in contacts.values()])
            )
        )
    )
    sent = run_messages(session, [e.id for e in due])
    asking = {e.contact_id for e in due if e.sequence_id in ctx.asking_sequences}
    asks = load_asks(session, ctx.ask_steps, asking, now)
    gap = spacing_gap(ctx.settings)
    mailings = load_mailings(session, contacts.keys(), now, gap)
    planned: list[dict[str, Any]] = []
    for enrollment in due:
        seq = ctx.sequences.get(enrollment.sequence_id)
        if seq is None:
            enrollment.status = "held"
            enrollment.reason = sequence_gone(enrollment.sequence_id)
            continue
        contact = contacts[enrollment.contact_id]
        messages = sent.get(enrollment.id, {})
        rules = answers(
            ctx.settings,
            seq,
            contact,
            suppressed=contact.email in suppressed,
            asks=asks,
            run=enrollment.id,
            engaged=partial(happened, session, messages),
            mailings=mailings,
        )
        assert enrollment.next_at is not None  # due: it has come
        # Waits count from next_at, when the previous step finished.
        place = Place(enrollment.step, enrollment.position)
        walk = interpret(seq, place, enrollment.next_at, now, rules)
        row = _act(ctx, session, seq, enrollment, contact, messages, walk, now, stats)
        if row is not None:
            planned.append(row)
            # The batch's next runs see it.
            mailed = Mailed(max(row["due_at"], now), enrollment.id, seq.id, row["step_id"], False)
            mailings.add(contact.id, mailed)
            if isinstance(walk.outcome, Send) and walk.outcome.step.referral_ask:
                asks.add(contact.id, enrollment.id, row["due_at"])
    stats.planned += insert_ignore(session, ctx.db, Message, planned)


def _due_runs(ctx: PlanContext, session: Session, now: datetime) -> list[Enrollment]:
    """A batch of due runs, with every other due run of the same contacts (so that a batch
    boundary never parts them), in the order they are walked: by contact, the higher
    sequence ``priority`` first."""
    due = [Enrollment.status == "active", Enrollment.next_at <= now]
    first = session.scalars(
        lock_rows(ctx.db, select(Enrollment).where(*due).order_by(Enrollment.next_at).limit(BATCH))
    ).all()
    ids = {e.id for e in first}
    others = session.scalars(
        lock_rows(
            ctx.db,
            select(Enrollment).where(
                *due,
                Enrollment.contact_id.in_({e.contact_id for e in first}),
                Enrollment.id.not_in(ids),
            ),
        )
    ).all()

    def rank(e: Enrollment) -> tuple[int, int, datetime, int]:
        seq = ctx.sequences.get(e.sequence_id)
        assert e.next_at is not None  # due
        return e.contact_id, -(seq.priority if seq else 0), e.next_at, e.id

    return sorted([*first, *others], key=rank)


def run_messages(session: Session, ids: Seq[int]) -> dict[int, dict[str, Message]]:
    """The emails of these runs, by run and step."""
    found: dict[int, dict[str, Message]] = defaultdict(dict)
    for m in session.scalars(select(Message).where(Message.enrollment_id.in_(ids))):
        found[m.enrollment_id][m.step_id] = m
    return found


def _act(
    ctx: PlanContext,
    session: Session,
    seq: Sequence,
    enrollment: Enrollment,
    contact: Contact,
    messages: Mapping[str, Message],
    walk: Walk,
    now: datetime,
    stats: PlanStats,
) -> dict[str, Any] | None:
    """Write what the walk decided; the outbox row of a send, else None."""
    for action in walk.actions:
        if isinstance(action, Notify):
            send_note(ctx, session, seq, action.step, enrollment, contact, now)
    match walk.outcome:
        case Wait(until, place, reason):
            _stand(enrollment, place, until, reason)
        case Send(step, at, place):
            _stand(enrollment, place, None)  # the sender sets next_at when the email is out
            return _outbox_row(ctx, seq, step, enrollment, contact, messages, at)
        case Complete(reason):
            end_run(session, ctx.sequences, enrollment, "completed", reason, now)
            stats.completed += 1
        case Stop(_, reason):
            end_run(session, ctx.sequences, enrollment, "stopped", reason, now)
            stats.stopped += 1
        case Hold(_, reason):
            enrollment.status, enrollment.reason = "held", reason
    return None


def _stand(enrollment: Enrollment, place: Place, next_at: datetime | None, why: str = "") -> None:
    """Save where the run stands: the next step's mark and index (see Sequence.resume_at),
    and why it waits when no wait step says so (``explain`` shows it)."""
    enrollment.step, enrollment.position, enrollment.next_at = place.mark, place.position, next_at
    enrollment.reason = why or None


def _outbox_row(
    ctx: PlanContext,
    seq: Sequence,
    step: SendStep,
    enrollment: Enrollment,
    contact: Contact,
    messages: Mapping[str, Message],
    due: datetime,
) -> dict[str, Any]:
    """The outbox row for this step; its Message-ID is fixed here, once."""
    in_reply_to = references = None
    if step.reply_to_previous and (parent := messages.get(step.reply_to_previous)):
        in_reply_to = parent.message_id
        references = " ".join(filter(None, [parent.references, parent.message_id]))
    return {
        "enrollment_id": enrollment.id,
        "contact_id": contact.id,
        "sequence_id": seq.id,
        "step_id": step.id,
        "message_id": make_message_id(ctx.domain),
        "ref": secrets.token_bytes(12),
        "in_reply_to": in_reply_to,
        "references": references,
        "status": "queued",
        "due_at": due,
        "attempts": 0,
        "fence": 0,
        "created_at": ctx.clock.now(),
    }
