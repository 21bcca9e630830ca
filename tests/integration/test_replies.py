"""Replies, auto-replies and bounces through a real Dovecot (APPENDed emails, a real IMAP
session) and a real database (SQLite and PostgreSQL), end to end with the engine's own
emails sent to the aiosmtpd sink and `replies poll` run through the CLI."""

from __future__ import annotations

import asyncio
import base64
import os
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from engine.demo import samples
from engine.inbound.replies.imap import Mailbox
from engine.inbound.replies.poller import PollStats, poll_forever, poll_once
from engine.inbound.replies.record import process_message
from engine.store.models import (
    Alert,
    Enrollment,
    Event,
    Meta,
    Notification,
    Referral,
    Suppression,
)
from engine.wiring import Engine
from tests.conftest import Project
from tests.support.dovecot import Dovecot, MailUser, SilentProxy, dovecot_fixture, mail_user_fixture  # noqa: F401  (fixtures)
from tests.support.scenario import ASK, THANKS, contacts, sent_to, setup

ANA = "ana@example.com,Ana,Lima,Lima Co,UTC,10,2026-01-01,2025-01-01,,en,customer"
BOB = "bob@example.com,Bob,Reyes,Reyes Co,UTC,9,2026-01-01,2025-01-01,,en,customer"
SITI = "siti@example.com,Siti,Rahman,Rahman Sdn,UTC,10,2026-01-01,2025-01-01,,id,customer"
OWNER = "owner@acme.example"
US = "hello@acme.example"
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

MakeProgram = Callable[..., Project]


@pytest.fixture
def make_program(
    make_project: Callable[..., Project], dovecot: Dovecot, mail_user: MailUser
) -> MakeProgram:
    """The scenario program with the test's own mailbox; ``imap`` options go to [imap]."""

    def make(sequences: dict[str, str] | None = None, **imap: Any) -> Project:
        extra = dovecot.toml(mail_user, **imap) + f'[notify]\nowner = "{OWNER}"\n'
        return setup(make_project(shipped=False, extra=extra), sequences)

    return make


@pytest.fixture
def program(make_program: MakeProgram) -> Project:
    return make_program()


def now(project: Project) -> datetime:
    return project.clock.now()


def message_id(project: Project, to: str, index: int = -1) -> str:
    """The Message-ID of an email the engine sent to ``to``."""
    mine = [m for m in project.sink.messages if m.rcpt_tos[0] == to]
    return str(mine[index].message["Message-ID"])


def poll(project: Project) -> PollStats:
    engine = project.engine()
    try:
        return asyncio.run(poll_once(engine.replies()))
    finally:
        engine.close()


def count(project: Project, model: type, *where: Any) -> int:
    engine = project.engine()
    with engine.db.session() as session:
        found = session.scalar(select(func.count()).select_from(model).where(*where)) or 0
    engine.close()
    return found


def rows(project: Project, query: Any) -> list[Any]:
    engine = project.engine()
    with engine.db.session() as session:
        found = list(session.scalars(query))
    engine.close()
    return found


def events(project: Project, type_: str) -> list[Event]:
    return rows(project, select(Event).where(Event.type == type_).order_by(Event.id))


# -- replies ---------------------------------------------------------------------------------


def test_a_reply_stops_the_sequence_and_the_owner_hears_of_it(
    program: Project, dovecot: Dovecot, mail_user: MailUser
) -> None:
    contacts(program, ANA)
    program.cli("tick")
    ask = message_id(program, "ana@example.com")
    dovecot.append(
        mail_user,
        samples.reply("Ana Lima <ana@example.com>", US, ask, "Happy to help!", date=now(program)),
    )
    code, out = program.cli("replies", "poll")
    assert code == 0 and "read 1: 1 replies" in out, out
    program.clock.advance(timedelta(days=4))
    program.cli("tick")
    assert sent_to(program) == ["ana@example.com", OWNER]  # the note, and no reminder
    note = program.sink.messages[-1].message
    assert note["Subject"].startswith("Ana Lima <ana@example.com> replied")
    body = note.get_content()
    assert "Happy to help!" in body and "wrote:" not in body  # the quote is cut
    (replied,) = events(program, "replied")
    assert replied.step_id == "ask" and replied.data["matched"] == "thread"
    stopped = rows(program, select(Enrollment.reason).where(Enrollment.status == "stopped"))
    assert stopped and stopped[0].startswith("replied")
    assert "$ReferralEngine" in dovecot.flags(mail_user)[1]
    _, out = program.cli("report", "--format", "json")
    assert '"reply_rate": 1.0' in out


