"""What the schema cannot check, and the objects: a schema-valid file becomes a Sequence.

The schema has already said everything about shapes and values; what is left needs the whole
file or the world outside it: references between steps (threads, branch targets), durations
too long to hold, send-window hours and time zones, the referral-ask policy, and where each
template is named. A part is only read once the schema found nothing wrong in it, so nothing
here repeats a schema error, and one broken step does not make references to it errors too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import PurePosixPath
from types import MappingProxyType
from typing import Any, TypeVar
from zoneinfo import available_timezones

from engine.base.locale import normalize as normalize_locale
from engine.program.durations import parse_duration
from engine.program.sequences.model import (
    ACTIONS,
    DEFAULT_CATEGORY,
    DEFAULT_PRIORITY,
    DEFAULT_STOP_WHEN,
    END,
    NPS_ANY,
    NPS_CLASSES,
    STOP_ALIASES,
    Audience,
    BranchStep,
    NotifyStep,
    SendStep,
    Sequence,
    Step,
    TemplateRef,
    Trigger,
    WaitStep,
    WhereRule,
    subject_key,
)
from engine.program.sequences.policy import policy_reasons, refusal
from engine.program.sequences.source import DataPath, Document, Problem, suggest
from engine.program.windows import CONTACT, SendWindow, parse_days, parse_hours, parse_zone

T = TypeVar("T")


def action_of(step: Any) -> str | None:
    """What a step does (``send``, ``wait`` ...), or None unless it names exactly one action."""
    found = [key for key in ACTIONS if key in step] if isinstance(step, dict) else []
    return found[0] if len(found) == 1 else None


def step_ids(steps: list[Any]) -> list[str]:
    """Each step's id: the one it names, ``wait-<n>`` for the n-th unnamed wait, else ""."""
    ids, waits = [], 0
    for step in steps:
        action = action_of(step)
        waits += action == "wait"
        named = step.get("id") if isinstance(step, dict) else None
        if isinstance(named, str) and named.strip():
            ids.append(named)
        elif action == "wait" and "id" not in step:
            ids.append(f"wait-{waits}")
        else:
            ids.append("")
    return ids


def label(data: Any, path: DataPath) -> str:
    """How a message names the value at ``path``: ``audience.where.plan``, ``step 'ask':
    send.subject``; a step's own problems name it by position (``step 2``), since its id may
    be what is wrong."""
    head, rest = "", path
    if len(path) >= 2 and path[0] == "steps" and isinstance(path[1], int):
        rest = path[2:]
        step_id = step_ids(data["steps"])[path[1]] if rest and rest[0] != "id" else ""
        head = f"step {step_id!r}" if step_id else f"step {path[1] + 1}"
    tail = ".".join(part for part in rest if isinstance(part, str))
    return ": ".join(part for part in (head, tail) if part)


@functools.cache
def _zone_names() -> tuple[str, ...]:
    return (CONTACT, *sorted(available_timezones()))


