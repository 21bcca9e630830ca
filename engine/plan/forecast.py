"""The whole program ahead (``simulate --all``): how many emails each day, per sequence.

Read-only. Every contact's runs (those in progress, and those the audience rules would start)
are played together through the planner's own step interpreter, in time order and, at one
moment, in sequence ``priority`` order, so one run's email makes another's wait exactly as
in a tick (spacing, ask fatigue, send windows, re-eligibility). Event-triggered sequences
only go on where a run is in progress: which events will come is not known.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Iterator
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from itertools import count
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.plan.asks import AskHistory, load_asks
from engine.plan.context import BATCH, PlanContext
from engine.plan.explain import RUNNING, Facts, Simulation
from engine.plan.interpreter import Answers, Place, Send, following, interpret, rounds
from engine.plan.planner import Planner
from engine.plan.rules import spacing_gap
from engine.plan.spacing import Mailed, Mailings, load_mailings
from engine.program.sequences import Sequence
from engine.store.models import Contact, Enrollment, Suppression

NOTES = 20  # notes on held runs, at most


@dataclass
class Forecast:
    """Emails that would go out, by day (on the settings' clock) and sequence."""

    start: datetime
    days: int
    zone: str  # whose days: settings [schedule] timezone
    emails: Counter[tuple[date, str]] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)  # runs held, which are not counted

    def table(self) -> tuple[list[str], list[list[str]]]:
        """The header (day, each sequence with an email, total) and a row per day from today
        to the last, then the totals."""
        names = sorted({seq for _, seq in self.emails})
        first = self.start.astimezone(ZoneInfo(self.zone)).date()
        rows: list[list[str]] = []
        for offset in range(self.days + 1):
            day = first + timedelta(days=offset)
            counts = [self.emails[(day, name)] for name in names]
            rows.append([f"{day:%a %Y-%m-%d}", *map(str, counts), str(sum(counts))])
        totals = [sum(n for (_, seq), n in self.emails.items() if seq == name) for name in names]
        rows.append(["total", *map(str, totals), str(sum(totals))])
        return [f"day ({self.zone})", *names, "total"], rows


@dataclass
class _Run:
    """One contact's run as it is played: where it stands and the rules it is judged by."""

    seq: Sequence
    key: int  # its id, or a negative one for a run not started yet
    place: Place
    base: datetime  # when its previous step finished
    rules: Answers
    at: datetime  # when it is walked next
    walks: int = 0


def forecast(planner: Planner, days: int) -> Forecast:
    """What every sequence would send over ``days`` from now, writing nothing."""
    ctx = planner.context
    now = ctx.clock.now()
    result = Forecast(now, days, ctx.settings.schedule.timezone)
    horizon = now + timedelta(days=days)
    zone = ZoneInfo(ctx.settings.schedule.timezone)
    ordered = sorted(ctx.sequences.values(), key=lambda s: (-s.priority, s.id))
    with ctx.db.session() as session:
        for contacts in _chunks(session):
            chunk = _Chunk.read(ctx, session, contacts, ordered, now, horizon, result)
            for contact_id, runs in chunk.runs:
                for at, seq in _play(runs, contact_id, now, horizon, chunk.mailings, chunk.asks):
                    result.emails[(at.astimezone(zone).date(), seq)] += 1
    return result


def _chunks(session: Session) -> Iterator[list[Contact]]:
    """Every contact, a batch at a time (by id)."""
    last = 0
    while batch := list(
        session.scalars(select(Contact).where(Contact.id > last).order_by(Contact.id).limit(BATCH))
    ):
        yield batch
        last = batch[-1].id


@dataclass
class _Chunk:
    """A batch of contacts' runs to play, with the histories the rules read (one query each)."""

    mailings: Mailings
    asks: AskHistory
    runs: list[tuple[int, list[_Run]]]

    @classmethod
    def read(
        cls,
        ctx: PlanContext,
        session: Session,
        contacts: list[Contact],
        ordered: Seq[Sequence],
        now: datetime,
        horizon: datetime,
        result: Forecast,
    ) -> _Chunk:
        """Each contact's runs: those in progress (their queued email counted in ``result``)
        and those the audience rules would start (numbered below zero)."""
        ids = {c.id for c in contacts}
        history: dict[tuple[int, str], list[Enrollment]] = defaultdict(list)
        for run in session.scalars(
            select(Enrollment)
            .where(Enrollment.contact_id.in_(ids))
            .order_by(Enrollment.started_at, Enrollment.id)
        ):
            history[(run.contact_id, run.sequence_id)].append(run)
        suppressed = set(
            session.scalars(
                select(Suppression.email).where(Suppression.email.in_([c.email for c in contacts]))
            )
        )
        chunk = cls(
            load_mailings(session, ids, now, spacing_gap(ctx.settings)),
            load_asks(session, ctx.ask_steps, ids, now),
            [],
        )
        sims = [
            Simulation(session, seq, now, horizon, one=False, limit=0, history=history)
            for seq in ordered
        ]
        zone = ZoneInfo(ctx.settings.schedule.timezone)
        fresh = count(1)
        for contact in contacts:
            facts = Facts(contact, contact.email in suppressed, chunk.asks, chunk.mailings)
            runs: list[_Run] = []
            for sim in sims:
                past = history.get((contact.id, sim.seq.id), [])
                if sim.seq.trigger is not None and not (past and past[-1].status in RUNNING):
                    continue  # started by an event that has not happened
                start = sim.start(contact, facts.suppressed)
                if start is None:
                    if past and past[-1].status == "held" and len(result.notes) < NOTES:
                        result.notes.append(f"{sim.seq.id}: {sim.notes[-1]} (not counted)")
                    continue
                for queued in start.planned:  # already in the outbox
                    if queued.at <= horizon:
                        at = max(queued.at, now)
                        result.emails[(at.astimezone(zone).date(), sim.seq.id)] += 1
                key = start.run if start.run is not None else -next(fresh)
                rules = facts.rules(ctx, session, sim.seq, key, start.messages)
                runs.append(_Run(sim.seq, key, start.place, start.base, rules, start.now))
            chunk.runs.append((contact.id, runs))
        return chunk


def _play(
    runs: list[_Run],
    contact_id: int,
    now: datetime,
    horizon: datetime,
    mailings: Mailings,
    asks: AskHistory,
) -> Iterator[tuple[datetime, str]]:
    """The contact's emails until ``horizon`` (when each goes out, and its sequence): the runs
    walk in time order, the higher priority first at one moment, and each email joins the
    histories that spacing and ask fatigue read, as in a tick."""
    queue = [(run.at, -run.seq.priority, n, run) for n, run in enumerate(runs)]
    heapq.heapify(queue)
    while queue:
        at, rank, n, run = heapq.heappop(queue)
        if at > horizon or run.walks >= rounds(run.seq):
            continue
        run.walks += 1
        outcome = interpret(run.seq, run.place, run.base, at, run.rules).outcome
        if (after := following(outcome, at)) is None:
            continue  # the run ends
        run.place, run.base = after
        run.at = run.base
        if isinstance(outcome, Send):
            if run.at > horizon:
                continue
            mailings.add(contact_id, Mailed(run.at, run.key, run.seq.id, outcome.step.id, False))
            if outcome.step.referral_ask:
                asks.add(contact_id, run.key, run.at)
            yield run.at, run.seq.id
        heapq.heappush(queue, (run.at, rank, n, run))
