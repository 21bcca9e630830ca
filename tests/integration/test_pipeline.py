"""End-to-end scenarios through the CLI: import -> tick -> real SMTP, with the injected clock."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import func, select

from engine.store.models import Alert, Enrollment, Event, Message, Suppression
from tests.conftest import Project
from tests.support.http_server import BROWSER_UA, TrackingServer
from tests.support.mail_links import link
from tests.support.scenario import ASK, TEMPLATES, contacts, record, sent_to, setup

ANA = "ana@example.com,Ana,Lima,Lima Co,UTC,10,2026-01-01,2025-01-01,,en,customer"
DANA = "dana@example.com,Dana,Reyes,Reyes Co,UTC,3,2026-01-01,2025-01-01,,en,customer"
PETE = "pete@example.com,Pete,Novak,Novak Co,UTC,8,2026-01-01,2025-01-01,,en,customer"
SIX = "six@example.com,Sia,Six,Six Co,UTC,6,2026-01-01,2025-01-01,,en,customer"
NEW = "new@example.com,Nina,Berg,Berg Co,UTC,10,2026-01-01,2026-02-20,,en,customer"
ANGRY = "carl@example.com,Carl,Meyer,Meyer Co,UTC,9,2026-01-01,2025-01-01,2026-02-25,en,customer"
PARTNER = "priya@example.com,Priya,Shah,Bloom,UTC,10,2026-01-01,2025-01-01,,en,partner"
BO = "bo@example.com,Bo,B,Bo Co,UTC,10,2026-01-01,2025-01-01,,en,customer"


@pytest.fixture
def program(make_project: Callable[..., Project]) -> Project:
    return setup(make_project(shipped=False))


def count(project: Project, model: type, *where: object) -> int:
    engine = project.engine()
    with engine.db.session() as s:
        n = s.scalar(select(func.count()).select_from(model).where(*where)) or 0
    engine.close()
    return n


def test_promoter_is_asked_and_nobody_else(program: Project) -> None:
    contacts(program, ANA, DANA, PETE, SIX, NEW, ANGRY, PARTNER)
    code, out = program.cli("tick")
    assert code == 0, out
    assert sent_to(program) == ["ana@example.com"]
    msg = program.sink.messages[0].message
    assert msg["Subject"] == "Ana, who could you introduce?"
    assert msg["Feedback-ID"] == "ask:ask:referral:acme"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_second_tick_at_the_same_instant_sends_nothing(program: Project) -> None:
    contacts(program, ANA)
    program.cli("tick")
    program.cli("tick")
    assert sent_to(program) == ["ana@example.com"]
    assert count(program, Message) == 1


def test_detractor_and_score_below_five_are_never_asked(program: Project) -> None:
    contacts(program, DANA, SIX)
    for _ in range(5):
        program.cli("tick")
        program.clock.advance(timedelta(days=30))
    assert sent_to(program) == []
    _code, out = program.cli("explain", "--contact", "dana@example.com")
    assert "min_score" in out and "NPS score 3 is below 5" in out


def test_new_customer_waits_until_thirty_days(program: Project) -> None:
    contacts(program, NEW)  # customer since 2026-02-20, now 2026-03-02
    program.cli("tick")
    assert sent_to(program) == []
    _, out = program.cli("explain", "--contact", "new@example.com")
    assert "customer_for_at_least" in out and "2026-03-22" in out
    program.clock.set(program.clock.now().replace(day=23))  # Monday 2026-03-23
    program.cli("tick")
    assert sent_to(program) == ["new@example.com"]


def test_recent_complaint_holds_the_ask_back(program: Project) -> None:
    contacts(program, ANGRY)  # complained 2026-02-25
    program.cli("tick")
    assert sent_to(program) == []
    _, out = program.cli("explain", "--contact", "carl@example.com")
    assert "no_complaint_within" in out
    program.clock.advance(timedelta(days=28))  # 2026-03-30, a Monday
    program.cli("tick")
    assert sent_to(program) == ["carl@example.com"]


def test_reminder_continues_the_thread_after_three_days(program: Project) -> None:
    contacts(program, ANA)
    program.cli("tick")
    program.clock.advance(timedelta(days=2, hours=23))
    program.cli("tick")
    assert len(program.sink.messages) == 1
    program.clock.advance(timedelta(hours=1))
    program.cli("tick")
    ask, reminder = (m.message for m in program.sink.messages)
    assert reminder["In-Reply-To"] == ask["Message-ID"]
    assert ask["Message-ID"] in reminder["References"]
    assert reminder["Subject"].startswith("Re: ")


def test_reply_stops_the_sequence(program: Project) -> None:
    contacts(program, ANA)
    program.cli("tick")
    record(program, "replied")
    program.clock.advance(timedelta(days=4))
    program.cli("tick")
    assert len(program.sink.messages) == 1
    assert count(program, Enrollment, Enrollment.status == "stopped") == 1


def test_referral_starts_thanks_stops_ask_and_rewards_once(program: Project) -> None:
    contacts(program, ANA)
    program.cli("tick")
    code, out = program.cli(
        "referrals",
        "add",
        "--referrer",
        "ana@example.com",
        "--email",
        "mia@example.com",
        "--name",
        "Mia Wong",
    )
    assert code == 0, out
    program.cli("tick")
    assert [m.message["Subject"] for m in program.sink.messages][
        1
    ] == "Thank you for introducing Mia Wong"
    program.clock.advance(timedelta(days=5))
    program.cli("tick")
    assert len(program.sink.messages) == 2  # the reminder was stopped by the referral
    assert (
        program.cli("referrals", "convert", "--email", "mia@example.com", "--value", "1200")[0] == 0
    )
    code, out = program.cli("referrals", "convert", "--email", "mia@example.com")
    assert "already converted" in out
    program.cli("tick")
    program.cli("tick")
    subjects = [m.message["Subject"] for m in program.sink.messages]
    assert subjects.count("Good news about mia@example.com") == 1
    _, out = program.cli("report", "--format", "json")
    assert '"converted": 1' in out


def test_contact_reenters_after_ninety_days(program: Project) -> None:
    contacts(program, ANA)
    program.cli("tick")
    program.clock.advance(timedelta(days=3))
    program.cli("tick")
    assert len(program.sink.messages) == 2
    program.clock.advance(timedelta(days=80))
    program.cli("tick")
    assert len(program.sink.messages) == 2
    program.clock.advance(timedelta(days=10))  # 93 days after the first ask
    program.clock.set(program.clock.now() + timedelta(days=(7 - program.clock.now().weekday()) % 7))
    program.cli("tick")
    assert len(program.sink.messages) == 3


def test_send_window_in_the_contacts_time_zone(program: Project) -> None:
    # 10:00 UTC is 17:00 in Jakarta: outside 09:00-17:00 there, so the ask waits for Tuesday 09:00.
    contacts(
        program, "budi@example.com,Budi,S,Kopi,Asia/Jakarta,9,2026-01-01,2025-01-01,,id,customer"
    )
    program.cli("tick")
    assert sent_to(program) == []
    program.clock.set(program.clock.now().replace(day=3, hour=1, minute=59))
    program.cli("tick")
    assert sent_to(program) == []
    program.clock.set(program.clock.now().replace(hour=2, minute=0))  # 09:00 WIB
    program.cli("tick")
    assert sent_to(program) == ["budi@example.com"]


def test_missing_variable_holds_back_that_one_email(program: Project) -> None:
    nameless = "sam@example.com,,Kowalski,Print,UTC,10,2026-01-01,2025-01-01,,en,customer"
    contacts(program, nameless, ANA)
    _code, out = program.cli("tick")
    assert sent_to(program) == ["ana@example.com"]
    assert "first_name" in out
    assert count(program, Message, Message.status == "render_failed") == 1
    _, out = program.cli("explain", "--contact", "sam@example.com")
    assert "held" in out and "first_name" in out


def test_locale_variant_is_chosen(program: Project) -> None:
    contacts(program, "layla@example.com,Layla,H,Dental,UTC,9,2026-01-01,2025-01-01,,ar,customer")
    program.cli("tick")
    html = program.sink.messages[0].message.get_body(("html",)).get_content()
    assert "مرحبا Layla" in html and 'dir="rtl"' in html


def test_hard_bounce_suppresses_the_address(program: Project) -> None:
    program.sink.rcpt_responses["ana@example.com"] = "550 5.1.1 <ana@example.com>: user unknown"
    contacts(program, ANA)
    _code, out = program.cli("tick")
    assert count(program, Suppression, Suppression.email == "ana@example.com") == 1
    assert count(program, Message, Message.status == "failed") == 1
    program.clock.advance(timedelta(days=100))
    program.cli("tick")
    assert count(program, Message) == 1  # never planned again
    _, out = program.cli("explain", "--contact", "ana@example.com")
    assert "suppress" in out


def only_message(project: Project) -> Message:
    """The outbox's only row."""
    engine = project.engine()
    with engine.db.session() as s:
        message = s.scalars(select(Message)).one()
    engine.close()
    return message


