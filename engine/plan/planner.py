"""Planning: react to events, enroll eligible contacts, and turn due steps into outbox rows.

Each pass works in batches read through indexes (pending events, contacts whose ``check_at``
is due, enrollments whose ``next_at`` is due), so its cost follows the due work, not the size
of the contact list. Every write is idempotent (unique keys plus guarded updates), so two
planners on one database, or a planner restarted after a crash, never plan a step twice.

The stages of a pass live beside this module: ``events`` (stops, triggers, rewards),
``enroll`` (audience rules), ``advance`` (due runs, through the step ``interpreter``), with
``asks`` (ask fatigue), ``notes`` and ``runs``; this module runs them in order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import or_, update
from sqlalchemy.orm import Session

from engine.base.clock import Clock
from engine.plan.advance import advance_due_enrollments
from engine.plan.asks import ANSWERED, YEAR, Ask, AskHistory
from engine.plan.context import (
    BATCH,
    GLOBAL_STOPS,
    RECHECK_EVENTS,
    NoteRenderer,
    PlanContext,
    PlanStats,
)
from engine.plan.enroll import enroll_due_contacts
from engine.plan.events import process_events
from engine.plan.interpreter import END
from engine.plan.notes import DEFAULT_NOTE
from engine.plan.runs import end_run
from engine.program.sequences import Sequence
from engine.program.settings import Settings
from engine.records.outbox import recheck_held
from engine.store.db import Database
from engine.store.models import Contact, Enrollment, Meta

__all__ = [
    "ANSWERED",
    "BATCH",
    "DEFAULT_NOTE",
    "END",
    "GLOBAL_STOPS",
    "RECHECK_EVENTS",
    "YEAR",
    "Ask",
    "AskHistory",
    "NoteRenderer",
    "PlanStats",
    "Planner",
]

# One part of a pass: it fills in the stats of its batch (zero: nothing left to do).
Batch = Callable[[PlanContext, Session, datetime, PlanStats], None]


class Planner:
    """Turns sequences, contacts and events into enrollments and outbox rows."""

    def __init__(
        self,
        *,
        db: Database,
        sequences: dict[str, Sequence],
        settings: Settings,
        clock: Clock,
        render_note: NoteRenderer,
    ) -> None:
        self.context = PlanContext.build(
            db=db, sequences=sequences, settings=settings, clock=clock, render_note=render_note
        )
        self.db = db
        self.sequences = sequences
        self.settings = settings
        self.clock = clock

    def plan(self) -> PlanStats:
        """One planning pass at the clock's now: events, then enrollment, then due steps."""
        stats = PlanStats()
        with self.db.write() as session:
            self.recheck_if_audiences_changed(session, self.clock.now())
            # A sequence file that loads again releases what its failure held.
            steps = {s.id: {step.id for step in s.send_steps()} for s in self.sequences.values()}
            stats.detail["released"] = recheck_held(session, steps, self.clock.now())
        while (part := self._batch(process_events)).events:
            stats += part
        while (part := self._batch(enroll_due_contacts)).checked:
            stats += part
        while (part := self._batch(advance_due_enrollments)).detail.get("due"):
            stats += part
        return stats

    def _batch(self, work: Batch) -> PlanStats:
        stats = PlanStats()
        with self.db.write() as session:
            work(self.context, session, self.clock.now(), stats)
        return stats

    def audience_fingerprint(self) -> str:
        """A digest of every audience rule in force (stable across processes)."""
        rules = [
            [
                seq.id,
                a.kind,
                sorted(a.nps),
                a.min_score,
                a.customer_for_at_least.total_seconds(),
                a.no_complaint_within.total_seconds(),
                a.reenter_after.total_seconds() if a.reenter_after is not None else None,
                a.nps_older_than.total_seconds() if a.nps_older_than is not None else None,
                sorted([name, sorted(map(str, values))] for name, values in a.where),
            ]
            for seq in sorted(self.context.audience_sequences, key=lambda s: s.id)
            if (a := seq.audience) is not None
        ]
        return hashlib.sha256(json.dumps(rules).encode()).hexdigest()

    def recheck_if_audiences_changed(self, session: Session, now: datetime) -> None:
        """A sequence added, fixed or widened must see every contact again, once."""
        fingerprint = self.audience_fingerprint()
        stored = session.get(Meta, "audience_fingerprint")
        if stored is not None and stored.value == fingerprint:
            return
        session.execute(
            update(Contact)
            .where(or_(Contact.check_at.is_(None), Contact.check_at > now))
            .values(check_at=now)
        )
        if stored is None:
            session.add(Meta(key="audience_fingerprint", value=fingerprint))
        else:
            stored.value = fingerprint

    def end_enrollment(
        self, session: Session, enrollment: Enrollment, status: str, reason: str, now: datetime
    ) -> None:
        """Close an enrollment, cancel what it still had queued, and schedule the re-check."""
        end_run(session, self.sequences, enrollment, status, reason, now)
