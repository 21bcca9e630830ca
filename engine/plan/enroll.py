"""Audience enrollment: contacts whose re-check time has come enter the sequences they fit."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.orm import Session

from engine.plan.context import BATCH, PlanContext, PlanStats
from engine.plan.rules import entry
from engine.plan.runs import new_run
from engine.store.db import insert_ignore, lock_rows
from engine.store.models import Contact, Enrollment, Suppression
from engine.store.prepared import Prepared

_contacts = cast(Table, Contact.__table__)
_SET_CHECK_AT = Prepared(
    update(_contacts).where(_contacts.c.id == bindparam("b_id")).values(check_at=bindparam("b_at"))
)


def enroll_due_contacts(
    ctx: PlanContext, session: Session, now: datetime, stats: PlanStats
) -> None:
    """Evaluate audience rules for contacts whose ``check_at`` has come."""
    contacts = session.scalars(
        lock_rows(
            ctx.db,
            select(Contact).where(Contact.check_at <= now).order_by(Contact.check_at).limit(BATCH),
        )
    ).all()
    stats.checked = len(contacts)
    if not contacts:
        return
    ids = [c.id for c in contacts]
    history: dict[tuple[int, str], list[Enrollment]] = defaultdict(list)
    for e in session.scalars(
        select(Enrollment).where(Enrollment.contact_id.in_(ids)).order_by(Enrollment.started_at)
    ):
        history[(e.contact_id, e.sequence_id)].append(e)
    suppressed = set(
        session.scalars(
            select(Suppression.email).where(Suppression.email.in_([c.email for c in contacts]))
        )
    )
    rows: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    for contact in contacts:
        recheck: list[datetime] = []
        for seq in ctx.audience_sequences:
            runs = history[(contact.id, seq.id)]
            decision = entry(seq, contact, runs, now, contact.email in suppressed)
            if decision.eligible:
                rows.append(new_run(contact.id, seq.id, f"cycle-{len(runs) + 1}", now, None))
            elif decision.recheck_at is not None:
                recheck.append(decision.recheck_at)
        checks.append({"b_id": contact.id, "b_at": min(recheck) if recheck else None})
    # One executemany rather than the ORM's flush of every contact (several times dearer).
    _SET_CHECK_AT.run_many(session.connection(), checks)
    stats.enrolled += insert_ignore(session, ctx.db, Enrollment, rows)
