"""The one fenced lease queue (engine.store.lease) on SQLite and PostgreSQL: the notes to the
team use it as the outbox does, a lease ends at its instant for everyone, a write whose fence
moved on changes nothing (a webhook's attempt number, once its fence, repeats after a replay),
and migration 0007 moves the notes and webhook deliveries onto it and back."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

import pytest
from alembic import command
from sqlalchemy import inspect, select, text

from engine.base.errors import TemporaryFailure
from engine.mail.smtp import SmtpTransport
from engine.outbound.notes import LEASE
from engine.outbound.webhooks import (
    LEASE_MARGIN,
    Outcome,
    WebhookStats,
    claim_due,
    enqueue_new,
    record_attempt,
    replay_failed,
)
from engine.records.events import record_event
from engine.store.db import Database, _alembic_config
from engine.store.lease import NOTES, Claimed, LeaseQueue
from engine.store.models import Alert, Notification, WebhookDelivery
from tests.conftest import MONDAY, Project


@pytest.fixture
def project(make_project: Callable[..., Project]) -> Project:
    return make_project(shipped=False)


def queue_note(project: Project, to_email: str = "owner@acme.example") -> int:
    """One note due now; its id."""
    engine = project.engine()
    now = project.clock.now()
    with engine.db.write() as session:
        note = Notification(
            key=f"test:{to_email}",
            role="owner",
            to_email=to_email,
            subject="Ann replied",
            body="Ann wrote back.",
            status="queued",
            attempts=0,
            due_at=now,
            created_at=now,
        )
        session.add(note)
        session.flush()
        note_id = note.id
    engine.close()
    return note_id


def the_note(project: Project) -> Notification:
    engine = project.engine()
    with engine.db.session() as session:
        note = session.scalars(select(Notification)).one()
    engine.close()
    return note


async def test_a_notes_worker_that_lost_its_lease_neither_sends_nor_overwrites(
    project: Project,
) -> None:
    queue_note(project)
    engine = project.engine()
    async with SmtpTransport(engine.settings.smtp) as transport:
        late = engine.notifier(transport, worker_id="late")
        [stale] = late.claim()  # ... and the worker hangs here
        assert await engine.notifier(transport, worker_id="early").send_due() == 0  # leased
        project.clock.advance(LEASE)  # the lease ends: the note is anyone's again
        fresh = engine.notifier(transport, worker_id="fresh")
        assert await fresh.send_due() == 1
        sent_at = project.clock.now()
        project.clock.advance(timedelta(minutes=1))
        # The late worker wakes up: its results, whatever they are, change nothing ...
        assert not late.record(stale, TemporaryFailure("451 4.3.0 Try again later", code=451))
        assert not late.record(stale, None)
        # ... and it cannot send the note a second time.
        assert not await late.send(stale)
    assert [m.rcpt_tos[0] for m in project.sink.messages] == ["owner@acme.example"]
    note = the_note(project)
    assert (note.status, note.sent_at, note.last_error) == ("sent", sent_at, None)
    assert (note.attempts, note.fence, note.lease_owner, note.lease_until) == (2, 2, None, None)
    engine.close()


async def test_a_note_refused_for_now_waits_as_the_server_asks(project: Project) -> None:
    queue_note(project)
    project.sink.rcpt_responses["owner@acme.example"] = "451 4.2.0 Greylisted, retry in 10 minutes"
    engine = project.engine()
    async with SmtpTransport(engine.settings.smtp) as transport:
        assert await engine.notifier(transport).send_due() == 0
    note = the_note(project)
    # The backoff alone would say 2 minutes; the server's hint is the floor.
    assert (note.status, note.attempts) == ("queued", 1)
    assert note.due_at == MONDAY + timedelta(minutes=10)
    assert (note.lease_owner, note.lease_until) == (None, None)
    engine.close()


def test_a_lease_ends_at_its_instant_for_everyone(project: Project) -> None:
    note_id = queue_note(project)
    engine = project.engine()
    db = engine.db

    def at(minutes: float) -> datetime:
        return MONDAY + timedelta(minutes=minutes)

    def claim(owner: str, now: datetime, until: datetime) -> list[Claimed]:
        due = NOTES.select_due(Notification.id, now)
        with db.write() as session:
            return NOTES.claim(session, db, due, owner=owner, until=until, limit=5)

    def extend(claimed: Claimed, now: datetime, until: datetime) -> bool:
        with db.write() as session:
            return NOTES.extend(session, claimed, now=now, until=until)

    [first] = claim("a", at(0), until=at(5))
    assert first == Claimed(note_id, fence=1, attempt=1)
    assert extend(first, at(4), until=at(10))  # renewed while it runs
    assert claim("b", at(10) - timedelta(microseconds=1), until=at(20)) == []  # held ...
    assert not extend(first, at(10), until=at(15))  # ... until its end, which it cannot pass
    [second] = claim("b", at(10), until=at(20))  # from then on anyone's: no gap, no overlap
    assert second == Claimed(note_id, fence=2, attempt=2)
    with db.write() as session:  # the first claim's writes change nothing now
        assert not NOTES.finish(session, first, status="sent")
        NOTES.give_back(session, [first])
    note = the_note(project)
    assert (note.status, note.attempts, note.fence, note.lease_owner) == ("queued", 2, 2, "b")
    with db.write() as session:
        NOTES.give_back(session, [second])  # unsent: the claim's attempt is not counted
    note = the_note(project)
    assert (note.status, note.attempts, note.lease_owner, note.lease_until) == (
        "queued",
        1,
        None,
        None,
    )
    engine.close()


def test_a_table_without_the_lease_columns_is_no_queue() -> None:
    with pytest.raises(TypeError, match="Alert has no lease columns"):
        LeaseQueue(Alert, due="created_at", waiting="new")


# -- webhook deliveries ----------------------------------------------------------------------


def test_a_late_webhook_result_from_before_a_replay_changes_nothing(
    make_project: Callable[..., Project],
) -> None:
    hooked = make_project(
        shipped=False,
        extra='[webhooks]\nurls = ["https://hooks.example/in"]\n'
        'secret = "whsec-test-0123456789abcdef"\ntimeout_seconds = 0.5\n',
    )
    engine = hooked.engine()
    with engine.db.write() as session:
        record_event(session, "replied", hooked.clock.now(), contact_id=None)
    assert enqueue_new(engine.webhooks()) == 1
    (lost,) = claim_due(engine.webhooks())  # attempt 1 ... and the worker hangs here
    hooked.clock.advance(timedelta(seconds=0.5) + LEASE_MARGIN)
    (gone,) = claim_due(engine.webhooks())  # attempt 2: the receiver says 410 Gone
    record_attempt(engine.webhooks(), gone, Outcome(410, "HTTP 410 Gone"), WebhookStats())
    assert replay_failed(engine.db, hooked.clock.now(), engine.settings.webhooks.urls).replayed
    (held,) = claim_due(engine.webhooks())  # attempt 1 again, after the replay
    assert held.attempt == lost.attempt == 1
    # The attempt number repeats; the fence does not: the hung worker's word is not taken.
    late = WebhookStats()
    record_attempt(engine.webhooks(), lost, Outcome(200), late)
    assert late.lost == 1
    current = WebhookStats()
    record_attempt(engine.webhooks(), held, Outcome(500, "HTTP 500"), current)
    assert current.retried == 1
    with engine.db.session() as session:
        row = session.scalars(select(WebhookDelivery)).one()
    assert (row.status, row.attempts, row.fence, row.last_status) == ("pending", 1, 3, 500)
    assert (row.lease_owner, row.lease_until) == (None, None)
    engine.close()


# -- migration 0007 -------------------------------------------------------------------------


@pytest.fixture
def bare(db_url: str) -> Iterator[Database]:
    """A database with no schema yet (migrated by the test)."""
    db = Database(db_url, auto_migrate=False)
    yield db
    db.dispose()


def columns(db: Database, table: str) -> set[str]:
    return {c["name"] for c in inspect(db.engine).get_columns(table)}


def test_migration_0007_adds_the_lease_columns_and_its_downgrade_keeps_leases(
    bare: Database,
) -> None:
    config = _alembic_config(bare.engine)
    command.upgrade(config, "0006")
    at = {"now": datetime(2026, 3, 2, 10, 0)}  # naive UTC, as stored
    with bare.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO notifications (id, key, role, to_email, subject, body, status,"
                " attempts, due_at, created_at) VALUES"
                " (1, 'k1', 'owner', 'o@example.com', 's', 'b', 'queued', 0, :now, :now),"
                " (2, 'k2', 'owner', 'o@example.com', 's', 'b', 'queued', 1, :now, :now)"
            ),
            at,
        )
        conn.execute(
            text(
                "INSERT INTO events (id, type, occurred_at, data, machine)"
                " VALUES (1, 'replied', :now, '{}', false)"
            ),
            at,
        )
        conn.execute(
            text(
                "INSERT INTO webhook_deliveries (id, event_id, url, status, attempts, next_at,"
                " created_at) VALUES (1, 1, 'https://h.example/x', 'pending', 0, :now, :now)"
            ),
            at,
        )
    command.upgrade(config, "head")
    lease = {"lease": datetime(2026, 3, 2, 10, 10)}
    with bare.engine.begin() as conn:
        rows = conn.execute(text("SELECT fence, lease_owner, lease_until FROM notifications"))
        assert rows.all() == [(0, None, None), (0, None, None)]
        # Note 2 and the delivery are leased when the schema goes back.
        conn.execute(
            text("UPDATE notifications SET lease_until = :lease, fence = 1 WHERE id = 2"), lease
        )
        conn.execute(text("UPDATE webhook_deliveries SET lease_until = :lease, fence = 1"), lease)
    command.downgrade(config, "0006")
    for table in ("notifications", "webhook_deliveries"):
        assert not {"lease_owner", "lease_until", "fence"} & columns(bare, table)
    with bare.engine.connect() as conn:
        notes = conn.execute(text("SELECT id, attempts, due_at FROM notifications ORDER BY id"))
        due = [(id_, attempts, str(due_at)[:16]) for id_, attempts, due_at in notes]
        # The leased note is out of reach the old way (its due time pushed past the lease).
        assert due == [(1, 0, "2026-03-02 10:00"), (2, 1, "2026-03-02 10:10")]
        next_at = conn.execute(text("SELECT next_at FROM webhook_deliveries")).scalar()
        assert str(next_at)[:16] == "2026-03-02 10:10"
    command.upgrade(config, "head")
    assert {"lease_owner", "lease_until", "fence"} <= columns(bare, "webhook_deliveries")