def test_a_reply_outside_the_thread_is_matched_by_its_sender(
    program: Project, dovecot: Dovecot, mail_user: MailUser
) -> None:
    contacts(program, ANA)
    program.cli("tick")
    dovecot.append(
        mail_user,
        samples.reply("ANA@Example.com", US, None, "Call me tomorrow?", date=now(program)),
        samples.reply("stranger@elsewhere.example", US, None, "Hi!", date=now(program)),
    )
    stats = poll(program)
    assert (stats.replies, stats.ignored) == (1, 1)
    (replied,) = events(program, "replied")
    assert replied.data["matched"] == "sender" and replied.step_id == "ask"
    assert dovecot.flags(mail_user)[2] == set()  # not ours: left as it was for people


def test_a_not_interested_reply_stops_for_good(
    program: Project, dovecot: Dovecot, mail_user: MailUser
) -> None:
    contacts(program, SITI)
    program.cli("tick")
    text = "Terima kasih, tapi saya tidak tertarik."
    ask = message_id(program, "siti@example.com")
    dovecot.append(mail_user, samples.reply("siti@example.com", US, ask, text, date=now(program)))
    assert poll(program).not_interested == 1
    (said,) = events(program, "unsubscribed")
    assert said.data["source"] == "reply" and said.data["language"] == "id"
    assert said.data["phrase"] == "tidak tertarik"
    (suppressed,) = rows(program, select(Suppression))
    assert suppressed.email == "siti@example.com" and suppressed.reason == "not interested"
    program.clock.advance(timedelta(days=4))
    program.cli("tick")
    program.clock.advance(timedelta(days=100))  # past reenter_after: still never asked again
    program.cli("tick")
    assert sent_to(program) == ["siti@example.com", OWNER]


def test_an_introduction_becomes_a_referral_to_review(
    make_program: MakeProgram, dovecot: Dovecot, mail_user: MailUser
) -> None:
    program = make_program({"ask": ASK, "thanks": THANKS})
    contacts(program, ANA)
    program.cli("tick")
    reply = samples.reply(
        "ana@example.com",
        US,
        message_id(program, "ana@example.com"),
        "Sure! Please meet Budi Santoso <budi@santoso.example>, he needs exactly this.",
        date=now(program),
        cc="Rina Putri <rina@putri.example>",
    )
    dovecot.append(mail_user, reply)
    stats = poll(program)
    assert (stats.replies, stats.introductions) == (1, 2)
    referrals = rows(program, select(Referral).order_by(Referral.friend_email))
    assert [(r.friend_email, r.friend_name, r.status, r.channel) for r in referrals] == [
        ("budi@santoso.example", "Budi Santoso", "detected", "reply"),
        ("rina@putri.example", "Rina Putri", "detected", "reply"),
    ]
    created = events(program, "referral.created")
    assert all(e.data["detected"] and e.data["review"] for e in created)
    note = rows(program, select(Notification))[0]
    assert "recorded as a referral to review" in note.body


# -- auto-replies ----------------------------------------------------------------------------


