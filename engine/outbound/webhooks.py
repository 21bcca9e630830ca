"""Webhooks: events POSTed as HMAC-signed JSON to the ``[webhooks]`` URLs, from a durable queue.

Two passes, each safe to run in any number of processes at once:

- ``enqueue_new`` turns events recorded since its last pass into ``webhook_deliveries`` rows,
  one per subscribed event and URL (a unique key: never twice). The meta key
  ``webhooks:last_event_id`` is the id of the last event looked at; it moves in the transaction
  that inserts the rows, so a crash repeats a batch at worst (and the unique key absorbs it).
- ``deliver_due`` claims due rows from the fenced lease queue (engine.store.lease), leased for
  the attempt's time limit plus ``LEASE_MARGIN`` (a crashed worker's rows come back once it
  runs out), counting the attempt; a result is written only while the row still has the
  claim's fence. 2xx: delivered; 410 Gone: failed at once; anything else (3xx not followed,
  4xx, 5xx, timeout, refused connection): retried with exponential backoff and jitter
  (engine.base.retry) until ``max_attempts``, then failed.

``webhooks_forever`` is the service ``run`` starts next to the scheduler; ``tick`` makes one
bounded pass (``webhooks_pass``) after sending. Neither ever delays an email: an attempt, from
connecting to the response status, is cut off after ``timeout_seconds``.

The payload is built when it is sent, from the event and the contact as they are then (an
erased contact goes out as ``"contact": null``). Its shape and the signature: README "Webhooks".
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from engine.base.clock import Clock
from engine.base.retry import retry_delay
from engine.program.settings import WebhookSettings
from engine.store.db import Database, insert_ignore, lock_rows
from engine.store.lease import WEBHOOK_DELIVERIES, Claimed
from engine.store.models import Contact, Event, Meta, WebhookDelivery

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("engine.webhooks")

WATERMARK = "webhooks:last_event_id"
# "<event id> <ISO instant>": every id missing below that event has been missing since then.
HOLE = "webhooks:hole"
# On PostgreSQL ids are taken before commit, so a lower id can become visible after a higher
# one: a missing id is waited for this long (every transaction recording events is short)
# before it is taken for a rolled-back insert. SQLite has one writer, so a hole is final.
HOLE_GRACE = timedelta(seconds=60)
# When webhooks are first switched on, events of the subscribed types recorded up to this
# long before go out too; older history is not replayed to a new endpoint.
BACKFILL = timedelta(hours=24)
EVENT_BATCH = 500  # events read per enqueue transaction
CONCURRENCY = 10  # deliveries claimed, and in flight, per delivery pass
# A claim's lease runs this far past the attempt's own time limit.
LEASE_MARGIN = timedelta(seconds=60)
# A retry's wait is shortened by up to half of it (README "Webhooks"): deliveries that failed
# together (the receiver was down) do not all come back at the same second.
JITTER = 0.5
IDLE_SECONDS = 1.0  # the service's pause when nothing was due
ERROR_PAUSE_SECONDS = 5.0  # the service's pause after a pass failed (database down ...)
BODY_PREVIEW = 200  # characters of a refusing receiver's response kept in last_error
USER_AGENT = "referral-engine-webhooks/1"
STATUSES = ("pending", "delivered", "failed")


# -- pure pieces ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class WebhookContext:
    """What delivering webhooks needs: the store, the clock, ``[webhooks]``, and the name
    the worker's claims are leased to."""

    db: Database
    clock: Clock
    hooks: WebhookSettings
    worker_id: str


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The X-Engine-Signature value: ``sha256=`` + hex HMAC-SHA256 of ``"<timestamp>.<body>"``.

    ``sign("k", 1700000000, b"{}")`` -> ``"sha256=..."`` (64 hex digits).
    """
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def _utc(instant: datetime) -> str:
    return instant.isoformat().replace("+00:00", "Z")


def payload(event: Event, contact: Contact | None) -> bytes:
    """The JSON body for ``event``: id (the event's), type, occurred_at, contact, sequence,
    step, data. ``contact`` is ``{"email": ...}``, or null without a contact or once erased."""
    person = None if contact is None or contact.erased_at is not None else {"email": contact.email}
    body = {
        "id": event.id,
        "type": event.type,
        "occurred_at": _utc(event.occurred_at),
        "contact": person,
        "sequence": event.sequence_id,
        "step": event.step_id,
        "data": event.data or {},
    }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (``"120"`` -> 120.0); its HTTP-date form is ignored."""
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())


