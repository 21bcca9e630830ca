"""Answers for people: why a contact is (not) in each sequence, and what a sequence would send.

Both are read-only. They replay the planner's own step interpreter with the same rules a tick
applies (re-eligibility before every email, ask fatigue from the contact's real history, send
windows), so where they say a run stops is where a tick stops it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.plan.advance import run_messages
from engine.plan.asks import AskHistory, load_asks
from engine.plan.context import PlanContext
from engine.plan.interpreter import (
    Answers,
    Branched,
    Hold,
    Notify,
    Place,
    Send,
    Stop,
    Wait,
    play,
)
from engine.plan.planner import Planner
from engine.plan.rules import answers, entry, happened, spacing_gap
from engine.plan.spacing import Mailings, load_mailings
from engine.program.audience import blocked, trigger_lapsed
from engine.program.sequences import Sequence
from engine.records.outbox import held_for_file
from engine.store.models import Contact, Enrollment, Message, Suppression

RUNNING = ("active", "held")
PENDING = ("queued", "sending", "render_failed")  # an email planned and not out yet


@dataclass(frozen=True)
class Explanation:
    sequence: str
    state: str  # in it | due | done | stopped | held | eligible | not eligible | on event
    why: str


@dataclass(frozen=True)
class Facts:
    """What the rules read about one contact, loaded once for every sequence."""

    contact: Contact
    suppressed: bool
    asks: AskHistory
    mailings: Mailings

    @classmethod
    def load(cls, ctx: PlanContext, session: Session, contact: Contact, now: datetime) -> Facts:
        return cls(
            contact,
            session.get(Suppression, contact.email) is not None,
            load_asks(session, ctx.ask_steps, {contact.id}, now),
            load_mailings(session, {contact.id}, now, spacing_gap(ctx.settings)),
        )

    def rules(
        self,
        ctx: PlanContext,
        session: Session,
        seq: Sequence,
        run: int | None,
        messages: Mapping[str, Message],
    ) -> Answers:
        """A tick's answers for this contact in ``run`` (None: a new run) of ``seq``."""
        return answers(
            ctx.settings,
            seq,
            self.contact,
            suppressed=self.suppressed,
            asks=self.asks,
            run=run,
            engaged=partial(happened, session, messages),
            mailings=self.mailings,
        )


def _runs(session: Session, contact: Contact, seq: Sequence) -> list[Enrollment]:
    return list(
        session.scalars(
            select(Enrollment)
            .where(Enrollment.contact_id == contact.id, Enrollment.sequence_id == seq.id)
            .order_by(Enrollment.started_at, Enrollment.id)
        )
    )


def _find(session: Session, email: str) -> Contact:
    contact = session.scalar(select(Contact).where(Contact.email == email.strip().lower()))
    if contact is None:
        raise LookupError(f"no contact {email}")
    return contact


def _fate(seq: Sequence, place: Place, base: datetime, now: datetime, rules: Answers) -> str:
    """Where a tick would stop or hold the run before its next email ("" when it sends it)."""
    for _, walk in play(seq, place, base, now, rules):
        outcome = walk.outcome
        if isinstance(outcome, Stop):
            return f"; then at step {outcome.step}: stopped: {outcome.reason}"
        if isinstance(outcome, Hold):
            return f"; then at step {outcome.step}: held: {outcome.reason}"
        if isinstance(outcome, Wait) and outcome.reason:
            return f"; then at step {outcome.place.mark}: {outcome.reason}"
        if not isinstance(outcome, Wait):
            break
    return ""


def explain_contact(planner: Planner, email: str) -> list[Explanation]:
    """One line per sequence: the contact's state in it and exactly why."""
    ctx = planner.context
    now = ctx.clock.now()
    out: list[Explanation] = []
    with ctx.db.session() as session:
        facts = Facts.load(ctx, session, _find(session, email), now)
        contact = facts.contact
        for seq in sorted(ctx.sequences.values(), key=lambda s: s.id):
            runs = _runs(session, contact, seq)
            current = runs[-1] if runs else None
            if current is not None and current.status in RUNNING:
                out.append(Explanation(seq.id, *_progress(ctx, session, facts, seq, current, now)))
                continue
            history = ""
            if current is not None and current.ended_at:
                history = (
                    f"last run {current.status} on {current.ended_at:%Y-%m-%d} ({current.reason}); "
                )
            if seq.trigger is not None:
                stop = blocked(contact, facts.suppressed)
                why = str(stop) if stop else f"starts when {seq.trigger.event} happens"
                if seq.trigger.nps and not stop:
                    why += f" to a {' or '.join(sorted(seq.trigger.nps))}"
                out.append(
                    Explanation(seq.id, "not eligible" if stop else "on event", history + why)
                )
                continue
            decision = entry(seq, contact, runs, now, facts.suppressed)
            if decision.eligible:
                rules = facts.rules(ctx, session, seq, None, {})
                why = f"{decision.detail}; enters on the next tick"
                why += _fate(seq, Place(None, 0), now, now, rules)
                out.append(Explanation(seq.id, "eligible", history + why))
            else:
                out.append(Explanation(seq.id, "not eligible", history + str(decision)))
    return out


