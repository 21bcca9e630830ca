"""Validation against the JSON Schema, each error as a sentence at the value it is about.

jsonschema finds what breaks the schema and gives the path of the value; this module says it
the way a marketer reads it: ``unknown key 'stpes'; did you mean 'steps'?``, ``expected text,
got the number 9:00 (put it in quotes)``. The schema's own ``errorMessage`` and
``patternErrorMessage`` annotations supply the words where types and enums say too little.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator, ValidationError, validators

from engine.program.durations import DURATION_PATTERN, parse_duration
from engine.program.sequences.schema import Schema, json_schema
from engine.program.sequences.source import DataPath, Document, Problem, quote_hint, suggest
from engine.program.windows import HOURS_PATTERN, parse_hours

_KINDS = {
    "string": "text",
    "object": "a mapping (key: value)",
    "array": "a list",
    "boolean": "true or false",
    "integer": "a whole number",
    "number": "a number",
    "null": "null",
}
# A text whose pattern has a parser is explained by the parser, which names what it expected.
_PARSERS: dict[str, Callable[[str], object]] = {
    DURATION_PATTERN: parse_duration,
    HOURS_PATTERN: parse_hours,
}
_END = re.compile(r"(?<!\\)\$")


def _pattern(
    validator: Any, pattern: str, instance: Any, schema: Schema
) -> Iterator[ValidationError]:
    """The ``pattern`` keyword as ECMA-262 reads it: ``$`` ends the text (Python's ``$`` also
    matches before a final newline, which would let ``"thanks\\n"`` pass as an id)."""
    if validator.is_type(instance, "string") and not re.search(_END.sub(r"\\Z", pattern), instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


_SCHEMA = json_schema()
# extend() has no type hints in types-jsonschema; it returns a class like the one it extends
_Validator: type[Draft202012Validator] = validators.extend(  # type: ignore[no-untyped-call]
    Draft202012Validator, {"pattern": _pattern}
)
_VALIDATOR = _Validator(_SCHEMA)


def schema_problems(document: Document) -> list[Problem]:
    """Everything in ``document`` that breaks the schema, one Problem per thing to fix."""
    found: list[Problem] = []
    for error in _VALIDATOR.iter_errors(document.data):
        found += _explain(error, document)
    return list(dict.fromkeys(found))  # "required" reports every missing key once per key


@dataclass(frozen=True)
class _Failure:
    """One jsonschema error, typed: which keyword failed, on what value, where."""

    keyword: str
    rule: Any  # the keyword's value in the schema
    value: Any  # the value that failed (a key, for propertyNames)
    schema: Mapping[str, Any]  # the schema holding the keyword, for its annotations
    path: DataPath
    on_key: bool  # propertyNames: ``value`` is a key of the mapping at ``path``
    context: tuple[ValidationError, ...]  # anyOf / oneOf: every alternative's errors


def _explain(error: ValidationError, document: Document) -> list[Problem]:
    failure = _Failure(
        keyword=str(error.validator),
        rule=error.validator_value,
        value=error.instance,
        schema=error.schema if isinstance(error.schema, Mapping) else {},
        path=tuple(error.absolute_path),
        on_key="propertyNames" in error.relative_schema_path,
        context=tuple(error.context or ()),
    )
    explain = _EXPLAIN.get(failure.keyword)
    if explain is None:  # a keyword this schema does not use: jsonschema's own sentence
        return [Problem(failure.path, error.message)]
    return explain(failure, document)


def _unknown_keys(failure: _Failure, document: Document) -> list[Problem]:
    allowed = tuple(failure.schema.get("properties", ()))
    path = failure.path
    return [
        Problem(path, f"unknown key {key!r}{suggest(key, allowed)}", at=(*path, key), key=True)
        for key in failure.value
        if isinstance(key, str) and key not in allowed  # other keys: see source._index
    ]


def _missing(failure: _Failure, document: Document) -> list[Problem]:
    return [
        Problem(failure.path, f"missing required key {key!r}")
        for key in failure.rule
        if key not in failure.value
    ]


def _missing_with(failure: _Failure, document: Document) -> list[Problem]:
    return [
        Problem(failure.path, f"missing required key {needed!r} ({key} steps need one)")
        for key, needs in failure.rule.items()
        if key in failure.value
        for needed in needs
        if needed not in failure.value
    ]


def _wrong_type(failure: _Failure, document: Document) -> list[Problem]:
    if failure.on_key:
        return []  # a key that is not text: see source._index
    path, value = failure.path, failure.value
    if failure.schema.get("pattern") == DURATION_PATTERN and type(value) is int:
        return [Problem(path, f"{value} needs a unit (w, d, h or m), e.g. {value}d")]
    types = _listed(failure.rule)
    message = f"{_expected(failure.schema, types)}, got {document.describe(path)}"
    if "string" in types:
        message += quote_hint(document.nodes[path], value)
    return [Problem(path, message)]


def _out_of_range(failure: _Failure, document: Document) -> list[Problem]:
    expected = _expected(failure.schema, _listed(failure.schema.get("type", "number")))
    return [Problem(failure.path, f"{expected}, got {document.describe(failure.path)}")]


def _listed(types: str | list[str]) -> list[str]:
    return types if isinstance(types, list) else [types]


def _expected(schema: Mapping[str, Any], types: list[str]) -> str:
    """What a value must be: the schema's errorMessage, else its types in words."""
    return str(schema.get("errorMessage") or "expected " + " or ".join(_KINDS[t] for t in types))


