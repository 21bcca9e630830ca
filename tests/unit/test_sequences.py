"""Sequence files: loading, every kind of error at its file:line:col, policy lint, JSON Schema."""

from __future__ import annotations

import json
import textwrap
from datetime import time, timedelta
from pathlib import Path

import jsonschema
import pytest
import yaml

from engine.base.errors import SequenceError
from engine.base.locale import variants
from engine.program.durations import parse_duration
from engine.program.sequences import (
    EVENT_TYPES,
    Audience,
    BranchStep,
    SendStep,
    Sequence,
    TemplateRef,
    Trigger,
    WaitStep,
    json_schema,
    load_files,
    load_sequence,
    load_sequences,
    nps_class,
    sequence_files,
)
from engine.program.sequences.model import subject_key
from engine.program.windows import SendWindow

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "schema" / "sequence.schema.json"

# The CONTRACT.md example, completed so that it is valid: reply_to_previous moved from the first
# send step (nothing to reply to) to the reminder, and the branch targets exist.
FULL_EXAMPLE = """\
# yaml-language-server: $schema=../schema/sequence.schema.json
id: referral-ask
name: Ask promoters for one or two introductions
description: optional text
category: referral
audience:
  kind: customer
  nps: promoter
  min_score: 5
  customer_for_at_least: 30d
  no_complaint_within: 30d
  reenter_after: 90d
  where: {plan: pro, region: [eu, us]}
trigger:
  event: nps.answered
  nps: promoter
  where: {channel: link}
send_window:
  days: [mon, tue, wed, thu]
  hours: "09:00-17:00"
  timezone: contact
stop_when: [replied, unsubscribed, bounced, referred]
steps:
  - id: ask
    send:
      template: referral-ask.mjml
      subject: "{{ contact.first_name }}, who are one or two people we could help?"
      referral_ask: true
  - wait: 3d
  - id: check
    branch:
      if: opened
      step: ask
      then: reminder
      else: alternative
  - id: reminder
    send:
      template: referral-reminder.mjml
      reply_to_previous: true
      referral_ask: true
  - wait: 1d12h
  - id: alternative
    send:
      template: testimonial-ask.mjml
      subject: {en: "Would you write two lines?", pt-BR: "Duas linhas?", default: "Two lines?"}
      reply_to_previous: ask
"""

# A minimal valid file; error cases below change one thing and name the line:col it breaks.
GOOD = """\
id: thanks
name: Thank referrers
trigger: referral.created
steps:
  - id: thank
    send: {template: thanks.mjml, subject: Thank you}
"""


