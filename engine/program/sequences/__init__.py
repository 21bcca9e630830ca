"""Sequence files (YAML, one sequence per file) -> validated, frozen objects.

Every problem is a SequenceError located as file:line:col (1-based) at the offending value,
and one file's problems are all collected rather than only the first. The JSON Schema
(``json_schema()``, shipped as schema/sequence.schema.json for editors) is the one statement of
what a file may contain, and the loader validates with it; the loader itself checks only what
a schema cannot: references between steps, time zones, duplicate ids across files and the
referral-ask policy (never ask a partner, a detractor or anyone scoring below 5).

    model       the objects (Sequence, its steps, Audience, Trigger) and their constants
    schema      the JSON Schema
    source      YAML text -> data, with the position of every value and key
    validation  schema errors -> sentences at their value
    build       what the schema cannot check, and the objects
    policy      the referral-ask rule
    loader      load_sequences / load_files / load_sequence
"""

from engine.program.sequences.loader import (
    load_files,
    load_sequence,
    load_sequences,
    sequence_files,
)
from engine.program.sequences.model import (
    AFTER,
    AUDIENCE_KINDS,
    BRANCH_CONDITIONS,
    DEFAULT_CATEGORY,
    DEFAULT_PRIORITY,
    DEFAULT_STOP_WHEN,
    END,
    EVENT_NAMES,
    EVENT_TYPES,
    MIN_REFERRAL_SCORE,
    NOTIFY_ROLES,
    NPS_ANY,
    NPS_CLASSES,
    STOP_ALIASES,
    Audience,
    BranchStep,
    LoadResult,
    NotifyStep,
    SendStep,
    Sequence,
    Step,
    TemplateRef,
    Trigger,
    WaitStep,
    WhereRule,
    nps_class,
)
from engine.program.sequences.schema import (
    CATEGORY_PATTERN,
    ID_PATTERN,
    LOCALE_PATTERN,
    json_schema,
)

__all__ = [
    "AFTER",
    "AUDIENCE_KINDS",
    "BRANCH_CONDITIONS",
    "CATEGORY_PATTERN",
    "DEFAULT_CATEGORY",
    "DEFAULT_PRIORITY",
    "DEFAULT_STOP_WHEN",
    "END",
    "EVENT_NAMES",
    "EVENT_TYPES",
    "ID_PATTERN",
    "LOCALE_PATTERN",
    "MIN_REFERRAL_SCORE",
    "NOTIFY_ROLES",
    "NPS_ANY",
    "NPS_CLASSES",
    "STOP_ALIASES",
    "Audience",
    "BranchStep",
    "LoadResult",
    "NotifyStep",
    "SendStep",
    "Sequence",
    "Step",
    "TemplateRef",
    "Trigger",
    "WaitStep",
    "WhereRule",
    "json_schema",
    "load_files",
    "load_sequence",
    "load_sequences",
    "nps_class",
    "sequence_files",
]
