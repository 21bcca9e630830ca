"""What every part of a planning pass shares: its dependencies, the program's indexes, counts."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.base.clock import Clock
from engine.program.sequences import SendStep, Sequence
from engine.program.settings import Settings
from engine.store.db import Database

# Events after which every sequence of the contact stops, whatever its stop_when says.
GLOBAL_STOPS = frozenset({"unsubscribed", "complained"})
# Events that change what audience rules see: re-evaluate the contact at once.
RECHECK_EVENTS = frozenset({"nps.answered", "referral.created", "referral.converted", "purchase"})
BATCH = 1000  # rows a batch of a pass reads and locks at most

# Renders a note's Jinja text (subject or body) in the sandbox; TemplateError when it cannot.
NoteRenderer = Callable[[str, Mapping[str, Any]], str]


@dataclass
class PlanStats:
    events: int = 0
    checked: int = 0
    enrolled: int = 0
    stopped: int = 0
    planned: int = 0
    completed: int = 0
    detail: dict[str, int] = field(default_factory=dict)

    def __iadd__(self, other: PlanStats) -> PlanStats:
        for name in ("events", "checked", "enrolled", "stopped", "planned", "completed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self


@dataclass(frozen=True)
class PlanContext:
    """The planner's dependencies and the indexes of the program it plans with."""

    db: Database
    sequences: dict[str, Sequence]
    settings: Settings
    clock: Clock
    render_note: NoteRenderer  # the text of notify steps
    domain: str  # of the Message-IDs
    by_trigger: Mapping[str, list[Sequence]]
    audience_sequences: list[Sequence]
    ask_steps: frozenset[tuple[str, str]]  # (sequence, step) of every referral-ask email
    asking_sequences: frozenset[str]
    # Event types the planner reacts to; the rest (most opens and clicks) are only marked
    # handled, without a query, since branches read events directly.
    reactive_types: frozenset[str]

    @classmethod
    def build(
        cls,
        *,
        db: Database,
        sequences: dict[str, Sequence],
        settings: Settings,
        clock: Clock,
        render_note: NoteRenderer,
    ) -> PlanContext:
        """Index the sequences once for every pass."""
        by_trigger: dict[str, list[Sequence]] = defaultdict(list)
        for seq in sequences.values():
            if seq.trigger is not None:
                by_trigger[seq.trigger.event].append(seq)
        ask_steps = frozenset(
            (seq.id, step.id)
            for seq in sequences.values()
            for step in seq.steps
            if isinstance(step, SendStep) and step.referral_ask
        )
        return cls(
            db=db,
            sequences=sequences,
            settings=settings,
            clock=clock,
            render_note=render_note,
            domain=settings.sender.from_email.rpartition("@")[2] or "localhost",
            by_trigger=dict(by_trigger),
            audience_sequences=[s for s in sequences.values() if s.audience and not s.trigger],
            ask_steps=ask_steps,
            asking_sequences=frozenset(seq_id for seq_id, _ in ask_steps),
            reactive_types=frozenset(
                GLOBAL_STOPS
                | RECHECK_EVENTS
                | {"bounced", "referral.converted"}
                | set(by_trigger)
                | {t for seq in sequences.values() for t in seq.stop_when}
            ),
        )
