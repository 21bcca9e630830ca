"""The step interpreter alone: no database, no clock; the rules are answered by the test."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from engine.plan.asks import AskHistory, ask_fatigue
from engine.plan.interpreter import (
    END,
    LOOPING,
    Answers,
    Branched,
    Complete,
    Hold,
    Notify,
    Place,
    Send,
    Stop,
    Wait,
    interpret,
    play,
)
from engine.program.sequences import (
    BranchStep,
    NotifyStep,
    SendStep,
    Sequence,
    Step,
    WaitStep,
)
from engine.program.settings import ProgramSettings

MONDAY = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def send(step_id: str, *, ask: bool = False) -> SendStep:
    return SendStep(step_id, f"{step_id}.mjml", "Hi", None, ask, 1)


def wait(days: int, step_id: str = "") -> WaitStep:
    return WaitStep(step_id or f"wait-{days}", timedelta(days=days), 1)


def branch(step_id: str, then: str | None, otherwise: str | None) -> BranchStep:
    return BranchStep(step_id, "opened", "ask", then, otherwise, 1)


def sequence(*steps: Step) -> Sequence:
    return Sequence(
        id="s",
        name="S",
        description="",
        category="",
        path="s.yaml",
        audience=None,
        trigger=None,
        window=None,
        stop_when=frozenset(),
        steps=steps,
        template_refs=(),
    )


def nine_am(at: datetime) -> datetime:
    """A send window that opens at 09:00 UTC every day."""
    opening = at.replace(hour=9, minute=0, second=0, microsecond=0)
    return opening if opening >= at else opening + DAY


def rules(
    *,
    opened: bool = False,
    lapsed: Callable[[datetime], str | None] = lambda now: None,
    too_soon: Callable[[datetime], str | None] = lambda now: None,
) -> Answers:
    return Answers(happened=lambda step: opened, lapsed=lapsed, too_soon=too_soon, opens=nine_am)


START = Place(None, 0)
ASK, REMINDER = send("ask", ask=True), send("reminder", ask=True)
ASK_THEN_REMINDER = sequence(ASK, wait(3), REMINDER)


def test_a_send_is_due_when_the_window_opens_and_the_run_waits_after_it() -> None:
    walk = interpret(ASK_THEN_REMINDER, START, MONDAY, MONDAY, rules())
    assert walk.actions == ()
    # A wait's place is marked by the step before it, so an inserted wait shifts nothing.
    assert walk.outcome == Send(ASK, nine_am(MONDAY), Place("after:ask", 1))


def test_a_wait_not_over_returns_when_it_ends() -> None:
    walk = interpret(ASK_THEN_REMINDER, Place("after:ask", 1), MONDAY, MONDAY + DAY, rules())
    assert walk.outcome == Wait(MONDAY + 3 * DAY, Place("reminder", 2))


def test_a_late_pass_catches_up_waits_counted_from_the_previous_step() -> None:
    walk = interpret(ASK_THEN_REMINDER, Place("after:ask", 1), MONDAY, MONDAY + 5 * DAY, rules())
    assert walk.outcome == Send(REMINDER, nine_am(MONDAY + 3 * DAY), Place(None, 3))


def test_the_last_step_done_completes_the_run() -> None:
    walk = interpret(ASK_THEN_REMINDER, Place(None, 3), MONDAY, MONDAY, rules())
    assert walk.outcome == Complete("all steps done")


IF_OPENED = branch("opened", "thanks", END)
OPENED = sequence(send("ask"), wait(2), IF_OPENED, send("nudge"), send("thanks"))


def test_a_branch_taken_goes_to_its_then_step() -> None:
    walk = interpret(OPENED, Place("opened", 2), MONDAY, MONDAY, rules(opened=True))
    assert walk.actions == (Branched(IF_OPENED, MONDAY, True, "thanks"),)
    assert isinstance(walk.outcome, Send) and walk.outcome.step.id == "thanks"


def test_a_branch_not_taken_to_end_completes_the_run() -> None:
    walk = interpret(OPENED, Place("opened", 2), MONDAY, MONDAY, rules(opened=False))
    assert walk.actions == (Branched(IF_OPENED, MONDAY, False, END),)
    assert walk.outcome == Complete("branch opened")


def test_a_branch_to_the_next_step() -> None:
    seq = sequence(send("ask"), branch("b", None, None), send("next"))
    walk = interpret(seq, Place("b", 1), MONDAY, MONDAY, rules())
    assert isinstance(walk.outcome, Send) and walk.outcome.step.id == "next"


def test_branches_that_loop_without_a_wait_are_held() -> None:
    seq = sequence(send("ask"), branch("a", "b", "b"), branch("b", "a", "a"))
    walk = interpret(seq, Place("a", 1), MONDAY, MONDAY, rules())
    assert isinstance(walk.outcome, Hold) and walk.outcome.reason == LOOPING
    assert len(walk.actions) == len(seq.steps) * 2 + 2


def test_a_note_is_sent_on_the_way_and_the_run_goes_on() -> None:
    note = NotifyStep("tell", "sales", "Hot lead", "", 1)
    seq = sequence(note, send("ask"))
    walk = interpret(seq, START, MONDAY, MONDAY, rules())
    assert walk.actions == (Notify(note, MONDAY),)
    assert isinstance(walk.outcome, Send) and walk.outcome.step.id == "ask"


def test_a_contact_no_longer_eligible_is_stopped_before_the_email() -> None:
    seen: list[datetime] = []

    def lapsed(now: datetime) -> str | None:
        seen.append(now)
        return "no longer eligible: min_score: NPS score 4 is below 5"

    walk = interpret(
        ASK_THEN_REMINDER, Place("reminder", 2), MONDAY, MONDAY + 4 * DAY, rules(lapsed=lapsed)
    )
    assert walk.outcome == Stop("reminder", "no longer eligible: min_score: NPS score 4 is below 5")
    assert seen == [MONDAY + 4 * DAY]  # checked at the pass, not when the wait ended


def test_ask_fatigue_is_asked_only_before_a_referral_ask() -> None:
    asked: list[datetime] = []

    def too_soon(now: datetime) -> str | None:
        asked.append(now)
        return "asked 2026-02-20; the next ask waits 30 days"

    plain = sequence(send("hello"))
    assert isinstance(
        interpret(plain, START, MONDAY, MONDAY, rules(too_soon=too_soon)).outcome, Send
    )
    assert asked == []
    walk = interpret(ASK_THEN_REMINDER, START, MONDAY, MONDAY, rules(too_soon=too_soon))
    assert walk.outcome == Stop("ask", "asked 2026-02-20; the next ask waits 30 days")


def test_eligibility_is_checked_before_ask_fatigue() -> None:
    walk = interpret(
        ASK_THEN_REMINDER,
        START,
        MONDAY,
        MONDAY,
        rules(lapsed=lambda now: "no longer eligible", too_soon=lambda now: "too soon"),
    )
    assert walk.outcome == Stop("ask", "no longer eligible")


def test_a_step_inserted_before_a_waiting_run_does_not_move_it() -> None:
    saved = Place.of(ASK_THEN_REMINDER, 2)  # waiting for the reminder
    edited = sequence(send("welcome"), wait(1), *ASK_THEN_REMINDER.steps)
    walk = interpret(edited, saved, MONDAY, MONDAY, rules())
    assert walk.outcome == Send(REMINDER, nine_am(MONDAY), Place(None, 5))


def test_a_wait_inserted_after_the_saved_step_is_run() -> None:
    saved = Place.of(ASK_THEN_REMINDER, 1)  # right after the ask was planned
    edited = sequence(ASK, wait(5, "longer"), REMINDER)
    walk = interpret(edited, saved, MONDAY, MONDAY, rules())
    assert walk.outcome == Wait(MONDAY + 5 * DAY, Place("reminder", 2))


def test_a_removed_step_falls_back_to_the_saved_index() -> None:
    saved = Place.of(OPENED, 3)  # at the nudge
    edited = sequence(send("ask"), wait(2), branch("opened", "thanks", END), send("thanks"))
    walk = interpret(edited, saved, MONDAY, MONDAY, rules())
    assert isinstance(walk.outcome, Send) and walk.outcome.step.id == "thanks"


def test_play_runs_a_whole_sequence_as_a_scheduler_would() -> None:
    outcomes = [
        (at, walk.outcome) for at, walk in play(ASK_THEN_REMINDER, START, MONDAY, MONDAY, rules())
    ]
    tuesday_nine = nine_am(MONDAY)  # 10:00 is past 09:00: Tuesday
    assert outcomes == [
        (MONDAY, Send(ASK, tuesday_nine, Place("after:ask", 1))),
        (tuesday_nine, Wait(tuesday_nine + 3 * DAY, Place("reminder", 2))),
        (
            tuesday_nine + 3 * DAY,
            Send(REMINDER, tuesday_nine + 3 * DAY, Place(None, 3)),
        ),
        (tuesday_nine + 3 * DAY, Complete("all steps done")),
    ]


def test_play_stops_at_the_step_a_tick_would_stop_at() -> None:
    stop_from = MONDAY + 2 * DAY
    lapsed = rules(lapsed=lambda now: "no longer eligible" if now >= stop_from else None)
    *_, (at, last) = play(ASK_THEN_REMINDER, START, MONDAY, MONDAY, lapsed)
    assert last.outcome == Stop("reminder", "no longer eligible")
    assert at == nine_am(MONDAY) + 3 * DAY


def test_play_of_a_loop_with_zero_waits_ends() -> None:
    seq = sequence(send("ask"), wait(0), branch("again", "ask", "ask"))
    walks = list(play(seq, START, MONDAY, MONDAY, rules()))
    assert len(walks) == len(seq.steps) * 2 + 2


def test_an_ask_over_a_year_before_the_moment_no_longer_counts() -> None:
    history = AskHistory()
    history.add(contact_id=1, run=7, at=MONDAY)
    rule = ProgramSettings(max_asks_per_year=1)
    assert ask_fatigue(history, 1, None, MONDAY + 364 * DAY, rule) is not None
    assert ask_fatigue(history, 1, None, MONDAY + 366 * DAY, rule) is None
    assert ask_fatigue(history, 1, 7, MONDAY + DAY, rule) is None  # the run's own reminder


def test_an_email_too_close_to_another_waits_before_its_step_and_is_then_sent() -> None:
    from engine.plan.spacing import Mailed, Mailings, spacing

    mailings = Mailings()
    mailings.add(7, Mailed(nine_am(MONDAY), 99, "survey", "survey", False))
    gap = timedelta(hours=24)
    answers = Answers(
        happened=lambda step: False,
        lapsed=lambda now: None,
        too_soon=lambda now: None,
        opens=nine_am,
        spacing=lambda at: spacing(mailings, 7, 1, at, gap),
    )
    walk = interpret(ASK_THEN_REMINDER, START, MONDAY, MONDAY, answers)
    assert walk.outcome == Wait(
        nine_am(MONDAY) + gap,  # Wednesday 09:00, a day after the other email
        Place("ask", 0),  # before the ask: never dropped
        "waits until 2026-03-04 09:00 UTC: survey/survey due 2026-03-03 09:00 UTC, one email"
        " per 24 h (program.min_hours_between_emails)",
    )
    played = [(at, w.outcome) for at, w in play(ASK_THEN_REMINDER, START, MONDAY, MONDAY, answers)]
    assert played[1] == (
        nine_am(MONDAY) + gap,
        Send(ASK, nine_am(MONDAY) + gap, Place("after:ask", 1)),
    )


def test_an_unspaced_sequence_never_waits_for_other_emails() -> None:
    import dataclasses

    thanks = dataclasses.replace(sequence(send("thanks")), spaced=False)
    answers = Answers(
        happened=lambda step: False,
        lapsed=lambda now: None,
        too_soon=lambda now: None,
        opens=nine_am,
        spacing=lambda at: (at + DAY, "too close"),
    )
    walk = interpret(thanks, START, MONDAY, MONDAY, answers)
    assert isinstance(walk.outcome, Send)
