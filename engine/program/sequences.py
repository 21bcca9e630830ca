"""Sequence files (YAML, one sequence per file) -> validated, frozen objects.

Every problem is a SequenceError located as file:line:col (1-based) at the offending YAML node,
and one file's problems are all collected rather than only the first. Beyond what the JSON
Schema (json_schema(), written to schema/sequence.schema.json for editors) can say, the loader
checks references between steps, time zones, duplicate ids across files and the referral-ask
policy: never ask a partner, a detractor or anyone scoring below 5 for a referral.
"""

from __future__ import annotations

import copy
import difflib
import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any, NamedTuple, TypeAlias
from zoneinfo import available_timezones

import yaml

from engine.base.errors import SequenceError
from engine.program.durations import DURATION_PATTERN, parse_duration
from engine.program.windows import (
    CONTACT,
    DAYS,
    HOURS_PATTERN,
    SendWindow,
    parse_days,
    parse_hours,
    parse_zone,
)

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
END = "end"  # branch target: leave the sequence
ID_PATTERN = r"^[a-z0-9][a-z0-9-]*$"
CATEGORY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"  # a Feedback-ID field: no ':' or spaces
LOCALE_PATTERN = r"^(default|[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*)$"
DEFAULT_CATEGORY = "referral"
DEFAULT_STOP_WHEN = frozenset({"replied", "unsubscribed", "bounced"})
MIN_REFERRAL_SCORE = 5  # the domain rule: never ask anyone who scored below 5

_ID_RULE = "use lowercase letters, digits and dashes, starting with a letter or digit"
_NULL_TAG = "tag:yaml.org,2002:null"

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


_DEFAULT_AUDIENCE = Audience()


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
    subject: str | Mapping[str, str]  # a mapping is keyed by lowercase locale ("pt-br"), "default"
    reply_to_previous: str | None  # id of the send step this email threads with
    referral_ask: bool
    line: int

    def subject_for(self, locale: str | None) -> str:
        """The subject for a locale: ``pt_BR`` tries pt-br, then pt, default, en, the first one."""
        if isinstance(self.subject, str):
            return self.subject
        wanted = []
        if locale and locale.strip():
            tag = _normalize_locale(locale.strip())
            wanted += [tag, tag.split("-")[0]]
        for key in (*wanted, "default", "en"):
            if key in self.subject:
                return self.subject[key]
        return next(iter(self.subject.values()))


AFTER = "after:"  # a mark_of prefix: the step that follows the named one


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


NOTIFY_ROLES = ("owner", "sales", "account_manager")


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


def sequence_files(directory: Path) -> list[Path]:
    """The sequence files in ``directory``: ``*.yaml`` and ``*.yml``, hidden files excluded."""
    return sorted(
        path
        for path in directory.iterdir()
        if path.suffix in {".yaml", ".yml"} and not path.name.startswith(".") and path.is_file()
    )


def load_sequences(
    directory: Path,
    *,
    template_exists: Callable[[str], bool] | None = None,
) -> LoadResult:
    """Load every sequence file in ``directory``; a broken file is reported, the others load.

    ``template_exists`` (a template file name -> bool) also checks that templates exist.
    """
    if not directory.is_dir():
        return LoadResult({}, [SequenceError(str(directory), 1, 1, "sequences folder not found")])
    return load_files(sequence_files(directory), template_exists=template_exists)


def load_files(
    paths: Iterable[Path],
    *,
    template_exists: Callable[[str], bool] | None = None,
) -> LoadResult:
    """Load the given sequence files; like load_sequences, for an explicit list of files.

    An id used by two files is an error in the later one (the first one keeps it).
    """
    sequences: dict[str, Sequence] = {}
    owners: dict[str, str] = {}  # sequence id -> the first file that used it
    errors: list[SequenceError] = []
    for path in paths:
        parsed = _parse_file(path)
        found = list(parsed.errors)
        if template_exists is not None:
            found += [
                SequenceError(
                    str(path), ref.line, ref.col, f"template {ref.template!r} does not exist"
                )
                for ref in parsed.template_refs
                if not template_exists(ref.template)
            ]
        if parsed.id is not None:
            if parsed.id in owners:
                found.append(
                    SequenceError(
                        str(path),
                        *parsed.id_at,
                        f"duplicate sequence id {parsed.id!r}: {owners[parsed.id]} already uses it",
                    )
                )
            else:
                owners[parsed.id] = str(path)
        if found:
            errors += sorted(found, key=lambda error: (error.line, error.col))
        elif parsed.sequence is not None:
            sequences[parsed.sequence.id] = parsed.sequence
    return LoadResult(sequences, errors)


