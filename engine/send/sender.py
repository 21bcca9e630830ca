"""Sending from the outbox: claim with a lease, render, build MIME, deliver, record.

The loop lives here; its parts are engine.send.claims (the outbox as a fenced lease queue:
claim, the fencing check before SMTP, marking sent, giving back), engine.send.batch (a claimed
batch loaded in a few queries and each email composed) and engine.send.outcomes (retried,
failed or bounced, held, deferred, rejected, paused).

Per email the database sees one write transaction: a claimed batch is loaded with a few
queries, and each worker renders its next email before sending the current one, so that the
transaction marking the current one sent (right after the server accepted it, with no await in
between) also fences the next one.

The order of one send: wait for the rate slot (engine.send.quota, shared by every process),
then the fencing check, which extends the lease; MAIL and RCPT; then, right before DATA, the
lease is extended again (unless the fence is under a second old), and the email is withheld
when it cannot be: a worker paused mid-exchange (a stalled server, a GC pause, SIGSTOP) whose
email someone else took over never sends it too. Duplicates stay bounded by what was in flight
at a crash, never by slowness.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol

from sqlalchemy import Connection

from engine.base.clock import Clock
from engine.base.errors import PermanentFailure, PolicyFailure, TemplateError, TemporaryFailure
from engine.mail.mime import build_message
from engine.mail.smtp import DataWithheld, Transport
from engine.program.sequences import Sequence
from engine.program.settings import Settings
from engine.program.windows import parse_zone
from engine.send import outcomes
from engine.send.batch import Loaded, Ready, compose, find_step, load
from engine.send.claims import Claims
from engine.send.outcomes import Outcomes
from engine.send.quota import DEFAULT_SENDER, DailyQuota, SharedRate
from engine.send.render import Renderer
from engine.store.db import Database, transaction
from engine.store.lease import Claimed

__all__ = ["Claimed", "SendProgress", "SendStats", "Sender"]

log = logging.getLogger("engine.sender")

# A lease extended this recently still runs for nearly all of it: no need to extend it again
# before DATA (the common case costs no extra transaction). Real elapsed time, whatever clock
# the engine runs on: a worker paused longer than this checks with the database.
FRESH_FENCE_SECONDS = 1.0


@dataclass
class SendStats(outcomes.SendStats):
    """What a ``send_due`` did, and, under a daily cap, what today's cap left for later."""

    due_today: int | None = None  # due now and within today's cap (None: no cap)
    over_cap: int = 0  # due now but over today's cap: they wait for tomorrow's


class SendProgress(Protocol):
    """Told how much a ``send_due`` has ahead of it and how far it got (a progress bar)."""

    def start(self, due: int) -> None:
        """``due`` emails can be claimed now (more may fall due while sending)."""

    def advance(self, emails: int) -> None:
        """That many claimed emails were dealt with: sent, retried, failed, held or skipped."""


async def _sleep_until(instant: float) -> None:
    """Sleep until ``instant`` on time.monotonic() (at once when it has passed)."""
    await asyncio.sleep(max(0.0, instant - time.monotonic()))


def _nothing(emails: int) -> None:
    """No progress to report."""


@dataclass
class _Run:
    """A claimed batch under way: what is left, what a stop left untouched, the tally."""

    loaded: dict[int, Loaded]
    pending: deque[Claimed]
    stats: SendStats
    stop: asyncio.Event | None
    dealt_with: Callable[[int], None]
    untouched: list[Claimed] = field(default_factory=list)

    def halted(self) -> bool:
        return self.stats.paused or (self.stop is not None and self.stop.is_set())