def write(directory: Path, text: str, name: str = "seq.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def errors_of(directory: Path, text: str) -> list[SequenceError]:
    result = load_files([write(directory, text)])
    assert not result.sequences
    return result.errors


def assert_error(errors: list[SequenceError], line: int, col: int, fragment: str) -> None:
    found = [(e.line, e.col, e.message) for e in errors]
    assert any((e.line, e.col) == (line, col) and fragment in e.message for e in errors), (
        f"no error at {line}:{col} containing {fragment!r}; got {found}"
    )


# --- valid files ---------------------------------------------------------------------------------


def test_the_full_contract_example_loads_into_the_expected_objects(tmp_path: Path) -> None:
    path = write(tmp_path, FULL_EXAMPLE, "referral-ask.yaml")
    ask_subject = "{{ contact.first_name }}, who are one or two people we could help?"
    assert load_sequence(path) == Sequence(
        id="referral-ask",
        name="Ask promoters for one or two introductions",
        description="optional text",
        category="referral",
        path=str(path),
        audience=Audience(
            kind="customer",
            nps=frozenset({"promoter"}),
            min_score=5,
            customer_for_at_least=timedelta(days=30),
            no_complaint_within=timedelta(days=30),
            reenter_after=timedelta(days=90),
            where=(("plan", ("pro",)), ("region", ("eu", "us"))),
        ),
        trigger=Trigger(
            event="nps.answered", nps=frozenset({"promoter"}), where=(("channel", ("link",)),)
        ),
        window=SendWindow(frozenset({0, 1, 2, 3}), time(9), time(17), "contact"),
        stop_when=frozenset({"replied", "unsubscribed", "bounced", "referral.created"}),
        steps=(
            SendStep("ask", "referral-ask.mjml", ask_subject, None, True, 24),
            WaitStep("wait-1", timedelta(days=3), 29),
            BranchStep("check", "opened", "ask", "reminder", "alternative", 30),
            SendStep("reminder", "referral-reminder.mjml", f"Re: {ask_subject}", "ask", True, 36),
            WaitStep("wait-2", timedelta(days=1, hours=12), 41),
            SendStep(
                "alternative",
                "testimonial-ask.mjml",
                {
                    "en": "Would you write two lines?",
                    "pt-br": "Duas linhas?",
                    "default": "Two lines?",
                },
                "ask",
                False,
                42,
            ),
        ),
        template_refs=(
            TemplateRef("ask", "referral-ask.mjml", 26, 17),
            TemplateRef("reminder", "referral-reminder.mjml", 38, 17),
            TemplateRef("alternative", "testimonial-ask.mjml", 44, 17),
        ),
    )


def test_defaults_apply_when_keys_are_left_out(tmp_path: Path) -> None:
    sequence = load_sequence(
        write(
            tmp_path,
            """\
            id: ask
            name: Ask
            audience: {nps: promoter}
            steps:
              - id: ask
                send: {template: ask.mjml, subject: Hi}
            """,
        )
    )
    assert sequence.audience == Audience(nps=frozenset({"promoter"}))
    assert sequence.audience.kind == "customer"
    assert sequence.audience.min_score == 5
    assert sequence.audience.customer_for_at_least == timedelta(days=30)
    assert sequence.audience.no_complaint_within == timedelta(days=30)
    assert sequence.audience.reenter_after == timedelta(days=90)
    assert sequence.trigger is None
    assert sequence.window is None  # the settings window applies
    assert sequence.stop_when == {"replied", "unsubscribed", "bounced"}
    assert sequence.category == "referral"
    assert sequence.description == ""


def test_trigger_short_form_aliases_and_nulls(tmp_path: Path) -> None:
    sequence = load_sequence(
        write(
            tmp_path,
            """\
            id: reward
            name: Reward
            audience: null
            trigger: converted
            send_window: {days: sat, hours: "10:00-24:00", timezone: Asia/Jakarta}
            stop_when: referred
            steps:
              - id: reward
                send: {template: reward.mjml, subject: Good news}
            """,
        )
    )
    assert sequence.audience is None
    assert sequence.trigger == Trigger("referral.converted")
    assert sequence.window == SendWindow.parse(["sat"], "10:00-24:00", "Asia/Jakarta")
    assert sequence.stop_when == {"referral.created"}


def test_nps_any_and_never_reentering(tmp_path: Path) -> None:
    sequence = load_sequence(
        write(
            tmp_path,
            """\
            id: nps-survey
            name: Survey
            audience: {nps: any, min_score: null, reenter_after: null, customer_for_at_least: 0d}
            trigger: {event: purchase, nps: [unknown, any]}
            steps:
              - id: survey
                send: {template: survey.mjml, subject: One question}
            """,
        )
    )
    assert sequence.audience == Audience(
        min_score=None, reenter_after=None, customer_for_at_least=timedelta(0)
    )
    assert sequence.trigger == Trigger("purchase", nps=None)


def test_steps_wait_ids_branch_defaults_and_lookups(tmp_path: Path) -> None:
    sequence = load_sequence(
        write(
            tmp_path,
            """\
            id: nudge
            name: Nudge
            trigger: form.submitted
            steps:
              - id: first
                send: {template: a.mjml, subject: A}
              - wait: 2d
              - id: second
                send: {template: b.mjml, subject: B}
              - id: named-wait
                wait: 90m
              - id: opened-second
                branch: {if: clicked, else: end}
              - wait: 1w
              - id: third
                send: {template: c.mjml, reply_to_previous: true}
            """,
        )
    )
    assert [step.id for step in sequence.steps] == [
        "first",
        "wait-1",
        "second",
        "named-wait",
        "opened-second",
        "wait-3",
        "third",
    ]
    assert sequence.step("named-wait") == WaitStep("named-wait", timedelta(minutes=90), 10)
    # the branch checks the latest send step before it; no "then": go on with the next step
    assert sequence.step("opened-second") == BranchStep(
        "opened-second", "clicked", "second", None, "end", 12
    )
    third = sequence.step("third")
    assert isinstance(third, SendStep)
    assert (third.reply_to_previous, third.subject) == ("second", "Re: B")
    assert sequence.index("third") == 6
    assert [step.id for step in sequence.send_steps()] == ["first", "second", "third"]
    with pytest.raises(KeyError):
        sequence.index("missing")
    # where a run stands survives edits: marks name steps, a wait by the step before it
    assert [sequence.mark_of(i) for i in range(8)] == [
        "first",
        "after:first",
        "second",
        "after:second",
        "opened-second",
        "after:opened-second",
        "third",
        None,
    ]
    assert sequence.resume_at("after:second", 0) == 3
    assert sequence.resume_at("third", 0) == 6
    assert sequence.resume_at("removed", 2) == 2  # the step is gone: the saved index
    assert sequence.resume_at(None, 99) == 7  # rows saved before marks existed


def test_a_reply_chain_says_re_once_in_every_language(tmp_path: Path) -> None:
    sequence = load_sequence(
        write(
            tmp_path,
            """\
            id: chain
            name: Chain
            trigger: nps.answered
            steps:
              - id: one
                send: {template: a.mjml, subject: {en: Hello, ar: مرحبا}}
              - id: two
                send: {template: a.mjml, reply_to_previous: true}
              - id: three
                send: {template: a.mjml, reply_to_previous: two}
            """,
        )
    )
    third = sequence.step("three")
    assert isinstance(third, SendStep)
    assert third.subject == {"en": "Re: Hello", "ar": "Re: مرحبا"}


# --- helpers: durations, NPS classes, subjects ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", timedelta(days=30)),
        ("12h", timedelta(hours=12)),
        ("90m", timedelta(minutes=90)),
        ("2w", timedelta(weeks=2)),
        ("1d12h", timedelta(days=1, hours=12)),
        ("1w2d3h4m", timedelta(weeks=1, days=2, hours=3, minutes=4)),
        ("0d", timedelta(0)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text", ["", "30", "d", "3 days", "3D", "12h1d", "1d1d", "-1d", "1.5d", "3d ", "3d\n", "5s"]
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_parse_duration_too_long() -> None:
    with pytest.raises(ValueError, match="too long"):
        parse_duration("999999999999w")


@pytest.mark.parametrize(
    ("score", "expected"),
    [
        (10, "promoter"),
        (9, "promoter"),
        (8, "passive"),
        (7, "passive"),
        (6, "detractor"),
        (0, "detractor"),
        (None, "unknown"),
    ],
)
def test_nps_class(score: int | None, expected: str) -> None:
    assert nps_class(score) == expected


def test_nps_class_rejects_scores_outside_0_to_10() -> None:
    for score in (-1, 11):
        with pytest.raises(ValueError, match="0 to 10"):
            nps_class(score)


def test_subject_for_falls_back_locale_language_default_en_first() -> None:
    def step(subject: dict[str, str]) -> SendStep:
        return SendStep("s", "t.mjml", subject, None, False, 1)

    every = step({"pt-br": "Olá", "pt": "Oi", "default": "Hi!", "en": "Hello"})
    assert every.subject_for("pt-BR") == "Olá"
    assert every.subject_for("pt_br") == "Olá"
    assert every.subject_for("pt-PT") == "Oi"
    assert every.subject_for("fr") == "Hi!"
    assert every.subject_for(None) == "Hi!"
    assert every.subject_for("") == "Hi!"
    assert step({"id": "Halo", "en": "Hello"}).subject_for("fr") == "Hello"
    assert step({"ar": "مرحبا", "id": "Halo"}).subject_for("fr") == "مرحبا"
    assert SendStep("s", "t.mjml", "Plain", None, False, 1).subject_for("ar") == "Plain"


# --- errors: each at its file:line:col -----------------------------------------------------------

ERROR_CASES = {
    "unknown key with suggestion": (
        GOOD.replace("steps:", "stpes:"),
        4,
        1,
        "unknown key 'stpes'; did you mean 'steps'?",
    ),
    "unknown nested key": (
        GOOD.replace("trigger: referral.created", "trigger: {event: purchase, nsp: promoter}"),
        3,
        28,
        "trigger: unknown key 'nsp'; did you mean 'nps'?",
    ),
    "missing required key": (
        GOOD.replace("name: Thank referrers\n", ""),
        1,
        1,
        "missing required key 'name'",
    ),
    "duplicate key": (
        GOOD.replace("trigger:", "name: Again\ntrigger:"),
        3,
        1,
        "duplicate key 'name'",
    ),
    "wrong type": (
        GOOD.replace("Thank referrers", "42"),
        2,
        7,
        "name: expected text, got the number 42",
    ),
    "yes is a boolean": (GOOD.replace("Thank referrers", "yes"), 2, 7, "YAML reads as true"),
    "bad sequence id": (GOOD.replace("id: thanks", "id: Thank You"), 1, 5, "use lowercase letters"),
    "bad category": (GOOD + "category: a b\n", 7, 11, "category: 'a b' is not allowed"),
    "neither audience nor trigger": (
        GOOD.replace("trigger: referral.created\n", ""),
        1,
        1,
        "needs an audience (who enters by rule) or a trigger",
    ),
    "unknown trigger event": (
        GOOD.replace("referral.created", "referral.creatd"),
        3,
        10,
        "did you mean 'referral.created'?",
    ),
    "unknown stop_when name": (
        GOOD.replace("steps:", "stop_when: [replied, replyed]\nsteps:"),
        4,
        22,
        "stop_when: unknown value 'replyed'; did you mean 'replied'?",
    ),
    "unknown nps class": (
        GOOD.replace("trigger: referral.created", "audience:\n  nps: [promoter, promotor]"),
        4,
        19,
        "audience.nps: unknown value 'promotor'; did you mean 'promoter'?",
    ),
    "empty nps list": (
        GOOD.replace("trigger: referral.created", "audience:\n  nps: []"),
        4,
        8,
        "an empty list",
    ),
    "min_score out of range": (
        GOOD.replace("trigger: referral.created", "audience:\n  min_score: 11"),
        4,
        14,
        "whole number from 0 to 10 or null",
    ),
    "unknown audience kind": (
        GOOD.replace("trigger: referral.created", "audience:\n  kind: partners"),
        4,
        9,
        "did you mean 'partner'?",
    ),
    "bad audience duration": (
        GOOD.replace("trigger: referral.created", "audience:\n  customer_for_at_least: 1 month"),
        4,
        26,
        "invalid duration '1 month'",
    ),
    "where value not a scalar": (
        GOOD.replace("trigger: referral.created", "audience:\n  where: {plan: {a: 1}}"),
        4,
        17,
        "audience.where.plan: expected text, a number or true/false",
    ),
    "bad day name": (
        GOOD + "send_window:\n  days: [mon, funday]\n  hours: 09:00-17:00\n",
        8,
        15,
        "send_window.days: unknown value 'funday'",
    ),
    "hours start after end": (
        GOOD + 'send_window:\n  days: [mon]\n  hours: "17:00-09:00"\n',
        9,
        10,
        "the start must be before the end",
    ),
    "malformed hours": (
        GOOD + "send_window:\n  days: [mon]\n  hours: 9-5\n",
        9,
        10,
        "expected HH:MM-HH:MM",
    ),
    "hours read as a number": (
        GOOD + "send_window:\n  days: [mon]\n  hours: 9:00\n",  # YAML 1.1: 540
        9,
        10,
        "expected text, got the number 9:00 (put it in quotes)",
    ),
    "send window without hours": (
        GOOD + "send_window:\n  days: [mon]\n",
        8,
        3,
        "send_window: missing required key 'hours'",
    ),
    "bad time zone": (
        GOOD + "send_window: {days: [mon], hours: 09:00-17:00, timezone: Europe/Londn}\n",
        7,
        58,
        "unknown time zone 'Europe/Londn'; did you mean 'Europe/London'?",
    ),
    "steps empty": (GOOD.split("steps:")[0] + "steps: []\n", 4, 8, "the list is empty"),
    "steps not a list": (
        GOOD.split("steps:")[0] + "steps: ask\n",
        4,
        8,
        "expected a list of steps",
    ),
    "step with no action": (
        GOOD.replace("    send: {template: thanks.mjml, subject: Thank you}\n", ""),
        5,
        5,
        "step 1: needs one of send, wait, branch or notify",
    ),
    "step with two actions": (GOOD + "    wait: 3d\n", 7, 5, "has both send and wait"),
    "send step without id": (
        GOOD.replace("- id: thank\n    send", "- send"),
        5,
        5,
        "missing required key 'id'",
    ),
    "duplicate step id": (
        GOOD + "  - id: thank\n    send: {template: again.mjml, subject: Again}\n",
        7,
        9,
        "duplicate step id 'thank' (step 1 has it)",
    ),
    "step id end is reserved": (GOOD.replace("id: thank\n", "id: end\n"), 5, 9, "reserved"),
    "wait without unit": (GOOD + "  - wait: 3\n", 7, 11, "3 needs a unit (w, d, h or m), e.g. 3d"),
    "bad wait duration": (GOOD + "  - wait: 3 days\n", 7, 11, "invalid duration '3 days'"),
    "missing template": (
        GOOD.replace("template: thanks.mjml, ", ""),
        6,
        11,
        "missing required key 'template'",
    ),
    "template outside the folder": (
        GOOD.replace("thanks.mjml", "../secret.mjml"),
        6,
        22,
        "must be a file name inside the templates folder",
    ),
    "missing subject": (
        GOOD.replace(", subject: Thank you", ""),
        6,
        11,
        "missing required key 'subject'",
    ),
    "empty subject mapping": (
        GOOD.replace("subject: Thank you", "subject: {}"),
        6,
        44,
        "an empty mapping",
    ),
    "bad subject locale": (
        GOOD.replace("subject: Thank you", "subject: {english!: Hi}"),
        6,
        45,
        "use a locale such as en, pt-BR or default",
    ),
    "referral_ask not a boolean": (
        GOOD.replace("subject: Thank you", "subject: Hi, referral_ask: maybe"),
        6,
        62,
        "referral_ask: expected true or false",
    ),
    "reply_to_previous on the first send step": (
        GOOD.replace("subject: Thank you", "subject: Hi, reply_to_previous: true"),
        6,
        67,
        "this is the first send step; there is no earlier email to reply to",
    ),
    "reply_to_previous neither a boolean nor an id": (
        GOOD + "  - id: again\n    send: {template: a.mjml, reply_to_previous: 1}\n",
        8,
        49,
        "expected true, false or the id of an earlier send step, got the number 1",
    ),
    "reply_to_previous to an unknown step": (
        GOOD + "  - id: again\n    send: {template: a.mjml, reply_to_previous: thnak}\n",
        8,
        49,
        "no step 'thnak'; did you mean 'thank'?",
    ),
    "reply_to_previous to a later step": (
        GOOD.replace("subject: Thank you", "subject: Hi, reply_to_previous: later")
        + "  - id: later\n    send: {template: a.mjml, subject: Later}\n",
        6,
        67,
        "step 'later' is not an earlier send step",
    ),
    "branch target missing": (
        GOOD + "  - id: check\n    branch: {if: opened, then: reminder}\n",
        8,
        32,
        "no step 'reminder'",
    ),
    "branch jumping back": (
        GOOD + "  - id: check\n    branch: {if: opened, else: thank}\n",
        8,
        32,
        "comes before this branch; branches only jump forward",
    ),
    "branch condition unknown": (
        GOOD + "  - id: check\n    branch: {if: openned}\n",
        8,
        18,
        "did you mean 'opened'?",
    ),
    "branch checking a wait step": (
        GOOD + "  - wait: 1d\n  - id: check\n    branch: {if: opened, step: wait-1}\n",
        9,
        32,
        "step 'wait-1' is not a send step before this branch",
    ),
    "branch with no send step before it": (
        GOOD.replace("steps:\n", "steps:\n  - id: check\n    branch: {if: replied}\n"),
        6,
        13,
        "there is no send step before this branch to check",
    ),
    "not a mapping": ("- id: thanks\n- name: Thanks\n", 1, 1, "a sequence file must be a mapping"),
    "yaml syntax error": (
        GOOD.replace("Thank referrers", "Thank: referrers"),
        2,
        12,
        "invalid YAML: mapping values",
    ),
    "unclosed flow list": (
        GOOD.replace("Thank referrers", "[Thank referrers"),
        3,
        8,
        "invalid YAML: expected ',' or ']'",
    ),
    "two documents": (GOOD + "---\nid: other\n", 7, 1, "expected a single document"),
    "unsafe tag": (
        GOOD.replace("Thank referrers", "!!python/object:os.system x"),
        2,
        7,
        "invalid YAML",
    ),
    "empty file": ("", 1, 1, "the file is empty"),
    "trigger neither an event nor a mapping": (
        GOOD.replace("referral.created", "[purchase]"),
        3,
        10,
        "trigger: expected an event name or a mapping with event:, got a list",
    ),
    "a key that is not text": (
        GOOD + "yes: 1\n",
        7,
        1,
        "keys must be plain names, got yes, which YAML reads as true (put it in quotes)",
    ),
    "subject locale written twice": (
        GOOD.replace("subject: Thank you", "subject: {pt-BR: Oi, pt_br: Olá}"),
        6,
        56,
        "step 'thank': send.subject: locale 'pt_br' appears twice",
    ),
    "a reference is checked against the steps, not the id rule": (
        GOOD + "  - id: check\n    branch: {if: opened, else: End}\n",
        8,
        32,
        "no step 'End'; did you mean 'end'?",
    ),
    "duration too long": (GOOD + "  - wait: 999999999999w\n", 7, 11, "is too long"),
}


@pytest.mark.parametrize(("text", "line", "col", "fragment"), ERROR_CASES.values(), ids=ERROR_CASES)
def test_errors_are_located(tmp_path: Path, text: str, line: int, col: int, fragment: str) -> None:
    assert_error(errors_of(tmp_path, text), line, col, fragment)


def test_error_text_is_file_line_col_message(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("steps:", "stpes:"))
    with pytest.raises(SequenceError) as raised:
        load_sequence(path)
    assert str(raised.value) == f"{path}:1:1: missing required key 'steps'"


def test_all_errors_of_a_file_are_reported_in_order(tmp_path: Path) -> None:
    text = """\
    id: Bad Id
    name: Broken
    trigger: purchase
    stop_when: [replied, replyed]
    steps:
      - id: ask
        send: {template: a.mjml}
      - wait: soon
      - id: check
        branch: {if: opened, then: nowhere}
    """
    errors = errors_of(tmp_path, text)
    assert [(e.line, e.col) for e in errors] == [(1, 5), (4, 22), (7, 11), (8, 11), (10, 32)]


def test_a_broken_send_step_does_not_cause_errors_in_later_references(tmp_path: Path) -> None:
    text = GOOD.replace("thanks.mjml", "../x.mjml") + (
        "  - id: again\n    send: {template: a.mjml, reply_to_previous: true}\n"
        "  - id: check\n    branch: {if: opened, step: thank}\n"
    )
    errors = errors_of(tmp_path, text)
    assert [(e.line, e.col) for e in errors] == [(6, 22)]


def test_a_non_utf8_file_is_located(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"id: thanks\nname: caf\xe9\n")
    (error,) = load_files([path]).errors
    assert (error.line, error.col, error.message) == (2, 10, "not UTF-8 text")


def test_a_control_character_is_located(tmp_path: Path) -> None:
    (error,) = errors_of(tmp_path, GOOD.replace("Thank referrers", "Thank\x07"))
    assert (error.line, error.col) == (2, 12)
    assert "U+0007" in error.message


# --- the policy lint -----------------------------------------------------------------------------

ASK = """\
id: ask
name: Ask
{entry}
steps:
  - id: ask
    send:
      template: ask.mjml
      subject: Who could we help?
      referral_ask: true
"""


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("audience: {}", "detractors (audience.nps includes detractor)"),
        ("audience: {nps: any}", "detractors (audience.nps includes detractor)"),
        ("audience: {nps: [promoter, detractor]}", "audience.nps includes detractor"),
        ("audience: {nps: promoter, kind: partner}", "partners (audience.kind is partner)"),
        ("audience: {nps: promoter, kind: any}", "partners (audience.kind is any)"),
        ("audience: {nps: promoter, min_score: null}", "below 5 (audience.min_score is null)"),
        ("audience: {nps: promoter, min_score: 3}", "below 5 (audience.min_score is 3)"),
        ("trigger: nps.answered", "detractors (the trigger has no nps filter)"),
        ("trigger: {event: nps.answered, nps: any}", "the trigger has no nps filter"),
        ("trigger: {event: purchase, nps: [passive, detractor]}", "trigger.nps includes detractor"),
    ],
)
def test_referral_ask_that_could_reach_the_wrong_people_is_refused(
    tmp_path: Path, entry: str, reason: str
) -> None:
    (error,) = errors_of(tmp_path, ASK.format(entry=entry))
    assert (error.line, error.col) == (9, 21)  # the referral_ask value
    assert error.message.startswith("step 'ask': referral_ask in a sequence that can reach")
    assert reason in error.message


