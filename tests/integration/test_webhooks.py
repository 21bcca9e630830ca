"""Webhooks against a real HTTP receiver on 127.0.0.1: signatures, retries on the injected
clock, giving up, 410, replay through the CLI, idempotent queueing, two workers, and ticks
that never wait on a slow receiver. The database side runs on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from email.message import Message as Headers
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, func, insert, select, update

from engine.base.errors import SettingsError
from engine.base.retry import retry_delay
from engine.mail.smtp import SmtpTransport
from engine.outbound import webhooks
from engine.outbound.webhooks import (
    CONCURRENCY,
    HOLE_GRACE,
    JITTER,
    LEASE_MARGIN,
    WATERMARK,
    Outcome,
    WebhookStats,
    claim_due,
    deliver_due,
    enqueue_new,
    record_attempt,
    webhooks_forever,
)
from engine.program.settings import load_settings
from engine.records.events import record_event
from engine.scheduler import tick
from engine.store.models import Contact, Event, Meta, WebhookDelivery
from engine.wiring import Engine
from tests.conftest import MONDAY, ROOT, Project
from tests.support.scenario import contacts, sent_to, setup

SECRET = "whsec-test-0123456789abcdef"
TIMEOUT = 0.5
BASE = 30.0
ANA = "ana@example.com,Ana,Lima,Lima Co,UTC,10,2026-01-01,2025-01-01,,en,customer"


# -- the receiver ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int = 200
    delay: float = 0.0  # seconds before answering (longer than the timeout: a slow receiver)
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    path: str
    headers: Headers
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """A real HTTP server on 127.0.0.1 that records every POST and answers as scripted
    (``answer(500, Answer(delay=5), 410)``; 200 once the script runs out). ``stop`` closes
    the port (connection refused); ``start`` opens it again on the same port."""

    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.script: deque[Answer] = deque()
        self.release = threading.Event()  # ends every slow answer at once
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answer(self, *answers: int | Answer) -> None:
        self.script.extend(a if isinstance(a, Answer) else Answer(a) for a in answers)

    def _next(self, hit: Hit) -> Answer:
        with self._lock:
            self.hits.append(hit)
            return self.script.popleft() if self.script else Answer()

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                answer = receiver._next(Hit(self.path, self.headers, body))
                if answer.delay:
                    receiver.release.wait(answer.delay)
                text = b"nope" if answer.status >= 300 else b"ok"
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(text)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(text)
                self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 128  # many attempts connect at once

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that gave up (timeout) before the answer: expected here

        self._server = Server(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        # A short poll: stop() returns at once instead of after half a second.
        threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.release.set()
    r.stop()


def hooks_toml(*urls: str, **values: object) -> str:
    settings: dict[str, object] = {
        "urls": list(urls),
        "secret": SECRET,
        "timeout_seconds": TIMEOUT,
        "retry_base_seconds": BASE,
        "max_attempts": 6,
        **values,
    }
    return "[webhooks]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())


@pytest.fixture
def hooked(make_project: Callable[..., Project], receiver: Receiver) -> Project:
    """A project without sequences (``setup`` adds the scenario's) whose webhooks point at
    the receiver."""
    return make_project(shipped=False, extra=hooks_toml(f"{receiver.url}/hooks"))


@pytest.fixture
def engine(hooked: Project) -> Iterator[Engine]:
    built = hooked.engine()
    yield built
    built.close()


# -- helpers --------------------------------------------------------------------------------


def record(
    engine: Engine,
    type_: str,
    *,
    email: str = "ana@example.com",
    data: dict[str, Any] | None = None,
    machine: bool = False,
) -> int:
    """Record an event about ``email`` (created on first use) as the engine's parts do."""
    now = engine.clock.now()
    with engine.db.write() as session:
        contact = session.scalar(select(Contact).where(Contact.email == email))
        if contact is None:
            contact = Contact(
                email=email, referral_code=secrets.token_hex(8), created_at=now, updated_at=now
            )
            session.add(contact)
            session.flush()
        event = record_event(session, type_, now, contact_id=contact.id, data=data)
        event.machine = machine
        session.flush()
        return event.id


def deliver(engine: Engine) -> WebhookStats:
    return asyncio.run(deliver_due(engine.webhooks()))


def rows(engine: Engine) -> list[WebhookDelivery]:
    with engine.db.session() as session:
        return list(session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)))


def one_row(engine: Engine) -> WebhookDelivery:
    (row,) = rows(engine)
    return row