def test_temporary_failure_retries_with_backoff_and_same_message_id(program: Project) -> None:
    program.sink.rcpt_responses["ana@example.com"] = "451 4.3.0 Try again in 120 seconds"
    contacts(program, ANA)
    program.cli("tick")
    first = only_message(program)
    assert (first.status, first.attempts) == ("queued", 1)
    assert first.due_at >= program.clock.now() + timedelta(seconds=120)
    program.sink.rcpt_responses.clear()
    program.cli("tick")  # not due yet
    assert program.sink.messages == []
    program.clock.advance(timedelta(minutes=5))
    program.cli("tick")
    assert sent_to(program) == ["ana@example.com"]
    assert program.sink.messages[0].message["Message-ID"] == first.message_id


def test_temporary_failures_without_a_hint_back_off_longer_each_time(program: Project) -> None:
    program.sink.rcpt_responses["ana@example.com"] = "451 4.3.0 Temporary local problem"
    contacts(program, ANA)
    delays = []
    for attempt in (1, 2):
        tried_at = program.clock.now()
        program.cli("tick")
        row = only_message(program)
        assert (row.status, row.attempts) == ("queued", attempt)
        delays.append((row.due_at - tried_at).total_seconds())
        program.clock.set(row.due_at)
    # The base delay doubles with each attempt; 20 % jitter either way keeps a crowd of
    # retries from coming back at the same second, and cannot make the second one shorter.
    base = program.settings.smtp.retry_base_seconds
    assert 0.8 * base <= delays[0] <= 1.2 * base
    assert 0.8 * 2 * base <= delays[1] <= 1.2 * 2 * base
    program.sink.rcpt_responses.clear()
    program.cli("tick")
    assert sent_to(program) == ["ana@example.com"]
    assert program.sink.messages[0].message["Message-ID"] == row.message_id