# -- enqueue --------------------------------------------------------------------------------


def _insert_meta(session: Session, db: Database, key: str, value: str) -> None:
    dialect = postgresql if db.is_postgres else sqlite
    session.execute(dialect.insert(Meta).values(key=key, value=value).on_conflict_do_nothing())


def _start_watermark(session: Session, events: Sequence[str], now: datetime) -> int:
    """Where a first pass starts: just before the oldest recent event of a subscribed type
    (``BACKFILL``), else after the newest event. Uses the (type, occurred_at) index."""
    recent = session.scalar(
        select(func.min(Event.id)).where(
            Event.type.in_(events), Event.occurred_at >= now - BACKFILL
        )
    )
    if recent is not None:
        return int(recent) - 1
    return int(session.scalar(select(func.max(Event.id))) or 0)


def _hole_expired(session: Session, event_id: int, seen_upto: int, now: datetime) -> bool:
    """True once the ids missing just below ``event_id`` have been missing for ``HOLE_GRACE``.

    The first hole met notes that every id missing up to ``seen_upto`` (the highest id this
    pass read) is missing since ``now``, so holes met together are waited for together.
    """
    marker = session.get(Meta, HOLE)
    if marker is not None:
        upto, _, since = marker.value.partition(" ")
        if event_id <= int(upto):
            started = datetime.fromisoformat(since)
            # A clock set back before the hole was seen is no reason to wait for ever.
            return not started <= now < started + HOLE_GRACE
    value = f"{seen_upto} {now.isoformat()}"
    if marker is None:
        session.add(Meta(key=HOLE, value=value))
    else:
        marker.value = value
    return False


def _enqueue_batch(ctx: WebhookContext, now: datetime) -> tuple[int, bool]:
    """One transaction: read events after the watermark, insert their deliveries, move the
    watermark. Returns (deliveries inserted, whether more events may follow)."""
    db, hooks = ctx.db, ctx.hooks
    with db.write() as session:
        if session.scalar(select(Meta.value).where(Meta.key == WATERMARK)) is None:
            _insert_meta(session, db, WATERMARK, str(_start_watermark(session, hooks.events, now)))
        # Enqueuers take turns on the watermark row; one that finds it taken leaves the work
        # to the one holding it (SQLite's write lock serializes them anyway).
        mark = session.scalar(
            lock_rows(db, select(Meta).where(Meta.key == WATERMARK)).execution_options(
                populate_existing=True
            )
        )
        if mark is None:
            return 0, False
        watermark = int(mark.value)
        rows = session.execute(
            select(Event.id, Event.type, Event.machine)
            .where(Event.id > watermark)
            .order_by(Event.id)
            .limit(EVENT_BATCH)
        ).all()
        wanted: list[int] = []
        stalled = False
        for event_id, type_, machine in rows:
            if (
                event_id != watermark + 1
                and db.is_postgres
                and not _hole_expired(session, event_id, rows[-1].id, now)
            ):
                stalled = True  # the missing id may still commit: look again next pass
                break
            watermark = event_id
            # Machine traffic (a link scanner "answering" a survey) is not a person's act.
            if type_ in hooks.events and not machine:
                wanted.append(event_id)
        deliveries = [
            {
                "event_id": event_id,
                "url": url,
                "status": "pending",
                "attempts": 0,
                "next_at": now,
                "created_at": now,
            }
            for event_id in wanted
            for url in hooks.urls
        ]
        inserted = insert_ignore(session, db, WebhookDelivery, deliveries)
        mark.value = str(watermark)
    if inserted:
        log.info("webhooks_enqueued deliveries=%s last_event=%s", inserted, watermark)
    return inserted, len(rows) == EVENT_BATCH and not stalled