def readme_verify() -> Callable[..., bool]:
    """The receiver's check exactly as the README shows it (so the documentation is tested)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    code = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "def verify" in b)
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    return namespace["verify"]  # type: ignore[no-any-return]


def advance_past_retry(engine: Engine, project: Project) -> None:
    """Move the clock to the row's next try (the jittered backoff the engine chose)."""
    row = one_row(engine)
    project.clock.set(max(row.next_at, project.clock.now()))


# -- the request ----------------------------------------------------------------------------


def test_a_delivery_is_signed_json_with_the_documented_headers(
    engine: Engine, receiver: Receiver
) -> None:
    event_id = record(engine, "referral.created", data={"friend_email": "bo@example.com"})
    assert enqueue_new(engine.webhooks()) == 1
    stats = deliver(engine)
    assert stats.delivered == 1 and stats.errors == []

    (hit,) = receiver.hits
    row = one_row(engine)
    assert hit.path == "/hooks"
    assert hit.headers["Content-Type"] == "application/json"
    assert hit.headers["X-Engine-Event"] == "referral.created"
    assert hit.headers["X-Engine-Delivery"] == str(row.id)
    # Real time, not the simulated clock: receivers check it against their own.
    assert abs(int(hit.headers["X-Engine-Timestamp"]) - time.time()) < 60
    assert hit.json == {
        "id": event_id,
        "type": "referral.created",
        "occurred_at": "2026-03-02T10:00:00Z",
        "contact": {"email": "ana@example.com"},
        "sequence": None,
        "step": None,
        "data": {"friend_email": "bo@example.com"},
    }
    assert SECRET not in hit.body.decode()

    verify = readme_verify()
    assert verify(SECRET, hit.headers, hit.body)  # the README's function, at the real time
    now = time.time()
    assert not verify("another-secret-0123456789", hit.headers, hit.body, now=now)
    assert not verify(SECRET, hit.headers, hit.body.replace(b"bo@", b"eve@"), now=now)
    assert not verify(SECRET, hit.headers, hit.body, now=now + 600)  # a replay, too late

    assert (row.status, row.attempts, row.last_status, row.delivered_at) == (
        "delivered",
        1,
        200,
        MONDAY,
    )


def test_an_erased_contact_goes_out_without_personal_data(
    engine: Engine, receiver: Receiver
) -> None:
    record(engine, "unsubscribed")
    with engine.db.write() as session:
        session.execute(update(Contact).values(erased_at=MONDAY))
    enqueue_new(engine.webhooks())
    deliver(engine)
    assert receiver.hits[0].json["contact"] is None


# -- retries --------------------------------------------------------------------------------


def test_failures_are_retried_with_backoff_on_the_clock_until_delivered(
    engine: Engine, receiver: Receiver, hooked: Project
) -> None:
    clock = hooked.clock
    record(engine, "replied")
    enqueue_new(engine.webhooks())
    receiver.answer(500, Answer(delay=10), Answer(302, headers={"Location": "/elsewhere"}))

    # 1: a 500
    assert deliver(engine).retried == 1
    row = one_row(engine)
    assert (row.status, row.attempts, row.last_status) == ("pending", 1, 500)
    assert str(row.last_error).startswith("HTTP 500 Internal Server Error: nope")
    assert MONDAY + timedelta(seconds=BASE / 2) <= row.next_at <= MONDAY + timedelta(seconds=BASE)
    assert deliver(engine).attempted == 0  # not due yet: nothing is tried
    assert len(receiver.hits) == 1

    # 2: no answer within the timeout
    advance_past_retry(engine, hooked)
    started = time.monotonic()
    assert deliver(engine).retried == 1
    assert time.monotonic() - started < TIMEOUT + 3  # the receiver would take 10 s
    row = one_row(engine)
    assert (row.attempts, row.last_status, row.last_error) == (2, None, "no response within 0.5 s")
    assert clock.now() + timedelta(seconds=BASE) <= row.next_at
    assert row.next_at <= clock.now() + timedelta(seconds=2 * BASE)

    # 3: nobody listening
    receiver.stop()
    advance_past_retry(engine, hooked)
    assert deliver(engine).retried == 1
    row = one_row(engine)
    assert row.attempts == 3 and "ConnectError" in str(row.last_error)
    assert row.next_at >= clock.now() + timedelta(seconds=2 * BASE)

    # 4: a redirect, not followed
    receiver.start()
    advance_past_retry(engine, hooked)
    assert deliver(engine).retried == 1
    row = one_row(engine)
    assert row.last_status == 302 and "/elsewhere (redirects are not followed)" in str(
        row.last_error
    )

    # 5: delivered
    advance_past_retry(engine, hooked)
    assert deliver(engine).delivered == 1
    row = one_row(engine)
    assert (row.status, row.attempts, row.last_error, row.delivered_at) == (
        "delivered",
        5,
        None,
        clock.now(),
    )
    assert [h.path for h in receiver.hits] == ["/hooks"] * 4  # never /elsewhere
    assert len({h.body for h in receiver.hits}) == 1
    assert {h.headers["X-Engine-Delivery"] for h in receiver.hits} == {str(row.id)}
    # Each attempt is signed afresh, at its own (real) time.
    stamps = [int(h.headers["X-Engine-Timestamp"]) for h in receiver.hits]
    assert stamps == sorted(stamps) and abs(stamps[-1] - time.time()) < 60
    verify = readme_verify()
    for hit in receiver.hits:
        assert verify(SECRET, hit.headers, hit.body)


