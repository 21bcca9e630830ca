"""Opens and clicks are answered at once and written later, in batches.

The pixel and click handlers only ``add`` a ``Hit`` to an in-memory ``HitBuffer`` (no database
wait in the response); ``HitBuffer.run`` writes what piled up every ``interval`` seconds, or as
soon as ``batch`` hits are waiting, and a last time when it stops (uvicorn's graceful shutdown
on SIGTERM), so nothing buffered is lost. A failed write keeps the hits for the next attempt.
Under load each write takes what piled up over an interval (up to ``batch`` hits) in one
transaction: much of a transaction's cost is fixed (SQLite rewrites every page it touched),
so a hit written among 2,000 costs less than half of one written among 50.

A ``Writer`` works in two steps: ``prepare`` turns a batch into statement parameters on the
event loop, ``write`` runs the statements in a worker thread. The thread then holds the GIL
for little more than the driver calls: Python work in it would make the event loop wait for
the GIL after every socket call, which cost more than the work itself.

A burst of identical hits (a mail client loading the pixel five times while rendering) is one
event: a hit repeating the same message, kind, destination and machine reason (None for a
person) within ``dedupe_seconds`` of the previous one is dropped. Every open further apart
counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta
from typing import Any, NamedTuple, Protocol

log = logging.getLogger("engine.tracking")

DEDUPE_SECONDS = 10.0
BATCH = 2000
INTERVAL = 0.5
# Beyond this many waiting hits (the database has been down for a long while) new ones are
# dropped and counted in the log, so memory stays bounded.
MAX_PENDING = 500_000
RETRY_SECONDS = 2.0

_Key = tuple[str, bytes, str | None, str | None]


class Hit(NamedTuple):
    """One request for the pixel or a tracked link (a tuple: cheap to make on every request)."""

    kind: str  # "opened" | "clicked"
    ref: bytes  # the message's public id, from the token
    at: datetime
    machine: str | None  # why the request itself is machine traffic; None: maybe a person
    url: str | None = None  # a click's destination
    honeypot: bool = False  # a request for the email's hidden link


class Writer(Protocol):
    """Writes batches of hits: ``prepare`` on the event loop (no I/O), then ``write`` in a
    worker thread with what ``prepare`` returned; ``write`` returns the rows written."""

    def prepare(self, hits: list[Hit]) -> Any: ...

    def write(self, prepared: Any) -> int: ...


class HitBuffer:
    """Hits waiting to be written by ``writer``, a batch at a time."""

    def __init__(
        self,
        writer: Writer,
        *,
        dedupe_seconds: float = DEDUPE_SECONDS,
        batch: int = BATCH,
        interval: float = INTERVAL,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self._writer = writer
        self._window = timedelta(seconds=dedupe_seconds)
        self._batch = batch
        self._interval = interval
        self._max_pending = max_pending
        self._pending: list[Hit] = []
        # The last time each key was seen, in two generations of one window each: lookups and
        # forgetting are O(1), and memory holds at most two windows of distinct hits.
        self._current: dict[_Key, datetime] = {}
        self._previous: dict[_Key, datetime] = {}
        self._rotate_at: datetime | None = None
        self._full = asyncio.Event()
        self._lock = asyncio.Lock()
        self.written = 0
        self.dropped = 0

    @property
    def pending(self) -> int:
        """Hits not written yet."""
        return len(self._pending)

    def add(self, hit: Hit) -> bool:
        """Queue ``hit``; False when it repeats a hit within the dedupe window (or the buffer is
        full). Never waits: called from request handlers on the event loop."""
        at = hit.at
        window = self._window
        if self._rotate_at is None or at >= self._rotate_at:
            # The current generation becomes the previous one; older entries can go.
            recent = self._rotate_at is not None and at < self._rotate_at + window
            self._previous = self._current if recent else {}
            self._current = {}
            self._rotate_at = at + window
        key = (hit.kind, hit.ref, hit.url, hit.machine)
        last = self._current.get(key) or self._previous.get(key)
        if last is not None and at - window < last <= at:
            return False
        if len(self._pending) >= self._max_pending:
            self.dropped += 1
            if self.dropped % 10_000 == 1:
                log.error("tracking_buffer_full dropped=%s", self.dropped)
            return False
        self._current[key] = at
        self._pending.append(hit)
        if len(self._pending) >= self._batch:
            self._full.set()
        return True

    async def flush(self) -> int:
        """Write the hits waiting now, batch by batch; returns how many were written.

        Hits added while it writes wait for the next flush: chasing them would turn steady
        traffic into a stream of tiny transactions (one per handful of requests), and a
        transaction costs nearly as much for 50 hits as for 2,000.
        On a write error the unwritten hits stay queued (in order) and the error propagates.
        """
        async with self._lock:
            todo = len(self._pending)
            done = 0
            while done < todo:
                chunk = self._pending[: min(self._batch, todo - done)]
                del self._pending[: len(chunk)]
                try:
                    await asyncio.to_thread(self._writer.write, self._writer.prepare(chunk))
                except BaseException:
                    self._pending[:0] = chunk
                    raise
                done += len(chunk)
                self.written += len(chunk)
            if len(self._pending) < self._batch:
                self._full.clear()
            return done

    async def run(self, stop: asyncio.Event) -> None:
        """Flush every ``interval`` (or when a batch is full) until ``stop``, then flush the
        rest; write errors are logged and retried."""
        while not stop.is_set():
            waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._full.wait())]
            _, undone = await asyncio.wait(
                waiters, timeout=self._interval, return_when=asyncio.FIRST_COMPLETED
            )
            for waiter in undone:
                waiter.cancel()
            try:
                await self.flush()
            except Exception as exc:
                # A database outage: one line per attempt (no traceback: it would repeat
                # every RETRY_SECONDS); the hits wait in memory up to max_pending.
                log.warning(
                    "tracking_flush_failed pending=%s dropped=%s error=%s",
                    self.pending,
                    self.dropped,
                    str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__,
                )
                log.debug("tracking_flush_traceback", exc_info=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), RETRY_SECONDS)
        await self._final_flush()

    async def _final_flush(self) -> None:
        for attempt in range(3):
            try:
                while self._pending:
                    await self.flush()
                return
            except Exception:
                log.exception("tracking_final_flush_failed attempt=%s", attempt + 1)
                await asyncio.sleep(RETRY_SECONDS)
        log.error("tracking_hits_lost count=%s", self.pending)
