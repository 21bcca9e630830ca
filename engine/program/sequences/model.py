"""The sequence model: what a validated sequence file becomes (frozen objects, no I/O)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from types import MappingProxyType
from typing import Any, NamedTuple, TypeAlias

from engine.base.errors import SequenceError
from engine.base.locale import normalize, variants
from engine.program.windows import SendWindow

EVENT_TYPES: frozenset[str] = frozenset(
    {
        "sent",
        "opened",
        "clicked",
        "replied",
        "auto_replied",
        "bounced",
        "unsubscribed",
        "complained",
        "referral.created",
        "referral.updated",
        "referral.converted",
        "nps.answered",
        "form.submitted",
        "purchase",
    }
)
# Short names accepted wherever an event type is (stop_when, trigger); the contact is the referrer.
STOP_ALIASES: Mapping[str, str] = MappingProxyType(
    {"referred": "referral.created", "converted": "referral.converted"}
)
EVENT_NAMES: tuple[str, ...] = tuple(sorted(EVENT_TYPES | STOP_ALIASES.keys()))
NPS_CLASSES = ("promoter", "passive", "detractor", "unknown")
NPS_ANY = "any"
AUDIENCE_KINDS = ("customer", "partner", "any")
BRANCH_CONDITIONS = ("opened", "clicked", "replied")
ACTIONS = ("send", "wait", "branch", "notify")  # what a step does: exactly one of these
NOTIFY_ROLES = ("owner", "sales", "account_manager")
END = "end"  # branch target: leave the sequence
AFTER = "after:"  # a mark_of prefix: the step that follows the named one
DEFAULT_CATEGORY = "referral"
DEFAULT_STOP_WHEN = frozenset({"replied", "unsubscribed", "bounced"})
DEFAULT_SUBJECT = "default"  # the subject key used when no language of the contact's matches
MIN_REFERRAL_SCORE = 5  # the domain rule: never ask anyone who scored below 5
DEFAULT_PRIORITY = 0  # of two emails due to one contact, the higher priority goes first

WhereRule: TypeAlias = tuple[tuple[str, tuple[Any, ...]], ...]


def nps_class(score: int | None) -> str:
    """NPS class of a 0-10 score: 9-10 promoter, 7-8 passive, 0-6 detractor, None unknown."""
    if score is None:
        return "unknown"
    if not 0 <= score <= 10:
        raise ValueError(f"an NPS score is 0 to 10, got {score}")
    if score >= 9:
        return "promoter"
    return "passive" if score >= 7 else "detractor"


def subject_key(locale: str) -> str:
    """The key a per-language subject is kept under: ``"pt_BR"`` -> ``"pt-br"``;
    ``"default"`` stays ``"default"``."""
    return (normalize(locale) or locale.strip()).lower()


@dataclass(frozen=True)
class Audience:
    """Who enters a sequence by rule (contacts matching all of these)."""

    kind: str = "customer"  # one of AUDIENCE_KINDS
    nps: frozenset[str] = frozenset(NPS_CLASSES)
    min_score: int | None = MIN_REFERRAL_SCORE
    customer_for_at_least: timedelta = timedelta(days=30)
    no_complaint_within: timedelta = timedelta(days=30)
    reenter_after: timedelta | None = timedelta(days=90)  # None: never enter twice
    nps_older_than: timedelta | None = None  # only if the last NPS answer is this old (or none)
    where: WhereRule = ()  # (field, allowed values): equality, or membership for several


@dataclass(frozen=True)
class Trigger:
    """An event that starts the sequence for the event's contact."""

    event: str  # canonical, one of EVENT_TYPES
    nps: frozenset[str] | None = None  # the contact's NPS class at that moment; None: any
    where: WhereRule = ()  # equality / membership on the event's data
    # Older events start nothing (a historic score arriving with an import is not an answer
    # to act on today); None: any age.
    max_age: timedelta | None = None