def test_an_out_of_office_with_a_return_date_moves_the_next_email(
    program: Project, dovecot: Dovecot, mail_user: MailUser
) -> None:
    contacts(program, ANA)
    program.cli("tick")  # Monday 2 March: the ask; the reminder would follow on Thursday
    ask = message_id(program, "ana@example.com")
    text = "Thank you for your email. I am on leave and will be back on 16 March."
    dovecot.append(
        mail_user, samples.auto_reply("ana@example.com", US, ask, text, date=now(program))
    )
    assert poll(program).auto_replies == 1
    (auto,) = events(program, "auto_replied")
    assert auto.data["return_date"] == "2026-03-16" and auto.data["postponed"] == 1
    program.clock.set(datetime(2026, 3, 18, 16, 0, tzinfo=UTC))
    program.cli("tick")
    assert sent_to(program) == ["ana@example.com"]  # still away (plus 3 days)
    program.clock.set(datetime(2026, 3, 19, 10, 0, tzinfo=UTC))
    program.cli("tick")
    assert sent_to(program) == ["ana@example.com", "ana@example.com"]  # the reminder
    assert count(program, Enrollment, Enrollment.status == "stopped") == 0
    _, out = program.cli("report", "--format", "json")
    assert '"auto_replied": 1' in out and '"replied": 0' in out


@SQLITE_ONLY
def test_an_auto_reply_without_a_date_pauses_a_week(
    program: Project, dovecot: Dovecot, mail_user: MailUser
) -> None:
    contacts(program, ANA)
    program.cli("tick")
    raw = samples.auto_reply(
        "ana@example.com",
        US,
        message_id(program, "ana@example.com"),
        "Diese Adresse wird nicht mehr gelesen.",
        date=now(program),
        subject="Balasan Otomatis: siapa yang bisa kami bantu?",
    )
    dovecot.append(mail_user, raw)
    assert poll(program).auto_replies == 1
    program.clock.set(datetime(2026, 3, 5, 10, 0, tzinfo=UTC))  # the reminder's normal day
    program.cli("tick")
    assert sent_to(program) == ["ana@example.com"]
    program.clock.set(datetime(2026, 3, 9, 10, 0, tzinfo=UTC))  # a week after the auto-reply
    program.cli("tick")
    assert sent_to(program) == ["ana@example.com", "ana@example.com"]


# -- bounces ---------------------------------------------------------------------------------


def test_a_hard_bounce_suppresses_the_address_and_counts_once(
    program: Project, dovecot: Dovecot, mail_user: MailUser
) -> None:
    contacts(program, ANA, BOB)
    program.cli("tick")
    bounce = samples.dsn(
        "bob@example.com", message_id(program, "bob@example.com"), date=now(program)
    )
    again = samples.dsn(
        "bob@example.com", message_id(program, "bob@example.com"), date=now(program)
    )
    dovecot.append(mail_user, bounce, bounce, again)  # a copy, and the same failure re-sent
    stats = poll(program)
    assert (stats.hard_bounces, stats.duplicates) == (1, 2)
    (bounced,) = events(program, "bounced")
    assert bounced.data["hard"] is True and bounced.data["status"] == "5.1.1"
    (suppressed,) = rows(program, select(Suppression))
    assert suppressed.email == "bob@example.com" and suppressed.reason.startswith("hard bounce")
    program.clock.advance(timedelta(days=4))
    program.cli("tick")
    assert sorted(sent_to(program)) == ["ana@example.com", "ana@example.com", "bob@example.com"]
    _, out = program.cli("report", "--format", "json")
    assert '"hard_bounced": 1' in out


