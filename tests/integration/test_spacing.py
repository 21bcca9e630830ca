"""At most one email a day per contact: a promoter whose score is stale matches both the NPS
survey and the referral ask; the survey (higher priority) goes first, the ask waits a day and
`explain` says why. Thank-yous for what the contact just did are exempt."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from engine.plan.explain import explain_contact
from tests.conftest import Project
from tests.support.scenario import ASK, THANKS, contacts, sent_to, setup

# A promoter whose last score (10) is from last year: stale for the survey (90 days).
ANA = "ana@example.com,Ana,Lima,Lima Co,UTC,10,2025-06-01,2025-01-01,,en,customer"
BEA = "bea@example.com,Bea,Dias,Dias Co,UTC,9,2025-06-01,2025-01-01,,en,customer"


def subjects(project: Project) -> list[tuple[str, str]]:
    return [(m.rcpt_tos[0], m.message["Subject"]) for m in project.sink.messages]


def explained(project: Project, sequence: str) -> str:
    engine = project.engine()
    try:
        (line,) = [
            x
            for x in explain_contact(engine.planner(), "ana@example.com")
            if x.sequence == sequence
        ]
    finally:
        engine.close()
    return f"{line.state}: {line.why}"


def test_a_stale_promoter_is_surveyed_first_and_asked_a_day_later(
    make_project: Callable[..., Project],
) -> None:
    project = make_project()  # the shipped sequences
    contacts(project, ANA, BEA)
    project.cli("tick")  # Monday 10:00
    survey = "One quick question: how likely are you to recommend us?"
    assert sorted(subjects(project)) == [
        ("ana@example.com", survey),
        ("bea@example.com", survey),
    ], "the ask must wait a day after the survey"

    why = explained(project, "referral-ask")
    assert why.startswith("in it: next: ask at 2026-03-03 10:00 UTC"), why
    assert (
        "waits until 2026-03-03 10:00 UTC: nps-survey/survey due 2026-03-02 10:00 UTC,"
        " one email per 24 h (program.min_hours_between_emails)"
    ) in why, why
    _, out = project.cli("explain", "--contact", "ana@example.com")
    assert "nps-survey/survey due 2026-03-02 10:00 UTC" in out, out

    project.clock.advance(timedelta(hours=23))  # Tuesday 09:00: not a day yet
    project.cli("tick")
    assert len(project.sink.messages) == 2
    project.clock.advance(timedelta(hours=1))  # Tuesday 10:00
    project.cli("tick")
    asks = [(to, s) for to, s in subjects(project)[2:]]
    assert sorted(to for to, _ in asks) == ["ana@example.com", "bea@example.com"]
    assert all("who are one or two people" in s for _, s in asks), asks


def test_a_survey_due_with_an_ask_waits_whatever_order_the_runs_come_in(
    make_project: Callable[..., Project],
) -> None:
    # 30 contacts: the planner's batch takes a contact's due runs together, by priority.
    project = make_project(extra="[program]\nmin_hours_between_emails = 48\n")
    rows = [ANA.replace("ana@", f"p{n}@") for n in range(30)]
    contacts(project, *rows)
    project.cli("tick")
    assert len(project.sink.messages) == 30
    assert {s for _, s in subjects(project)} == {
        "One quick question: how likely are you to recommend us?"
    }
    project.clock.advance(timedelta(days=1))
    project.cli("tick")  # 48 hours apart: nothing yet
    assert len(project.sink.messages) == 30
    project.clock.advance(timedelta(days=1))
    project.cli("tick")
    assert len(project.sink.messages) == 60


def test_a_thank_you_for_an_introduction_is_not_held_back(
    make_project: Callable[..., Project],
) -> None:
    project = setup(make_project(shipped=False), {"ask": ASK, "thanks": THANKS})
    contacts(project, ANA)
    project.cli("tick")  # the ask
    project.clock.advance(timedelta(hours=1))
    project.cli("referrals", "add", "--referrer", "ana@example.com", "--email", "cy@example.com")
    project.cli("tick")  # the thank-you goes at once, an hour after the ask
    assert sent_to(project) == ["ana@example.com", "ana@example.com"]
    assert subjects(project)[1][1].startswith("Thank you for introducing")


def test_spacing_off_sends_both_at_once(make_project: Callable[..., Project]) -> None:
    project = make_project(extra="[program]\nmin_hours_between_emails = 0\n")
    contacts(project, ANA)
    project.cli("tick")
    assert len(project.sink.messages) == 2