@dataclass(frozen=True)
class SendStep:
    id: str
    template: str  # file name inside the templates folder
    subject: str | Mapping[str, str]  # a mapping is keyed by subject_key ("pt-br"), "default"
    reply_to_previous: str | None  # id of the send step this email threads with
    referral_ask: bool
    line: int

    def subject_for(self, locale: str | None) -> str:
        """The subject for a locale: ``pt_BR`` tries pt-br, then pt, default, en, the first one."""
        if isinstance(self.subject, str):
            return self.subject
        wanted = [subject_key(tag) for tag in variants(locale)]
        for key in (*wanted, DEFAULT_SUBJECT, "en"):
            if key in self.subject:
                return self.subject[key]
        return next(iter(self.subject.values()))


@dataclass(frozen=True)
class WaitStep:
    id: str  # "wait-<n>" (n-th wait step) unless the file names it
    duration: timedelta
    line: int


@dataclass(frozen=True)
class BranchStep:
    id: str
    condition: str  # one of BRANCH_CONDITIONS
    step: str  # id of the send step whose email is checked
    then: str | None  # step id or END; None: the next step
    otherwise: str | None
    line: int


@dataclass(frozen=True)
class NotifyStep:
    """Tell a person on the team (engine.outbound.notes): a plain-text email to the address the role
    has in settings [notify], and a ``notified`` event. The run goes straight on."""

    id: str
    role: str  # one of NOTIFY_ROLES
    subject: str  # Jinja text
    body: str  # Jinja text; "": the standard summary of the contact and their NPS answer
    line: int


Step: TypeAlias = SendStep | WaitStep | BranchStep | NotifyStep


class TemplateRef(NamedTuple):
    """Where a send step names its template, so template problems are reported there."""

    step: str
    template: str
    line: int
    col: int


@dataclass(frozen=True)
class Sequence:
    id: str
    name: str
    description: str
    category: str
    path: str
    audience: Audience | None
    trigger: Trigger | None
    window: SendWindow | None  # None: the settings [schedule] window, on the contact's clock
    stop_when: frozenset[str]  # canonical event types
    steps: tuple[Step, ...]
    template_refs: tuple[TemplateRef, ...]
    # Of two emails due to one contact within [program] min_hours_between_emails, the higher
    # priority goes first and the other waits.
    priority: int = DEFAULT_PRIORITY
    # Whether the emails keep [program] min_hours_between_emails from the contact's other
    # emails. Default: an audience sequence, or one that asks for referrals, is spaced; any
    # other event-triggered one answers something that just happened (a thank-you, a
    # reward) and goes at once.
    spaced: bool = True

    def index(self, step_id: str) -> int:
        """Position of the step ``step_id``; KeyError when there is none."""
        for position, step in enumerate(self.steps):
            if step.id == step_id:
                return position
        raise KeyError(step_id)

    def resume_at(self, mark: str | None, position: int) -> int:
        """Where a run stands, from what ``mark_of`` saved: found by step id, since the file may
        have been edited since; ``position`` (the index then) when the step is gone."""
        if mark is not None:
            after = mark.startswith(AFTER)
            wanted = mark[len(AFTER) :] if after else mark
            for index, step in enumerate(self.steps):
                if step.id == wanted:
                    return index + after
        return min(position, len(self.steps))

    def mark_of(self, position: int) -> str | None:
        """How to find ``position`` again after an edit: the id of the step there, or for a wait
        "after:<id of the step before>" (an unnamed wait's id is its rank, which an inserted
        wait shifts); None past the last step."""
        if position >= len(self.steps):
            return None
        if position and isinstance(self.steps[position], WaitStep):
            return AFTER + self.steps[position - 1].id
        return self.steps[position].id

    def step(self, step_id: str) -> Step:
        """The step ``step_id``; KeyError when there is none."""
        return self.steps[self.index(step_id)]

    def send_steps(self) -> tuple[SendStep, ...]:
        """The send steps, in order."""
        return tuple(step for step in self.steps if isinstance(step, SendStep))


@dataclass(frozen=True)
class LoadResult:
    sequences: dict[str, Sequence]  # by id; only files without any error
    errors: list[SequenceError] = field(default_factory=list)