def load_sequence(
    path: Path,
    *,
    template_exists: Callable[[str], bool] | None = None,
) -> Sequence:
    """Load one sequence file; raises its first SequenceError."""
    result = load_files([path], template_exists=template_exists)
    if result.errors:
        raise result.errors[0]
    (sequence,) = result.sequences.values()
    return sequence


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a sequence file, with a description on every key."""
    return copy.deepcopy(_SCHEMA)


# --- the schema: also the loader's list of allowed keys -------------------------------------


def _build_schema() -> dict[str, Any]:
    def ref(name: str) -> dict[str, str]:
        return {"$ref": f"#/$defs/{name}"}

    def nullable(schema: dict[str, Any], description: str) -> dict[str, Any]:
        return {"description": description, "anyOf": [schema, {"type": "null"}]}

    def one_or_list(item: dict[str, Any], description: str) -> dict[str, Any]:
        return {
            "description": description,
            "anyOf": [item, {"type": "array", "items": item, "minItems": 1}],
        }

    scalar = {"type": ["string", "number", "boolean"]}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Referral engine sequence",
        "description": "One email sequence: who enters it, when emails may go out, the steps.",
        "type": "object",
        "additionalProperties": False,
        "required": ["id", "name", "steps"],
        "anyOf": [
            {"required": ["audience"], "properties": {"audience": {"type": "object"}}},
            {"required": ["trigger"], "properties": {"trigger": {"not": {"type": "null"}}}},
        ],
        "properties": {
            "id": {
                **ref("id"),
                "description": "Unique id of the sequence (lowercase letters, digits, dashes);"
                " used in reports, logs and the Feedback-ID header.",
            },
            "name": {
                "type": "string",
                "minLength": 1,
                "description": "What the sequence does, for people reading reports.",
            },
            "description": {
                "type": ["string", "null"],
                "description": "Free text for the people editing this file.",
            },
            "category": {
                "type": "string",
                "pattern": CATEGORY_PATTERN,
                "description": "Campaign category, the third field of the Feedback-ID header"
                f" (default {DEFAULT_CATEGORY}).",
            },
            "audience": nullable(
                ref("audience"),
                "Who enters the sequence by rule. Omit it for a sequence started only by"
                " its trigger.",
            ),
            "trigger": {
                "description": "An event that starts the sequence for the event's contact:"
                " an event name, or a mapping with event and filters.",
                "anyOf": [ref("event"), ref("trigger"), {"type": "null"}],
            },
            "send_window": nullable(
                ref("sendWindow"),
                "When emails may go out (days and hours, on the contact's clock unless"
                " timezone says otherwise); omit it to use settings [schedule].",
            ),
            "stop_when": one_or_list(
                ref("event"),
                "Events that end the sequence for the contact"
                " (default: replied, unsubscribed, bounced).",
            ),
            "steps": {
                "type": "array",
                "minItems": 1,
                "items": ref("step"),
                "description": "What happens, in order: each step sends, waits or branches.",
            },
        },
        "$defs": {
            "id": {"type": "string", "pattern": ID_PATTERN},
            "duration": {
                "type": "string",
                "pattern": DURATION_PATTERN,
                "description": "A number and a unit (w, d, h, m): 30d, 12h, 90m, 2w, 1d12h.",
            },
            "event": {
                "enum": list(EVENT_NAMES),
                "description": "An event type; referred = referral.created (the contact"
                " referred someone), converted = referral.converted.",
            },
            "nps": one_or_list(
                {"enum": [*NPS_CLASSES, NPS_ANY]},
                "NPS classes: promoter (9-10), passive (7-8), detractor (0-6), unknown (no"
                " score), or any.",
            ),
            "where": {
                "type": "object",
                "description": "field: value (equal) or field: [values] (one of them).",
                "additionalProperties": {
                    "anyOf": [scalar, {"type": "array", "items": scalar, "minItems": 1}]
                },
            },
            "audience": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "kind": {
                        "enum": list(AUDIENCE_KINDS),
                        "description": "customer (default), partner, or any contact.",
                    },
                    "nps": {
                        **ref("nps"),
                        "description": "NPS classes that may enter (default any).",
                    },
                    "min_score": {
                        "type": ["integer", "null"],
                        "minimum": 0,
                        "maximum": 10,
                        "description": f"Lowest NPS score that may enter (default"
                        f" {MIN_REFERRAL_SCORE}); null lets everyone in, e.g. for an NPS survey.",
                    },
                    "customer_for_at_least": {
                        **ref("duration"),
                        "description": "Only customers for at least this long (default 30d).",
                    },
                    "no_complaint_within": {
                        **ref("duration"),
                        "description": "Skip contacts who complained within this (default 30d).",
                    },
                    "reenter_after": nullable(
                        ref("duration"),
                        "Enter again this long after the last entry (default 90d);"
                        " null: never again.",
                    ),
                    "nps_older_than": nullable(
                        ref("duration"),
                        "Only contacts whose last NPS answer is older than this, or who never"
                        " answered (for surveys: don't ask someone who just answered).",
                    ),
                    "where": {
                        **ref("where"),
                        "description": "Conditions on contact fields, including custom CSV"
                        " columns: {plan: pro, region: [eu, us]}.",
                    },
                },
            },
            "trigger": {
                "type": "object",
                "additionalProperties": False,
                "required": ["event"],
                "properties": {
                    "event": {**ref("event"), "description": "The event that starts it."},
                    "nps": {
                        **ref("nps"),
                        "description": "Only contacts in these NPS classes at that moment.",
                    },
                    "where": {
                        **ref("where"),
                        "description": "Conditions on the event's data: {channel: link}.",
                    },
                    "max_age": {
                        **ref("duration"),
                        "description": "Only events at most this old when the engine sees them"
                        " (an imported score from last year starts nothing): 7d.",
                    },
                },
            },
            "sendWindow": {
                "type": "object",
                "additionalProperties": False,
                "required": ["days", "hours"],
                "properties": {
                    "days": one_or_list(
                        {"enum": list(DAYS)}, "Days emails may go out: mon, tue ... sun."
                    ),
                    "hours": {
                        "type": "string",
                        "pattern": HOURS_PATTERN,
                        "description": "Local hours, HH:MM-HH:MM, start before end: 09:00-17:00.",
                    },
                    "timezone": {
                        "type": "string",
                        "description": "contact (default: the contact's time zone, else the"
                        " settings one) or an IANA name such as Europe/London.",
                    },
                },
            },
            "step": {
                "type": "object",
                "additionalProperties": False,
                "description": "Exactly one of send, wait, branch or notify.",
                "oneOf": [
                    {"required": ["send"]},
                    {"required": ["wait"]},
                    {"required": ["branch"]},
                    {"required": ["notify"]},
                ],
                "dependentRequired": {"send": ["id"], "branch": ["id"], "notify": ["id"]},
                "properties": {
                    "id": {
                        **ref("id"),
                        "description": "Step id, required for send, branch and notify steps;"
                        " a wait step is wait-<n> unless named.",
                    },
                    "send": ref("send"),
                    "wait": {**ref("duration"), "description": "Wait this long: 3d, 12h, 1d12h."},
                    "branch": ref("branch"),
                    "notify": ref("notify"),
                },
            },
            "notify": {
                "type": "object",
                "additionalProperties": False,
                "required": ["role", "subject"],
                "description": "Tell a person on the team: a plain-text email to the address"
                " the role has in settings [notify] (none set: only the notified event).",
                "properties": {
                    "role": {
                        "enum": list(NOTIFY_ROLES),
                        "description": "Who: owner, sales or account_manager.",
                    },
                    "subject": {
                        "type": "string",
                        "minLength": 1,
                        "description": "Subject (Jinja2): contact, nps, event, sequence, step.",
                    },
                    "body": {
                        "type": "string",
                        "minLength": 1,
                        "description": "Text (Jinja2): contact, nps (score, improve, other: what"
                        " they wrote on the survey page), event (the trigger's data), sequence,"
                        " step. Default: a summary of the contact and their NPS answer.",
                    },
                },
            },
            "send": {
                "type": "object",
                "additionalProperties": False,
                "required": ["template"],
                "description": "Send one email.",
                "properties": {
                    "template": {
                        "type": "string",
                        "minLength": 1,
                        "description": "Template file in the templates folder, e.g."
                        " referral-ask.mjml (locale variants: referral-ask.ar.mjml).",
                    },
                    "subject": {
                        "description": "Subject line (Jinja2), or a mapping by locale:"
                        " {en: ..., pt-BR: ..., default: ...}. Optional when replying to an"
                        " earlier step, whose subject is reused with Re:.",
                        "anyOf": [
                            {"type": "string", "minLength": 1},
                            {
                                "type": "object",
                                "minProperties": 1,
                                "propertyNames": {"pattern": LOCALE_PATTERN},
                                "additionalProperties": {"type": "string", "minLength": 1},
                            },
                        ],
                    },
                    "reply_to_previous": {
                        "description": "true: thread with the previous send step (In-Reply-To);"
                        " or the id of an earlier send step to thread with.",
                        "anyOf": [{"type": "boolean"}, ref("id")],
                    },
                    "referral_ask": {
                        "type": "boolean",
                        "description": "This email asks for a referral: only allowed when no"
                        " partner, detractor or contact scoring below 5 can get it.",
                    },
                },
            },
            "branch": {
                "type": "object",
                "additionalProperties": False,
                "required": ["if"],
                "description": "Go on at another step depending on an earlier email.",
                "properties": {
                    "if": {
                        "enum": list(BRANCH_CONDITIONS),
                        "description": "What the contact did with the email.",
                    },
                    "step": {
                        **ref("id"),
                        "description": "The send step whose email is checked (default: the"
                        " latest one before this branch).",
                    },
                    "then": {
                        **ref("id"),
                        "description": "Where to go if so: a later step id or end (default:"
                        " the next step).",
                    },
                    "else": {
                        **ref("id"),
                        "description": "Where to go if not: a later step id or end (default:"
                        " the next step).",
                    },
                },
            },
        },
    }


_SCHEMA = _build_schema()


def _keys(definition: str | None) -> tuple[str, ...]:
    schema = _SCHEMA if definition is None else _SCHEMA["$defs"][definition]
    return tuple(schema["properties"])


_TOP_KEYS = _keys(None)
_AUDIENCE_KEYS = _keys("audience")
_TRIGGER_KEYS = _keys("trigger")
_WINDOW_KEYS = _keys("sendWindow")
_STEP_KEYS = _keys("step")
_SEND_KEYS = _keys("send")
_BRANCH_KEYS = _keys("branch")
_NOTIFY_KEYS = _keys("notify")
_ACTIONS = ("send", "wait", "branch", "notify")


# --- the loader --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Parsed:
    """One file's outcome; ``id`` and ``template_refs`` are kept even when the file is broken."""

    sequence: Sequence | None
    errors: list[SequenceError]
    id: str | None = None
    id_at: tuple[int, int] = (1, 1)
    template_refs: tuple[TemplateRef, ...] = ()


