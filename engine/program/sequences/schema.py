"""The JSON Schema (draft 2020-12) of a sequence file: what editors autocomplete and check
(shipped as schema/sequence.schema.json) and what the loader validates every file with.

Two annotations that VS Code and yaml-language-server show in place of their generic wording
carry our sentences, so an editor and ``validate`` say the same thing: ``errorMessage`` (what a
value must be, when it has the wrong type or matches none of the alternatives) and
``patternErrorMessage`` (the rule a text breaks).
"""

from __future__ import annotations

import copy
from typing import Any

from engine.program.durations import DURATION_PATTERN, DURATION_RULE
from engine.program.sequences.model import (
    ACTIONS,
    AUDIENCE_KINDS,
    BRANCH_CONDITIONS,
    DEFAULT_CATEGORY,
    DEFAULT_PRIORITY,
    EVENT_NAMES,
    MIN_REFERRAL_SCORE,
    NOTIFY_ROLES,
    NPS_ANY,
    NPS_CLASSES,
)
from engine.program.windows import DAYS, HOURS_PATTERN, HOURS_RULE

ID_PATTERN = r"^[a-z0-9][a-z0-9-]*$"
CATEGORY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"  # a Feedback-ID field: no ':' or spaces
LOCALE_PATTERN = r"^(default|[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*)$"
TEXT_PATTERN = r"\S"  # text is never empty or only spaces

Schema = dict[str, Any]


def json_schema() -> Schema:
    """The JSON Schema (draft 2020-12) of a sequence file, with a description on every key."""
    return copy.deepcopy(_SCHEMA)


def ref(name: str) -> Schema:
    return {"$ref": f"#/$defs/{name}"}


def nullable(schema: Schema, description: str) -> Schema:
    return {"description": description, "anyOf": [schema, {"type": "null"}]}


def one_or_list(item: Schema, description: str) -> Schema:
    return {
        "description": description,
        "anyOf": [item, {"type": "array", "items": item, "minItems": 1}],
    }


def names(options: tuple[str, ...]) -> Schema:
    return {"type": "string", "enum": list(options)}


def _build() -> Schema:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Referral engine sequence",
        "description": "One email sequence: who enters it, when emails may go out, the steps.",
        "type": "object",
        "errorMessage": "a sequence file must be a mapping (id: ..., name: ..., steps: ...)",
        "additionalProperties": False,
        "required": ["id", "name", "steps"],
        "allOf": [
            {
                "errorMessage": "a sequence needs an audience (who enters by rule) or a trigger"
                " (an event that starts it)",
                "anyOf": [
                    {
                        "required": ["audience"],
                        "properties": {"audience": {"not": {"type": "null"}}},
                    },
                    {"required": ["trigger"], "properties": {"trigger": {"not": {"type": "null"}}}},
                ],
            }
        ],
        "properties": _top_properties(),
        "$defs": _values() | _entry() | _steps(),
    }


def _top_properties() -> Schema:
    return {
        "id": {
            **ref("id"),
            "description": "Unique id of the sequence (lowercase letters, digits, dashes);"
            " used in reports, logs and the Feedback-ID header.",
        },
        "name": {
            **ref("text"),
            "description": "What the sequence does, for people reading reports.",
        },
        "description": nullable(ref("text"), "Free text for the people editing this file."),
        "category": {
            "type": "string",
            "pattern": CATEGORY_PATTERN,
            "patternErrorMessage": "use letters, digits, . _ and -",
            "description": "Campaign category, the third field of the Feedback-ID header"
            f" (default {DEFAULT_CATEGORY}).",
        },
        "audience": nullable(
            ref("audience"),
            "Who enters the sequence by rule. Omit it for a sequence started only by its trigger.",
        ),
        "trigger": {
            "description": "An event that starts the sequence for the event's contact:"
            " an event name, or a mapping with event and filters.",
            "errorMessage": "expected an event name or a mapping with event:",
            "anyOf": [ref("event"), ref("trigger"), {"type": "null"}],
        },
        "send_window": nullable(
            ref("sendWindow"),
            "When emails may go out (days and hours, on the contact's clock unless"
            " timezone says otherwise); omit it to use settings [schedule].",
        ),
        "priority": {
            "type": "integer",
            "minimum": -1000,
            "maximum": 1000,
            "errorMessage": "expected a whole number from -1000 to 1000",
            "description": "Of two emails due to one contact within [program]"
            " min_hours_between_emails, the one of the higher priority goes first and the other"
            f" waits (default {DEFAULT_PRIORITY}).",
        },
        "spaced": {
            "type": "boolean",
            "errorMessage": "expected true or false",
            "description": "Whether its emails keep [program] min_hours_between_emails from the"
            " contact's other emails (default: true for an audience sequence or one with a"
            " referral ask, false for other ones started by a trigger: a thank-you or a reward"
            " answers what just happened and goes at once).",
        },
        "stop_when": one_or_list(
            ref("event"),
            "Events that end the sequence for the contact (default: replied, unsubscribed,"
            " bounced).",
        ),
        "steps": {
            "type": "array",
            "errorMessage": "expected a list of steps",
            "minItems": 1,
            "items": ref("step"),
            "description": "What happens, in order: each step sends, waits, branches or notifies.",
        },
    }