def test_retry_after_is_honoured(engine: Engine, receiver: Receiver) -> None:
    record(engine, "bounced")
    enqueue_new(engine.webhooks())
    receiver.answer(Answer(503, headers={"Retry-After": "3600"}))
    deliver(engine)
    assert one_row(engine).next_at == MONDAY + timedelta(hours=1)


def test_it_gives_up_after_max_attempts(
    engine: Engine, receiver: Receiver, hooked: Project
) -> None:
    record(engine, "replied")
    enqueue_new(engine.webhooks())
    receiver.answer(*[500] * 10)
    for attempt in range(1, 7):
        stats = deliver(engine)
        assert (stats.retried, stats.failed) == ((1, 0) if attempt < 6 else (0, 1))
        advance_past_retry(engine, hooked)
    row = one_row(engine)
    assert (row.status, row.attempts, row.last_status) == ("failed", 6, 500)
    hooked.clock.advance(timedelta(days=7))
    assert deliver(engine).attempted == 0
    assert len(receiver.hits) == 6


def test_410_gone_fails_at_once(engine: Engine, receiver: Receiver, hooked: Project) -> None:
    record(engine, "replied")
    enqueue_new(engine.webhooks())
    receiver.answer(410)
    assert deliver(engine).failed == 1
    row = one_row(engine)
    assert (row.status, row.attempts, row.last_status) == ("failed", 1, 410)
    hooked.clock.advance(timedelta(days=1))
    assert deliver(engine).attempted == 0
    assert len(receiver.hits) == 1


@pytest.mark.parametrize(
    ("attempt", "expected"), [(1, 30.0), (2, 60.0), (5, 480.0), (12, 21600.0), (10**6, 21600.0)]
)
def test_backoff_doubles_with_jitter_up_to_the_cap(attempt: int, expected: float) -> None:
    assert retry_delay(attempt, 30, 21600, jitter=JITTER, rand=lambda: 0.0) == expected
    assert retry_delay(attempt, 30, 21600, jitter=JITTER, rand=lambda: 1.0) == expected / 2
    assert (
        retry_delay(attempt, 30, 21600, jitter=JITTER, retry_after=10**9, rand=lambda: 1.0) == 21600
    )


# -- the CLI --------------------------------------------------------------------------------


def test_failed_deliveries_are_listed_and_replayed_through_the_cli(
    engine: Engine, receiver: Receiver, hooked: Project
) -> None:
    record(engine, "replied")
    record(engine, "bounced", email="bo@example.com")
    enqueue_new(engine.webhooks())
    receiver.answer(410, 410)
    assert deliver(engine).failed == 2
    first, second = (r.id for r in rows(engine))

    code, out = hooked.cli("webhooks", "list", "--status", "failed")
    assert code == 0, out
    assert f"{receiver.url}/hooks" in out and "replied #" in out and "bounced #" in out
    assert out.count("HTTP 410 Gone") == 2 and "2 of 2 shown" in out
    code, out = hooked.cli("webhooks", "list", "--status", "delivered")
    assert "0 of 0 shown" in out

    code, out = hooked.cli("webhooks", "replay", "--id", str(first), "999")
    assert code == 1
    assert "replayed 1 failed" in out and "no delivery 999" in out
    code, out = hooked.cli("webhooks", "replay", "--id", str(first))
    assert code == 1 and "replayed 0" in out and "is pending, not failed" in out
    code, out = hooked.cli("webhooks", "replay", "--all-failed")
    assert code == 0 and "replayed 1 failed" in out
    assert all((r.status, r.attempts) == ("pending", 0) for r in rows(engine))

    assert deliver(engine).delivered == 2
    code, out = hooked.cli("webhooks", "list")
    assert code == 0 and out.count("delivered") >= 2 and str(second) in out
    code, out = hooked.cli("webhooks", "list", "--limit", "0")
    assert code == 2 and "--limit" in out