def test_a_spam_complaint_suppresses_the_address_and_stops_every_sequence(
    program: Project, dovecot: Dovecot, mail_user: MailUser
) -> None:
    contacts(program, ANA, BOB, SITI)
    program.cli("tick")
    ana_ask = message_id(program, "ana@example.com")
    dovecot.append(
        mail_user,
        # Ana: the provider redacted her address; the copy of our email names it.
        samples.arf(None, ana_ask, date=now(program)),
        # The same complaint reported again (another report id): counted once.
        samples.arf(None, ana_ask, date=now(program)),
        # Bob: an email we cannot find, but the report names his address.
        samples.arf("bob@example.com", "<gone@acme.example>", date=now(program)),
        # Siti took a spam verdict back: nothing to do.
        samples.arf(
            "siti@example.com",
            message_id(program, "siti@example.com"),
            date=now(program),
            feedback_type="not-spam",
        ),
        # A complaint about an email and an address that are not ours.
        samples.arf("nobody@example.org", "<other@elsewhere.example>", date=now(program)),
    )
    code, out = program.cli("replies", "poll")
    assert code == 0 and "2 spam complaints" in out and "1 seen before" in out, out
    ana, bob = events(program, "complained")
    assert ana.data["matched"] == "original" and ana.step_id == "ask"
    assert bob.data["matched"] == "recipient" and bob.data["feedback_type"] == "abuse"
    assert bob.step_id == "ask"  # his latest email
    suppressed = rows(program, select(Suppression).order_by(Suppression.email))
    assert [(x.email, x.reason) for x in suppressed] == [
        ("ana@example.com", "spam complaint"),
        ("bob@example.com", "spam complaint"),
    ]
    program.clock.advance(timedelta(days=4))
    program.cli("tick")
    stopped = rows(program, select(Enrollment.reason).where(Enrollment.status == "stopped"))
    assert len(stopped) == 2 and all(r.startswith("complained") for r in stopped)
    # Siti's reminder went out; Ana and Bob got nothing more, and the owner heard of both.
    later = sent_to(program)[3:]
    assert sorted(later) == [OWNER, OWNER, "siti@example.com"], later
    subjects = [m.message["Subject"] for m in program.sink.messages if m.rcpt_tos[0] == OWNER]
    assert sorted(subjects) == [
        "Ana Lima <ana@example.com> marked an email as spam",
        "Bob Reyes <bob@example.com> marked an email as spam",
    ]


NUDGES = """
id: nudges
name: Two nudges
audience: {kind: customer, nps: promoter}
stop_when: [replied]
send_window: {days: [mon, tue, wed, thu, fri, sat, sun], hours: "00:00-23:59", timezone: UTC}
steps:
  - id: one
    send: {template: ask.mjml, subject: "One"}
  - wait: 1d
  - id: two
    send: {template: ask.mjml, subject: "Two"}
"""


def test_soft_bounces_suppress_the_address_at_the_limit(
    make_program: MakeProgram, dovecot: Dovecot, mail_user: MailUser
) -> None:
    program = make_program({"nudges": NUDGES}, soft_bounce_limit=2)
    contacts(program, ANA)
    program.cli("tick")
    program.clock.advance(timedelta(days=1))
    program.cli("tick")
    one, two = (message_id(program, "ana@example.com", i) for i in range(2))
    full = {"status": "5.2.2", "diagnostic": "552 5.2.2 Mailbox full", "date": now(program)}
    delayed = {"status": "4.4.1", "action": "delayed", "date": now(program)}
    dovecot.append(
        mail_user,
        samples.dsn("ana@example.com", one, **delayed),
        samples.dsn("ana@example.com", one, **full),  # the same email again: counted once
    )
    assert poll(program).soft_bounces == 1
    assert count(program, Suppression) == 0
    dovecot.append(mail_user, samples.dsn("ana@example.com", two, **full))
    assert poll(program).soft_bounces == 1
    (suppressed,) = rows(program, select(Suppression))
    assert suppressed.reason == "2 soft bounces"
    assert [e.data["hard"] for e in events(program, "bounced")] == [False, False]
    _, out = program.cli("report", "--format", "csv")
    header, *lines = out.strip().splitlines()
    column = header.split(",").index("soft_bounced")
    assert [line.split(",")[column] for line in lines] == ["1", "1"]