def _values() -> Schema:
    """Values used in several places: ids, text, durations, event names, NPS classes, where."""
    scalar = {
        "type": ["string", "number", "boolean"],
        "errorMessage": "expected text, a number or true/false",
    }
    return {
        "id": {
            "type": "string",
            "pattern": ID_PATTERN,
            "patternErrorMessage": "use lowercase letters, digits and dashes, starting with a"
            " letter or digit",
        },
        "text": {
            "type": "string",
            "pattern": TEXT_PATTERN,
            "patternErrorMessage": "must not be empty",
        },
        "duration": {
            "type": "string",
            "pattern": DURATION_PATTERN,
            "patternErrorMessage": DURATION_RULE,
            "description": "A number and a unit (w, d, h, m): 30d, 12h, 90m, 2w, 1d12h.",
        },
        "event": {
            **names(EVENT_NAMES),
            "description": "An event type; referred = referral.created (the contact"
            " referred someone), converted = referral.converted.",
        },
        "nps": one_or_list(
            names((*NPS_CLASSES, NPS_ANY)),
            "NPS classes: promoter (9-10), passive (7-8), detractor (0-6), unknown (no score),"
            " or any.",
        ),
        "where": {
            "type": "object",
            "errorMessage": "expected a mapping of field: value",
            "description": "field: value (equal) or field: [values] (one of them).",
            "propertyNames": ref("text"),
            "additionalProperties": {
                "errorMessage": "expected text, a number or true/false (or a list of them)",
                "anyOf": [scalar, {"type": "array", "items": scalar, "minItems": 1}],
            },
        },
    }


def _entry() -> Schema:
    """Who enters and when emails may go out: audience, trigger, send window."""
    return {
        "audience": _audience(),
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
                "days": one_or_list(names(DAYS), "Days emails may go out: mon, tue ... sun."),
                "hours": {
                    "type": "string",
                    "pattern": HOURS_PATTERN,
                    "patternErrorMessage": HOURS_RULE,
                    "description": "Local hours, HH:MM-HH:MM, start before end: 09:00-17:00.",
                },
                "timezone": {
                    **ref("text"),
                    "description": "contact (default: the contact's time zone, else the"
                    " settings one) or an IANA name such as Europe/London.",
                },
            },
        },
    }


def _audience() -> Schema:
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "kind": {
                **names(AUDIENCE_KINDS),
                "description": "customer (default), partner, or any contact.",
            },
            "nps": {**ref("nps"), "description": "NPS classes that may enter (default any)."},
            "min_score": {
                "type": ["integer", "null"],
                "minimum": 0,
                "maximum": 10,
                "errorMessage": "expected a whole number from 0 to 10 or null",
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
                "Enter again this long after the last entry (default 90d); null: never again.",
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
    }


def _steps() -> Schema:
    """A step and the four things it can do."""
    return {
        "step": {
            "type": "object",
            "additionalProperties": False,
            "description": "Exactly one of send, wait, branch or notify.",
            "oneOf": [{"required": [action]} for action in ACTIONS],
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
        "send": _send(),
        "branch": _branch(),
        "notify": {
            "type": "object",
            "additionalProperties": False,
            "required": ["role", "subject"],
            "description": "Tell a person on the team: a plain-text email to the address"
            " the role has in settings [notify] (none set: only the notified event).",
            "properties": {
                "role": {
                    **names(NOTIFY_ROLES),
                    "description": "Who: owner, sales or account_manager.",
                },
                "subject": {
                    **ref("text"),
                    "description": "Subject (Jinja2): contact, nps, event, sequence, step.",
                },
                "body": {
                    **ref("text"),
                    "description": "Text (Jinja2): contact, nps (score, improve, other: what"
                    " they wrote on the survey page), event (the trigger's data), sequence,"
                    " step. Default: a summary of the contact and their NPS answer.",
                },
            },
        },
    }


def _send() -> Schema:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["template"],
        "description": "Send one email.",
        "allOf": [
            {
                "errorMessage": "missing required key 'subject' (only a reply to an earlier step"
                " may reuse its subject)",
                "anyOf": [
                    {"required": ["subject"]},
                    {
                        "required": ["reply_to_previous"],
                        "properties": {"reply_to_previous": {"not": {"const": False}}},
                    },
                ],
            }
        ],
        "properties": {
            "template": {
                **ref("text"),
                "description": "Template file in the templates folder, e.g."
                " referral-ask.mjml (locale variants: referral-ask.ar.mjml).",
            },
            "subject": {
                "description": "Subject line (Jinja2), or a mapping by locale:"
                " {en: ..., pt-BR: ..., default: ...}. Optional when replying to an"
                " earlier step, whose subject is reused with Re:.",
                "errorMessage": "expected text, or a mapping of locale: text",
                "anyOf": [
                    ref("text"),
                    {
                        "type": "object",
                        "minProperties": 1,
                        "propertyNames": {
                            "pattern": LOCALE_PATTERN,
                            "patternErrorMessage": "use a locale such as en, pt-BR or default",
                        },
                        "additionalProperties": ref("text"),
                    },
                ],
            },
            "reply_to_previous": {
                "description": "true: thread with the previous send step (In-Reply-To);"
                " or the id of an earlier send step to thread with.",
                "errorMessage": "expected true, false or the id of an earlier send step",
                "anyOf": [{"type": "boolean"}, ref("text")],
            },
            "referral_ask": {
                "type": "boolean",
                "description": "This email asks for a referral: only allowed when no"
                f" partner, detractor or contact scoring below {MIN_REFERRAL_SCORE} can get it.",
            },
        },
    }


def _branch() -> Schema:
    target = "a later step id or end (default: the next step)"
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["if"],
        "description": "Go on at another step depending on an earlier email.",
        "properties": {
            "if": {
                **names(BRANCH_CONDITIONS),
                "description": "What the contact did with the email.",
            },
            "step": {
                **ref("text"),
                "description": "The send step whose email is checked (default: the"
                " latest one before this branch).",
            },
            "then": nullable(ref("text"), f"Where to go if so: {target}."),
            "else": nullable(ref("text"), f"Where to go if not: {target}."),
        },
    }


_SCHEMA = _build()
