"""The one step interpreter: what a run does next, as a pure function of where it stands.

``interpret`` reads no database and no clock. It is handed the run's place, the time its
previous step finished, the moment of the pass and the rule ``Answers`` about the contact, and
returns the actions on the way (notes, branches taken) and one ``Outcome``: wait until a time
(a wait step, or spacing from the contact's other emails), send a step at a time (inside the
send window), complete, stop or hold, each with its reason.
The planner acts on it for real; ``explain`` and ``simulate`` replay it with ``play``, so what
they show is what a tick would do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple, TypeAlias

from engine.program.sequences import BranchStep, NotifyStep, SendStep, Sequence, WaitStep

END = "end"  # a branch target: the run completes there
LOOPING = "branches loop without a wait or send"


class Place(NamedTuple):
    """Where a run stands, as saved: the step's mark (``Sequence.mark_of``) and its index then."""

    mark: str | None
    position: int

    @classmethod
    def of(cls, seq: Sequence, position: int) -> Place:
        """The place of step ``position`` in ``seq``, findable again after the file is edited."""
        return cls(seq.mark_of(position), position)


@dataclass(frozen=True)
class Answers:
    """What the interpreter asks about the contact; each caller answers from the same rules."""

    # Did the contact (a person, not a machine) do the branch's condition to its step's email?
    happened: Callable[[BranchStep], bool]
    # Why the contact no longer qualifies for the run's next email at this moment, else None.
    lapsed: Callable[[datetime], str | None]
    # Why a referral ask at this moment would come too soon (ask fatigue), else None.
    too_soon: Callable[[datetime], str | None]
    # The first moment at or after this one when the send window is open for the contact.
    opens: Callable[[datetime], datetime]
    # When an email due at this moment must wait for the contact's other emails: the moment
    # it may go and why (program.min_hours_between_emails), else None.
    spacing: Callable[[datetime], tuple[datetime, str] | None] = lambda at: None


@dataclass(frozen=True)
class Notify:
    """Tell a role on the team; the run goes straight on."""

    step: NotifyStep
    at: datetime  # when the previous step finished


@dataclass(frozen=True)
class Branched:
    """A branch decided: ``target`` is a step id, ``END``, or None for the next step."""

    step: BranchStep
    at: datetime
    taken: bool
    target: str | None


@dataclass(frozen=True)
class Wait:
    """Nothing more until ``until``; then the run goes on from ``place``. ``reason`` says why
    when it is not a wait step (an email that keeps its distance from another)."""

    until: datetime
    place: Place
    reason: str = ""


@dataclass(frozen=True)
class Send:
    """Queue ``step`` due at ``at``; after it is sent the run goes on from ``place``."""

    step: SendStep
    at: datetime
    place: Place


@dataclass(frozen=True)
class Complete:
    reason: str  # "all steps done" or "branch <id>"


@dataclass(frozen=True)
class Stop:
    """The run ends before the email of ``step``, which the contact must not get."""

    step: str
    reason: str


@dataclass(frozen=True)
class Hold:
    step: str
    reason: str


Action: TypeAlias = Notify | Branched
Outcome: TypeAlias = Wait | Send | Complete | Stop | Hold


class Walk(NamedTuple):
    actions: tuple[Action, ...]
    outcome: Outcome


def rounds(seq: Sequence) -> int:
    """How many steps one walk may visit: more means a branch loop that never waits."""
    return len(seq.steps) * 2 + 2


def interpret(seq: Sequence, place: Place, base: datetime, now: datetime, answers: Answers) -> Walk:
    """Run the steps from ``place`` at ``now`` up to the next wait that has not ended, send,
    or end. Waits count from ``base`` (when the previous step finished), so a pass that comes
    late catches up; eligibility and ask fatigue are checked at ``now`` before every email."""
    pos = seq.resume_at(place.mark, place.position)
    actions: list[Action] = []
    for _ in range(rounds(seq)):
        if pos >= len(seq.steps):
            return Walk(tuple(actions), Complete("all steps done"))
        step = seq.steps[pos]
        if isinstance(step, WaitStep):
            base += step.duration
            pos += 1
            if base > now:
                return Walk(tuple(actions), Wait(base, Place.of(seq, pos)))
        elif isinstance(step, NotifyStep):
            actions.append(Notify(step, base))
            pos += 1
        elif isinstance(step, BranchStep):
            taken = answers.happened(step)
            target = step.then if taken else step.otherwise
            actions.append(Branched(step, base, taken, target))
            if target == END:
                return Walk(tuple(actions), Complete(f"branch {step.id}"))
            pos = pos + 1 if target is None else seq.index(target)
        else:
            # Eligibility is checked again before every email, not only on entry.
            reason = answers.lapsed(now)
            if reason is None and step.referral_ask:
                reason = answers.too_soon(now)
            if reason is not None:
                return Walk(tuple(actions), Stop(step.id, reason))
            at = answers.opens(base)
            # A late email goes out at once: it keeps its distance from then on.
            if seq.spaced and (spaced := answers.spacing(max(at, now))) is not None:
                # Never dropped: the run stands before this email until it may go.
                return Walk(tuple(actions), Wait(spaced[0], Place.of(seq, pos), spaced[1]))
            return Walk(tuple(actions), Send(step, at, Place.of(seq, pos + 1)))
    return Walk(tuple(actions), Hold(seq.steps[pos].id if pos < len(seq.steps) else END, LOOPING))


def play(
    seq: Sequence, place: Place, base: datetime, now: datetime, answers: Answers
) -> Iterator[tuple[datetime, Walk]]:
    """The walks a scheduler would make from here, each with the moment it is made: after a
    wait, when the wait ends; after a send, when the email goes out (when due, at once if
    late). Ends after an outcome that ends the run, or after ``rounds`` walks (a loop of
    zero waits)."""
    for _ in range(rounds(seq)):
        walk = interpret(seq, place, base, now, answers)
        yield now, walk
        if (after := following(walk.outcome, now)) is None:
            return
        place, now = after
        base = now


def following(outcome: Outcome, now: datetime) -> tuple[Place, datetime] | None:
    """Where and when the next walk of a run starts after ``outcome`` (walked at ``now``): after
    a wait, when it ends; after a send, when the email goes out (at once if late); None once
    the run ends. The time is also the next walk's base: the previous step finished then."""
    match outcome:
        case Wait(until, place, _):
            return place, until
        case Send(_, at, place):
            return place, max(at, now)
        case _:
            return None