def test_a_policy_bounce_pauses_sending_and_leaves_the_contact_alone(
    program: Project, dovecot: Dovecot, mail_user: MailUser
) -> None:
    contacts(program, ANA)
    program.cli("tick")
    blocked = samples.dsn(
        "ana@example.com",
        message_id(program, "ana@example.com"),
        date=now(program),
        status="5.7.1",
        diagnostic="554 5.7.1 Service unavailable; Client host blocked using zen.spamhaus.org",
    )
    dovecot.append(mail_user, blocked)
    assert poll(program).policy_bounces == 1
    (alert,) = rows(program, select(Alert))
    assert alert.kind == "bounce_policy" and alert.pause_until is not None
    assert count(program, Suppression) == 0 and events(program, "bounced") == []
    _, out = program.cli("report")
    assert "ALERT" in out and "spamhaus" in out


# -- what must never stop the poller ----------------------------------------------------------


def test_malformed_mime_and_odd_charsets_are_read_and_garbage_is_flagged(
    make_program: MakeProgram, dovecot: Dovecot, mail_user: MailUser
) -> None:
    program = make_program()
    contacts(program, ANA, BOB, SITI)
    program.cli("tick")
    ana, bob, siti = (message_id(program, f"{n}@example.com") for n in ("ana", "bob", "siti"))
    arabic = "شكرا، لكنني غير مهتم.".encode("cp1256")
    dovecot.append(
        mail_user,
        b"\x80\xff\xfe not an email at all \x00\r\n",
        # the boundary never closes and the base64 is cut short
        f"From: ana@example.com\r\nIn-Reply-To: {ana}\r\nContent-Type: multipart/mixed; "
        'boundary="x"\r\n\r\n--x\r\nContent-Type: text/plain\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\nU3VyZSwgbGV0J3MgdGFsaw=\r\n".encode(),
        # Arabic in windows-1256, an encoded word in an unknown charset, 8-bit junk in Subject
        f"From: =?x-klingon?q?Bob?= <bob@example.com>\r\nIn-Reply-To: {bob}\r\n"
        "Subject: \xff\xfe caf\xe9\r\nContent-Type: text/plain; charset=windows-1256\r\n"
        "\r\n".encode("latin-1")
        + arabic,
        samples.reply("siti@example.com", US, siti, "Boleh, kita bicara.", date=now(program)),
    )
    stats = poll(program)
    assert (stats.unreadable, stats.replies, stats.not_interested) == (1, 2, 1), stats
    flags = dovecot.flags(mail_user)
    assert flags[1] == {"$ReferralEngineFailed"}
    assert all("$ReferralEngine" in flags[uid] for uid in (2, 3, 4))
    assert [s.email for s in rows(program, select(Suppression))] == ["bob@example.com"]


def big_reply(in_reply_to: str, text: str, attachment_bytes: int) -> bytes:
    """A reply whose attachment comes first and is big; the text part comes after it."""
    blob = base64.encodebytes(os.urandom(attachment_bytes))
    return (
        b"From: ana@example.com\r\nTo: hello@acme.example\r\nSubject: Re: who?\r\n"
        b"Message-ID: <big-reply@example.com>\r\nIn-Reply-To: " + in_reply_to.encode() + b"\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="outer"\r\n\r\n'
        b'--outer\r\nContent-Type: application/pdf; name="deck (final).pdf"\r\n'
        b"Content-Disposition: attachment\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + blob
        + b'\r\n--outer\r\nContent-Type: multipart/alternative; boundary="inner"\r\n\r\n'
        b"--inner\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        + text.encode()
        + b"\r\n--inner\r\nContent-Type: text/html\r\n\r\n<p>html</p>\r\n--inner--\r\n"
        b"--outer--\r\n"
    )


@SQLITE_ONLY
def test_a_huge_attachment_is_never_downloaded(
    program: Project, dovecot: Dovecot, mail_user: MailUser
) -> None:
    contacts(program, ANA)
    program.cli("tick")
    size = 12 * 1024 * 1024
    ask = message_id(program, "ana@example.com")
    dovecot.append(mail_user, big_reply(ask, "Thanks, but we are not interested.", size))
    engine = program.engine()
    tracemalloc.start()
    try:
        stats = asyncio.run(poll_once(engine.replies()))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        engine.close()
    assert stats.not_interested == 1  # the text after the attachment was read
    assert peak < 3_000_000, f"peak {peak / 1e6:.1f} MB while reading a {size / 1e6:.0f} MB email"


