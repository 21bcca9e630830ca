"""The outbox under stress: leases with fencing, two workers, kill -9 in the middle of a batch."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import subprocess
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event, func, select, update

from engine.base.errors import TemporaryFailure
from engine.mail.smtp import SmtpTransport
from engine.records.events import record_event
from engine.send.batch import load
from engine.send.sender import Claimed, SendStats
from engine.store.db import transaction
from engine.store.models import Contact, Enrollment, Event, Message, Suppression
from engine.wiring import Engine
from tests.conftest import MONDAY, ROOT, Project
from tests.support.scenario import HEADER, contacts, engine_command, sent_to, setup


def promoters(n: int) -> list[str]:
    return [
        f"p{i:03d}@example.com,P{i},L,Co,UTC,10,2026-01-01,2025-01-01,,en,customer"
        for i in range(n)
    ]


@pytest.fixture
def program(make_project: Callable[..., Project]) -> Project:
    return setup(make_project(shipped=False))


async def test_a_worker_whose_lease_expired_cannot_send_or_record(program: Project) -> None:
    contacts(program, *promoters(5))
    engine = program.engine()
    engine.planner().plan()
    async with SmtpTransport(engine.settings.smtp) as transport:
        late = engine.sender(transport, worker_id="late")
        claimed = late.claim(10)
        assert len(claimed) == 5
        program.clock.advance(timedelta(seconds=engine.settings.schedule.lease_seconds + 1))
        fresh = engine.sender(transport, worker_id="fresh")
        stats = await fresh.send_due()
        assert stats.sent == 5
        # The late worker wakes up: its fence is stale, so nothing is sent or recorded again.
        late_stats = SendStats()
        await late.deliver(claimed, late_stats, None)
        assert late_stats.sent == 0 and late_stats.skipped == 5
        await late._record_sent(claimed[0], late_stats)
        assert late_stats.sent == 0
    assert len(program.sink.messages) == 5
    with engine.db.session() as s:
        assert (
            s.scalar(select(func.count()).select_from(Message).where(Message.status == "sent")) == 5
        )
    engine.close()


def test_two_workers_share_the_work_without_sending_twice(program: Project) -> None:
    """Two worker processes (their claims race, as in production), small batches."""
    n = 40
    contacts(program, *promoters(n))
    engine = program.engine()
    engine.planner().plan()
    engine.close()
    program.sink.delay_seconds = 0.05  # each worker is still at it when the other claims
    cmd, env = engine_command(program, "tick")
    env |= {"ENGINE_SCHEDULE_BATCH_SIZE": "2", "ENGINE_SMTP_CONNECTIONS": "2"}
    workers = [
        subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=120)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs
    shares = [int(out.split("sent ", 1)[1].split(",", 1)[0]) for out in outputs]
    assert sum(shares) == n and all(shares), shares
    received = Counter(m.rcpt_tos[0] for m in program.sink.messages)
    assert len(received) == n and set(received.values()) == {1}
    assert {r.status for r in outbox(program).values()} == {"sent"}


@pytest.mark.slow
def test_kill_9_in_the_middle_of_a_batch_loses_nothing(program: Project) -> None:
    n = 12
    contacts(program, *promoters(n))
    program.sink.delay_seconds = 0.15
    cmd, env = engine_command(program, "tick")
    env["ENGINE_SMTP_CONNECTIONS"] = "1"
    proc = subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert program.sink.wait_for(4, timeout=60), proc.stdout.read() if proc.stdout else ""
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert program.sink.wait_for_open_connections(0)
    # Connections numbered up to here were the killed worker's: it can open no more.
    killed_connections = program.sink.connections
    program.sink.delay_seconds = 0
    # Same instant: the killed worker's leases still hold, so nothing is sent twice now.
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    from_killed = [m for m in program.sink.messages if m.connection <= killed_connections]
    assert len(program.sink.messages) == len(from_killed)
    assert 0 < len(from_killed) < n, "the kill came too late to test anything"
    # After the lease expires, the rows it held are claimed again.
    later = (program.clock.now() + timedelta(minutes=6)).isoformat()
    done = subprocess.run(
        [*cmd[:6], later, "tick"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr

    rows = outbox(program)
    assert len(rows) == n and {r.status for r in rows.values()} == {"sent"}
    received = program.sink.messages
    assert {m.rcpt_tos[0] for m in received} == set(rows)  # nothing lost
    # Every copy, the first or a second one, carries the Message-ID fixed at planning time.
    for m in received:
        assert m.message["Message-ID"] == rows[m.rcpt_tos[0]].message_id, m.rcpt_tos[0]
    # Only the email in flight at the kill may go twice: with one connection, the last one
    # the killed worker handed over (the server took it; the worker died before recording it).
    twice = {r for r, c in Counter(m.rcpt_tos[0] for m in received).items() if c > 1}
    assert twice <= {from_killed[-1].rcpt_tos[0]}
    for rcpt in twice:
        copies = [m.message["Message-ID"] for m in received if m.rcpt_tos[0] == rcpt]
        assert len(copies) == 2 and copies[0] == copies[1]


async def test_a_stop_mid_batch_gives_back_what_it_holds(program: Project) -> None:
    n = 5
    contacts(program, *promoters(n))
    one = program.settings
    one = dataclasses.replace(one, smtp=dataclasses.replace(one.smtp, connections=1))
    engine = Engine.build(one, program.clock)
    engine.planner().plan()
    planned = outbox(program)
    # The sink holds each DATA a while: time to ask the worker to stop with one in flight.
    # (tests/support/smtp_server.py offers a delay, not a gate to hold DATA until told.)
    program.sink.delay_seconds = 0.5
    stop = asyncio.Event()
    async with SmtpTransport(engine.settings.smtp) as transport:
        stopping = engine.sender(transport, worker_id="stopping")
        sending = asyncio.create_task(stopping.send_due(stop))
        await asyncio.to_thread(program.sink.wait_for_data)
        stop.set()  # what SIGTERM does to `run`
        first = await sending
        program.sink.delay_seconds = 0
        gone = {m.rcpt_tos[0] for m in program.sink.messages}
        # At least the one in flight, at most what the worker could send before it looked.
        assert 1 <= len(gone) < n and first.sent == len(gone)
        rows = outbox(program)
        for email, row in rows.items():
            assert row.message_id == planned[email].message_id
            if email in gone:  # the one in flight finished and was recorded as sent
                assert (row.status, row.attempts) == ("sent", 1)
            else:  # back in the queue with no lease, as if never claimed
                assert (row.status, row.attempts) == ("queued", 0)
                assert (row.lease_owner, row.lease_until) == (None, None)
        # Another worker takes them at once, not after the lease would have run out.
        other = engine.sender(transport, worker_id="other")
        claimed = other.claim(n)
        assert len(claimed) == n - len(gone)
        stats = SendStats()
        await other.deliver(claimed, stats, None)
        assert stats.sent == len(claimed)
    received = program.sink.messages
    assert sorted(m.rcpt_tos[0] for m in received) == sorted(planned)  # each exactly once
    for m in received:
        assert m.message["Message-ID"] == planned[m.rcpt_tos[0]].message_id
    engine.close()


def test_planning_touches_only_due_work(program: Project) -> None:
    contacts(program, *promoters(3))
    engine = program.engine()
    first = engine.planner().plan()
    assert first.checked == 3 and first.enrolled == 3 and first.planned == 3
    again = engine.planner().plan()
    assert (again.checked, again.enrolled, again.planned, again.events) == (0, 0, 0, 0)
    engine.close()


def test_header_row_only_csv(program: Project) -> None:
    path = program.contacts(HEADER)
    code, out = program.cli("contacts", "import", str(path))
    assert code == 0 and "0 created" in out


def outbox(project: Project) -> dict[str, Message]:
    """Each contact's email -> its (only) outbox row."""
    engine = project.engine()
    with engine.db.session() as s:
        rows = s.execute(
            select(Contact.email, Message).join(Message, Message.contact_id == Contact.id)
        ).all()
    engine.close()
    return {email: message for email, message in rows}


