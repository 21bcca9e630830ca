"""Events -> runs: what each new event stops, starts and rewards, oldest first."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from engine.plan.context import BATCH, GLOBAL_STOPS, RECHECK_EVENTS, PlanContext, PlanStats
from engine.plan.rules import lapsed
from engine.plan.runs import end_run, new_run
from engine.program.audience import blocked, check_audience, check_trigger
from engine.records.events import is_suppressed, suppress
from engine.records.rewards import issue_rewards
from engine.store.db import insert_ignore, lock_rows
from engine.store.models import Contact, Enrollment, Event, Referral

log = logging.getLogger("engine.planner")


def process_events(ctx: PlanContext, session: Session, now: datetime, stats: PlanStats) -> None:
    """Stop, start and re-check sequences for events not handled yet (oldest first)."""
    events = session.scalars(
        lock_rows(
            ctx.db,
            select(Event).where(Event.handled_at.is_(None)).order_by(Event.id).limit(BATCH),
        )
    ).all()
    stats.events = len(events)
    for ev in events:
        # Machine traffic (an image proxy's open, a link scanner's click) is no act of the
        # contact: it neither stops nor starts a sequence, as it takes no branch.
        if ev.type not in ctx.reactive_types or ev.machine:
            ev.handled_at = now
            continue
        contact = session.get(Contact, ev.contact_id) if ev.contact_id else None
        if ev.type == "referral.converted":
            _reward(ctx, session, ev, now)
        if contact is not None:
            _apply_contact_state(session, ev, contact)
            stats.stopped += _apply_stops(ctx, session, ev, contact, now)
            rows = _apply_triggers(ctx, session, ev, contact, now)
            stats.enrolled += insert_ignore(session, ctx.db, Enrollment, rows)
            if ev.type in RECHECK_EVENTS:
                contact.check_at = now
        ev.handled_at = now


def _reward(ctx: PlanContext, session: Session, ev: Event, now: datetime) -> None:
    """Give the thank-you gifts of a conversion (once, whoever reported it) and put them
    in the event, where the reward email reads ``reward.description``."""
    referral = session.get(Referral, (ev.data or {}).get("referral_id"))
    if referral is None or referral.status != "converted":
        return
    given = issue_rewards(session, ctx.db, ctx.settings, referral, now)
    if given:
        gifts = {"reward": {"description": given["referrer"]}} if "referrer" in given else {}
        if "friend" in given:
            gifts["friend_reward"] = {"description": given["friend"]}
        ev.data = {**(ev.data or {}), **gifts}  # a new dict: JSON columns track assignment


def _apply_contact_state(session: Session, ev: Event, contact: Contact) -> None:
    """Whoever recorded an unsubscribe or a complaint, the contact's state follows it."""
    if ev.type == "unsubscribed" and contact.unsubscribed_at is None:
        contact.unsubscribed_at = ev.occurred_at
    elif ev.type == "complained":
        suppress(session, contact.email, "complaint", ev.occurred_at)


def _apply_stops(
    ctx: PlanContext, session: Session, ev: Event, contact: Contact, now: datetime
) -> int:
    """Stop what this event ends: stop_when, global stops, and asks the contact no longer
    qualifies for (a promoter who just answered the survey with a 2)."""
    hard = ev.type == "bounced" and bool((ev.data or {}).get("hard"))
    running = session.scalars(
        select(Enrollment).where(
            Enrollment.contact_id == ev.contact_id,
            Enrollment.status.in_(("active", "held")),
            # An enrollment is never stopped by the event that started it; any other
            # event counts, even one dated earlier (a backdated import or reply).
            or_(Enrollment.trigger_event_id.is_(None), Enrollment.trigger_event_id != ev.id),
        )
    ).all()
    stopped = 0
    for enrollment in running:
        seq = ctx.sequences.get(enrollment.sequence_id)
        # A soft bounce (mailbox full, a 4.x.x) keeps the run going; repeated ones
        # suppress the address, which stops it through the suppression list.
        wanted = seq is not None and ev.type in seq.stop_when and (ev.type != "bounced" or hard)
        if wanted or ev.type in GLOBAL_STOPS or hard:
            reason = f"{ev.type} at {ev.occurred_at:%Y-%m-%d %H:%M}"
        elif (
            seq is not None
            and ev.type in RECHECK_EVENTS
            and (gone := lapsed(seq, contact, now, is_suppressed(session, contact.email)))
        ):
            reason = gone
        else:
            continue
        end_run(session, ctx.sequences, enrollment, "stopped", reason, now)
        stopped += 1
    return stopped


def _apply_triggers(
    ctx: PlanContext, session: Session, ev: Event, contact: Contact, now: datetime
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for seq in ctx.by_trigger.get(ev.type, ()):
        assert seq.trigger is not None
        if blocked(contact, is_suppressed(session, contact.email)) is not None:
            continue
        if not check_trigger(contact, seq.trigger, ev.type, ev.data or {}).eligible:
            continue
        if seq.trigger.max_age is not None and now - ev.occurred_at > seq.trigger.max_age:
            log.info("trigger_too_old %s %s event=%s", seq.id, contact.email, ev.id)
            continue
        if seq.audience is not None:
            decision = check_audience(contact, seq.audience, now)
            if not decision.eligible:
                log.info("enrollment_skipped %s %s %s", seq.id, contact.email, decision)
                continue
        rows.append(new_run(contact.id, seq.id, f"event-{ev.id}", now, ev.id))
    return rows