class Sender:
    """Delivers due outbox rows through a Transport, ``connections`` at a time."""

    def __init__(
        self,
        db: Database,
        sequences: dict[str, Sequence],
        renderer: Renderer,
        transport: Transport,
        settings: Settings,
        clock: Clock,
        *,
        worker_id: str,
    ) -> None:
        self.db = db
        self.sequences = sequences
        self.renderer = renderer
        self.transport = transport
        self.settings = settings
        self.clock = clock
        self.worker_id = worker_id
        self.lease = timedelta(seconds=settings.schedule.lease_seconds)
        self.quota = DailyQuota(
            db=db,
            daily_cap=settings.sender.daily_cap,
            warmup=settings.sender.warmup,
            timezone=parse_zone(settings.schedule.timezone),
            sender_id=DEFAULT_SENDER,
        )
        self.rate = SharedRate(
            db,
            rate_per_second=settings.smtp.rate_per_second,
            connections=settings.smtp.connections,
            sender_id=DEFAULT_SENDER,
        )
        self.claims = Claims(
            db=db, clock=clock, worker_id=worker_id, lease=self.lease, quota=self.quota
        )
        self.outcomes = Outcomes(db=db, sequences=sequences, settings=settings, clock=clock)

    def count_due(self) -> int:
        """How many emails ``claim`` could take now (for a progress bar; not a promise)."""
        return self.claims.count_due()

    def claim(self, limit: int) -> list[Claimed]:
        """Take up to ``limit`` due rows (or rows whose lease expired) under a fresh lease."""
        return self.claims.claim(limit)

    def release(self, claimed: list[Claimed]) -> None:
        """Give rows back unsent (shutdown, pause); they keep their Message-ID and attempts-1."""
        self.claims.release(claimed)

    # -- the loop ----------------------------------------------------------------------------

    async def send_due(
        self, stop: asyncio.Event | None = None, progress: SendProgress | None = None
    ) -> SendStats:
        """Send everything due now, batch by batch, until none is left, today's cap is
        reached, a pause, or ``stop``."""
        stats = SendStats()
        batch_size = self._batch_size()
        due = None
        if progress is not None or self.quota.daily_cap > 0:
            due = await asyncio.to_thread(self.count_due)
        if progress is not None and due is not None:
            progress.start(due)
        if due is not None and (room := self.quota.room(self.clock.now())) is not None:
            stats.due_today = min(due, room)
            stats.over_cap = due - stats.due_today
        while not (stop and stop.is_set()) and not stats.paused:
            now = self.clock.now()
            claimed = self.claims.claim(batch_size, now)
            if not claimed:
                break
            sent = stats.sent
            await self.deliver(claimed, stats, stop, progress)
            self.quota.refund(self.quota.today(now), len(claimed) - (stats.sent - sent))
        return stats

    def _batch_size(self) -> int:
        """Rows per claim: no more than half a lease's worth at the rate, so that a batch
        goes out before its lease runs out rather than be taken over (an attempt counted)."""
        size = self.settings.schedule.batch_size
        rate = self.settings.smtp.rate_per_second
        if rate > 0:
            size = min(size, max(1, int(rate * self.lease.total_seconds() / 2)))
        return size

    async def deliver(
        self,
        claimed: list[Claimed],
        stats: SendStats,
        stop: asyncio.Event | None,
        progress: SendProgress | None = None,
    ) -> None:
        """Send a claimed batch over ``connections`` workers; release what a stop left unsent."""
        dealt_with = progress.advance if progress is not None else _nothing
        run = _Run(load(self.db, claimed), deque(claimed), stats, stop, dealt_with)
        workers = max(1, min(self.settings.smtp.connections, len(claimed)))
        # One connection for the batch's per-message writes, shared by the workers: each
        # transaction runs without an await inside, so they never interleave.
        with self.db.write_connection() as conn:
            async with asyncio.TaskGroup() as group:
                for _ in range(workers):
                    group.create_task(self._work(conn, run))
        self.release(run.untouched)

    async def _work(self, conn: Connection, run: _Run) -> None:
        """One SMTP connection's share of the batch: fence, send, record, until none is left."""
        unrecorded: tuple[Claimed, str] | None = None  # sent, its row not marked yet
        upcoming = self._prepare_next(run)
        while upcoming is not None:
            c, ready = upcoming
            # The rate slot first: the lease is checked (and extended) after the wait, never
            # before it.
            slot = self.rate.slot(conn)
            if slot > time.monotonic():
                if unrecorded is not None:  # no mark may wait behind a sleep
                    await self._record_sent(unrecorded[0], run.stats, unrecorded[1], conn)
                    unrecorded = None
                await _sleep_until(slot)
            if run.halted():
                run.untouched.append(c)
                upcoming = self._prepare_next(run)
                continue

            # One transaction marks the previous email sent and fences this one. No await
            # runs between a send and this point, so a cancellation cannot lose the mark.
            def mark_and_fence(
                tx: Connection,
                c: Claimed = c,
                done: tuple[Claimed, str] | None = unrecorded,
            ) -> tuple[bool | None, bool | None]:
                marked = None if done is None else self.claims.mark_sent(tx, *done)
                return marked, self.claims.fence(tx, c)

            marked, mine = transaction(conn, mark_and_fence)
            fenced_at = time.monotonic()
            self._count_sent(marked, run.stats)
            # Render the next email now, before this send, so its fence can share the
            # transaction that marks this one sent as soon as the server accepted it.
            upcoming = self._prepare_next(run)
            unrecorded = None
            if mine and self.rate.missed(slot):  # the fence or the render outlasted the slot
                await _sleep_until(self.rate.slot(conn))  # the lease is checked before DATA
            if mine:
                unrecorded = await self._send(c, ready, run, conn, fenced_at)
            else:
                run.stats.skipped += 1
                if mine is None:
                    log.info("email_stopped_before_smtp message=%s", c.id)
                else:
                    log.warning("lease_lost message=%s fence=%s", c.id, c.fence)
            run.dealt_with(1)
        if unrecorded is not None:
            await self._record_sent(unrecorded[0], run.stats, unrecorded[1], conn)

    async def _send(
        self, c: Claimed, ready: Ready, run: _Run, conn: Connection, fenced_at: float
    ) -> tuple[Claimed, str] | None:
        """One SMTP transaction, the lease extended before DATA. A refusal's outcome is
        recorded at once; an accepted email is returned, for the next transaction to mark
        sent."""

        async def still_mine() -> bool:
            if time.monotonic() - fenced_at < FRESH_FENCE_SECONDS:
                return True
            return transaction(conn, lambda tx: self.claims.fence(tx, c)) is True

        try:
            await self.transport.send(
                self.settings.sender.from_email,
                ready.recipient,
                ready.data,
                before_data=still_mine,
                paced=True,
            )
        except DataWithheld:
            run.stats.skipped += 1
            log.warning("lease_lost_before_data message=%s fence=%s", c.id, c.fence)
        except TemporaryFailure as exc:
            self.outcomes.retry(c, exc, run.stats, run.loaded[c.id])
        except PolicyFailure as exc:
            self.outcomes.pause(c, exc, run.stats, run.loaded[c.id])
        except PermanentFailure as exc:
            self.outcomes.fail(c, exc, run.stats)
        else:
            return c, ready.subject
        return None

    async def _record_sent(
        self,
        c: Claimed,
        stats: SendStats,
        subject: str | None = None,
        conn: Connection | None = None,
    ) -> None:
        """Mark the row sent in a transaction of its own (on ``conn`` when given).

        It never awaits: once called after a send, a cancellation cannot stop it.
        """

        def mark(tx: Connection) -> bool:
            return self.claims.mark_sent(tx, c, subject)

        if conn is None:
            with self.db.write_connection() as fresh:
                marked = transaction(fresh, mark)
        else:
            marked = transaction(conn, mark)
        self._count_sent(marked, stats)

    @staticmethod
    def _count_sent(marked: bool | None, stats: SendStats) -> None:
        """Count a mark once its transaction committed (a retried one must not count twice)."""
        if marked is True:
            stats.sent += 1
        elif marked is False:
            stats.skipped += 1

    # -- preparing ---------------------------------------------------------------------------

    def _prepare_next(self, run: _Run) -> tuple[Claimed, Ready] | None:
        """Render the next email that can go out; None when none is left or we stop."""
        while run.pending:
            c = run.pending.popleft()
            row = run.loaded.get(c.id)
            if run.halted():
                run.untouched.append(c)
            elif row is None:  # claimed again by another worker before the batch was loaded
                run.stats.skipped += 1
                run.dealt_with(1)
            elif (ready := self._prepare(c, row, run.stats)) is not None:
                return c, ready
            else:  # held, deferred to the window's opening, or its step is gone
                run.dealt_with(1)
        return None

    def _prepare(self, c: Claimed, row: Loaded, stats: SendStats) -> Ready | None:
        """Render and build the MIME bytes; a render failure holds back this one email only."""
        message = row.message
        found = find_step(self.sequences, message)
        if found is None:
            reason = f"step {message.sequence_id}/{message.step_id} no longer exists"
            self.outcomes.hold(c, reason, stats)
            return None
        # A backlog (the scheduler was down, sending was paused) waits for the window to open
        # again rather than going out at 3 a.m. on the contact's clock.
        now = self.clock.now()
        opens = self.outcomes.in_window(now, row)
        if opens > now:
            self.outcomes.defer(c, opens, stats)
            return None
        try:
            email = compose(self.renderer, self.settings.sender, *found, row, now)
        except TemplateError as exc:
            self.outcomes.hold(c, f"render_failed: {exc}", stats)
            return None
        try:
            data = build_message(email)
        except ValueError as exc:  # an address that cannot be sent to safely
            self.outcomes.reject(c, f"invalid message: {exc}", stats)
            return None
        return Ready(email.to_email, email.subject, data)