def statuses(project: Project) -> dict[str, str]:
    """Each contact's email -> the status of its (only) outbox row."""
    return {email: message.status for email, message in outbox(project).items()}


async def test_an_email_stopped_after_the_claim_is_not_sent(program: Project) -> None:
    contacts(program, *promoters(5))
    engine = program.engine()
    engine.planner().plan()
    now = program.clock.now()
    async with SmtpTransport(engine.settings.smtp) as transport:
        sender = engine.sender(transport, worker_id="w")
        claimed = sender.claim(10)
        assert len(claimed) == 5
        # While the batch is under way: an unsubscribe event, an unsubscribe written onto the
        # contact, a suppression, and an enrollment stopped without its email cancelled.
        with engine.db.write() as s:
            ids = {email: id_ for email, id_ in s.execute(select(Contact.email, Contact.id))}
            record_event(s, "unsubscribed", now, contact_id=ids["p001@example.com"])
            s.execute(
                update(Contact)
                .where(Contact.id == ids["p002@example.com"])
                .values(unsubscribed_at=now)
            )
            s.add(Suppression(email="p003@example.com", reason="complaint", created_at=now))
            s.execute(
                update(Enrollment)
                .where(Enrollment.contact_id == ids["p004@example.com"])
                .values(status="stopped")
            )
        stats = SendStats()
        await sender.deliver(claimed, stats, None)
        assert stats.sent == 1 and stats.skipped == 4
        assert sent_to(program) == ["p000@example.com"]
        # Not left in "sending" until the lease runs out: back in the queue, where the claim
        # skips them and the planner cancels what the unsubscribe ended.
        assert statuses(program) == {
            "p000@example.com": "sent",
            **{f"p00{i}@example.com": "queued" for i in range(1, 5)},
        }
        engine.planner().plan()
        assert statuses(program)["p001@example.com"] == "cancelled"
        assert (await sender.send_due()).sent == 0
    assert sent_to(program) == ["p000@example.com"]
    engine.close()