def _parse_file(path: Path) -> _Parsed:
    name = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return _Parsed(None, [SequenceError(name, 1, 1, f"cannot read the file: {exc.strerror}")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start].decode("utf-8")  # valid: the first bad byte is at exc.start
        line, col = _position(before, len(before))
        return _Parsed(None, [SequenceError(name, line, col, "not UTF-8 text")])
    return _parse_text(text, name)


def _position(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column of character ``offset`` in ``text``."""
    before = text[:offset]
    return before.count("\n") + 1, offset - (before.rfind("\n") + 1) + 1


def _parse_text(text: str, path: str) -> _Parsed:
    try:
        loader = yaml.SafeLoader(text)
        root = loader.get_single_node()
        if root is not None:
            # Construct once up front so a bad tag is reported now; the walk then reads freely.
            loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        return _Parsed(None, [_yaml_error(path, exc)])
    except yaml.reader.ReaderError as exc:
        line, col = _position(text, exc.position)
        message = f"invalid YAML: {exc.reason} (character U+{exc.character:04X})"
        return _Parsed(None, [SequenceError(path, line, col, message)])
    if root is None:
        message = "the file is empty; a sequence needs at least id, name and steps"
        return _Parsed(None, [SequenceError(path, 1, 1, message)])
    parser = _FileParser(path, loader)
    sequence = parser.parse(root)
    loader.dispose()
    return _Parsed(
        sequence,
        parser.errors,
        parser.id,
        parser.id_at,
        tuple(parser.template_refs),
    )


def _yaml_error(path: str, exc: yaml.MarkedYAMLError) -> SequenceError:
    """PyYAML's problem and context as one line, at the problem's position."""
    problem, context = exc.problem or "", exc.context or ""
    if problem and context.startswith("while "):
        start = exc.context_mark
        message = f"{problem} ({context}{f' at line {start.line + 1}' if start else ''})"
    else:  # e.g. "expected a single document in the stream" + "but found another document"
        message = ", ".join(part for part in (context, problem) if part) or "syntax error"
    mark = exc.problem_mark or exc.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    return SequenceError(path, line, col, f"invalid YAML: {message}")


class _Fields(dict[str, yaml.Node]):
    """A mapping's value nodes by key, remembering each key's own node for error locations."""

    def __init__(self) -> None:
        super().__init__()
        self.key_nodes: dict[str, yaml.Node] = {}


@dataclass
class _Draft:
    """A step after the first pass: its id and action, before references are resolved."""

    position: int
    node: yaml.Node
    label: str
    id: str = ""  # empty until known
    action: str | None = None
    body: yaml.Node | None = None


class _FileParser:
    """Walks one file's node tree, collecting every error instead of stopping at the first.

    Helpers return a placeholder after recording an error; objects are only built from parts
    that parsed cleanly (``clean_since``), and the file is rejected if any error was recorded.
    """

    def __init__(self, path: str, loader: yaml.SafeLoader) -> None:
        self.path = path
        self.loader = loader
        self.errors: list[SequenceError] = []
        self.id: str | None = None
        self.id_at = (1, 1)
        self.template_refs: list[TemplateRef] = []

    # -- plumbing

    def error(self, node: yaml.Node, message: str) -> None:
        mark = node.start_mark
        self.errors.append(SequenceError(self.path, mark.line + 1, mark.column + 1, message))

    def mark(self) -> int:
        return len(self.errors)

    def clean_since(self, mark: int) -> bool:
        return len(self.errors) == mark

    def value(self, node: yaml.Node) -> Any:
        """The Python value of a scalar node (YAML 1.1 rules, as yaml.safe_load reads them)."""
        if not isinstance(node, yaml.ScalarNode):
            return None
        return self.loader.construct_object(node, deep=True)

    def fields(
        self, node: yaml.Node, what: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()
    ) -> _Fields | None:
        if not isinstance(node, yaml.MappingNode):
            self.error(
                node, _at(what, f"expected a mapping (key: value), got {self.describe(node)}")
            )
            return None
        found = _Fields()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                self.error(key_node, _at(what, "keys must be plain names"))
            elif key not in allowed:
                self.error(key_node, _at(what, f"unknown key {key!r}{_suggest(key, allowed)}"))
            elif key in found:
                self.error(key_node, _at(what, f"duplicate key {key!r}"))
            else:
                found[key] = value_node
                found.key_nodes[key] = key_node
        for key in required:
            if key not in found:
                self.error(node, _at(what, f"missing required key {key!r}"))
        return found

    def describe(self, node: yaml.Node) -> str:
        if isinstance(node, yaml.MappingNode):
            return "a mapping"
        if isinstance(node, yaml.SequenceNode):
            return "a list"
        value = self.value(node)
        if value is None:
            return "nothing (null)"
        if isinstance(value, bool):
            return f"{node.value}, which YAML reads as {str(value).lower()}"
        if isinstance(value, int | float):
            return f"the number {node.value}"
        if isinstance(value, str):
            return f"the text {value!r}"
        return f"{node.value} ({type(value).__name__})"

    # -- typed values

    def text(self, node: yaml.Node, what: str, pattern: str = "", rule: str = "") -> str:
        value = self.value(node)
        if not isinstance(value, str):
            hint = (
                " (put it in quotes)"
                if isinstance(node, yaml.ScalarNode) and value is not None
                else ""
            )
            self.error(node, f"{what}: expected text, got {self.describe(node)}{hint}")
            return ""
        if not value.strip():
            self.error(node, f"{what}: must not be empty")
            return ""
        if pattern and not re.fullmatch(pattern, value):
            self.error(node, f"{what}: {value!r} is not allowed: {rule}")
        return value

    def boolean(self, node: yaml.Node, what: str) -> bool:
        value = self.value(node)
        if not isinstance(value, bool):
            self.error(node, f"{what}: expected true or false, got {self.describe(node)}")
            return False
        return value

    def choice(self, node: yaml.Node, what: str, options: tuple[str, ...]) -> str:
        value = self.text(node, what)
        if value and value not in options:
            self.error(node, f"{what}: unknown value {value!r}{_suggest(value, options)}")
        return value

    def names(self, node: yaml.Node, what: str, options: tuple[str, ...]) -> list[str]:
        """One name or a non-empty list of names, each one of ``options``."""
        if not isinstance(node, yaml.SequenceNode):
            return [self.choice(node, what, options)]
        if not node.value:
            self.error(node, f"{what}: an empty list; name at least one of {', '.join(options)}")
        return [self.choice(item, what, options) for item in node.value]

    def duration(self, node: yaml.Node, what: str) -> timedelta:
        value = self.value(node)
        if isinstance(value, int) and not isinstance(value, bool):
            self.error(node, f"{what}: {value} needs a unit (w, d, h or m), e.g. {value}d")
            return timedelta(0)
        text = self.text(node, what)
        try:
            return parse_duration(text) if text else timedelta(0)
        except ValueError as exc:
            self.error(node, f"{what}: {exc}")
            return timedelta(0)

    def event(self, node: yaml.Node, what: str) -> str:
        name = self.choice(node, what, EVENT_NAMES)
        return STOP_ALIASES.get(name, name)

    def nps(self, node: yaml.Node, what: str) -> frozenset[str] | None:
        """NPS classes; None for any."""
        classes = self.names(node, what, (*NPS_CLASSES, NPS_ANY))
        return None if NPS_ANY in classes else frozenset(classes)

    def where(self, node: yaml.Node, what: str) -> WhereRule:
        if not isinstance(node, yaml.MappingNode):
            self.error(
                node, f"{what}: expected a mapping of field: value, got {self.describe(node)}"
            )
            return ()
        rules: list[tuple[str, tuple[Any, ...]]] = []
        for key_node, value_node in node.value:
            key = self.text(key_node, f"{what} field name")
            if key in {name for name, _ in rules}:
                self.error(key_node, f"{what}: duplicate field {key!r}")
            items = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            if not items:
                self.error(value_node, f"{what}.{key}: an empty list matches nothing")
            values = []
            for item in items:
                value = self.value(item)
                if not isinstance(value, str | int | float):
                    self.error(
                        item,
                        f"{what}.{key}: expected text, a number or true/false (or a list of"
                        f" them), got {self.describe(item)}",
                    )
                values.append(value)
            rules.append((key, tuple(values)))
        return tuple(rules)

    # -- the sequence

    def parse(self, root: yaml.Node) -> Sequence | None:
        if not isinstance(root, yaml.MappingNode):
            self.error(
                root,
                "a sequence file must be a mapping (id: ..., name: ..., steps: ...),"
                f" got {self.describe(root)}",
            )
            return None
        top = self.fields(root, "", _TOP_KEYS, required=("id", "name", "steps"))
        assert top is not None  # root is a mapping
        sequence_id = ""
        if "id" in top:
            sequence_id = self.text(top["id"], "id", ID_PATTERN, _ID_RULE)
            if sequence_id:
                mark = top["id"].start_mark
                self.id, self.id_at = sequence_id, (mark.line + 1, mark.column + 1)
        name = self.text(top["name"], "name") if "name" in top else ""
        description = ""
        if "description" in top and not _is_null(top["description"]):
            description = self.text(top["description"], "description")
        category = DEFAULT_CATEGORY
        if "category" in top:
            category = self.text(
                top["category"], "category", CATEGORY_PATTERN, "use letters, digits, . _ and -"
            )

        audience_node = _present(top, "audience")
        trigger_node = _present(top, "trigger")
        if audience_node is None and trigger_node is None:
            self.error(
                root,
                "a sequence needs an audience (who enters by rule) or a trigger (an event that"
                " starts it)",
            )
        mark = self.mark()
        audience = self.audience(audience_node) if audience_node is not None else None
        audience_ok = self.clean_since(mark)
        mark = self.mark()
        trigger = self.trigger(trigger_node) if trigger_node is not None else None
        trigger_ok = self.clean_since(mark)
        window_node = _present(top, "send_window")
        window = self.send_window(window_node) if window_node is not None else None
        stop_when = DEFAULT_STOP_WHEN
        if "stop_when" in top:
            stop_when = frozenset(
                STOP_ALIASES.get(name, name)
                for name in self.names(top["stop_when"], "stop_when", EVENT_NAMES)
            )

        steps: tuple[Step, ...] = ()
        asks: list[tuple[str, yaml.Node]] = []
        if "steps" in top:
            steps = self.steps(top["steps"], asks)
        if asks and audience_ok and trigger_ok:
            self.lint_referral_asks(asks, audience, trigger)
        if self.errors:
            return None
        return Sequence(
            id=sequence_id,
            name=name,
            description=description,
            category=category,
            path=self.path,
            audience=audience,
            trigger=trigger,
            window=window,
            stop_when=stop_when,
            steps=steps,
            template_refs=tuple(self.template_refs),
        )

    def audience(self, node: yaml.Node) -> Audience | None:
        found = self.fields(node, "audience", _AUDIENCE_KEYS)
        if found is None:
            return None
        values: dict[str, Any] = {}
        if "kind" in found:
            values["kind"] = self.choice(found["kind"], "audience.kind", AUDIENCE_KINDS)
        if "nps" in found:
            values["nps"] = self.nps(found["nps"], "audience.nps") or frozenset(NPS_CLASSES)
        if "min_score" in found:
            values["min_score"] = self.score(found["min_score"], "audience.min_score")
        for key in ("customer_for_at_least", "no_complaint_within"):
            if key in found:
                values[key] = self.duration(found[key], f"audience.{key}")
        if "nps_older_than" in found and not _is_null(found["nps_older_than"]):
            values["nps_older_than"] = self.duration(
                found["nps_older_than"], "audience.nps_older_than"
            )
        if "reenter_after" in found:
            node = found["reenter_after"]
            values["reenter_after"] = (
                None if _is_null(node) else self.duration(node, "audience.reenter_after")
            )
        if "where" in found:
            values["where"] = self.where(found["where"], "audience.where")
        return Audience(**values)

    def score(self, node: yaml.Node, what: str) -> int | None:
        if _is_null(node):
            return None
        value = self.value(node)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10:
            self.error(
                node,
                f"{what}: expected a whole number from 0 to 10 or null, got {self.describe(node)}",
            )
            return None
        return value

    def trigger(self, node: yaml.Node) -> Trigger | None:
        if isinstance(node, yaml.ScalarNode):
            return Trigger(self.event(node, "trigger"))
        if not isinstance(node, yaml.MappingNode):
            self.error(
                node,
                "trigger: expected an event name or a mapping with event:,"
                f" got {self.describe(node)}",
            )
            return None
        found = self.fields(node, "trigger", _TRIGGER_KEYS, required=("event",))
        assert found is not None  # node is a mapping
        if "event" not in found:
            return None
        return Trigger(
            event=self.event(found["event"], "trigger.event"),
            nps=self.nps(found["nps"], "trigger.nps") if "nps" in found else None,
            where=self.where(found["where"], "trigger.where") if "where" in found else (),
            max_age=(
                self.duration(found["max_age"], "trigger.max_age") if "max_age" in found else None
            ),
        )

    def send_window(self, node: yaml.Node) -> SendWindow | None:
        found = self.fields(node, "send_window", _WINDOW_KEYS, required=("days", "hours"))
        if found is None or "days" not in found or "hours" not in found:
            return None
        mark = self.mark()
        days = self.names(found["days"], "send_window.days", DAYS)
        hours = self.text(found["hours"], "send_window.hours")
        timezone = CONTACT
        if "timezone" in found:
            timezone = self.timezone(found["timezone"], "send_window.timezone")
        if not hours:
            return None
        try:
            start, end = parse_hours(hours)
        except ValueError as exc:
            self.error(found["hours"], f"send_window.hours: {exc}")
            return None
        if not self.clean_since(mark):
            return None
        return SendWindow(parse_days(days), start, end, timezone)

    def timezone(self, node: yaml.Node, what: str) -> str:
        name = self.text(node, what)
        if name and name != CONTACT:
            try:
                parse_zone(name)
            except ValueError as exc:
                self.error(node, f"{what}: {exc}{_suggest(name, _zone_names())}")
        return name

    # -- steps

    def steps(self, node: yaml.Node, asks: list[tuple[str, yaml.Node]]) -> tuple[Step, ...]:
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, f"steps: expected a list of steps, got {self.describe(node)}")
            return ()
        if not node.value:
            self.error(node, "steps: the list is empty; a sequence needs at least one step")
            return ()
        drafts = self.draft_steps(node.value)
        ids = {draft.id: draft.position for draft in drafts if draft.id}
        steps: list[Step] = []
        sends: dict[str, SendStep] = {}
        for draft in drafts:
            if draft.action is None or draft.body is None:
                continue
            # ids of every send step before this one, parsed cleanly or not: a broken one must
            # not turn later references into errors of their own
            earlier_sends = [d.id for d in drafts[: draft.position] if d.action == "send" and d.id]
            line = draft.node.start_mark.line + 1
            if draft.action == "wait":
                duration = self.duration(draft.body, f"{draft.label}: wait")
                steps.append(WaitStep(draft.id, duration, line))
            elif draft.action == "send":
                send = self.send_step(draft, earlier_sends, ids, sends, asks)
                if send is not None:
                    steps.append(send)
                    sends[send.id] = send
            elif draft.action == "notify":
                notify = self.notify_step(draft)
                if notify is not None:
                    steps.append(notify)
            else:
                branch = self.branch_step(draft, earlier_sends, ids)
                if branch is not None:
                    steps.append(branch)
        return tuple(steps)

    def notify_step(self, draft: _Draft) -> NotifyStep | None:
        assert draft.body is not None
        what = f"{draft.label}: notify"
        found = self.fields(draft.body, what, _NOTIFY_KEYS, required=("role", "subject"))
        if found is None:
            return None
        mark = self.mark()
        role = subject = body = ""
        if "role" in found:
            role = self.choice(found["role"], f"{what}.role", NOTIFY_ROLES)
        if "subject" in found:
            subject = self.text(found["subject"], f"{what}.subject")
        if "body" in found:
            body = self.text(found["body"], f"{what}.body")
        if not self.clean_since(mark) or not role or not subject:
            return None
        return NotifyStep(draft.id, role, subject, body, draft.node.start_mark.line + 1)

    def draft_steps(self, items: list[yaml.Node]) -> list[_Draft]:
        """First pass: each step's id and action, so steps can refer to later ones."""
        drafts: list[_Draft] = []
        seen: dict[str, int] = {}
        waits = 0
        for position, item in enumerate(items):
            draft = _Draft(position, item, f"step {position + 1}")
            drafts.append(draft)
            found = self.fields(item, draft.label, _STEP_KEYS)
            if found is None:
                continue
            actions = [key for key in _ACTIONS if key in found]
            if not actions:
                self.error(item, f"{draft.label}: needs one of send, wait, branch or notify")
            elif len(actions) > 1:
                self.error(
                    found.key_nodes[actions[1]],
                    f"{draft.label}: has both {actions[0]} and {actions[1]}; a step does one"
                    " thing, split it into two steps",
                )
            else:
                draft.action, draft.body = actions[0], found[actions[0]]
            if draft.action == "wait":
                waits += 1
            id_node = found.get("id", item)
            if "id" in found:
                draft.id = self.text(found["id"], f"{draft.label}: id", ID_PATTERN, _ID_RULE)
                if draft.id == END:
                    self.error(id_node, f"{draft.label}: id {END!r} is reserved for branch targets")
            elif draft.action == "wait":
                draft.id = f"wait-{waits}"
            elif draft.action is not None:
                self.error(
                    item,
                    f"{draft.label}: missing required key 'id' ({draft.action} steps need one)",
                )
            if not draft.id:
                continue
            if draft.id in seen:
                self.error(
                    id_node,
                    f"{draft.label}: duplicate step id {draft.id!r} (step {seen[draft.id] + 1}"
                    " has it)",
                )
            else:
                seen[draft.id] = position
            draft.label = f"step {draft.id!r}"
        return drafts

    def send_step(
        self,
        draft: _Draft,
        earlier_sends: list[str],
        ids: Mapping[str, int],
        sends: Mapping[str, SendStep],
        asks: list[tuple[str, yaml.Node]],
    ) -> SendStep | None:
        assert draft.body is not None
        what = f"{draft.label}: send"
        found = self.fields(draft.body, what, _SEND_KEYS, required=("template",))
        if found is None:
            return None
        mark = self.mark()
        template = ""
        if "template" in found:
            template = self.template(found["template"], f"{what}.template")
            if template:
                start = found["template"].start_mark
                self.template_refs.append(
                    TemplateRef(draft.id, template, start.line + 1, start.column + 1)
                )
        reply_to = None
        if "reply_to_previous" in found:
            reply_to = self.reply_to(
                found["reply_to_previous"], f"{what}.reply_to_previous", earlier_sends, ids
            )
        subject: str | Mapping[str, str] = ""
        if "subject" in found:
            subject = self.subject(found["subject"], f"{what}.subject")
        elif reply_to is None:
            self.error(
                draft.body,
                f"{what}: missing required key 'subject' (only a reply to an earlier step may"
                " reuse its subject)",
            )
        elif reply_to in sends:
            subject = _reply_subject(sends[reply_to].subject)
        referral_ask = False
        if "referral_ask" in found:
            referral_ask = self.boolean(found["referral_ask"], f"{what}.referral_ask")
            if referral_ask:
                asks.append((draft.id, found["referral_ask"]))
        if not self.clean_since(mark) or not subject:
            return None
        line = draft.node.start_mark.line + 1
        return SendStep(draft.id, template, subject, reply_to, referral_ask, line)

    def template(self, node: yaml.Node, what: str) -> str:
        name = self.text(node, what)
        parts = PurePosixPath(name).parts
        if name and ("\\" in name or name.startswith("/") or ".." in parts):
            self.error(node, f"{what}: {name!r} must be a file name inside the templates folder")
        return name

    def reply_to(
        self, node: yaml.Node, what: str, earlier_sends: list[str], ids: Mapping[str, int]
    ) -> str | None:
        value = self.value(node)
        if isinstance(value, bool):
            if value and not earlier_sends:
                self.error(
                    node,
                    f"{what}: this is the first send step; there is no earlier email to reply to",
                )
            return earlier_sends[-1] if value and earlier_sends else None
        if not isinstance(value, str):
            self.error(
                node,
                f"{what}: expected true, false or the id of an earlier send step,"
                f" got {self.describe(node)}",
            )
            return None
        target = self.text(node, what)
        if target and target not in earlier_sends:
            self.error(node, f"{what}: {self.step_problem(target, ids, 'an earlier send step')}")
        return target or None

    def step_problem(self, target: str, ids: Mapping[str, int], wanted: str) -> str:
        if target in ids:
            return f"step {target!r} is not {wanted}"
        return f"no step {target!r}{_suggest(target, tuple(ids))}"

    def subject(self, node: yaml.Node, what: str) -> str | Mapping[str, str]:
        if not isinstance(node, yaml.MappingNode):
            return self.text(node, what)
        if not node.value:
            self.error(node, f"{what}: an empty mapping; give at least one subject")
            return ""
        subjects: dict[str, str] = {}
        for key_node, value_node in node.value:
            locale = self.text(
                key_node,
                f"{what} locale",
                LOCALE_PATTERN,
                "use a locale such as en, pt-BR or default",
            )
            key = _normalize_locale(locale)
            if key in subjects:
                self.error(key_node, f"{what}: locale {locale!r} appears twice")
            subjects[key] = self.text(value_node, f"{what}.{locale}")
        return MappingProxyType(subjects)

    def branch_step(
        self, draft: _Draft, earlier_sends: list[str], ids: Mapping[str, int]
    ) -> BranchStep | None:
        assert draft.body is not None
        what = f"{draft.label}: branch"
        found = self.fields(draft.body, what, _BRANCH_KEYS, required=("if",))
        if found is None:
            return None
        mark = self.mark()
        condition = (
            self.choice(found["if"], f"{what}.if", BRANCH_CONDITIONS) if "if" in found else ""
        )
        checked = ""
        if "step" in found:
            checked = self.text(found["step"], f"{what}.step")
            if checked and checked not in earlier_sends:
                problem = self.step_problem(checked, ids, "a send step before this branch")
                self.error(found["step"], f"{what}.step: {problem}")
        elif earlier_sends:
            checked = earlier_sends[-1]
        else:
            self.error(draft.body, f"{what}: there is no send step before this branch to check")
        then = self.jump(found.get("then"), f"{what}.then", ids, draft.position)
        otherwise = self.jump(found.get("else"), f"{what}.else", ids, draft.position)
        if not self.clean_since(mark):
            return None
        line = draft.node.start_mark.line + 1
        return BranchStep(draft.id, condition, checked, then, otherwise, line)

    def jump(
        self, node: yaml.Node | None, what: str, ids: Mapping[str, int], position: int
    ) -> str | None:
        if node is None or _is_null(node):
            return None
        target = self.text(node, what)
        if not target or target == END:
            return target or None
        if target not in ids:
            self.error(node, f"{what}: no step {target!r}{_suggest(target, (*ids, END))}")
        elif ids[target] <= position:
            self.error(
                node,
                f"{what}: step {target!r} comes before this branch; branches only jump forward",
            )
        return target

    # -- policy

    def lint_referral_asks(
        self, asks: list[tuple[str, yaml.Node]], audience: Audience | None, trigger: Trigger | None
    ) -> None:
        reasons = _policy_reasons(audience, trigger)
        if not reasons:
            return
        for step_id, node in asks:
            self.error(
                node,
                f"step {step_id!r}: referral_ask in a sequence that can reach {'; '.join(reasons)}."
                " Ask only promoters (and passives): set audience.nps (or trigger.nps) to"
                f" promoter or [promoter, passive], keep min_score at {MIN_REFERRAL_SCORE} or"
                " more and kind at customer",
            )


def _policy_reasons(audience: Audience | None, trigger: Trigger | None) -> list[str]:
    """Why a referral ask in this sequence could reach a partner, detractor or low scorer."""
    reasons = []
    if audience is not None:
        if audience.kind != "customer":
            reasons.append(f"partners (audience.kind is {audience.kind})")
        if "detractor" in audience.nps:
            reasons.append("detractors (audience.nps includes detractor)")
        if audience.min_score is None:
            reasons.append(
                f"contacts scoring below {MIN_REFERRAL_SCORE} (audience.min_score is null)"
            )
        elif audience.min_score < MIN_REFERRAL_SCORE:
            reasons.append(
                f"contacts scoring below {MIN_REFERRAL_SCORE}"
                f" (audience.min_score is {audience.min_score})"
            )
    elif trigger is not None:
        if trigger.nps is None:
            reasons.append("detractors (the trigger has no nps filter)")
        elif "detractor" in trigger.nps:
            reasons.append("detractors (trigger.nps includes detractor)")
    return reasons


def _present(found: Mapping[str, yaml.Node], key: str) -> yaml.Node | None:
    """The value node of ``key``, or None when it is absent or null."""
    node = found.get(key)
    return None if node is None or _is_null(node) else node


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == _NULL_TAG


def _at(what: str, message: str) -> str:
    return f"{what}: {message}" if what else message


def _suggest(word: str, options: Iterable[str]) -> str:
    """``"; did you mean 'steps'?"``, or the list of options when it is short."""
    by_folded = {option.casefold(): option for option in options}
    close = difflib.get_close_matches(word.casefold(), by_folded, n=1)
    if close:
        return f"; did you mean {by_folded[close[0]]!r}?"
    if len(by_folded) <= 15:
        return f"; expected one of {', '.join(by_folded.values())}"
    return ""


def _normalize_locale(locale: str) -> str:
    return locale.replace("_", "-").lower()


def _reply_subject(subject: str | Mapping[str, str]) -> str | Mapping[str, str]:
    """An earlier step's subject as a reply's: ``Re: `` in front, once."""

    def reply(text: str) -> str:
        return text if text[:3].casefold() == "re:" else f"Re: {text}"

    if isinstance(subject, str):
        return reply(subject)
    return MappingProxyType({locale: reply(text) for locale, text in subject.items()})


@functools.cache
def _zone_names() -> tuple[str, ...]:
    return (CONTACT, *sorted(available_timezones()))
