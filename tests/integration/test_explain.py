"""`simulate` and `explain` replay the planner's own step interpreter: where they say a run
stops (ask fatigue, eligibility lost), a tick stops it, with the same reason."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import select

from engine.plan.explain import Explanation, TimelineEntry, explain_contact, simulate
from engine.store.models import Enrollment
from tests.conftest import Project
from tests.support.scenario import ASK, THANKS, contacts, sent_to, setup

ANA = "ana@example.com,Ana,Lima,Lima Co,UTC,10,2026-01-01,2025-01-01,,en,customer"

# A second way to ask the same promoters: the program's ask fatigue applies across both.
STORY = """
id: story
name: Ask promoters with a customer story
audience: {kind: customer, nps: promoter}
steps:
  - id: story
    send: {template: ask.mjml, subject: "A story, and a question", referral_ask: true}
"""


def look(project: Project, sequence: str) -> tuple[list[TimelineEntry], list[str], Explanation]:
    """simulate SEQUENCE --contact ana (40 days), and explain's line for it."""
    engine = project.engine()
    try:
        seq = engine.sequences[sequence]
        entries, notes = simulate(engine.planner(), seq, email="ana@example.com", days=40)
        (line,) = [
            x
            for x in explain_contact(engine.planner(), "ana@example.com")
            if x.sequence == sequence
        ]
    finally:
        engine.close()
    return entries, notes, line


def run_of(project: Project, sequence: str) -> Enrollment:
    engine = project.engine()
    with engine.db.session() as session:
        run = session.scalars(select(Enrollment).where(Enrollment.sequence_id == sequence)).one()
    engine.close()
    return run


def test_an_ask_too_soon_after_another_is_stopped_where_tick_stops_it(
    make_project: Callable[..., Project],
) -> None:
    program = setup(make_project(shipped=False), {"ask": ASK, "thanks": THANKS})
    contacts(program, ANA)
    program.cli("tick")  # Monday: asked in `ask`
    program.write("sequences/story.yaml", STORY)
    program.clock.advance(timedelta(days=1))

    entries, _notes, line = look(program, "story")
    assert [(e.step, e.what) for e in entries] == [
        (
            "story",
            "stopped: asked 2026-03-02; the next ask waits 60 days"
            " (1 ignored before, program.ask_spacing_days)",
        )
    ]
    assert entries[0].at == program.clock.now()
    assert line.state == "eligible"
    assert line.why.endswith(f"; then at step story: {entries[0].what}"), line.why
    _, out = program.cli("simulate", "story", "--contact", "ana@example.com")
    assert "stopped: asked 2026-03-02; the next ask waits 60 days" in out, out

    program.cli("tick")
    assert sent_to(program) == ["ana@example.com"]  # the ask of Monday only
    run = run_of(program, "story")
    assert (run.status, f"stopped: {run.reason}") == ("stopped", entries[0].what)
    assert run.ended_at == entries[0].at


def test_a_promoter_who_just_answered_a_four_gets_no_reminder_in_any_view(
    make_project: Callable[..., Project],
) -> None:
    program = setup(make_project(shipped=False), {"ask": ASK, "thanks": THANKS})
    contacts(program, ANA)
    program.cli("tick")  # Monday: asked; the reminder would come on Thursday
    contacts(program, ANA.replace(",10,2026-01-01,", ",4,2026-03-02,"))  # answered 4 today

    entries, notes, line = look(program, "ask")
    reason = "no longer eligible: min_score: NPS score 4 is below 5"
    assert [(e.step, e.what) for e in entries] == [("reminder", f"stopped: {reason}")]
    assert "ana@example.com: in it since 2026-03-02; the run goes on" in notes
    assert line.state == "in it"
    assert line.why.endswith(f"; then at step reminder: stopped: {reason}"), line.why
    _, out = program.cli("explain", "--contact", "ana@example.com")
    assert "stopped: no longer eligible" in out, out

    program.cli("tick")
    program.clock.advance(timedelta(days=4))
    program.cli("tick")
    assert sent_to(program) == ["ana@example.com"]
    run = run_of(program, "ask")
    assert (run.status, run.reason) == ("stopped", reason)


def test_a_run_in_progress_is_simulated_from_where_it_stands(
    make_project: Callable[..., Project],
) -> None:
    program = setup(make_project(shipped=False), {"ask": ASK, "thanks": THANKS})
    contacts(program, ANA)
    program.cli("tick")  # Monday 2026-03-02 10:00: the ask is sent
    entries, _notes, line = look(program, "ask")
    assert [(e.at.isoformat(), e.step, e.what) for e in entries] == [
        (
            "2026-03-05T10:00:00+00:00",
            "reminder",
            "send reminder.mjml (Thu 10:00 UTC, in reply to ask)",
        )
    ]
    assert line.why.startswith("next: reminder at 2026-03-05 10:00 UTC"), line.why
    program.clock.advance(timedelta(days=3))
    program.cli("tick")
    assert [m.message["Subject"] for m in program.sink.messages][
        1
    ] == "Re: Ana, who could you introduce?"