def test_the_list_hides_a_url_query_which_may_hold_a_token(
    make_project: Callable[..., Project], receiver: Receiver
) -> None:
    project = make_project(
        shipped=False, extra=hooks_toml(f"{receiver.url}/hooks?token=s3cr3t-token")
    )
    built = project.engine()
    record(built, "replied")
    enqueue_new(built.webhooks())
    built.close()
    code, out = project.cli("webhooks", "list")
    assert code == 0 and f"{receiver.url}/hooks?…" in out and "s3cr3t" not in out


def test_referrals_add_through_the_cli_produces_a_signed_referral_created(
    hooked: Project, receiver: Receiver
) -> None:
    setup(hooked)
    contacts(hooked, ANA)
    code, out = hooked.cli(
        "referrals", "add", "--referrer", "ana@example.com", "--email", "bo@example.com"
    )
    assert code == 0, out
    code, out = hooked.cli("tick")
    assert code == 0, out

    (hit,) = [h for h in receiver.hits if h.headers["X-Engine-Event"] == "referral.created"]
    assert readme_verify()(SECRET, hit.headers, hit.body)  # under --now, at the real time
    body = hit.json
    assert body["type"] == "referral.created"
    assert body["contact"] == {"email": "ana@example.com"}
    assert body["data"]["friend_email"] == "bo@example.com"


# -- the queue ------------------------------------------------------------------------------


def test_only_subscribed_event_types_by_people_are_delivered(
    engine: Engine, receiver: Receiver
) -> None:
    record(engine, "opened")
    record(engine, "clicked")
    record(engine, "nps.answered", data={"score": 10}, machine=True)  # a link scanner
    wanted = {
        record(engine, "nps.answered", data={"score": 9}),
        record(engine, "referral.converted"),
        record(engine, "unsubscribed"),
    }
    record(engine, "purchase")
    assert enqueue_new(engine.webhooks()) == 3
    deliver(engine)
    assert {h.json["id"] for h in receiver.hits} == wanted