def test_a_connection_dropped_during_data_is_retried_with_the_same_message_id(
    program: Project,
) -> None:
    program.sink.disconnect_on_data_once = True
    contacts(program, ANA)
    program.cli("tick")
    assert program.sink.messages == []  # dropped before the server accepted it
    dropped = only_message(program)
    assert (dropped.status, dropped.attempts) == ("queued", 1)
    assert "connection lost during DATA" in (dropped.last_error or "")
    assert dropped.due_at > program.clock.now()  # a backoff, not a hot loop
    program.clock.set(dropped.due_at)
    program.cli("tick")
    program.clock.advance(timedelta(hours=1))
    program.cli("tick")
    assert sent_to(program) == ["ana@example.com"]  # once
    assert program.sink.messages[0].message["Message-ID"] == dropped.message_id
    sent = only_message(program)
    assert (sent.status, sent.attempts) == ("sent", 2)


@pytest.mark.parametrize(
    "refusal",
    [
        # A 4.7.x is temporary, but about us: a plain retry would only make it worse.
        pytest.param("421 4.7.0 Temporary System Problem. Try again later", id="4.7.0"),
        pytest.param("550 5.7.1 Message rejected: sender blocked", id="5.7.1"),
    ],
)
def test_policy_rejection_pauses_sending_and_keeps_the_contact(
    program: Project, refusal: str
) -> None:
    program.sink.rcpt_responses["ana@example.com"] = refusal
    contacts(program, ANA, BO)
    _code, out = program.cli("tick")
    assert "paused" in out
    assert count(program, Suppression) == 0
    assert count(program, Enrollment, Enrollment.status == "active") == 2
    engine = program.engine()
    with engine.db.session() as s:
        alert = s.scalars(select(Alert)).one()
        ana = s.scalars(select(Message).where(Message.last_error == refusal)).one()
    engine.close()
    assert refusal in alert.message
    assert (ana.status, ana.attempts) == ("queued", 0)  # the refusal was about us, not Ana
    # Ana's email waits; Bo's went out only if it was already in flight on another connection.
    assert count(program, Message, Message.status == "queued") == 2 - len(program.sink.messages)
    before = len(program.sink.messages)
    program.sink.rcpt_responses.clear()
    program.cli("tick")
    assert len(program.sink.messages) == before  # still paused
    program.clock.advance(timedelta(hours=2))
    program.cli("tick")
    assert sorted(sent_to(program)) == ["ana@example.com", "bo@example.com"]


