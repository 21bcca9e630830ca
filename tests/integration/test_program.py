"""The referral program across sequences: NPS routing with notes to the team, ask fatigue,
triggers that ignore old news. Through the CLI and the shipped sequences, on real SMTP."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import select

from engine.records.contacts import record_nps_answer
from engine.records.events import record_event
from engine.store.models import Contact, Enrollment, Event, Message, Notification
from tests.conftest import Project
from tests.support.scenario import ASK, HEADER, THANKS, contacts, sent_to, setup

TEAM = """
[notify]
owner = "owner@acme.example"
sales = "sales@acme.example"
account_manager = "am@acme.example"
"""
# Passives since January: no survey due (answered < 90 days ago), no ask (not promoters).
PAULA = "paula@example.com,Paula,Reis,Reis Co,UTC,8,2026-01-01,2025-01-01,,en,customer"
PEDRO = "pedro@example.com,Pedro,Alves,Alves Co,UTC,8,2026-01-01,2025-01-01,,en,customer"
DORA = "dora@example.com,Dora,Lind,Lind Co,UTC,8,2026-01-01,2025-01-01,,en,customer"


def answer(project: Project, email: str, score: int, improve: str = "", other: str = "") -> None:
    """An answer on the survey page: the score, then what they wrote (engine.inbound.tracking does
    the same: an nps.answered event, then an nps.comment event)."""
    engine = project.engine()
    now = project.clock.now()
    record_nps_answer(engine.db, email, score, now, source="page")
    if improve or other:
        with engine.db.write() as session:
            contact = session.scalars(select(Contact).where(Contact.email == email)).one()
            data = {"score": score, "improve": improve, "other": other}
            record_event(session, "nps.comment", now, contact_id=contact.id, data=data)
    engine.close()


def by_recipient(project: Project) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for m in project.sink.messages:
        found.setdefault(m.rcpt_tos[0], []).append(str(m.message["Subject"]))
    return found


def body_to(project: Project, recipient: str) -> str:
    (message,) = [m.message for m in project.sink.messages if m.rcpt_tos[0] == recipient]
    return message.get_content()


def test_the_three_nps_routes(make_project: Callable[..., Project]) -> None:
    program = make_project(extra=TEAM)
    contacts(program, PAULA, PEDRO, DORA)
    program.cli("tick")  # their imported January scores are old news: nothing is routed
    assert program.sink.messages == []
    answer(program, "paula@example.com", 10)
    answer(program, "pedro@example.com", 7, improve="Faster support replies", other="Nice app")
    answer(program, "dora@example.com", 3, improve="The invoices are always wrong")
    _, out = program.cli("tick")
    got = by_recipient(program)
    assert "paula@example.com" in got, out
    assert got["paula@example.com"] == ["Thank you for the 10, Paula"]
    assert got["pedro@example.com"] == ["Thank you for your answer, Pedro"]
    assert got["dora@example.com"] == ["Thank you for your honest answer, Dora"]
    # Sales hears about the promoter at once, to follow up within 24 hours.
    assert got["sales@acme.example"] == [
        "Promoter: paula@example.com gave us a 10 - follow up within 24 h"
    ]
    assert "within 24 hours" in body_to(program, "sales@acme.example")
    assert "notes to the team 1" in out
    # An hour later (time to write the follow-up answers) the others go to their people,
    # with what they wrote.
    program.clock.advance(timedelta(hours=1))
    program.cli("tick")
    manager = body_to(program, "am@acme.example")
    assert "Faster support replies" in manager and "Nice app" in manager, manager
    owner = body_to(program, "owner@acme.example")
    assert "The invoices are always wrong" in owner and "Anything else: (nothing written)" in owner
    # Two days after her answer the promoter, and only she, gets the referral ask.
    program.clock.advance(timedelta(days=2))
    program.cli("tick")
    asked = [r for r, subjects in by_recipient(program).items() if len(subjects) > 1]
    assert asked == ["paula@example.com"]
    assert "who are one or two people" in by_recipient(program)[asked[0]][1]
    engine = program.engine()
    with engine.db.session() as s:
        notes = s.scalars(select(Event).where(Event.type == "notified")).all()
        assert sorted(e.data["role"] for e in notes) == ["account_manager", "owner", "sales"]
        assert {n.status for n in s.scalars(select(Notification))} == {"sent"}
    engine.close()


def test_a_role_without_an_address_is_still_recorded(make_project: Callable[..., Project]) -> None:
    program = make_project()  # no [notify] addresses
    contacts(program, DORA)
    answer(program, "dora@example.com", 2)
    program.cli("tick")
    program.clock.advance(timedelta(hours=2))
    program.cli("tick")
    assert sent_to(program) == ["dora@example.com"]  # her thank-you, no note
    engine = program.engine()
    with engine.db.session() as s:
        (event,) = s.scalars(select(Event).where(Event.type == "notified")).all()
        assert event.data["role"] == "owner"
        assert s.scalars(select(Notification)).all() == []
    engine.close()


def test_a_notify_step_with_a_typo_is_reported_by_validate(
    make_project: Callable[..., Project],
) -> None:
    program = setup(make_project(shipped=False), {"thanks": THANKS})
    program.write(
        "sequences/route.yaml",
        """
        id: route
        name: Route
        trigger: nps.answered
        steps:
          - id: tell
            notify: {role: sales, subject: "{{ contact.email }}", body: "{{ nsp.score }}"}
        """,
    )
    program.write(
        "sequences/other.yaml",
        """
        id: other
        name: Other
        trigger: nps.answered
        steps:
          - id: tell
            notify: {role: boss, subject: "x"}
        """,
    )
    code, out = program.cli("validate")
    assert code == 1
    assert "route.yaml:5:1: body of step tell: unknown variable 'nsp'" in out, out
    assert "notify.role: unknown value 'boss'" in out, out


ASK_AGAIN = """
id: ask-again
name: Ask again after a webinar
trigger: {event: form.submitted, nps: promoter}
send_window: {days: [mon, tue, wed, thu, fri, sat, sun], hours: "00:00-23:59", timezone: UTC}
steps:
  - id: ask
    send: {template: ask.mjml, subject: "Who else could you introduce?", referral_ask: true}