@pytest.mark.parametrize(
    "entry",
    [
        "audience: {nps: promoter}",
        "audience: {nps: [promoter, passive], min_score: 7}",
        "trigger: {event: nps.answered, nps: promoter}",
        "trigger: {event: purchase, nps: [promoter, passive, unknown]}",
    ],
)
def test_referral_ask_to_promoters_and_passives_is_allowed(tmp_path: Path, entry: str) -> None:
    load_sequence(write(tmp_path, ASK.format(entry=entry)))


def test_detractors_can_be_surveyed_when_nothing_asks_for_a_referral(tmp_path: Path) -> None:
    text = ASK.format(entry="audience: {nps: any, min_score: null}")
    load_sequence(write(tmp_path, text.replace("referral_ask: true", "referral_ask: false")))


def test_every_referral_ask_step_is_reported(tmp_path: Path) -> None:
    text = ASK.format(entry="audience: {kind: partner, nps: promoter}") + (
        "  - id: again\n    send: {template: a.mjml, subject: Again, referral_ask: true}\n"
    )
    assert [(e.line, e.col) for e in errors_of(tmp_path, text)] == [(9, 21), (11, 60)]


# --- folders: broken files, duplicates, templates ------------------------------------------------


def test_a_broken_file_does_not_stop_the_others(tmp_path: Path) -> None:
    write(tmp_path, GOOD, "a-good.yaml")
    broken = write(tmp_path, GOOD.replace("steps:", "stpes:").replace("thanks", "other"), "b.yml")
    result = load_sequences(tmp_path)
    assert list(result.sequences) == ["thanks"]
    assert {error.path for error in result.errors} == {str(broken)}
    assert [(e.line, e.col) for e in result.errors] == [(1, 1), (4, 1)]