async def test_an_email_cancelled_during_its_smtp_transaction_is_recorded_as_sent(
    program: Project,
) -> None:
    contacts(program, *promoters(1))
    engine = program.engine()
    engine.planner().plan()
    async with SmtpTransport(engine.settings.smtp) as transport:
        sender = engine.sender(transport, worker_id="w")
        [c] = sender.claim(10)
        with engine.db.write_connection() as conn:
            assert transaction(conn, lambda tx: sender.claims.fence(tx, c)) is True
        # Its SMTP transaction is under way when a reply ends the enrollment.
        program.clock.advance(timedelta(seconds=3))
        with engine.db.write() as s:
            enrollment = s.scalars(select(Enrollment)).one()
            engine.planner().end_enrollment(
                s, enrollment, "stopped", "replied", program.clock.now()
            )
        assert statuses(program) == {"p000@example.com": "cancelled"}
        stats = SendStats()
        # A worker whose fence moved on still never records anything.
        await sender._record_sent(Claimed(c.id, c.fence - 1), stats, "stale")
        assert stats.sent == 0 and stats.skipped == 1
        # The server accepted the email: it went out, so it is recorded as sent.
        await sender._record_sent(c, stats, "P0, who could you introduce?")
        assert stats.sent == 1
    with engine.db.session() as s:
        message = s.scalars(select(Message)).one()
        assert (message.status, message.sent_at) == ("sent", program.clock.now())
        assert message.subject == "P0, who could you introduce?"
        assert message.lease_owner is None and message.lease_until is None
        assert s.scalars(select(Enrollment.status)).one() == "stopped"
    engine.close()