def test_a_large_spam_report_is_read_part_by_part(
    program: Project, dovecot: Dovecot, mail_user: MailUser
) -> None:
    contacts(program, ANA)
    program.cli("tick")
    report = samples.arf(
        "ana@example.com", "<unknown@acme.example>", date=now(program), feedback_type="fraud"
    )
    # The provider's copy of our email, with a 2 MB body: far more than body_bytes. Only the
    # report's own fields name the recipient and the type.
    large = report.replace(b"Who are one or two people we could help?", b"x" * 76 * 28_000)
    large = large.replace(b"x" * 76, b"x" * 76 + b"\r\n")
    dovecot.append(mail_user, large)
    stats = poll(program)
    assert stats.complaints == 1, stats.summary()
    (complained,) = events(program, "complained")
    assert complained.data["matched"] == "recipient"
    assert complained.data["feedback_type"] == "fraud"


# -- the mailbox position ---------------------------------------------------------------------


def test_a_restarted_poller_reads_nothing_twice(
    program: Project, dovecot: Dovecot, mail_user: MailUser
) -> None:
    contacts(program, ANA)
    program.cli("tick")
    ask = message_id(program, "ana@example.com")
    for text in ("One.", "Two.", "Three."):
        dovecot.append(
            mail_user, samples.reply("ana@example.com", US, ask, text, date=now(program))
        )
    assert poll(program).replies == 3
    assert poll(program).read == 0  # a new engine, a new connection: the position is kept
    (state,) = rows(program, select(Meta.value).where(Meta.key.startswith("imap:")))
    assert '"last_uid": 3' in state
    assert len(events(program, "replied")) == 3


@SQLITE_ONLY
def test_a_first_look_at_a_mailbox_skips_old_history(
    program: Project, dovecot: Dovecot, mail_user: MailUser
) -> None:
    contacts(program, ANA)
    old = samples.reply("ana@example.com", US, None, "Sure, last year.", date=now(program))
    dovecot.append(mail_user, old, received=now(program) - timedelta(days=60))
    dovecot.append(mail_user, samples.reply("ana@example.com", US, None, "Now.", date=now(program)))
    stats = poll(program)
    assert (stats.read, stats.replies) == (1, 1)
    assert [e.data["text"] for e in events(program, "replied")] == ["Now."]


def test_a_uidvalidity_change_reads_again_and_counts_nothing_twice(
    program: Project, dovecot: Dovecot, mail_user: MailUser
) -> None:
    contacts(program, ANA)
    program.cli("tick")
    ask = message_id(program, "ana@example.com")
    reply = samples.reply("ana@example.com", US, ask, "First.", date=now(program))
    bounce = samples.dsn(
        "ana@example.com", ask, date=now(program), status="4.2.2", diagnostic="452 4.2.2 Over quota"
    )
    dovecot.append(mail_user, reply, bounce)
    first = poll(program)
    assert (first.replies, first.soft_bounces) == (1, 1)
    dovecot.set_uidvalidity(mail_user, 424242)
    dovecot.append(
        mail_user, samples.reply("ana@example.com", US, ask, "Second.", date=now(program))
    )
    again = poll(program)
    assert again.uidvalidity_changed and (again.duplicates, again.replies) == (2, 1)
    assert len(events(program, "replied")) == 2 and len(events(program, "bounced")) == 1


