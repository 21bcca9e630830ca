"""A typo in a live sequence file holds its queued emails ("step ... no longer exists"); once
the file loads again they go out with the same Message-ID, or end with a reason."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import select

from engine.plan.explain import explain_contact
from engine.store.models import Enrollment, Message
from tests.conftest import Project
from tests.support.scenario import ASK, THANKS, contacts, sent_to, setup

ANA = "ana@example.com,Ana,Lima,Lima Co,UTC,10,2026-01-01,2025-01-01,,en,customer"
TYPO = ASK.replace("  - wait: 3d", "  - wiat: 3d")  # a typo: the file no longer loads
RENAMED = ASK.replace("  - id: ask\n", "  - id: first-ask\n").replace(
    "reply_to_previous: true", "reply_to_previous: first-ask"
)


def the_ask(project: Project) -> tuple[Message, Enrollment]:
    engine = project.engine()
    with engine.db.session() as session:
        email = session.scalars(select(Message).where(Message.step_id == "ask")).one()
        run = session.get(Enrollment, email.enrollment_id)
        assert run is not None
    engine.close()
    return email, run


def why(project: Project) -> str:
    engine = project.engine()
    try:
        lines = explain_contact(engine.planner(), "ana@example.com")
    finally:
        engine.close()
    (line,) = [x for x in lines if x.sequence == "ask"]
    return f"{line.state}: {line.why}"


def held_by_a_typo(make_project: Callable[..., Project]) -> Project:
    """Saturday: the ask is queued for Monday 09:00; a typo breaks the file; Monday's tick
    holds the email."""
    project = setup(make_project(shipped=False), {"ask": ASK, "thanks": THANKS})
    project.clock.advance(timedelta(days=5))  # Saturday 2026-03-07 10:00: the window is shut
    contacts(project, ANA)
    project.cli("tick")
    assert the_ask(project)[0].status == "queued"
    project.write("sequences/ask.yaml", TYPO)
    project.clock.advance(timedelta(days=1, hours=23))  # Monday 09:00
    project.cli("tick")
    email, run = the_ask(project)
    assert (email.status, email.last_error) == ("render_failed", "step ask/ask no longer exists")
    assert run.status == "held"
    assert project.sink.messages == []
    return project


def test_a_held_email_goes_out_with_its_message_id_once_the_file_is_fixed(
    make_project: Callable[..., Project],
) -> None:
    project = held_by_a_typo(make_project)
    queued_id = the_ask(project)[0].message_id

    project.write("sequences/ask.yaml", ASK)  # fixed
    assert why(project).startswith(
        "held: step ask/ask no longer exists; the file loads again: the next tick sends it"
    ), why(project)
    project.clock.advance(timedelta(minutes=5))
    project.cli("tick")
    assert sent_to(project) == ["ana@example.com"]
    assert project.sink.messages[0].message["Message-ID"] == queued_id
    email, run = the_ask(project)
    assert (email.status, run.status, run.reason) == ("sent", "active", None)
    assert why(project).startswith("in it: next: reminder at 2026-03-12 09:05 UTC"), why(project)

    project.clock.advance(timedelta(days=3))  # the run goes on: the reminder, in the thread
    project.cli("tick")
    assert project.sink.messages[1].message["In-Reply-To"] == queued_id


def test_a_held_email_whose_step_was_renamed_ends_with_a_reason_and_the_run_goes_on(
    make_project: Callable[..., Project],
) -> None:
    project = held_by_a_typo(make_project)
    project.write("sequences/ask.yaml", RENAMED)  # loads, but the step is now first-ask
    project.cli("tick")
    email, run = the_ask(project)
    assert (email.status, email.last_error) == (
        "cancelled",
        "step 'ask' is no longer in the sequence file",
    )
    assert (run.status, run.reason) == ("active", None)
    assert project.sink.messages == []
    # Its place was past the email: the wait after it counts from now, then the reminder.
    assert why(project).startswith("in it: next: reminder at 2026-03-12 09:00 UTC"), why(project)


def test_a_file_still_broken_keeps_its_emails_held(make_project: Callable[..., Project]) -> None:
    project = held_by_a_typo(make_project)
    project.clock.advance(timedelta(hours=1))
    project.cli("tick")
    email, run = the_ask(project)
    assert (email.status, run.status) == ("render_failed", "held")
    assert project.sink.messages == []