def test_duplicate_ids_are_an_error_in_the_second_file(tmp_path: Path) -> None:
    first = write(tmp_path, GOOD, "a.yaml")
    second = write(tmp_path, "\n\n" + GOOD, "b.yaml")
    result = load_sequences(tmp_path)
    assert result.sequences["thanks"].path == str(first)
    (error,) = result.errors
    assert (error.path, error.line, error.col) == (str(second), 3, 5)
    assert error.message == f"duplicate sequence id 'thanks': {first} already uses it"


def test_unknown_templates_are_reported_at_the_template_value(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        GOOD + "  - id: more\n    send:\n      template: missing.mjml\n      subject: More\n",
    )
    result = load_sequences(tmp_path, template_exists=lambda name: name == "thanks.mjml")
    assert not result.sequences
    (error,) = result.errors
    assert (error.path, error.line, error.col) == (str(path), 9, 17)
    assert error.message == "template 'missing.mjml' does not exist"


def test_only_yaml_files_are_read_and_hidden_ones_are_skipped(tmp_path: Path) -> None:
    write(tmp_path, GOOD, "a.yaml")
    write(tmp_path, GOOD.replace("thanks", "other"), "b.yml")
    write(tmp_path, "not: [yaml", ".#a.yaml")
    write(tmp_path, "not: [yaml", "notes.txt")
    (tmp_path / "folder.yaml").mkdir()
    assert [p.name for p in sequence_files(tmp_path)] == ["a.yaml", "b.yml"]
    assert sorted(load_sequences(tmp_path).sequences) == ["other", "thanks"]