def test_unsubscribed_contact_is_never_sent_to(program: Project) -> None:
    contacts(program, ANA)
    program.cli("tick")
    record(program, "unsubscribed")
    program.clock.advance(timedelta(days=200))
    program.cli("tick")
    assert len(program.sink.messages) == 1
    assert count(program, Enrollment, Enrollment.status == "stopped") == 1


def test_import_reports_bad_rows_and_keeps_the_rest(program: Project) -> None:
    path = program.contacts(
        "email,first_name,nps_score,customer_since,timezone\n"
        "ok@example.com,Ok,9,2025-01-01,UTC\n"
        ",NoEmail,9,2025-01-01,UTC\n"
        "bad-date@example.com,Bad,9,01/02/2025,UTC\n"
        '"crlf@example.com","Evil\r\nBcc: x@evil.example",9,2025-01-01,UTC\n'
        "score@example.com,Score,11,2025-01-01,UTC\n"
        "tz@example.com,Tz,9,2025-01-01,Mars/Olympus\n"
    )
    code, out = program.cli("contacts", "import", str(path))
    assert code == 1
    assert "1 created" in out and "5 rejected" in out
    assert "row 3: email: missing" in out
    assert "row 4: customer_since" in out
    assert "first_name: contains a line break" in out
    assert "nps_score" in out and "timezone" in out
    code, out = program.cli("contacts", "import", str(path))
    assert "0 created" in out and "1 unchanged" in out


def test_simulate_shows_the_timeline_and_sends_nothing(program: Project) -> None:
    contacts(program, ANA, NEW)
    code, out = program.cli("simulate", "ask", "--days", "40")
    assert code == 0, out
    assert "ana@example.com" in out and "new@example.com" in out
    assert "reminder" in out
    assert program.sink.messages == []
    assert count(program, Message) == 0


def test_preview_renders_one_step(program: Project, tmp_path) -> None:  # type: ignore[no-untyped-def]
    contacts(program, ANA)
    out_file = tmp_path / "ask.eml"
    code, out = program.cli(
        "preview", "ask", "ask", "--contact", "ana@example.com", "--out", str(out_file)
    )
    assert code == 0, out
    assert "Ana, who could you introduce?" in out
    assert out_file.read_bytes().startswith(b"")
    assert b"List-Unsubscribe" in out_file.read_bytes()
    assert program.sink.messages == []