async def test_a_hard_bounce_of_an_address_suppressed_meanwhile_is_recorded(
    program: Project,
) -> None:
    contacts(program, *promoters(2))
    program.sink.rcpt_responses["p000@example.com"] = "550 5.1.1 <p000@example.com>: user unknown"
    engine = program.engine()
    engine.planner().plan()
    raced: list[str] = []

    def race(_conn: object, cursor: object, statement: str, *_args: object) -> None:
        """Someone else (a complaint, another worker's bounce) suppresses the address between
        the sender deciding to suppress it and its INSERT."""
        if not raced and statement.lstrip().upper().startswith("INSERT INTO SUPPRESSIONS"):
            raced.append(statement)
            cursor.execute(  # type: ignore[attr-defined]
                "INSERT INTO suppressions (email, reason, created_at)"
                " VALUES ('p000@example.com', 'complaint', '2026-03-02 09:00:00')"
            )

    event.listen(engine.db.engine, "before_cursor_execute", race)
    async with SmtpTransport(engine.settings.smtp) as transport:
        stats = await engine.sender(transport, worker_id="w").send_due()
    event.remove(engine.db.engine, "before_cursor_execute", race)
    assert raced
    assert (stats.sent, stats.failed, stats.bounced) == (1, 1, 1)
    assert statuses(program) == {"p000@example.com": "failed", "p001@example.com": "sent"}
    with engine.db.session() as s:
        assert s.scalars(select(Suppression.reason)).all() == ["complaint"]
        bounces = s.scalars(select(Event.data).where(Event.type == "bounced")).all()
        assert [b["hard"] for b in bounces] == [True]
    engine.close()


async def test_a_failed_delivery_schedules_the_contacts_reentry(program: Project) -> None:
    contacts(program, *promoters(1))
    program.sink.rcpt_responses["p000@example.com"] = "552 5.2.2 Mailbox full"
    engine = program.engine()
    engine.planner().plan()
    async with SmtpTransport(engine.settings.smtp) as transport:
        stats = await engine.sender(transport, worker_id="w").send_due()
    assert stats.failed == 1 and stats.bounced == 0
    with engine.db.session() as s:
        enrollment = s.scalars(select(Enrollment)).one()
        assert enrollment.status == "stopped"
        # The ask sequence's audience lets a contact in again 90 days after the last entry.
        check_at = s.scalars(select(Contact.check_at)).one()
        assert check_at == enrollment.started_at + timedelta(days=90)
    engine.close()


async def test_a_worker_that_lost_the_lease_does_not_give_up_on_the_enrollment(
    program: Project,
) -> None:
    contacts(program, *promoters(1))
    engine = program.engine()
    engine.planner().plan()
    max_attempts = engine.settings.smtp.max_attempts
    async with SmtpTransport(engine.settings.smtp) as transport:
        late = engine.sender(transport, worker_id="late")
        [old] = late.claim(10)
        program.clock.advance(timedelta(seconds=engine.settings.schedule.lease_seconds + 1))
        fresh = engine.sender(transport, worker_id="fresh")
        [new] = fresh.claim(10)
        with engine.db.write() as s:
            s.execute(update(Message).values(attempts=max_attempts))
        row = load(engine.db, [new])[new.id]
        failure = TemporaryFailure("451 4.3.0 Try again later", code=451)
        stats = SendStats()
        late.outcomes.retry(old, failure, stats, row)  # its last attempt, but no longer its row
        assert (stats.failed, stats.skipped) == (0, 1)
        with engine.db.session() as s:
            assert s.scalars(select(Enrollment.status)).one() == "active"
            assert s.scalars(select(Message.status)).one() == "sending"
        fresh.outcomes.retry(new, failure, stats, row)
        assert stats.failed == 1
    with engine.db.session() as s:
        assert s.scalars(select(Enrollment.status)).one() == "stopped"
        assert s.scalars(select(Message.status)).one() == "failed"
    engine.close()