def test_a_missing_folder_is_reported(tmp_path: Path) -> None:
    result = load_sequences(tmp_path / "nope")
    assert not result.sequences
    assert [str(error) for error in result.errors] == [
        f"{tmp_path / 'nope'}:1:1: sequences folder not found"
    ]


def test_the_shipped_sequences_load_with_their_templates() -> None:
    templates = ROOT / "templates"
    result = load_sequences(
        ROOT / "sequences", template_exists=lambda name: (templates / name).is_file()
    )
    assert result.errors == []
    assert result.sequences


# --- JSON Schema ---------------------------------------------------------------------------------


def test_schema_file_is_json_schema_output() -> None:
    regenerate = (
        ".venv/bin/python -c 'import json; from engine.program.sequences import json_schema; "
        "print(json.dumps(json_schema(), indent=2, ensure_ascii=False))'"
        " > schema/sequence.schema.json"
    )
    on_disk = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    assert on_disk == json_schema(), f"schema file is stale; regenerate with: {regenerate}"


def test_schema_is_valid_draft_2020_12_with_help_on_every_property() -> None:
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    definitions = schema["$defs"]
    objects = {"(top)": schema} | {name: d for name, d in definitions.items() if "properties" in d}
    for name, definition in objects.items():
        for key, prop in definition["properties"].items():
            target = definitions[prop["$ref"].rpartition("/")[2]] if "$ref" in prop else {}
            assert "description" in prop or "description" in target, f"{name}.{key}"


