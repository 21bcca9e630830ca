"""The landing pages' forms: which fields each has and how an answer is checked (no I/O).

``check(form, fields, t)`` returns what was entered (cleaned, to fill the form again) and an
error message per field, in the page's language, shown next to that field.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from engine.mail.mime import check_address

LINE_MAX = 200
TEXT_MAX = 2000
CHECKED = "yes"  # the value of a ticked checkbox
# Control characters (tab aside) never belong in what a person types; a single-line field
# also loses its line breaks.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
_LINE_BREAKS = re.compile(r"\s*[\r\n]+\s*")

Kind = Literal["line", "text", "email", "check", "score"]
Translate = Callable[..., str]


@dataclass(frozen=True)
class Field:
    """One form field: its name (the HTML name), what it holds, and whether it is required."""

    name: str
    kind: Kind
    required: bool = True

    @property
    def limit(self) -> int:
        return TEXT_MAX if self.kind == "text" else LINE_MAX


@dataclass
class Submission:
    """A checked form: the cleaned values and the errors, both by field name."""

    values: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def checked(self, name: str) -> bool:
        return self.values.get(name) == CHECKED


def clean(value: str, kind: Kind) -> str:
    """What is kept of a typed value: ``clean(" Ana\\r\\nLima ", "line")`` -> ``"Ana Lima"``."""
    value = value.replace("\r\n", "\n")
    if kind == "text":
        return _CONTROL.sub("", value).strip()
    return _CONTROL.sub("", _LINE_BREAKS.sub(" ", value)).strip()


def check(form: Mapping[str, object], fields: Sequence[Field], t: Translate) -> Submission:
    """Check ``form`` (a parsed form body) against ``fields``."""
    result = Submission()
    for f in fields:
        raw = form.get(f.name)
        value = clean(raw, f.kind) if isinstance(raw, str) else ""
        if f.kind == "check":
            value = CHECKED if value else ""
        result.values[f.name] = value
        if not value:
            if f.required:
                result.errors[f.name] = t("consent_required" if f.kind == "check" else "required")
            continue
        if len(value) > f.limit:
            result.errors[f.name] = t("too_long", max=f.limit)
        elif f.kind == "email":
            try:
                result.values[f.name] = check_address(value).lower()
            except ValueError:
                result.errors[f.name] = t("email_invalid")
        elif f.kind == "score" and not (value.isascii() and value.isdigit() and int(value) <= 10):
            result.errors[f.name] = t("score_invalid")
    return result


REFERRAL = (
    Field("name", "line"),
    Field("email", "email"),
    Field("consent", "check"),
)
INTRO = (
    Field("name1", "line", required=False),
    Field("email1", "email"),
    Field("name2", "line", required=False),
    Field("email2", "email", required=False),
    Field("consent", "check"),
)
PARTNER = (
    Field("ideal_client", "text"),
    Field("problem_solved", "text"),
    Field("how_to_introduce", "text"),
    Field("example_intro", "text", required=False),
)
TESTIMONIAL = (
    Field("text", "text"),
    Field("publish", "check", required=False),
)
NPS = (
    Field("score", "score"),
    Field("improve", "text", required=False),
    Field("other", "text", required=False),
)


def check_intro(form: Mapping[str, object], referrer_email: str, t: Translate) -> Submission:
    """The intro form: one or two people, never the referrer, never the same one twice."""
    result = check(form, INTRO, t)
    emails = {"email1": result.values["email1"], "email2": result.values["email2"]}
    for name, email in emails.items():
        if email and name not in result.errors and email == referrer_email.lower():
            result.errors[name] = t("self_referral")
    if result.values["name2"] and not emails["email2"] and "email2" not in result.errors:
        result.errors["email2"] = t("required")
    if emails["email2"] and emails["email2"] == emails["email1"] and "email2" not in result.errors:
        result.errors["email2"] = t("same_friend")
    return result


def friends(result: Submission) -> list[tuple[str, str | None]]:
    """(email, name) of each person a valid intro form names."""
    return [
        (result.values[f"email{n}"], result.values[f"name{n}"] or None)
        for n in (1, 2)
        if result.values[f"email{n}"]
    ]