def branching(condition: str) -> str:
    """Ask, then a reminder only to those who did ``condition`` with the ask. A reply must not
    stop the run when the branch is about replies, or the branch would never see one."""
    stops = ["unsubscribed", "bounced"] + ([] if condition == "replied" else ["replied"])
    return f"""
id: ask
name: Ask, then branch on what the contact did
audience: {{kind: customer, nps: promoter}}
stop_when: [{", ".join(stops)}]
steps:
  - id: ask
    send: {{template: ask.mjml, subject: "{{{{ contact.first_name }}}}, one question"}}
  - wait: 2d
  - id: did-it
    branch: {{if: {condition}, step: ask, then: reminder, else: end}}
  - id: reminder
    send: {{template: reminder.mjml, reply_to_previous: true}}
"""


# What a machine does in a person's place: Apple Mail Privacy Protection fetches every image
# of every email it receives (as a bare "Mozilla/5.0"), a link scanner follows every link.
MACHINE_AGENTS = {
    "opened": "Mozilla/5.0",
    "clicked": "Mozilla/5.0 (compatible; Barracuda Sentinel)",
}


def engage(
    program: Project, tracking: TrackingServer, condition: str, to: str, *, machine: bool
) -> None:
    """Do ``condition`` with the ask sent to ``to``: an open or a click through the tracking
    app, as a person's browser or as a machine (the app tells them apart); a reply as the
    IMAP poller records it, a machine's reply being an out-of-office."""
    if condition == "replied":
        record(program, "auto_replied" if machine else "replied", to=to, step="ask")
        return
    ask = next(m.message for m in program.sink.messages if m.rcpt_tos[0] == to)
    # The email links to tracking.base_url; the app is served here under that path.
    path = urlsplit(link(ask, "/o/" if condition == "opened" else "/c/")).path
    agent = MACHINE_AGENTS[condition] if machine else BROWSER_UA
    response = httpx.get(tracking.url + path, headers={"user-agent": agent}, timeout=10)
    assert response.status_code in (200, 302), response.text
    assert tracking.flush() == 1
    with tracking.engine.db.session() as s:
        latest = s.scalars(select(Event).order_by(Event.id.desc()).limit(1)).one()
    assert (latest.type, latest.machine) == (condition, machine)  # classified as intended


@pytest.mark.parametrize("condition", ["opened", "clicked", "replied"])
def test_branch_follows_what_the_person_did_not_a_machine(
    make_project: Callable[..., Project], condition: str
) -> None:
    program = setup(make_project(shipped=False), {"ask": branching(condition)})
    with TrackingServer(program.settings, program.clock) as tracking:
        contacts(program, ANA, BO)
        program.cli("tick")
        program.clock.advance(timedelta(hours=1))  # read an hour later: no scanner's haste
        engage(program, tracking, condition, "ana@example.com", machine=False)
        engage(program, tracking, condition, "bo@example.com", machine=True)
        program.clock.advance(timedelta(days=2))
        program.cli("tick")
    reminded = [m.rcpt_tos[0] for m in program.sink.messages[2:]]
    assert reminded == ["ana@example.com"]
    assert program.sink.messages[2].message["Subject"] == "Re: Ana, one question"
    # Bo's run ended at the branch; Ana's is complete once the reminder went.
    program.cli("tick")
    assert count(program, Enrollment, Enrollment.status == "completed") == 2


def follow_up(condition: str) -> str:
    """A sequence that a person's ``condition`` starts."""
    return f"""
id: follow
name: After an {condition}
trigger: {condition}
send_window: {{days: [mon, tue, wed, thu, fri, sat, sun], hours: "00:00-23:59", timezone: UTC}}
steps:
  - id: follow
    send: {{template: thanks.mjml, subject: "Since you {condition} it"}}
"""