@SQLITE_ONLY
async def test_the_server_going_away_mid_poll_loses_and_repeats_nothing(
    make_program: MakeProgram, dovecot: Dovecot, mail_user: MailUser
) -> None:
    program = make_program(batch_size=10, idle_timeout_seconds=0.5)
    await asyncio.to_thread(contacts, program, ANA)
    await asyncio.to_thread(program.cli, "tick")
    ask = message_id(program, "ana@example.com")
    replies = [
        samples.reply("ana@example.com", US, ask, f"Reply {n}.", date=now(program))
        for n in range(150)
    ]
    await asyncio.to_thread(dovecot.append, mail_user, *replies)
    engine = program.engine()
    stop = asyncio.Event()
    task = asyncio.create_task(poll_forever(engine.replies(), stop))
    try:
        await until(lambda: replied(engine) >= 20)
        await asyncio.to_thread(dovecot.stop)  # mid-pass: the connection drops
        await asyncio.sleep(1.0)  # reconnecting (every 0.5 s at most) is refused meanwhile
        await asyncio.to_thread(dovecot.start)
        more = samples.reply("ana@example.com", US, ask, "After the restart.", date=now(program))
        await asyncio.to_thread(dovecot.append, mail_user, more)
        await until(lambda: replied(engine) >= 151, timeout=20)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        engine.close()
    texts = [e.data["text"] for e in events(program, "replied")]
    assert len(texts) == 151 and len(set(texts)) == 151


def replied(engine: Engine) -> int:
    """How many replies are recorded (cheap enough to ask every few milliseconds)."""
    with engine.db.session() as session:
        return session.scalar(select(func.count()).where(Event.type == "replied")) or 0


def watch_mailboxes(monkeypatch: pytest.MonkeyPatch) -> list[Mailbox]:
    """The mailboxes ``poll_forever`` opens, newest last, so a test can wait on their state."""
    opened: list[Mailbox] = []
    open_ = Mailbox.open.__func__  # type: ignore[attr-defined]

    async def watched(cls: type[Mailbox], *args: Any, **kwargs: Any) -> Mailbox:
        box: Mailbox = await open_(cls, *args, **kwargs)
        opened.append(box)
        return box

    monkeypatch.setattr(Mailbox, "open", classmethod(watched))
    return opened


def idling(opened: list[Mailbox]) -> Callable[[], bool]:
    """True once the newest mailbox has an IDLE running on the server."""
    return lambda: bool(opened) and opened[-1].client.has_pending_idle()


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait (briefly sleeping) until ``check()``; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s")
        await asyncio.sleep(0.05)


# -- connections ----------------------------------------------------------------------------