class Builder:
    """Reads one schema-checked Document into a Sequence, collecting the problems it finds.

    ``known`` are the problems found before (YAML keys, the schema); a part with one of them
    inside is skipped. ``sequence`` is None when there is any problem at all.
    """

    def __init__(self, document: Document, path: str, known: list[Problem]) -> None:
        self.document = document
        self.data: Any = document.data
        self.path = path
        self.known = known
        self.problems: list[Problem] = []
        self.template_refs: list[TemplateRef] = []
        self.asks: list[tuple[str, DataPath]] = []  # referral_ask steps, for the policy

    # -- plumbing

    def problem(
        self, path: DataPath, message: str, at: DataPath | None = None, *, key: bool = False
    ) -> None:
        self.problems.append(Problem(path, message, at=at, key=key))

    def clean(self, path: DataPath) -> bool:
        """Whether nothing found so far is inside ``path``."""
        return not any(
            problem.path[: len(path)] == path for problem in (*self.known, *self.problems)
        )

    def section(self, key: str, read: Callable[[Any], T | None]) -> T | None:
        """``read`` of a top-level value; None when it is absent, null or has a problem."""
        value = self.data.get(key)
        if value is None or not self.clean((key,)):
            return None
        before = len(self.problems)
        result = read(value)
        return result if len(self.problems) == before else None

    def duration(self, path: DataPath) -> timedelta | None:
        try:
            return parse_duration(self.document.value(path))
        except ValueError as exc:  # too long; the schema checked the form
            self.problem(path, str(exc))
            return None

    # -- the sequence

    def sequence(self) -> Sequence | None:
        """The Sequence, or None if the file has any problem (then see ``problems``)."""
        if not isinstance(self.data, dict):
            return None
        audience = self.section("audience", self.audience)
        trigger = self.section("trigger", self.trigger)
        window = self.section("send_window", self.window)
        steps = self.steps(self.data.get("steps"))
        # the policy is judged on who can enter, so only once that was read without a problem
        if self.clean(("audience",)) and self.clean(("trigger",)):
            reasons = policy_reasons(audience, trigger)
            for step_id, at in self.asks if reasons else ():
                self.problem((), refusal(step_id, reasons), at=at)
        if self.known or self.problems:
            return None
        stop_when = DEFAULT_STOP_WHEN
        if "stop_when" in self.data:
            stop_when = frozenset(_events(self.data["stop_when"]))
        return Sequence(
            id=self.data["id"],
            name=self.data["name"],
            description=self.data.get("description") or "",
            category=self.data.get("category", DEFAULT_CATEGORY),
            path=self.path,
            audience=audience,
            trigger=trigger,
            window=window,
            stop_when=stop_when,
            steps=steps,
            template_refs=tuple(self.template_refs),
            priority=self.data.get("priority", DEFAULT_PRIORITY),
            spaced=self.data.get("spaced", trigger is None or bool(self.asks)),
        )

    def audience(self, value: dict[str, Any]) -> Audience:
        values: dict[str, Any] = {key: value[key] for key in ("kind", "min_score") if key in value}
        if "nps" in value:
            values["nps"] = _nps(value["nps"]) or frozenset(NPS_CLASSES)
        for key in ("customer_for_at_least", "no_complaint_within", "reenter_after"):
            if key in value:
                values[key] = None if value[key] is None else self.duration(("audience", key))
        if value.get("nps_older_than") is not None:
            values["nps_older_than"] = self.duration(("audience", "nps_older_than"))
        if "where" in value:
            values["where"] = _where(value["where"])
        return Audience(**values)

    def trigger(self, value: str | dict[str, Any]) -> Trigger:
        if isinstance(value, str):
            return Trigger(_event(value))
        return Trigger(
            event=_event(value["event"]),
            nps=_nps(value["nps"]) if "nps" in value else None,
            where=_where(value.get("where", {})),
            max_age=self.duration(("trigger", "max_age")) if "max_age" in value else None,
        )

    def window(self, value: dict[str, Any]) -> SendWindow | None:
        days, hours = value["days"], value["hours"]
        try:
            start, end = parse_hours(hours)
        except ValueError as exc:  # the start is not before the end; the schema checked the form
            self.problem(("send_window", "hours"), str(exc))
            return None
        timezone = value.get("timezone", CONTACT)
        if timezone != CONTACT:
            try:
                parse_zone(timezone)
            except ValueError as exc:
                message = f"{exc}{suggest(timezone, _zone_names())}"
                self.problem(("send_window", "timezone"), message)
                return None
        return SendWindow(
            parse_days([days] if isinstance(days, str) else days), start, end, timezone
        )

    # -- steps

    def steps(self, steps: Any) -> tuple[Step, ...]:
        if not isinstance(steps, list):
            return ()
        ids = step_ids(steps)
        self.check_ids(steps, ids)
        known = {step_id: position for position, step_id in enumerate(ids) if step_id}
        read: dict[str, Callable[[Any, _Context], Step | None]] = {
            "send": self.send,
            "wait": self.wait,
            "branch": self.branch,
            "notify": self.notify,
        }
        built: list[Step] = []
        sends: dict[str, SendStep] = {}
        for position, step in enumerate(steps):
            action = action_of(step)
            if action is None:
                continue
            # every send step before this one, read cleanly or not: a broken one must not
            # turn the references to it into problems of their own
            earlier = [ids[n] for n in range(position) if ids[n] and action_of(steps[n]) == "send"]
            path: DataPath = ("steps", position)
            line = self.document.position(path)[0]
            result = read[action](
                step[action], _Context(path, ids[position], line, known, earlier, sends)
            )
            if result is not None and self.clean(path):
                built.append(result)
                if isinstance(result, SendStep):
                    sends[result.id] = result
        return tuple(built)

    def check_ids(self, steps: list[Any], ids: list[str]) -> None:
        """No step is called ``end`` (a branch target), no two steps share an id."""
        seen: dict[str, int] = {}
        for position, (step, step_id) in enumerate(zip(steps, ids, strict=True)):
            path: DataPath = ("steps", position)
            at = (*path, "id") if isinstance(step, dict) and "id" in step else path
            if step_id == END:
                self.problem(path, f"id {END!r} is reserved for branch targets", at=at)
            if step_id in seen:
                message = f"duplicate step id {step_id!r} (step {seen[step_id] + 1} has it)"
                self.problem(path, message, at=at)
            elif step_id:
                seen[step_id] = position

    def wait(self, body: Any, step: _Context) -> WaitStep | None:
        if not self.clean(step.path):
            return None
        duration = self.duration((*step.path, "wait"))
        return None if duration is None else WaitStep(step.id, duration, step.line)

    def notify(self, body: Any, step: _Context) -> NotifyStep | None:
        if not self.clean(step.path):
            return None
        subject, text = body["subject"], body.get("body", "")
        return NotifyStep(step.id, body["role"], subject, text, step.line)

    def send(self, body: Any, step: _Context) -> SendStep | None:
        if not isinstance(body, dict):
            return None
        path = (*step.path, "send")
        template = body.get("template")
        if isinstance(template, str) and template.strip():
            self.template_refs.append(
                TemplateRef(step.id, template, *self.document.position((*path, "template")))
            )
            if self.clean((*path, "template")) and not _inside_templates(template):
                message = f"{template!r} must be a file name inside the templates folder"
                self.problem((*path, "template"), message)
        reply_to = None
        if self.clean((*path, "reply_to_previous")):
            reply_to = self.reply_to(body.get("reply_to_previous", False), path, step)
        referral_ask = body.get("referral_ask") is True
        if referral_ask:
            self.asks.append((step.id, (*path, "referral_ask")))
        subject = self.subject(body, path, reply_to, step)
        if subject is None or not self.clean(step.path):
            return None
        return SendStep(step.id, body["template"], subject, reply_to, referral_ask, step.line)

    def reply_to(self, value: bool | str, path: DataPath, step: _Context) -> str | None:
        at = (*path, "reply_to_previous")
        if value is False:
            return None
        if value is True:
            if not step.earlier:
                message = "this is the first send step; there is no earlier email to reply to"
                self.problem(at, message)
            return step.earlier[-1] if step.earlier else None
        if value not in step.earlier:
            self.problem(at, _step_problem(value, step.known, "an earlier send step"))
        return value

    def subject(
        self, body: dict[str, Any], path: DataPath, reply_to: str | None, step: _Context
    ) -> str | Mapping[str, str] | None:
        """The subject as written, or a reply's: the earlier one with ``Re:`` in front."""
        at = (*path, "subject")
        if "subject" not in body:
            replied = step.sends.get(reply_to) if reply_to is not None else None
            return None if replied is None else _reply_subject(replied.subject)
        value = body["subject"]
        if not self.clean(at) or isinstance(value, str):
            return value if self.clean(at) else None
        subjects: dict[str, str] = {}
        for locale, text in value.items():
            if subject_key(locale) in subjects:
                self.problem(at, f"locale {locale!r} appears twice", at=(*at, locale), key=True)
            subjects[subject_key(locale)] = text
        return MappingProxyType(subjects)

    def branch(self, body: Any, step: _Context) -> BranchStep | None:
        if not isinstance(body, dict):
            return None
        path = (*step.path, "branch")
        checked = step.earlier[-1] if step.earlier else None
        if "step" in body:
            checked = body["step"]
            if self.clean((*path, "step")) and checked not in step.earlier:
                wanted = "a send step before this branch"
                self.problem((*path, "step"), _step_problem(checked, step.known, wanted))
        elif checked is None:
            self.problem(path, "there is no send step before this branch to check")
        then, otherwise = self.jump(body, path, "then", step), self.jump(body, path, "else", step)
        if checked is None or not self.clean(step.path):
            return None
        return BranchStep(step.id, body["if"], checked, then, otherwise, step.line)

    def jump(self, body: dict[str, Any], path: DataPath, key: str, step: _Context) -> str | None:
        """A branch target: a later step, or END."""
        target: str | None = body.get(key)
        at = (*path, key)
        if target is None or target == END or not self.clean(at):
            return target
        if target not in step.known:
            self.problem(at, f"no step {target!r}{suggest(target, (*step.known, END))}")
        elif step.known[target] <= step.position:
            message = f"step {target!r} comes before this branch; branches only jump forward"
            self.problem(at, message)
        return target