def enqueue_new(ctx: WebhookContext) -> int:
    """Queue one delivery per URL for every subscribed event recorded since the last call;
    returns how many were queued. Idempotent, and two reads of a primary key when nothing
    is new (no write, so it never waits on planning or sending)."""
    hooks = ctx.hooks
    if not hooks.urls:
        return 0
    with ctx.db.session() as session:
        mark = session.get(Meta, WATERMARK)
        newest = session.scalar(select(func.max(Event.id)))
    if newest is None or (mark is not None and int(mark.value) >= newest):
        return 0
    total = 0
    more = True
    while more:
        inserted, more = _enqueue_batch(ctx, ctx.clock.now())
        total += inserted
    return total


# -- deliver --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """A claimed delivery: the claim (the fencing token of its result, the attempt it counts)
    and what to POST where."""

    claimed: Claimed
    url: str
    event_type: str
    body: bytes

    @property
    def id(self) -> int:
        return self.claimed.id

    @property
    def attempt(self) -> int:
        return self.claimed.attempt


@dataclass(frozen=True)
class Outcome:
    """What one attempt got: an HTTP status, or an error before any status."""

    status: int | None
    error: str | None = None
    retry_after: float | None = None

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def gone(self) -> bool:
        """410 Gone: the receiver says this endpoint is no more; never retried."""
        return self.status == 410


@dataclass
class WebhookStats:
    delivered: int = 0
    retried: int = 0
    failed: int = 0
    lost: int = 0  # the lease ran out during the attempt and another worker took the row
    errors: list[str] = field(default_factory=list)

    @property
    def attempted(self) -> int:
        return self.delivered + self.retried + self.failed + self.lost


def claim_due(ctx: WebhookContext, limit: int = CONCURRENCY) -> list[Job]:
    """Claim up to ``limit`` due deliveries to configured URLs, oldest due first, with their
    payloads. Rows for a URL no longer in ``webhooks.urls`` stay pending, untouched."""
    db, hooks = ctx.db, ctx.hooks
    if not hooks.urls:
        return []
    now = ctx.clock.now()
    due = WEBHOOK_DELIVERIES.select_due(WebhookDelivery.id, now).where(
        WebhookDelivery.url.in_(hooks.urls)
    )
    with db.session() as session:  # a read first: no write lock when nothing is due
        if session.scalar(due.limit(1)) is None:
            return []
    with db.write() as session:
        claimed = WEBHOOK_DELIVERIES.claim(
            session,
            db,
            due,
            owner=ctx.worker_id,
            until=now + timedelta(seconds=hooks.timeout_seconds) + LEASE_MARGIN,
            limit=limit,
        )
        if not claimed:
            return []
        # Deleting an event deletes its deliveries: every claimed row has its event.
        rows = session.execute(
            select(WebhookDelivery.id, WebhookDelivery.url, Event)
            .join(Event, Event.id == WebhookDelivery.event_id)
            .where(WebhookDelivery.id.in_([c.id for c in claimed]))
        ).all()
        people = {e.contact_id for _, _, e in rows if e.contact_id is not None}
        contacts = {c.id: c for c in session.scalars(select(Contact).where(Contact.id.in_(people)))}
        found = {id_: (url, event) for id_, url, event in rows}
        jobs = []
        for c in claimed:
            url, event = found[c.id]
            person = contacts.get(event.contact_id) if event.contact_id is not None else None
            jobs.append(Job(c, url, event.type, payload(event, person)))
        return jobs


def new_client(hooks: WebhookSettings) -> httpx.AsyncClient:
    """The HTTP client for deliveries: redirects are not followed (a 3xx is a failure)."""
    import httpx  # only where webhooks are configured: importing it costs ~0.15 s at start-up

    return httpx.AsyncClient(
        follow_redirects=False,
        timeout=hooks.timeout_seconds,
        headers={"User-Agent": USER_AGENT},
    )


async def _attempt(client: httpx.AsyncClient, hooks: WebhookSettings, job: Job) -> Outcome:
    # Real time, even under --now: receivers check the signed timestamp against their clock.
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "X-Engine-Event": job.event_type,
        "X-Engine-Delivery": str(job.id),
        "X-Engine-Timestamp": str(timestamp),
        "X-Engine-Signature": sign(hooks.secret, timestamp, job.body),
    }
    import httpx  # already imported by new_client: a dictionary lookup

    try:
        # httpx's timeout is per phase; this one bounds the whole attempt.
        async with (
            asyncio.timeout(hooks.timeout_seconds),
            client.stream("POST", job.url, content=job.body, headers=headers) as response,
        ):
            if 200 <= response.status_code < 300:
                return Outcome(response.status_code)
            return Outcome(
                response.status_code,
                await _refusal(response),
                _retry_after(response.headers.get("Retry-After")),
            )
    except (TimeoutError, httpx.TimeoutException):
        return Outcome(None, f"no response within {hooks.timeout_seconds:g} s")
    except httpx.HTTPError as exc:
        return Outcome(None, f"{type(exc).__name__}: {exc}".rstrip(": "))


async def _refusal(response: httpx.Response) -> str:
    """``HTTP 503 Service Unavailable: <start of the body>`` (bodies are not read in full)."""
    text = f"HTTP {response.status_code} {response.reason_phrase}".rstrip()
    if response.is_redirect:
        return f"{text} to {response.headers.get('Location', '?')} (redirects are not followed)"
    preview = b""
    async for chunk in response.aiter_bytes():
        preview += chunk
        if len(preview) >= BODY_PREVIEW:
            break
    detail = " ".join(preview.decode("utf-8", "replace").split())[:BODY_PREVIEW]
    return f"{text}: {detail}" if detail else text


def record_attempt(ctx: WebhookContext, job: Job, outcome: Outcome, stats: WebhookStats) -> None:
    """Write an attempt's result, fenced on the claim: a worker whose lease ran out and whose
    row was claimed again changes nothing (counted as ``lost``)."""
    hooks = ctx.hooks
    now = ctx.clock.now()
    values: dict[str, Any] = {"last_status": outcome.status, "last_error": outcome.error}
    if outcome.delivered:
        values |= {"status": "delivered", "delivered_at": now}
        action = "webhook_delivered"
    elif outcome.gone or job.attempt >= hooks.max_attempts:
        values["status"] = "failed"
        action = "webhook_failed"
    else:
        delay = retry_delay(
            job.attempt,
            hooks.retry_base_seconds,
            hooks.retry_max_seconds,
            jitter=JITTER,
            retry_after=outcome.retry_after,
        )
        values["next_at"] = now + timedelta(seconds=delay)
        action = "webhook_retry"
    with ctx.db.write() as session:
        recorded = WEBHOOK_DELIVERIES.finish(session, job.claimed, **values)
    if not recorded:
        stats.lost += 1
        log.warning("webhook_lease_lost delivery=%s fence=%s", job.id, job.claimed.fence)
        return
    if action == "webhook_delivered":
        stats.delivered += 1
        log.info("webhook_delivered delivery=%s status=%s", job.id, outcome.status)
        return
    if action == "webhook_failed":
        stats.failed += 1
    else:
        stats.retried += 1
    stats.errors.append(f"delivery {job.id} ({job.event_type}): {outcome.error}")
    log.warning(
        "%s delivery=%s attempt=%s next=%s error=%s",
        action,
        job.id,
        job.attempt,
        values.get("next_at", now).isoformat(),
        outcome.error,
    )


async def deliver_due(
    ctx: WebhookContext, *, client: httpx.AsyncClient | None = None
) -> WebhookStats:
    """One delivery pass: claim up to ``CONCURRENCY`` due deliveries and make one attempt at
    each, all at once, so the pass takes about ``webhooks.timeout_seconds`` at most."""
    stats = WebhookStats()
    jobs = await asyncio.to_thread(claim_due, ctx)
    if not jobs:
        return stats
    hooks = ctx.hooks

    async def one(job: Job, client: httpx.AsyncClient) -> None:
        outcome = await _attempt(client, hooks, job)
        await asyncio.to_thread(record_attempt, ctx, job, outcome, stats)

    if client is not None:
        await asyncio.gather(*(one(job, client) for job in jobs))
    else:
        async with new_client(hooks) as own:
            await asyncio.gather(*(one(job, own) for job in jobs))
    return stats


async def webhooks_pass(ctx: WebhookContext) -> WebhookStats:
    """What ``tick`` does: queue what is new, then one bounded delivery pass."""
    if not ctx.hooks.urls:
        return WebhookStats()
    await asyncio.to_thread(enqueue_new, ctx)
    return await deliver_due(ctx)


async def webhooks_forever(ctx: WebhookContext, stop: asyncio.Event) -> None:
    """The delivery service for ``run``: queue and deliver until ``stop`` is set (an attempt
    under way when it is set finishes, within ``timeout_seconds``). Returns at once when no
    URL is configured."""
    hooks = ctx.hooks
    if not hooks.urls:
        return
    log.info("webhooks_started urls=%s", len(hooks.urls))
    async with new_client(hooks) as client:
        while not stop.is_set():
            pause = IDLE_SECONDS
            try:
                await asyncio.to_thread(enqueue_new, ctx)
                stats = await deliver_due(ctx, client=client)
                if stats.attempted >= CONCURRENCY:
                    pause = 0.0  # a full batch: more may be due right now
            except Exception:
                # A database hiccup must not end deliveries for the rest of the process' life.
                log.exception("webhooks_pass_failed")
                pause = ERROR_PAUSE_SECONDS
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=pause)
    log.info("webhooks_stopped")


# -- what a person asks for (the `webhooks` command) ----------------------------------------


@dataclass(frozen=True)
class DeliveryRow:
    id: int
    event_id: int
    event_type: str
    url: str
    status: str
    attempts: int
    last_status: int | None
    last_error: str | None
    next_at: datetime
    delivered_at: datetime | None


def list_deliveries(
    db: Database, *, status: str | None = None, limit: int = 50
) -> tuple[list[DeliveryRow], int]:
    """Deliveries, newest first, optionally of one status; returns (rows, how many match)."""
    if status is not None and status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}")
    where = [WebhookDelivery.status == status] if status else []
    with db.session() as session:
        total = session.scalar(select(func.count()).select_from(WebhookDelivery).where(*where))
        rows = session.execute(
            select(WebhookDelivery, Event.type)
            .join(Event, Event.id == WebhookDelivery.event_id)
            .where(*where)
            .order_by(WebhookDelivery.id.desc())
            .limit(limit)
        ).all()
    return [
        DeliveryRow(
            d.id,
            d.event_id,
            type_,
            d.url,
            d.status,
            d.attempts,
            d.last_status,
            d.last_error,
            d.next_at,
            d.delivered_at,
        )
        for d, type_ in rows
    ], int(total or 0)


@dataclass
class Replay:
    replayed: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # ids asked for that were not replayed
    elsewhere: int = 0  # failed deliveries left alone: their URL is no longer configured


def replay_failed(
    db: Database, now: datetime, urls: Sequence[str], *, ids: Sequence[int] | None = None
) -> Replay:
    """Put failed deliveries (``ids``, or all of them) back to pending, due ``now``, with
    their attempts reset. Only deliveries to a URL in ``urls`` are replayed."""
    result = Replay()
    failed = (WebhookDelivery.status == "failed", WebhookDelivery.url.in_(urls))
    with db.write() as session:
        if ids is not None:
            found = {
                d.id: d
                for d in session.scalars(select(WebhookDelivery).where(WebhookDelivery.id.in_(ids)))
            }
            for delivery_id in dict.fromkeys(ids):
                d = found.get(delivery_id)
                if d is None:
                    result.problems.append(f"no delivery {delivery_id}")
                elif d.status != "failed":
                    result.problems.append(f"delivery {delivery_id} is {d.status}, not failed")
                elif d.url not in urls:
                    result.problems.append(
                        f"delivery {delivery_id}: its URL is no longer in webhooks.urls"
                    )
            chosen = [WebhookDelivery.id.in_(ids)]
        else:
            result.elsewhere = int(
                session.scalar(
                    select(func.count())
                    .select_from(WebhookDelivery)
                    .where(WebhookDelivery.status == "failed", WebhookDelivery.url.not_in(urls))
                )
                or 0
            )
            chosen = []
        result.replayed = list(
            session.scalars(
                update(WebhookDelivery)
                .where(*failed, *chosen)
                .values(status="pending", attempts=0, next_at=now)
                .returning(WebhookDelivery.id)
            )
        )
    if result.replayed:
        log.info("webhooks_replayed deliveries=%s", len(result.replayed))
    return result