def _progress(
    ctx: PlanContext,
    session: Session,
    facts: Facts,
    seq: Sequence,
    enrollment: Enrollment,
    now: datetime,
) -> tuple[str, str]:
    if enrollment.status == "held":
        why = enrollment.reason or "held"
        if held_for_file(enrollment.reason, seq.id):  # seq is loaded: its file is fixed
            why += "; the file loads again: the next tick sends it or says why not"
        return "held", why
    waiting = session.scalar(
        select(Message)
        .where(Message.enrollment_id == enrollment.id, Message.status.in_(PENDING))
        .order_by(Message.id.desc())
        .limit(1)
    )
    if waiting is not None:
        state = "due" if waiting.due_at <= now else "in it"
        return (
            state,
            f"step {waiting.step_id} {waiting.status}, due {waiting.due_at:%Y-%m-%d %H:%M} UTC",
        )
    at = seq.resume_at(enrollment.step, enrollment.position)
    nxt = seq.steps[at].id if at < len(seq.steps) else "end"
    when = f"{enrollment.next_at:%Y-%m-%d %H:%M} UTC" if enrollment.next_at else "after the send"
    state = "due" if enrollment.next_at and enrollment.next_at <= now else "in it"
    why = f"next: {nxt} at {when} (entered {enrollment.started_at:%Y-%m-%d})"
    if enrollment.reason:  # a wait no wait step explains: spacing from another email
        why += f"; {enrollment.reason}"
    if enrollment.next_at is not None:
        messages = run_messages(session, [enrollment.id]).get(enrollment.id, {})
        rules = facts.rules(ctx, session, seq, enrollment.id, messages)
        place = Place(enrollment.step, enrollment.position)
        why += _fate(seq, place, enrollment.next_at, max(now, enrollment.next_at), rules)
    return state, why


@dataclass(frozen=True)
class TimelineEntry:
    at: datetime
    contact: str
    step: str
    what: str


@dataclass(frozen=True)
class _Start:
    """Where a simulated run begins: a new run, or the contact's run in progress."""

    place: Place
    base: datetime  # when the previous step finished
    now: datetime  # when the first walk is made
    run: int | None = None
    messages: Mapping[str, Message] = field(default_factory=dict)
    planned: tuple[TimelineEntry, ...] = ()  # the email the run already has queued


def timeline(
    ctx: PlanContext,
    seq: Sequence,
    contact: Contact,
    start: _Start,
    horizon: datetime,
    rules: Answers,
) -> list[TimelineEntry]:
    """What a tick would do for this contact in ``seq`` until ``horizon``, assuming no
    engagement from now on: every email, note and branch, and where the run stops."""
    schedule = ctx.settings.schedule
    zone = (seq.window or schedule.window).zone(contact.timezone, schedule.timezone)
    entries = list(start.planned)
    for at, walk in play(seq, start.place, start.base, start.now, rules):
        if at > horizon:
            break
        for action in walk.actions:
            if isinstance(action, Notify):
                entries.append(
                    TimelineEntry(
                        action.at, contact.email, action.step.id, f"notify {action.step.role}"
                    )
                )
            elif isinstance(action, Branched):
                branch = action.step
                what = (
                    f"if {branch.condition} ({branch.step}) -> "
                    f"{branch.then or 'next'}, else -> {branch.otherwise or 'next'}"
                )
                entries.append(TimelineEntry(action.at, contact.email, branch.id, what))
        match walk.outcome:
            case Send(step, due) if due <= horizon:
                local = due.astimezone(zone)
                thread = f", in reply to {step.reply_to_previous}" if step.reply_to_previous else ""
                what = f"send {step.template} ({local:%a %H:%M} {zone.key}{thread})"
                entries.append(TimelineEntry(due, contact.email, step.id, what))
            case Stop(step_id, reason):
                entries.append(TimelineEntry(at, contact.email, step_id, f"stopped: {reason}"))
            case Hold(step_id, reason):
                entries.append(TimelineEntry(at, contact.email, step_id, f"held: {reason}"))
    return entries