async def test_a_retry_waits_for_the_send_window(program: Project) -> None:
    program.clock.set(MONDAY.replace(hour=16))  # the window (mon-fri 09:00-17:00 UTC) is open
    contacts(program, *promoters(1))
    program.sink.rcpt_responses["p000@example.com"] = "451 4.3.0 Try again in 6 hours"
    engine = program.engine()
    engine.planner().plan()
    async with SmtpTransport(engine.settings.smtp) as transport:
        stats = await engine.sender(transport, worker_id="w").send_due()
    assert stats.retried == 1
    with engine.db.session() as s:
        message = s.scalars(select(Message)).one()
    # 16:00 + 6 h is 22:00: the window opens again Tuesday 09:00.
    assert (message.status, message.due_at) == ("queued", datetime(2026, 3, 3, 9, tzinfo=UTC))
    engine.close()


async def test_a_servers_retry_hint_is_honoured_up_to_the_longest_wait(
    program: Project,
) -> None:
    contacts(program, *promoters(1))
    program.sink.rcpt_responses["p000@example.com"] = "451 4.3.0 Try again in 6 hours"
    settings = program.settings
    settings = dataclasses.replace(
        settings, smtp=dataclasses.replace(settings.smtp, retry_max_seconds=3600)
    )
    engine = Engine.build(settings, program.clock)
    engine.planner().plan()
    async with SmtpTransport(engine.settings.smtp) as transport:
        stats = await engine.sender(transport, worker_id="w").send_due()
    assert stats.retried == 1
    with engine.db.session() as s:
        message = s.scalars(select(Message)).one()
    # smtp.retry_max_seconds is the longest wait between two attempts, whatever the server asks.
    assert (message.status, message.due_at) == ("queued", MONDAY + timedelta(hours=1))
    engine.close()


async def test_an_email_requeued_by_a_policy_pause_waits_for_the_send_window(
    program: Project,
) -> None:
    program.clock.set(MONDAY.replace(hour=16, minute=30))
    contacts(program, *promoters(1))
    program.sink.rcpt_responses["p000@example.com"] = "550 5.7.1 Message rejected: sender blocked"
    engine = program.engine()
    engine.planner().plan()
    async with SmtpTransport(engine.settings.smtp) as transport:
        stats = await engine.sender(transport, worker_id="w").send_due()
    assert stats.paused
    with engine.db.session() as s:
        message = s.scalars(select(Message)).one()
    # Paused until 17:30, after the window closed: it waits for Tuesday 09:00.
    assert (message.status, message.due_at) == ("queued", datetime(2026, 3, 3, 9, tzinfo=UTC))
    engine.close()


async def test_a_hard_bounce_of_an_email_cancelled_in_flight_still_suppresses(
    program: Project,
) -> None:
    contacts(program, *promoters(1))
    engine = program.engine()
    engine.planner().plan()
    program.sink.delay_seconds = 0.3
    program.sink.data_response_once = "550 5.1.1 <p000@example.com>: user unknown"
    async with SmtpTransport(engine.settings.smtp) as transport:
        sending = asyncio.create_task(engine.sender(transport).send_due())
        await asyncio.to_thread(program.sink.wait_for_data)  # the server is holding DATA
        with engine.db.write() as s:  # an unsubscribe cancels the email meanwhile
            s.execute(update(Message).values(status="cancelled"))
        stats = await sending
    assert (stats.bounced, stats.skipped, stats.failed) == (1, 1, 0)
    with engine.db.session() as s:
        assert s.scalars(select(Suppression.email)).all() == ["p000@example.com"]
        bounce = s.scalars(select(Event).where(Event.type == "bounced")).one()
        assert bounce.data["hard"] is True
        assert s.scalars(select(Message.status)).one() == "cancelled"
    engine.close()