"""
ANA = "ana@example.com,Ana,Lima,Lima Co,UTC,10,2026-01-01,2025-01-01,,en,customer"


def submit_form(project: Project) -> None:
    engine = project.engine()
    with engine.db.write() as session:
        contact = session.scalars(select(Contact)).one()
        record_event(session, "form.submitted", project.clock.now(), contact_id=contact.id)
    engine.close()


def stop_reasons(project: Project, sequence: str) -> list[str]:
    engine = project.engine()
    with engine.db.session() as s:
        reasons = s.scalars(
            select(Enrollment.reason)
            .where(Enrollment.sequence_id == sequence, Enrollment.status == "stopped")
            .order_by(Enrollment.id)
        ).all()
    engine.close()
    return [r or "" for r in reasons]


@pytest.mark.parametrize("clicked", [False, True])
def test_asks_are_spaced_and_further_apart_when_ignored(
    make_project: Callable[..., Project], clicked: bool
) -> None:
    program = setup(make_project(shipped=False), {"ask": ASK, "ask-again": ASK_AGAIN})
    contacts(program, ANA)
    program.cli("tick")  # the ask
    program.clock.advance(timedelta(days=3))
    program.cli("tick")  # its reminder: the same ask, not a second one
    assert len(program.sink.messages) == 2
    if clicked:
        engine = program.engine()
        with engine.db.write() as session:
            message = session.scalars(select(Message).where(Message.step_id == "ask")).one()
            now = program.clock.now()
            record_event(session, "clicked", now, contact_id=message.contact_id, message=message)
        engine.close()
    program.clock.advance(timedelta(days=30))  # 33 days after the first ask
    submit_form(program)
    program.cli("tick")
    if clicked:  # engaged: 30 days apart is enough
        assert len(program.sink.messages) == 3
    else:  # ignored once: twice the spacing
        assert len(program.sink.messages) == 2
        (reason,) = stop_reasons(program, "ask-again")
        assert "waits 60 days (1 ignored before" in reason, reason
        assert "asked 2026-03-05" in reason  # the reminder: the last time we asked
        program.clock.advance(timedelta(days=31))  # 61 days after the reminder
        submit_form(program)
        program.cli("tick")
        assert len(program.sink.messages) == 3


def test_at_most_n_asks_a_year(make_project: Callable[..., Project]) -> None:
    program = setup(
        make_project(shipped=False, extra="[program]\nmax_asks_per_year = 1\n"),
        {"ask": ASK, "ask-again": ASK_AGAIN},
    )
    contacts(program, ANA)
    program.cli("tick")
    program.clock.advance(timedelta(days=200))
    submit_form(program)
    program.cli("tick")
    assert len(program.sink.messages) == 2  # the ask and its reminder; no second ask
    (reason,) = stop_reasons(program, "ask-again")
    assert "asked 1 times in 12 months" in reason, reason


def test_a_trigger_with_max_age_ignores_old_events(make_project: Callable[..., Project]) -> None:
    program = setup(make_project(shipped=False), {"thanks": THANKS})
    program.write(
        "sequences/route.yaml",
        """
        id: route
        name: Route
        trigger: {event: nps.answered, max_age: 7d}
        send_window: {days: [mon, tue, wed, thu, fri, sat, sun], hours: "00:00-23:59"}
        steps:
          - id: thanks
            send: {template: thanks.mjml, subject: "Thanks for the {{ contact.nps_score }}"}
        """,
    )
    old = "old@example.com,Old,One,Co,UTC,9,2026-01-01,2025-01-01,,en,customer"
    fresh = "new@example.com,New,One,Co,UTC,9,2026-02-27,2025-01-01,,en,customer"
    path = program.contacts(HEADER + old + "\n" + fresh + "\n")
    program.cli("contacts", "import", str(path))
    program.cli("tick")
    assert sent_to(program) == ["new@example.com"]


# --- attribution and rewards -----------------------------------------------------------------

CODES = (
    '[program]\nreferrer_reward = "code"\nreferrer_codes = "codes.txt"\nfriend_reward = "none"\n'
)
BEA = "bea@example.com,Bea,Cruz,Cruz Co,UTC,9,2026-01-01,2025-01-01,,en,customer"


def rewards(project: Project) -> list[tuple[str, str, str]]:
    from engine.store.models import Referral, Reward

    engine = project.engine()
    with engine.db.session() as s:
        rows = s.execute(
            select(Referral.friend_email, Reward.role, Reward.description)
            .join(Reward, Reward.referral_id == Referral.id)
            .order_by(Reward.id)
        ).all()
    engine.close()
    return [tuple(r) for r in rows]


def test_a_conversion_reported_twice_rewards_both_sides_once(
    make_project: Callable[..., Project],
) -> None:
    program = make_project()
    contacts(program, ANA)
    program.cli("referrals", "add", "--referrer", "ana@example.com", "--email", "mia@example.com")
    program.cli("referrals", "convert", "--email", "mia@example.com", "--value", "1200")
    _, again = program.cli("referrals", "convert", "--email", "mia@example.com")
    assert "already converted" in again
    program.cli("tick")
    program.cli("tick")
    assert rewards(program) == [
        ("mia@example.com", "referrer", "a 20 USD credit"),
        ("mia@example.com", "friend", "a 20 USD credit"),
    ]
    _, explained = program.cli("explain", "--contact", "ana@example.com")
    assert "a 20 USD credit (for introducing mia@example.com)" in explained, explained
    reward_email = [m.message for m in program.sink.messages if "Good news" in m.message["Subject"]]
    assert len(reward_email) == 1
    text = reward_email[0].get_body(("plain",)).get_content()
    assert "a 20 USD credit" in text, text


def test_concurrent_conversions_give_one_gift(make_project: Callable[..., Project]) -> None:
    import threading

    from engine.records.referrals import ReferralError, convert_referral

    program = make_project()
    contacts(program, ANA)
    program.cli("referrals", "add", "--referrer", "ana@example.com", "--email", "mia@example.com")
    engine = program.engine()
    created: list[bool] = []
    start = threading.Barrier(4)

    def convert() -> None:
        start.wait()
        try:
            outcome = convert_referral(engine.db, "mia@example.com", program.clock.now())
            created.append(outcome.created)
        except ReferralError:  # pragma: no cover - would fail the count below
            created.append(False)

    threads = [threading.Thread(target=convert) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    engine.close()
    assert sorted(created) == [False, False, False, True]
    program.cli("tick")
    assert [role for _, role, _ in rewards(program)] == ["referrer", "friend"]


def test_codes_come_from_the_pool_once_each(make_project: Callable[..., Project]) -> None:
    program = make_project(extra=CODES)
    program.write("codes.txt", "# one per line\nTHANKS-1\nTHANKS-2\n")
    contacts(program, ANA, BEA)
    for friend in ("mia@example.com", "leo@example.com", "zoe@example.com"):
        program.cli("referrals", "add", "--referrer", "ana@example.com", "--email", friend)
        program.cli("referrals", "convert", "--email", friend)
    program.cli("tick")
    assert rewards(program) == [
        ("mia@example.com", "referrer", "the gift code THANKS-1"),
        ("leo@example.com", "referrer", "the gift code THANKS-2"),
    ]
    _, out = program.cli("report")
    assert "no unused code left in codes.txt" in out, out


def test_flagged_introductions_are_recorded_but_never_rewarded(
    make_project: Callable[..., Project],
) -> None:
    program = make_project()
    contacts(program, ANA, BEA)
    add = ("referrals", "add", "--referrer")
    _, out = program.cli(*add, "ana@example.com", "--email", "ana+friend@example.com")
    assert "flagged: self referral" in out
    program.cli(*add, "ana@example.com", "--email", "mia@example.com")
    _, out = program.cli(*add, "bea@example.com", "--email", "mia@example.com")
    assert "flagged: duplicate" in out
    _, out = program.cli(*add, "ana@example.com", "--email", "bea@example.com")
    assert "flagged: existing customer" in out
    for friend in ("ana+friend@example.com", "mia@example.com", "bea@example.com"):
        program.cli("referrals", "convert", "--email", friend)
    program.cli("tick")
    # Only Ana's own, first introduction of Mia earns gifts.
    assert [(f, r) for f, r, _ in rewards(program)] == [
        ("mia@example.com", "referrer"),
        ("mia@example.com", "friend"),
    ]


# --- privacy ---------------------------------------------------------------------------------

ANASTASIA = (
    "anastasia@example.com,Anastasia,Quartermaine,Quartz Ltd,UTC,10,2026-01-01,2025-01-01,,"
    "en,customer"
)
SECRETS = ("anastasia@example.com", "Anastasia", "Quartermaine", "Quartz", "my secret complaint")


def personal_data_left(project: Project, *needles: str) -> list[str]:
    """Every table, row and text/JSON column that still holds one of ``needles``."""
    import json

    from engine.store.models import Base

    engine = project.engine()
    found: list[str] = []
    with engine.db.session() as s:
        for table in Base.metadata.sorted_tables:
            for row in s.execute(select(table)).mappings():
                for column, value in row.items():
                    text = json.dumps(value, default=str) if value is not None else ""
                    found += [f"{table.name}.{column}: {n}" for n in needles if n in text]
    engine.close()
    return found


def test_erasure_leaves_no_personal_data_and_reimport_sends_nothing(
    make_project: Callable[..., Project],
) -> None:
    program = make_project(extra=TEAM)
    contacts(program, ANASTASIA)
    program.cli("tick")  # the referral ask
    answer(program, "anastasia@example.com", 9, improve="my secret complaint")
    program.cli(
        "referrals", "add", "--referrer", "anastasia@example.com", "--email", "mia@example.com"
    )
    program.cli("referrals", "convert", "--email", "mia@example.com", "--value", "99")
    program.clock.advance(timedelta(hours=2))
    program.cli("tick")
    assert personal_data_left(program, *SECRETS)  # there is something to erase
    _, exported = program.cli("contacts", "export", "anastasia@example.com")
    assert '"first_name": "Anastasia"' in exported and "mia@example.com" in exported
    code, out = program.cli("contacts", "erase", "anastasia@example.com")
    assert code == 0 and "erased anastasia@example.com" in out, out
    assert personal_data_left(program, *SECRETS) == []
    # the friend asks too
    assert program.cli("contacts", "erase", "mia@example.com")[0] == 2  # not a contact
    # Counts stay: the report still has the emails and the converted referral.
    import json

    _, report = program.cli("report", "--format", "json")
    data = json.loads(report)
    assert data["referrals"]["converted"] == 1, data["referrals"]
    to_contacts = [m for m in program.sink.messages if not m.rcpt_tos[0].endswith("acme.example")]
    assert sum(step["sent"] for step in data["steps"]) == len(to_contacts) > 0
    # Imported again by mistake: back in the list, never emailed again.
    sent = len(program.sink.messages)
    path = program.contacts(HEADER + ANASTASIA + "\n", "again.csv")
    _, out = program.cli("contacts", "import", str(path))
    assert "erased before at their request" in out, out
    program.clock.advance(timedelta(days=120))
    program.cli("tick")
    assert len(program.sink.messages) == sent
    assert program.cli("contacts", "export", "nobody@example.com")[0] == 2


def test_a_detected_introduction_is_thanked_once_a_person_confirms_it(
    make_project: Callable[..., Project],
) -> None:
    from engine.records.referrals import record_detected_referral

    program = make_project()
    contacts(program, BEA)
    engine = program.engine()
    with engine.db.write() as session:
        bea = session.scalars(select(Contact)).one()
        evidence = {"source": "cc"}
        referral = record_detected_referral(
            session,
            bea,
            "leo@example.com",
            program.clock.now(),
            name="Leo",
            channel="reply",
            evidence=evidence,
        )
        assert referral is not None
    engine.close()
    program.cli("tick")
    thanked = [
        m for m in program.sink.messages if "Thank you for introducing" in str(m.message["Subject"])
    ]
    assert thanked == []  # not reviewed yet
    _, out = program.cli(
        "referrals", "add", "--referrer", "bea@example.com", "--email", "leo@example.com"
    )
    assert "confirmed" in out, out
    program.cli("tick")
    thanked = [
        m
        for m in program.sink.messages
        if "Thank you for introducing Leo" in str(m.message["Subject"])
    ]
    assert len(thanked) == 1


# --- purchases ---------------------------------------------------------------------------------


def test_purchases_import_links_referred_buyers_and_converts_once(
    make_project: Callable[..., Project],
) -> None:
    from engine.store.models import Purchase, Referral

    program = make_project()
    contacts(program, BEA)
    program.cli("referrals", "add", "--referrer", "bea@example.com", "--email", "leo@example.com")
    path = program.write(
        "purchases.csv",
        """
        email,amount,occurred_at,currency,order_id
        leo@example.com,120.50,2026-03-02T09:00:00+00:00,usd,A-1
        leo@example.com,80,2026-03-02,USD,A-2
        bea@example.com,40,2026-03-01,USD,A-3
        ,10,2026-03-01,USD,A-4
        leo@example.com,ten,2026-03-01,USD,A-5
        leo@example.com,10,yesterday,USD,A-6
        leo@example.com,10,2026-03-01,dollars,A-7
        """,
    )
    code, out = program.cli("purchases", "import", str(path))
    assert code == 1
    assert "3 recorded (2 referred), 0 already recorded, 4 rejected" in out, out
    for problem in ("row 5: email", "row 6: amount", "row 7: occurred_at", "row 8: currency"):
        assert problem in out, out
    _, again = program.cli("purchases", "import", str(path))
    assert "0 recorded (0 referred), 3 already recorded" in again, again
    engine = program.engine()
    with engine.db.session() as s:
        referral = s.scalars(select(Referral)).one()
        assert (referral.status, str(referral.value)) == ("converted", "120.50")  # the first
        linked = s.scalars(select(Purchase.external_id).where(Purchase.referral_id.is_not(None)))
        assert sorted(linked) == ["A-1", "A-2"]
        conversions = s.scalars(select(Event).where(Event.type == "referral.converted")).all()
        assert len(conversions) == 1
    engine.close()


def test_the_referrer_hears_how_it_went_at_each_step(make_project: Callable[..., Project]) -> None:
    program = make_project()
    contacts(program, BEA)
    referrals = ("referrals", "update", "--email", "leo@example.com", "--status")
    program.cli(
        "referrals",
        "add",
        "--referrer",
        "bea@example.com",
        "--email",
        "leo@example.com",
        "--name",
        "Leo",
    )
    _, out = program.cli(*referrals, "contacted", "--note", "called, demo on Friday")
    assert "leo@example.com: contacted" in out
    _, again = program.cli(*referrals, "contacted")
    assert "already contacted" in again
    program.cli("tick")
    program.clock.advance(timedelta(days=9))
    program.cli(*referrals, "lost", "--note", "went with an in-house team")
    program.cli("tick")
    updates = [m.message for m in program.sink.messages if "update on Leo" in m.message["Subject"]]
    texts = [m.get_body(("plain",)).get_content() for m in updates]
    assert (
        len(texts) == 2 and "we have been in touch" in texts[0] and "not the right fit" in texts[1]
    )
    code, out = program.cli("referrals", "convert", "--email", "leo@example.com")
    assert code == 0  # lost is not final: they may still buy later
    code, out = program.cli(*referrals, "lost")
    assert code == 2 and "already converted" in out
    # the follow-up history, in order
    _, exported = program.cli("contacts", "export", "bea@example.com")
    history = [line for line in exported.splitlines() if '"type": "referral.' in line]
    assert [h.split('"')[3] for h in history] == [
        "referral.created",
        "referral.updated",
        "referral.updated",
        "referral.converted",
    ]


def test_advocates_get_the_more_personal_ask(make_project: Callable[..., Project]) -> None:
    program = make_project()
    contacts(program, BEA, ANA)
    answer(program, "bea@example.com", 10)  # Bea scored 10 twice (import said 9: then 10, 10)
    answer(program, "bea@example.com", 10)
    program.clock.advance(timedelta(days=3))  # referral-ask waits two days after an answer
    program.cli("tick")
    asks = {
        m.rcpt_tos[0]: m.message.get_body(("plain",)).get_content()
        for m in program.sink.messages
        if "who are one or two people" in str(m.message["Subject"])
    }
    assert "You have already introduced people to us" in asks["bea@example.com"]
    assert "You told us you would recommend us." in asks["ana@example.com"]