@pytest.mark.parametrize("condition", ["opened", "clicked"])
def test_a_machine_open_or_click_neither_stops_nor_starts_a_sequence(
    make_project: Callable[..., Project], condition: str
) -> None:
    stopped_by_it = ASK.replace("[replied, unsubscribed, bounced, referred]", f"[{condition}]")
    assert stopped_by_it != ASK
    sequences = {"ask": stopped_by_it, "follow": follow_up(condition)}
    program = setup(make_project(shipped=False), sequences)
    with TrackingServer(program.settings, program.clock) as tracking:
        contacts(program, ANA, BO)
        program.cli("tick")
        program.clock.advance(timedelta(hours=1))
        engage(program, tracking, condition, "ana@example.com", machine=True)
        engage(program, tracking, condition, "bo@example.com", machine=False)
        program.cli("tick")
        program.clock.advance(timedelta(days=3))
        program.cli("tick")
    later = [(m.rcpt_tos[0], m.message["Subject"]) for m in program.sink.messages[2:]]
    # Bo's act started the follow-up and stopped his ask; the machine's did neither for Ana.
    assert later == [
        ("bo@example.com", f"Since you {condition} it"),
        ("ana@example.com", "Re: Ana, who could you introduce?"),
    ]


def test_held_email_goes_out_once_the_template_is_fixed(program: Project) -> None:
    program.write(
        "templates/ask.mjml",
        TEMPLATES["ask.mjml"].replace("{{ contact.first_name }}", "{{ contact.frist_name }}"),
    )
    contacts(program, ANA)
    code, out = program.cli("tick")
    assert "frist_name" in out and program.sink.messages == []
    engine = program.engine()
    with engine.db.session() as s:
        message_id = s.scalars(select(Message.message_id)).one()
    engine.close()
    program.write("templates/ask.mjml", TEMPLATES["ask.mjml"])
    code, out = program.cli("outbox", "retry")
    assert code == 0 and "requeued 1" in out
    program.cli("tick")
    assert sent_to(program) == ["ana@example.com"]
    assert program.sink.messages[0].message["Message-ID"] == message_id
    program.clock.advance(timedelta(days=3))
    program.cli("tick")
    assert len(program.sink.messages) == 2  # the sequence carried on after the fix


def test_report_shows_the_alert_while_sending_is_paused(program: Project) -> None:
    program.sink.rcpt_responses["ana@example.com"] = (
        "554 5.7.1 Service unavailable; client host blocked"
    )
    contacts(program, ANA)
    program.cli("tick")
    _, out = program.cli("report")
    assert "ALERT" in out and "paused" in out
    program.clock.advance(timedelta(hours=2))
    _, out = program.cli("report")
    assert "ALERT" not in out


def test_a_promoter_who_turns_detractor_gets_no_reminder(program: Project) -> None:
    contacts(program, ANA)
    program.cli("tick")
    contacts(program, ANA.replace(",10,2026-01-01,", ",2,2026-03-02,"))  # answered 2 today
    program.cli("tick")
    program.clock.advance(timedelta(days=4))
    program.cli("tick")
    assert len(program.sink.messages) == 1
    _, out = program.cli("explain", "--contact", "ana@example.com")
    assert "no longer eligible" in out and "min_score" in out


def test_a_complaint_mid_sequence_holds_the_reminder_back(program: Project) -> None:
    contacts(program, ANA)
    program.cli("tick")
    contacts(program, ANA.replace(",2025-01-01,,en,", ",2025-01-01,2026-03-03,en,"))
    program.clock.advance(timedelta(days=4))
    program.cli("tick")
    assert len(program.sink.messages) == 1