@SQLITE_ONLY
async def test_idle_hears_of_new_mail_at_once(
    make_program: MakeProgram,
    dovecot: Dovecot,
    mail_user: MailUser,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The IDLE is renewed (and the mailbox searched) every 10 minutes: a reply recorded
    # within the wait below can only have been pushed by the server.
    program = make_program(idle_timeout_seconds=600)
    await asyncio.to_thread(contacts, program, ANA)
    engine = program.engine()
    opened = watch_mailboxes(monkeypatch)
    stop = asyncio.Event()
    task = asyncio.create_task(poll_forever(engine.replies(), stop))
    try:
        await until(idling(opened))  # the first pass found nothing; now it listens
        raw = samples.reply("ana@example.com", US, None, "Hello there.", date=now(program))
        await asyncio.to_thread(dovecot.append, mail_user, raw)
        await until(lambda: replied(engine) == 1, timeout=30)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        engine.close()


@SQLITE_ONLY
async def test_a_hung_idle_is_noticed_and_the_connection_replaced(
    make_program: MakeProgram,
    dovecot: Dovecot,
    mail_user: MailUser,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy = await SilentProxy(dovecot.port).start()
    program = make_program(port=proxy.port, idle_timeout_seconds=0.2, timeout=0.3)
    await asyncio.to_thread(contacts, program, ANA)
    engine = program.engine()
    opened = watch_mailboxes(monkeypatch)
    stop = asyncio.Event()
    task = asyncio.create_task(poll_forever(engine.replies(), stop))
    try:
        await until(idling(opened))
        assert proxy.connections == 1
        proxy.silence()  # the connection stays open and says nothing more, ever
        raw = samples.reply("ana@example.com", US, None, "Are you there?", date=now(program))
        await asyncio.to_thread(dovecot.append, mail_user, raw)
        await until(lambda: replied(engine) == 1, timeout=8)
        assert proxy.connections >= 2
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        engine.close()
        await proxy.close()


@SQLITE_ONLY
async def test_without_idle_the_mailbox_is_polled(
    make_program: MakeProgram, dovecot: Dovecot, mail_user: MailUser
) -> None:
    program = make_program(idle=False, poll_seconds=0.1)
    await asyncio.to_thread(contacts, program, ANA)
    engine = program.engine()
    stop = asyncio.Event()
    task = asyncio.create_task(poll_forever(engine.replies(), stop))
    try:
        raw = samples.reply("ana@example.com", US, None, "Polled.", date=now(program))
        await asyncio.to_thread(dovecot.append, mail_user, raw)
        await until(lambda: replied(engine) == 1, timeout=5)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        engine.close()


@SQLITE_ONLY
def test_processed_emails_can_be_moved_to_a_folder(
    make_program: MakeProgram, dovecot: Dovecot, mail_user: MailUser
) -> None:
    program = make_program(processed="move", processed_folder="Engine Done")
    contacts(program, ANA)
    dovecot.append(
        mail_user,
        samples.reply("ana@example.com", US, None, "Moved.", date=now(program)),
        samples.reply("someone@else.example", US, None, "Stays.", date=now(program)),
    )
    assert poll(program).replies == 1
    assert dovecot.count(mail_user, "Engine Done") == 1
    assert dovecot.count(mail_user) == 1  # the email that is not ours stays in the inbox


@SQLITE_ONLY
@pytest.mark.parametrize("security", ["tls", "starttls"])
def test_tls_and_starttls(
    security: str, make_program: MakeProgram, dovecot: Dovecot, mail_user: MailUser
) -> None:
    port = dovecot.tls_port if security == "tls" else dovecot.port
    program = make_program(port=port, security=security, ca_file=str(dovecot.cert_file))
    contacts(program, ANA)
    dovecot.append(mail_user, samples.reply("ana@example.com", US, None, "Hi.", date=now(program)))
    code, out = program.cli("replies", "poll")
    assert code == 0 and "1 replies" in out, out


@SQLITE_ONLY
def test_an_untrusted_certificate_or_a_refused_login_is_a_clear_error(
    make_program: MakeProgram, dovecot: Dovecot
) -> None:
    program = make_program(port=dovecot.tls_port, security="tls")
    code, out = program.cli("replies", "poll")
    assert code == 2 and "CERTIFICATE_VERIFY_FAILED" in out, out
    program = make_program(password="wrong")
    code, out = program.cli("replies", "poll")
    assert code == 2 and "login" in out and "refused" in out, out
    program = make_program(username="")
    code, out = program.cli("replies", "poll")
    assert code == 2 and "imap.username" in out, out


# -- the demo's path ---------------------------------------------------------------------------


@SQLITE_ONLY
def test_process_message_is_the_pollers_path_without_a_server(program: Project) -> None:
    """What the demo does: the same raw reply and DSN, processed without an IMAP server."""
    contacts(program, ANA, BOB)
    program.cli("tick")
    engine = program.engine()
    try:
        ana, bob = message_id(program, "ana@example.com"), message_id(program, "bob@example.com")
        reply = samples.reply("ana@example.com", US, ana, "Yes!", date=now(program))
        assert process_message(engine.replies(), reply).kind == "reply"
        assert process_message(engine.replies(), reply).duplicate
        bounce = process_message(
            engine.replies(), samples.dsn("bob@example.com", bob, date=now(program))
        )
        assert bounce.bounces == ("hard",) and bounce.suppressed
    finally:
        engine.close()
    program.clock.advance(timedelta(days=4))
    program.cli("tick")  # no reminder for either: one replied, one bounced
    assert sent_to(program) == ["ana@example.com", "bob@example.com", OWNER]
    assert [s.email for s in rows(program, select(Suppression))] == ["bob@example.com"]