def test_json_schema_returns_a_copy() -> None:
    json_schema()["properties"].clear()
    assert "steps" in json_schema()["properties"]


def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json_schema())


def test_example_files_validate_against_the_schema() -> None:
    validator = _validator()
    examples = [FULL_EXAMPLE, GOOD] + [
        path.read_text(encoding="utf-8") for path in sorted((ROOT / "sequences").glob("*.y*ml"))
    ]
    for text in examples:
        errors = [error.message for error in validator.iter_errors(yaml.safe_load(text))]
        assert errors == [], text


INVALID_FOR_BOTH = {
    "unknown key": GOOD.replace("steps:", "stpes:"),
    "bad duration": GOOD + "  - wait: 3 days\n",
    "two actions": GOOD + "    wait: 3d\n",
    "no action": GOOD.replace("    send: {template: thanks.mjml, subject: Thank you}\n", ""),
    "send without id": GOOD.replace("- id: thank\n    send", "- send"),
    "unknown nps": GOOD.replace("trigger: referral.created", "audience: {nps: fans}"),
    "unknown event": GOOD.replace("referral.created", "signup"),
    "min_score too high": GOOD.replace("trigger: referral.created", "audience: {min_score: 11}"),
    "bad day": GOOD + "send_window: {days: [someday], hours: 09:00-17:00}\n",
    "bad hours": GOOD + "send_window: {days: [mon], hours: 9-5}\n",
    "no audience or trigger": GOOD.replace("trigger: referral.created", "audience: null"),
    "empty steps": GOOD.split("steps:")[0] + "steps: []\n",
    "bad id": GOOD.replace("id: thanks", "id: Thanks"),
    "empty subject mapping": GOOD.replace("subject: Thank you", "subject: {}"),
    "blank name": GOOD.replace("Thank referrers", '"  "'),
    "send with neither subject nor reply": GOOD.replace(", subject: Thank you", ""),
    "send with reply_to_previous false and no subject": GOOD.replace(
        "subject: Thank you", "reply_to_previous: false"
    ),
}