def test_a_held_ask_is_not_revived_after_the_contact_referred(program: Project) -> None:
    nameless = "sam@example.com,,Kowalski,Print,UTC,10,2026-01-01,2025-01-01,,en,customer"
    contacts(program, nameless)
    program.cli("tick")
    program.cli("referrals", "add", "--referrer", "sam@example.com", "--email", "f@example.com")
    program.cli("tick")
    program.cli("outbox", "retry")
    program.clock.advance(timedelta(days=4))
    program.cli("tick")
    subjects = [m.message["Subject"] for m in program.sink.messages]
    assert subjects == ["Thank you for introducing your friend"]


def test_a_backdated_survey_answer_still_stops_the_survey(
    make_project: Callable[..., Project],
) -> None:
    survey = """
    id: survey
    name: Survey
    audience: {kind: customer, nps: any, min_score: null}
    stop_when: [replied, unsubscribed, bounced, nps.answered]
    steps:
      - id: ask
        send: {template: ask.mjml, subject: "Quick question"}
      - wait: 4d
      - id: again
        send: {template: reminder.mjml, reply_to_previous: true}
    """
    program = setup(make_project(shipped=False), {"survey": survey})
    tom = "tom@example.com,Tom,Chen,Co,UTC,,,2025-01-01,,en,customer"
    contacts(program, tom)
    program.cli("tick")
    program.clock.advance(timedelta(days=1))
    contacts(program, tom.replace(",,,2025", ",9,2026-03-02,2025"))  # dated the day before
    program.cli("tick")
    program.clock.advance(timedelta(days=4))
    program.cli("tick")
    assert len(program.sink.messages) == 1


def test_a_new_sequence_file_sees_every_existing_contact(program: Project) -> None:
    contacts(program, PETE)  # a passive: nothing for him in the shipped-for-test program
    program.cli("tick")
    assert program.sink.messages == []
    program.write("sequences/passives.yaml", ASK_PASSIVES)
    program.clock.advance(timedelta(days=1))
    program.cli("tick")
    assert sent_to(program) == ["pete@example.com"]


ASK_PASSIVES = """
id: passives
name: Happy passives, later
audience: {kind: customer, nps: passive}
steps:
  - id: ask
    send: {template: thanks.mjml, subject: "How could we earn a 10?"}
"""


def test_an_unsendable_address_ends_the_run_instead_of_holding_it(program: Project) -> None:
    contacts(program, ANA)
    engine = program.engine()
    from engine.store.models import Contact

    with engine.db.write() as s:  # an address that slipped in around the importer's checks
        s.scalars(select(Contact)).one().email = "ana lima@example.com"
    engine.close()
    _, out = program.cli("tick")
    assert "invalid message" in out and program.sink.messages == []
    program.cli("outbox", "retry")
    assert count(program, Message, Message.status == "failed") == 1
    assert count(program, Enrollment, Enrollment.status == "stopped") == 1


def test_editing_a_sequence_keeps_people_at_their_step(program: Project) -> None:
    # Ana was asked and waits for the reminder; meanwhile the marketer adds a first step
    # and a longer wait. She is not asked again: the reminder comes after her original wait.
    contacts(program, ANA)
    program.cli("tick")
    assert sent_to(program) == ["ana@example.com"]
    edited = ASK_EDIT_INTRO + ASK_EDIT_TAIL
    program.write("sequences/ask.yaml", edited)
    program.clock.advance(timedelta(days=3))
    program.cli("tick")
    steps = [m.message["Subject"] for m in program.sink.messages]
    assert len(steps) == 2 and steps[1].startswith("Re: Ana"), steps
    _, out = program.cli("explain", "--contact", "ana@example.com")
    assert "completed" in out or "done" in out, out