@dataclass(frozen=True)
class _Context:
    """One step being read, and what it may refer to."""

    path: DataPath  # ("steps", position)
    id: str
    line: int
    known: Mapping[str, int]  # every step's position by id
    earlier: list[str]  # the ids of the send steps before it
    sends: Mapping[str, SendStep]  # the send steps read so far, by id

    @property
    def position(self) -> int:
        return int(self.path[1])


def _step_problem(target: str, known: Mapping[str, int], wanted: str) -> str:
    if target in known:
        return f"step {target!r} is not {wanted}"
    return f"no step {target!r}{suggest(target, tuple(known))}"


def _inside_templates(name: str) -> bool:
    """Whether a template name stays inside the templates folder."""
    return not ("\\" in name or name.startswith("/") or ".." in PurePosixPath(name).parts)


def _event(name: str) -> str:
    return STOP_ALIASES.get(name, name)


def _events(names: str | list[str]) -> list[str]:
    return [_event(name) for name in ([names] if isinstance(names, str) else names)]


def _nps(names: str | list[str]) -> frozenset[str] | None:
    """NPS classes; None for any."""
    classes = [names] if isinstance(names, str) else names
    return None if NPS_ANY in classes else frozenset(classes)


def _where(rules: dict[str, Any]) -> WhereRule:
    """Field rules; locales in their normal form (``pt_br`` -> ``pt-BR``), as contacts keep them."""
    return tuple(
        (field, tuple(_wanted(field, v) for v in (value if isinstance(value, list) else [value])))
        for field, value in rules.items()
    )


def _wanted(field: str, value: Any) -> Any:
    return (normalize_locale(str(value)) or value) if field == "locale" else value


def _reply_subject(subject: str | Mapping[str, str]) -> str | Mapping[str, str]:
    """An earlier step's subject as a reply's: ``Re: `` in front, once."""

    def reply(text: str) -> str:
        return text if text[:3].casefold() == "re:" else f"Re: {text}"

    if isinstance(subject, str):
        return reply(subject)
    return MappingProxyType({locale: reply(text) for locale, text in subject.items()})