@pytest.mark.parametrize("text", INVALID_FOR_BOTH.values(), ids=INVALID_FOR_BOTH)
def test_invalid_files_fail_the_schema_and_the_loader(tmp_path: Path, text: str) -> None:
    assert not _validator().is_valid(yaml.safe_load(text))
    assert errors_of(tmp_path, text)


def test_event_names_in_the_schema_are_the_contract_ones() -> None:
    names = set(json_schema()["$defs"]["event"]["enum"])
    assert names == EVENT_TYPES | {"referred", "converted"}


def test_the_loader_validates_with_the_schema_editors_use(tmp_path: Path) -> None:
    # one statement of the rules: the loader's words for a broken id are the schema's own
    rule = json_schema()["$defs"]["id"]["patternErrorMessage"]
    (error,) = errors_of(tmp_path, GOOD.replace("id: thanks", "id: Thanks"))
    assert error.message == f"id: 'Thanks' is not allowed: {rule}"


def test_every_rule_of_the_schema_reads_as_a_sentence() -> None:
    # a pattern is reported by its patternErrorMessage, never as a regular expression
    def walk(node: object) -> list[dict[str, object]]:
        if isinstance(node, dict):
            return [node] + [found for value in node.values() for found in walk(value)]
        if isinstance(node, list):
            return [found for value in node for found in walk(value)]
        return []

    patterns = [node for node in walk(json_schema()) if "pattern" in node]
    assert patterns
    assert all(isinstance(node.get("patternErrorMessage"), str) for node in patterns), patterns