def _not_one_of(failure: _Failure, document: Document) -> list[Problem]:
    value = failure.value
    if not isinstance(value, str):
        return []  # every enum here is typed: the type error says it
    if not value.strip():
        return [Problem(failure.path, "must not be empty")]
    options = [str(option) for option in failure.rule]
    return [Problem(failure.path, f"unknown value {value!r}{suggest(value, options)}")]


def _not_matching(failure: _Failure, document: Document) -> list[Problem]:
    value, path, pattern = failure.value, failure.path, str(failure.rule)
    if not isinstance(value, str):
        return []  # a key that is not text: see source._index
    if not value.strip():
        message = "must not be empty"
    elif pattern in _PARSERS:
        message = _parser_error(_PARSERS[pattern], value)
    else:
        rule = failure.schema.get("patternErrorMessage", pattern)
        message = f"{'key ' if failure.on_key else ''}{value!r} is not allowed: {rule}"
    if failure.on_key:  # point at the key, not at the mapping
        return [Problem(path, message, at=(*path, value), key=True)]
    return [Problem(path, message)]


def _parser_error(parse: Callable[[str], object], value: str) -> str:
    try:
        parse(value)
    except ValueError as exc:
        return str(exc)
    raise AssertionError(f"{value!r} breaks the pattern but parses")  # the two must agree


def _too_few(failure: _Failure, document: Document) -> list[Problem]:
    path = failure.path
    if failure.keyword == "minProperties":
        return [Problem(path, f"an empty mapping; give at least one {path[-1]}")]
    items = _resolve(failure.schema.get("items", {}))
    if "enum" in items:
        message = f"an empty list; name at least one of {', '.join(items['enum'])}"
    elif path == ("steps",):
        message = "the list is empty; a sequence needs at least one step"
    else:
        message = "an empty list matches nothing"
    return [Problem(path, message)]


def _resolve(schema: Mapping[str, Any]) -> Mapping[str, Any]:
    while "$ref" in schema:
        schema = _SCHEMA["$defs"][schema["$ref"].rpartition("/")[2]]
    return schema


def _alternatives(failure: _Failure, document: Document) -> list[Problem]:
    """anyOf / oneOf: explain the one alternative that fits the value's type, if there is one."""
    branches: list[Mapping[str, Any]] = failure.rule
    if failure.keyword == "oneOf" and all(set(branch) == {"required"} for branch in branches):
        return _exactly_one(failure, [branch["required"][0] for branch in branches])
    failed: dict[int, list[ValidationError]] = {}
    for sub in failure.context:
        failed.setdefault(int(sub.relative_schema_path[0]), []).append(sub)
    fitting = [errors for errors in failed.values() if not _type_mismatch(errors)]
    if not fitting:  # a value that is no alternative's type: one beside null explains itself
        typed = [errors for index, errors in failed.items() if branches[index] != {"type": "null"}]
        fitting = typed if len(typed) == 1 else []
    if len(fitting) == 1:
        return [problem for sub in fitting[0] for problem in _explain(sub, document)]
    if fitting:  # several fit: only the schema's own words can say what is missing
        return [Problem(failure.path, _expected(failure.schema, []))]
    kinds = list(dict.fromkeys(kind for branch in branches for kind in _types(branch)))
    message = f"{_expected(failure.schema, kinds)}, got {document.describe(failure.path)}"
    if "string" in kinds and "boolean" not in kinds:
        message += quote_hint(document.nodes[failure.path], failure.value)
    return [Problem(failure.path, message)]


def _type_mismatch(errors: list[ValidationError]) -> bool:
    return any(error.validator == "type" and not error.relative_path for error in errors)


def _types(schema: Mapping[str, Any]) -> list[str]:
    return _listed(_resolve(schema).get("type", []))


def _exactly_one(failure: _Failure, keys: list[str]) -> list[Problem]:
    if not isinstance(failure.value, dict):
        return []  # "required" holds for anything but a mapping: the type error says it
    present = [key for key in keys if key in failure.value]
    if not present:
        return [Problem(failure.path, f"needs one of {', '.join(keys[:-1])} or {keys[-1]}")]
    first, second = present[:2]
    message = f"has both {first} and {second}; a step does one thing, split it into two steps"
    return [Problem(failure.path, message, at=(*failure.path, second), key=True)]


_EXPLAIN: dict[str, Callable[[_Failure, Document], list[Problem]]] = {
    "additionalProperties": _unknown_keys,
    "required": _missing,
    "dependentRequired": _missing_with,
    "type": _wrong_type,
    "minimum": _out_of_range,
    "maximum": _out_of_range,
    "enum": _not_one_of,
    "pattern": _not_matching,
    "minItems": _too_few,
    "minProperties": _too_few,
    "anyOf": _alternatives,
    "oneOf": _alternatives,
}
