"""The shipped sequences and templates, played on the sample contacts: who gets what."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.message import EmailMessage

from tests.conftest import ROOT, Project

START = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)  # a Monday; noon UTC


def by_recipient(project: Project) -> dict[str, list[EmailMessage]]:
    got: dict[str, list[EmailMessage]] = {}
    for m in project.sink.messages:
        got.setdefault(m.rcpt_tos[0], []).append(m.message)
    return got


def feedback(messages: list[EmailMessage]) -> list[str]:
    return [
        str(m["Feedback-ID"]).split(":")[1] + "/" + str(m["Feedback-ID"]).split(":")[0]
        for m in messages
    ]


def play(project: Project, days: int) -> None:
    for _ in range(days * 4):
        project.cli("tick")
        project.clock.advance(timedelta(hours=6))


def test_the_sample_program(project: Project) -> None:
    project.clock.set(START)
    code, out = project.cli("contacts", "import", str(ROOT / "samples" / "contacts.csv"))
    assert code == 0, out
    play(project, 12)
    got = by_recipient(project)
    asks = {rcpt for rcpt, msgs in got.items() if "referral-ask/ask" in feedback(msgs)}
    assert asks == {
        "ana.lima@example.com",
        "budi.santoso@example.co.id",
        "layla.haddad@example.sa",
        "old.address@example.com",
    }
    # never a referral ask to the passive, the detractor, the new customer, the complainer,
    # the partner; the nameless promoter is held back rather than greeted with a blank
    for rcpt in (
        "peter.novak@example.com",
        "dana.reyes@example.com",
        "nina.berg@example.com",
        "carl.meyer@example.com",
        "priya.florist@example.com",
        "sam.kowalski@example.com",
    ):
        assert "referral-ask/ask" not in feedback(got.get(rcpt, [])), rcpt
    assert feedback(got["priya.florist@example.com"]) == [
        "partner-intro-reverse/intro",
        "partner-intro-reverse/intro-reminder",
    ]
    # the reminder continues the ask's thread; the alternative follows
    ana = got["ana.lima@example.com"]
    steps = feedback(ana)
    ask = ana[steps.index("referral-ask/ask")]
    reminder = ana[steps.index("referral-ask/reminder")]
    assert reminder["In-Reply-To"] == ask["Message-ID"]
    assert "referral-ask/alternative" in steps
    # locale variants: Indonesian and right-to-left Arabic
    budi = got["budi.santoso@example.co.id"][
        feedback(got["budi.santoso@example.co.id"]).index("referral-ask/ask")
    ]
    layla = got["layla.haddad@example.sa"][
        feedback(got["layla.haddad@example.sa"]).index("referral-ask/ask")
    ]
    assert budi.get_body(("html",)).get_content().count('lang="id"') >= 1
    assert 'dir="rtl"' in layla.get_body(("html",)).get_content()
    assert "ليلى" in str(layla["To"])
    # the survey carries eleven score links, every email the footer and one-click unsubscribe
    survey = next(
        m
        for rcpt, msgs in got.items()
        for m in msgs
        if str(m["Feedback-ID"]).startswith("survey:nps-survey")
    )
    html = survey.get_body(("html",)).get_content()
    assert html.count("https://t.example.com/nps/") == 11
    for msgs in got.values():
        for m in msgs:
            body = m.get_body(("html",)).get_content()
            assert "Acme Inc., 1 Main St, Springfield" in body
            assert "https://t.example.com/u/" in body
            assert m["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    _, out = project.cli("explain", "--contact", "sam.kowalski@example.com")
    assert "held" in out and "first_name" in out
