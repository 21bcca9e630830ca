"""Injected time: every scheduling decision reads a Clock, never the wall directly."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Source of the current instant (timezone-aware, UTC)."""

    def now(self) -> datetime: ...


def parse_instant(text: str) -> datetime:
    """Parse ISO-8601; naive values are taken as UTC. ``"2026-01-05T09:00"`` -> 09:00 UTC."""
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


class SystemClock:
    """The real time."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class FixedClock:
    """A clock that moves only when told to (tests, `--now`, `simulate`)."""

    def __init__(self, start: datetime) -> None:
        self._now = start.astimezone(UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> datetime:
        self._now += delta
        return self._now

    def set(self, instant: datetime) -> None:
        self._now = instant.astimezone(UTC)


class AcceleratedClock:
    """Simulated time running ``factor`` times faster than the wall (the demo)."""

    def __init__(self, start: datetime, factor: float) -> None:
        self._start = start.astimezone(UTC)
        self._wall0 = time.monotonic()
        self.factor = factor

    def now(self) -> datetime:
        return self._start + timedelta(seconds=(time.monotonic() - self._wall0) * self.factor)