def test_an_id_ending_in_a_newline_is_refused(tmp_path: Path) -> None:
    # JSON Schema patterns are ECMA-262, where "$" ends the text; Python's "$" would let it pass
    (error,) = errors_of(tmp_path, GOOD.replace("id: thanks", 'id: "thanks\\n"'))
    assert (error.line, error.col) == (1, 5)
    assert "is not allowed" in error.message


def test_a_step_that_is_not_a_mapping_is_one_error(tmp_path: Path) -> None:
    (error,) = errors_of(tmp_path, GOOD + "  - hello\n")
    assert (error.line, error.col, error.message) == (
        7,
        5,
        "step 2: expected a mapping (key: value), got the text 'hello'",
    )


def test_a_null_branch_target_is_the_next_step(tmp_path: Path) -> None:
    text = GOOD + "  - id: check\n    branch: {if: opened, then: null, else: ~}\n"
    step = load_sequence(write(tmp_path, text)).step("check")
    assert isinstance(step, BranchStep)
    assert (step.then, step.otherwise) == (None, None)


@pytest.mark.parametrize("tag", ["pt_BR", "PT-br", " pt-BR ", "zh_hant_TW", "ar-EG", "EN"])
def test_subjects_are_keyed_the_way_the_locale_module_reads_tags(tag: str) -> None:
    # the key a file's subject is stored under and the keys a contact's locale tries agree,
    # both read by engine.base.locale
    step = SendStep("s", "t.mjml", {subject_key(tag): "mine", "default": "other"}, None, False, 1)
    assert step.subject_for(tag) == "mine"
    assert step.subject_for(variants(tag)[-1]) in {"mine", "other"}


def test_subject_keys_in_a_file_are_normalised(tmp_path: Path) -> None:
    text = GOOD.replace("subject: Thank you", "subject: {pt_BR: Olá, ZH_hant: 你好, default: Hi}")
    (step,) = load_sequence(write(tmp_path, text)).send_steps()
    assert dict(step.subject) == {"pt-br": "Olá", "zh-hant": "你好", "default": "Hi"}
    assert step.subject_for("zh_HANT") == "你好"
    assert step.subject_for("??") == "Hi"


def test_priority_and_spacing_load_with_their_defaults(tmp_path: Path) -> None:
    survey = load_sequence(ROOT / "sequences" / "nps-survey.yaml")
    ask = load_sequence(ROOT / "sequences" / "referral-ask.yaml")
    thanks = load_sequence(ROOT / "sequences" / "nps-promoter.yaml")
    assert survey.priority > ask.priority  # the survey before the ask
    assert (survey.spaced, ask.spaced, thanks.spaced) == (True, True, False)
    path = write(tmp_path, FULL_EXAMPLE.replace("category: referral\n", "priority: high\n"))
    with pytest.raises(SequenceError) as caught:
        load_sequence(path)
    assert "priority" in str(caught.value) and "whole number" in str(caught.value)
