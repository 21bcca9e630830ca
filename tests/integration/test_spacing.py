"""At most one email a day per contact: a promoter whose score is stale matches both the NPS
survey and the referral ask; the survey (higher priority) goes first, the ask waits a day and
`explain` says why. Thank-yous for what the contact just did are exempt."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import select

from engine.plan.explain import explain_contact
from engine.store.models import Message
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


MIX = [
    ANA,  # stale promoter: survey, then the ask a day later
    BEA,
    "cy@example.com,Cy,Ng,Ng Co,UTC,10,2026-02-10,2025-01-01,,en,customer",  # fresh promoter
    "di@example.com,Di,Ro,Ro Co,UTC,8,2025-05-01,2025-01-01,,en,customer",  # stale passive
    "ed@example.com,Ed,Su,Su Co,UTC,,,2025-01-01,,en,customer",  # never surveyed
    "fa@example.com,Fa,Li,Li Co,UTC,,,2025-01-01,,en,partner",  # a partner
]


def test_simulate_all_foretells_what_the_ticks_then_send_per_day_and_sequence(
    make_project: Callable[..., Project],
) -> None:
    project = make_project()
    contacts(project, *MIX)
    code, out = project.cli("simulate", "--all", "--days", "4")
    assert code == 0, out
    engine = project.engine()
    with engine.db.session() as session:
        assert session.scalars(select(Message)).all() == []  # nothing written
    engine.close()
    rows = {
        line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[2:-1]]
        for line in out.splitlines()
        if line.startswith("│")
    }
    (head,) = [line for line in out.splitlines() if line.startswith("┃")]
    header = [cell.strip() for cell in head.split("┃")[2:-1]]
    assert header == ["nps-survey", "partner-intro-reverse", "referral-ask", "total"], out
    foretold = {
        (day.split()[1], seq): int(n)
        for day, cells in rows.items()
        if day != "total"
        for seq, n in zip(header[:-1], cells[:-1], strict=True)
        if n != "0"
    }
    assert foretold[("2026-03-03", "referral-ask")] == 2  # the stale promoters, a day later

    end = project.clock.now() + timedelta(days=4)
    while project.clock.now() <= end:  # a tick every two hours, as a cron line would
        project.cli("tick")
        project.clock.advance(timedelta(hours=2))
    engine = project.engine()
    with engine.db.session() as session:
        sent = Counter(
            (f"{m.sent_at:%Y-%m-%d}", m.sequence_id)
            for m in session.scalars(select(Message).where(Message.status == "sent"))
            if m.sent_at <= end
        )
    engine.close()
    assert dict(sent) == foretold, out