def test_enqueue_is_idempotent_and_two_enqueuers_make_no_duplicates(
    make_project: Callable[..., Project], receiver: Receiver
) -> None:
    urls = (f"{receiver.url}/a", f"{receiver.url}/b")
    project = make_project(shipped=False, extra=hooks_toml(*urls))
    first, second = project.engine(), project.engine()
    try:
        for _ in range(3):
            record(first, "replied")
        assert enqueue_new(first.webhooks()) == 6
        assert enqueue_new(first.webhooks()) == 0  # nothing new
        # As if a crash had lost the watermark's move: the unique key absorbs the repeat.
        with first.db.write() as session:
            session.execute(update(Meta).where(Meta.key == WATERMARK).values(value="0"))
        assert enqueue_new(first.webhooks()) == 0

        rows_ = [{"type": "replied", "occurred_at": MONDAY, "data": {}}] * 300
        with first.db.write() as session:
            session.execute(insert(Event), rows_)
        counts: list[int] = []
        threads = [
            threading.Thread(target=lambda e=e: counts.append(enqueue_new(e.webhooks())))
            for e in (first, second)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(counts) == 600
        with first.db.session() as session:
            total = session.scalar(select(func.count()).select_from(WebhookDelivery))
            pairs = session.execute(
                select(func.count()).select_from(
                    select(WebhookDelivery.event_id, WebhookDelivery.url).distinct().subquery()
                )
            ).scalar()
        assert total == pairs == 606
    finally:
        first.close()
        second.close()


def test_two_workers_never_deliver_the_same_row_twice(
    make_project: Callable[..., Project], receiver: Receiver
) -> None:
    # A generous timeout: on a loaded machine a worker's first pass (new client, ten connects)
    # can take longer than TIMEOUT, and an attempt given up is retried only 30 s later.
    hooked = make_project(
        shipped=False, extra=hooks_toml(f"{receiver.url}/hooks", timeout_seconds=10.0)
    )
    engine = hooked.engine()
    with engine.db.write() as session:
        events = [{"type": "replied", "occurred_at": MONDAY, "data": {}}] * (4 * CONCURRENCY)
        session.execute(insert(Event), events)
    assert enqueue_new(engine.webhooks()) == 4 * CONCURRENCY
    receiver.answer(*[Answer(delay=0.02)] * (4 * CONCURRENCY))
    other = hooked.engine()
    results: list[WebhookStats] = []

    def drain(worker: Engine) -> None:
        async def loop() -> None:
            while (stats := await deliver_due(worker.webhooks())).attempted:
                results.append(stats)

        asyncio.run(loop())

    try:
        threads = [threading.Thread(target=drain, args=(e,)) for e in (engine, other)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        delivered = [h.headers["X-Engine-Delivery"] for h in receiver.hits]
        assert sorted(delivered) == sorted(str(r.id) for r in rows(engine))
        assert sum(s.delivered for s in results) == 4 * CONCURRENCY
        assert sum(s.lost for s in results) == 0
        assert {r.status for r in rows(engine)} == {"delivered"}
    finally:
        other.close()
        engine.close()


def test_a_crashed_worker_rows_come_back_and_its_late_result_is_fenced(
    engine: Engine, receiver: Receiver, hooked: Project
) -> None:
    record(engine, "replied")
    enqueue_new(engine.webhooks())
    (lost,) = claim_due(engine.webhooks())  # ... and the worker dies here
    assert deliver(engine).attempted == 0  # leased
    hooked.clock.advance(timedelta(seconds=TIMEOUT) + LEASE_MARGIN)
    assert deliver(engine).delivered == 1
    late = WebhookStats()
    record_attempt(engine.webhooks(), lost, Outcome(500, "HTTP 500"), late)
    assert late.lost == 1
    row = one_row(engine)
    assert (row.status, row.attempts, row.last_status) == ("delivered", 2, 200)


def test_a_url_taken_out_of_the_settings_gets_nothing_more(
    engine: Engine, receiver: Receiver
) -> None:
    record(engine, "replied")
    enqueue_new(engine.webhooks())
    hooks = dataclasses.replace(engine.settings.webhooks, urls=(f"{receiver.url}/new",))
    moved = dataclasses.replace(
        engine, settings=dataclasses.replace(engine.settings, webhooks=hooks)
    )
    assert deliver(moved).attempted == 0
    assert one_row(engine).status == "pending"
    assert receiver.hits == []


def test_a_late_commit_with_a_lower_event_id_is_not_lost(
    engine: Engine, receiver: Receiver, hooked: Project
) -> None:
    if not engine.db.is_postgres:
        pytest.skip("SQLite has one writer: ids always become visible in order")
    record(engine, "replied")
    assert enqueue_new(engine.webhooks()) == 1
    values = {"type": "replied", "occurred_at": MONDAY, "data": {}, "machine": False}
    with engine.db.engine.connect() as slow:
        slow.begin()
        slow.execute(insert(Event).values(**values))  # takes the next id, commits later
        record(engine, "replied")
        assert enqueue_new(engine.webhooks()) == 0  # waits for the missing id
        slow.commit()
    assert enqueue_new(engine.webhooks()) == 2

    for _ in range(2):  # two rolled-back inserts: their ids are never used
        with engine.db.engine.connect() as failed:
            failed.begin()
            failed.execute(insert(Event).values(**values))
            failed.rollback()
        record(engine, "replied")
    assert enqueue_new(engine.webhooks()) == 0
    hooked.clock.advance(HOLE_GRACE / 2)
    assert enqueue_new(engine.webhooks()) == 0
    hooked.clock.advance(HOLE_GRACE / 2)
    assert enqueue_new(engine.webhooks()) == 2  # both holes waited for together, once
    with engine.db.session() as session:
        assert session.scalar(select(func.count()).select_from(WebhookDelivery)) == 5


def test_first_pass_backfills_a_day_not_the_whole_history(
    engine: Engine, receiver: Receiver, hooked: Project
) -> None:
    old = record(engine, "replied")
    hooked.clock.advance(timedelta(days=3))
    recent = record(engine, "replied")
    with engine.db.write() as session:  # webhooks switched on only now
        session.execute(delete(Meta).where(Meta.key == WATERMARK))
    assert enqueue_new(engine.webhooks()) == 1
    assert [r.event_id for r in rows(engine)] == [recent]
    assert old < recent


# -- never in the way of sending ------------------------------------------------------------


def test_a_slow_receiver_does_not_hold_up_tick(hooked: Project, receiver: Receiver) -> None:
    setup(hooked)
    contacts(hooked, ANA)  # a promoter: the ask goes out on this tick
    built = hooked.engine()
    record(built, "replied", email="bo@example.com")
    built.close()
    receiver.answer(Answer(delay=10))
    started = time.monotonic()
    code, out = hooked.cli("tick")
    elapsed = time.monotonic() - started
    assert code == 0, out
    assert sent_to(hooked) == ["ana@example.com"]
    assert len(receiver.hits) == 1
    assert elapsed < TIMEOUT + 3  # the receiver would have taken 10 s
    built = hooked.engine()
    row = one_row(built)
    built.close()
    assert (row.status, row.last_error) == ("pending", "no response within 0.5 s")


async def test_the_run_service_delivers_while_ticks_go_on(
    hooked: Project, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webhooks, "IDLE_SECONDS", 0.05)  # the service looks again sooner
    setup(hooked)
    contacts(hooked, ANA)
    built = hooked.engine()
    stop = asyncio.Event()
    service = asyncio.create_task(webhooks_forever(built.webhooks(), stop))
    try:
        record(built, "replied", email="bo@example.com")
        receiver.answer(Answer(delay=10))
        await until(lambda: len(receiver.hits) == 1)  # an attempt hangs in the service ...
        transport = SmtpTransport(built.settings.smtp)
        started = time.monotonic()
        result = await tick(built, transport, webhooks=False)
        await transport.close()
        assert result.send.sent == 1  # ... while the tick sends
        assert time.monotonic() - started < TIMEOUT + 2

        record(built, "unsubscribed", email="cy@example.com")
        await until(lambda: len(receiver.hits) == 2)
        assert receiver.hits[1].headers["X-Engine-Event"] == "unsubscribed"
    finally:
        stop.set()
        await asyncio.wait_for(service, timeout=TIMEOUT + 3)
        built.close()


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


# -- settings -------------------------------------------------------------------------------


def settings_with(tmp_path: Path, body: str, env: dict[str, str] | None = None) -> Any:
    path = tmp_path / "settings.toml"
    path.write_text(body, encoding="utf-8")
    return load_settings(path, env=env or {})


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ('urls = ["https://h.example/x"]', "webhooks.secret"),
        ('urls = ["https://h.example/x"]\nsecret = "change-me"', "webhooks.secret"),
        ('urls = ["ftp://h.example/x"]', "webhooks.urls"),
        ('urls = ["https://user:pw@h.example/x"]', "webhooks.urls"),
        ('urls = ["https://h.example/x", "https://h.example/x"]', "webhooks.urls"),
        ('events = ["Referral Created"]', "webhooks.events"),
        ("timeout_seconds = 0", "webhooks.timeout_seconds"),
        ("max_attempts = 0", "webhooks.max_attempts"),
        ("retry_max_seconds = 1", "webhooks.retry_max_seconds"),
        ("urls = []\nsecrets = 1", "webhooks.secrets"),
    ],
)
def test_bad_webhook_settings_name_the_key(tmp_path: Path, body: str, key: str) -> None:
    with pytest.raises(SettingsError) as caught:
        settings_with(tmp_path, f"[webhooks]\n{body}\n")
    assert caught.value.key == key


def test_webhook_settings_from_the_environment(tmp_path: Path) -> None:
    settings = settings_with(
        tmp_path,
        "",
        {
            "ENGINE_WEBHOOKS_URLS": "https://a.example/h, http://127.0.0.1:9000/h",
            "ENGINE_WEBHOOKS_SECRET": SECRET,
            "ENGINE_WEBHOOKS_EVENTS": "replied,form.submitted",
        },
    )
    hooks = settings.webhooks
    assert hooks.urls == ("https://a.example/h", "http://127.0.0.1:9000/h")
    assert hooks.events == ("replied", "form.submitted")
    assert (hooks.timeout_seconds, hooks.max_attempts, hooks.retry_base_seconds) == (10, 10, 30)


def test_the_shipped_settings_have_webhooks_off() -> None:
    hooks = load_settings(ROOT / "settings.toml", env={}).webhooks
    assert hooks.urls == () and "referral.created" in hooks.events