ASK_EDIT_INTRO = """
id: ask
name: Ask promoters
audience: {kind: customer, nps: promoter}
stop_when: [replied, unsubscribed, bounced, referred]
steps:
  - id: welcome
    send: {template: thanks.mjml, subject: "Welcome"}
  - wait: 1d
"""
ASK_EDIT_TAIL = """\
  - id: ask
    send: {template: ask.mjml, subject: "{{ contact.first_name }}, who?", referral_ask: true}
  - wait: 3d
  - id: reminder
    send:
      template: reminder.mjml
      subject: "Re: {{ contact.first_name }}, who could you introduce?"
      reply_to_previous: true
      referral_ask: true
"""


def test_a_backlog_waits_for_the_send_window_to_open_again(program: Project) -> None:
    # Planned on Monday, but the scheduler was down until Saturday 03:00: the email is not
    # sent at night on a weekend; it goes out when the window opens on Monday.
    contacts(program, ANA)
    engine = program.engine()
    engine.planner().plan()
    engine.close()
    assert count(program, Message, Message.status == "queued") == 1
    program.clock.advance(timedelta(days=4, hours=17))  # Saturday 03:00 UTC
    _, out = program.cli("tick")
    assert program.sink.messages == [] and "waiting for the send window 1" in out, out
    engine = program.engine()
    with engine.db.session() as s:
        message = s.scalars(select(Message)).one()
    engine.close()
    assert (message.status, message.attempts) == ("queued", 0)
    assert message.due_at.isoformat() == "2026-03-09T09:00:00+00:00"
    program.clock.advance(timedelta(days=2, hours=6))  # Monday 09:00
    program.cli("tick")
    assert sent_to(program) == ["ana@example.com"]


PROMOTER_ROUTE = """
id: route
name: Promoters, thanked then asked
trigger: {event: nps.answered, nps: promoter}
send_window: {days: [mon, tue, wed, thu, fri, sat, sun], hours: "00:00-23:59", timezone: UTC}
steps:
  - id: thanks
    send: {template: thanks.mjml, subject: "Thank you for the {{ contact.nps_score }}"}
  - wait: 2d
  - id: ask
    send: {template: ask.mjml, subject: "Who could you introduce?", referral_ask: true}
"""


def test_a_triggered_route_ends_when_a_newer_answer_leaves_its_class(
    make_project: Callable[..., Project],
) -> None:
    from engine.records.contacts import record_nps_answer

    program = setup(make_project(shipped=False), {"route": PROMOTER_ROUTE})
    contacts(program, PETE)  # a passive, not routed
    engine = program.engine()
    record_nps_answer(engine.db, "pete@example.com", 10, program.clock.now(), source="page")
    program.cli("tick")
    assert [m.message["Subject"] for m in program.sink.messages] == ["Thank you for the 10"]
    # He answers again with a 4 before the ask: the route ends, no ask goes to a detractor.
    record_nps_answer(engine.db, "pete@example.com", 4, program.clock.now(), source="page")
    # Two answers processed in one pass: only the latest routes.
    record_nps_answer(engine.db, "pete@example.com", 9, program.clock.now(), source="page")
    record_nps_answer(engine.db, "pete@example.com", 3, program.clock.now(), source="page")
    engine.close()
    program.clock.advance(timedelta(days=3))
    program.cli("tick")
    assert len(program.sink.messages) == 1
    _, out = program.cli("explain", "--contact", "pete@example.com")
    assert "detractor" in out, out


def test_a_soft_bounce_keeps_the_sequence_going(program: Project) -> None:
    from engine.records.events import record_event

    contacts(program, ANA)
    program.cli("tick")
    engine = program.engine()
    with engine.db.write() as session:
        message = session.scalars(select(Message)).one()
        data = {"hard": False, "status": "4.2.2", "source": "dsn"}
        record_event(
            session,
            "bounced",
            program.clock.now(),
            contact_id=message.contact_id,
            message=message,
            data=data,
        )
    engine.close()
    program.clock.advance(timedelta(days=3))
    program.cli("tick")
    assert len(program.sink.messages) == 2  # the reminder still went: a full mailbox empties