def simulate(
    planner: Planner, seq: Sequence, *, email: str | None, days: int, limit: int = 200
) -> tuple[list[TimelineEntry], list[str]]:
    """The timeline for one contact, or for every contact that would enter within ``days``:
    a run in progress goes on from where it stands, others start as a tick would start them."""
    ctx = planner.context
    now = ctx.clock.now()
    horizon = now + timedelta(days=days)
    entries: list[TimelineEntry] = []
    with ctx.db.session() as session:
        if email:
            contacts = [_find(session, email)]
        else:
            contacts = list(session.scalars(select(Contact).order_by(Contact.id)))
        sim = Simulation(session, seq, now, horizon, one=bool(email), limit=limit)
        shown = 0
        for contact in contacts:
            suppressed = session.get(Suppression, contact.email) is not None
            start = sim.start(contact, suppressed)
            if start is None:
                continue
            if shown >= limit:
                sim.notes.append(f"... more contacts not shown (limit {limit})")
                break
            asks = AskHistory()
            if seq.id in ctx.asking_sequences:
                asks = load_asks(session, ctx.ask_steps, {contact.id}, now)
            mailings = load_mailings(session, {contact.id}, now, spacing_gap(ctx.settings))
            rules = Facts(contact, suppressed, asks, mailings).rules(
                ctx, session, seq, start.run, start.messages
            )
            entries.extend(timeline(ctx, seq, contact, start, horizon, rules))
            shown += 1
    entries.sort(key=lambda e: (e.at, e.contact))
    return entries, sim.notes


@dataclass
class Simulation:
    """Where each contact's simulated run begins, with notes for people on the others."""

    session: Session
    seq: Sequence
    now: datetime
    horizon: datetime
    one: bool  # a single contact was asked for: say more about it
    limit: int  # notes on contacts that do not enter, when listing them all
    notes: list[str] = field(default_factory=list)
    # Runs by contact and sequence, read once for many contacts; None: read per contact.
    history: Mapping[tuple[int, str], list[Enrollment]] | None = None

    def start(self, contact: Contact, suppressed: bool) -> _Start | None:
        """Where ``contact``'s run begins, or None (with a note why) when not in time."""
        seq, now = self.seq, self.now
        if self.history is None:
            runs = _runs(self.session, contact, seq)
        else:
            runs = self.history.get((contact.id, seq.id), [])
        if runs and runs[-1].status in RUNNING:
            return self._resume(contact, runs[-1])
        if seq.trigger is not None:
            stop = blocked(contact, suppressed) or trigger_lapsed(contact, seq.trigger)
            if stop:
                self.notes.append(f"{contact.email}: never: {stop}")
                return None
            if self.one:
                self.notes.append(f"{contact.email}: as if {seq.trigger.event} happened now")
            return _Start(Place(None, 0), now, now)
        decision = entry(seq, contact, runs, now, suppressed)
        if decision.eligible:
            return _Start(Place(None, 0), now, now)
        if decision.recheck_at is not None and decision.recheck_at <= self.horizon:
            if self.one:
                self.notes.append(
                    f"{contact.email}: enters {decision.recheck_at:%Y-%m-%d} ({decision.rule})"
                )
            return _Start(Place(None, 0), decision.recheck_at, decision.recheck_at)
        if self.one or len(self.notes) < self.limit:
            days = (self.horizon - now).days
            self.notes.append(f"{contact.email}: not within {days} days: {decision}")
        return None

    def _resume(self, contact: Contact, run: Enrollment) -> _Start | None:
        """The contact's run in progress goes on from its place (after any email it has
        queued, which goes out when due)."""
        if run.status == "held":
            self.notes.append(f"{contact.email}: held: {run.reason}")
            return None
        if self.one:
            self.notes.append(
                f"{contact.email}: in it since {run.started_at:%Y-%m-%d}; the run goes on"
            )
        messages = run_messages(self.session, [run.id]).get(run.id, {})
        place = Place(run.step, run.position)
        if run.next_at is not None:
            return _Start(place, run.next_at, max(self.now, run.next_at), run.id, messages)
        pending = [m for m in messages.values() if m.status in PENDING]
        if not pending:
            return None  # between its email going out and the sender saying so
        queued = max(pending, key=lambda m: m.id)
        out = max(self.now, queued.due_at)
        planned = TimelineEntry(
            queued.due_at, contact.email, queued.step_id, f"{queued.status} already"
        )
        return _Start(place, out, out, run.id, messages, (planned,))
