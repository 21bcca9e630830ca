"""Send windows: allowed weekdays and local hours, and the next instant a window is open.

Pure functions, no I/O. Instants are timezone-aware datetimes in UTC; a window is read on the wall
clock of one time zone (the contact's, or a fixed IANA zone), so daylight-saving changes matter:
a window opening inside a spring-forward gap opens when the clock resumes, and a wall time that
happens twice on a fall-back day is open from its first occurrence.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
CONTACT = "contact"  # SendWindow.timezone value: read the window on the contact's own clock
# "HH:MM-HH:MM" (H:MM accepted, end may be 24:00); ECMA-262 compatible so the JSON Schema reuses it.
HOURS_PATTERN = r"^([01]?[0-9]|2[0-3]):([0-5][0-9])-(?:([01]?[0-9]|2[0-3]):([0-5][0-9])|24:00)$"
# What hours must look like, in words: parse_hours's errors and the JSON Schema's say it.
HOURS_RULE = "expected HH:MM-HH:MM, e.g. 09:00-17:00"
END_OF_DAY = time.max  # what "24:00" parses to; a window ending there includes the last instant
# Offset changes are searched in steps this long, so two changes cancelling each other within
# one step would go unseen; no time zone has ever done that within a day.
_SCAN_STEP = timedelta(days=1)
_RESOLUTION = timedelta(microseconds=1)


def parse_days(days: Iterable[str]) -> frozenset[int]:
    """Day names to weekday numbers (0 = Monday): ``["mon", "fri"]`` -> ``{0, 4}``.

    Raises ValueError naming the first unknown day, or when no day is given.
    """
    if isinstance(days, str):
        raise ValueError(f"expected a list of days, got the text {days!r}")
    numbers = set()
    for day in days:
        if day not in DAYS:
            raise ValueError(f"unknown day {day!r}; use {', '.join(DAYS)}")
        numbers.add(DAYS.index(day))
    if not numbers:
        raise ValueError("at least one day is needed")
    return frozenset(numbers)


def parse_hours(text: str) -> tuple[time, time]:
    """Local opening hours: ``"09:00-17:00"`` -> ``(time(9), time(17))``; the end is excluded.

    ``"24:00"`` as the end means the end of the day. Raises ValueError when malformed or when
    the start is not before the end (a window cannot run past midnight).
    """
    match = re.fullmatch(HOURS_PATTERN, text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"invalid hours {text!r}; {HOURS_RULE}")
    start_h, start_m, end_h, end_m = match.groups()
    start = time(int(start_h), int(start_m))
    end = END_OF_DAY if end_h is None else time(int(end_h), int(end_m))
    if start >= end:
        raise ValueError(
            f"invalid hours {text!r}: the start must be before the end"
            " (a window cannot cross midnight)"
        )
    return start, end


def parse_zone(name: str) -> ZoneInfo:
    """The IANA time zone called ``name``; ValueError when there is none."""
    try:
        return ZoneInfo(name)
    # ValueError: malformed key; OSError: a folder such as "America"
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone {name!r}") from None


def zone_for(name: str | None, fallback: str) -> ZoneInfo:
    """The zone called ``name``, or ``fallback`` when ``name`` is empty or not a known zone."""
    if name and name.strip():
        try:
            return parse_zone(name.strip())
        except ValueError:
            pass
    return parse_zone(fallback)


@dataclass(frozen=True)
class SendWindow:
    """When emails may go out: on ``days`` (0 = Monday), local time in [start, end)."""

    days: frozenset[int]
    start: time
    end: time
    timezone: str  # CONTACT or an IANA name

    def __post_init__(self) -> None:
        if not self.days or not self.days <= frozenset(range(7)):
            raise ValueError(f"days must be a non-empty set of 0..6, got {sorted(self.days)}")
        if self.start >= self.end:
            raise ValueError(f"start {self.start} must be before end {self.end}")
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("start and end are wall-clock times without a time zone")
        if self.timezone != CONTACT:
            parse_zone(self.timezone)

    @classmethod
    def parse(cls, days: Iterable[str], hours: str, timezone: str) -> SendWindow:
        """A window from its text form: ``SendWindow.parse(["mon"], "09:00-17:00", "contact")``."""
        return cls(parse_days(days), *parse_hours(hours), timezone)

    def zone(self, contact_timezone: str | None, fallback: str) -> ZoneInfo:
        """The zone this window is read in for one contact (``fallback`` when theirs is unknown)."""
        if self.timezone == CONTACT:
            return zone_for(contact_timezone, fallback)
        return parse_zone(self.timezone)

    def contains(self, local: datetime) -> bool:
        """Whether the wall-clock moment ``local`` is inside the window."""
        moment = local.time()
        return (
            local.weekday() in self.days
            and self.start <= moment
            and (moment < self.end or self.end == END_OF_DAY)
        )


def next_open(instant: datetime, window: SendWindow, tz: ZoneInfo) -> datetime:
    """The earliest instant at or after ``instant`` when ``window`` is open on ``tz``'s clock.

    ``instant`` must be timezone-aware; the result is in UTC and exact to the microsecond.
    Example: Saturday 2024-03-09 12:00 UTC, window mon-fri 09:00-17:00, America/New_York
    -> Monday 2024-03-11 13:00 UTC (09:00 EDT, after the spring-forward on Sunday).
    """
    if instant.tzinfo is None:
        raise ValueError("instant must be timezone-aware")
    moment = instant.astimezone(UTC)
    # Between two offset changes the wall clock is UTC plus a constant, so the next opening is
    # plain arithmetic; when an offset change comes first, start again from the change.
    while True:
        local = moment.astimezone(tz)
        if window.contains(local):
            return moment
        offset = local.utcoffset()
        assert offset is not None  # a ZoneInfo always has one
        opening = _next_opening(local.replace(tzinfo=None), window)
        candidate = (opening - offset).replace(tzinfo=UTC)
        change = _offset_change(moment, candidate, tz, offset)
        if change is None:
            return candidate
        moment = change


def _next_opening(wall: datetime, window: SendWindow) -> datetime:
    """The next wall-clock window start after ``wall``, which is outside the window."""
    if wall.time() < window.start and wall.weekday() in window.days:
        return datetime.combine(wall.date(), window.start)
    weekday = wall.weekday()
    ahead = next(n for n in range(1, 8) if (weekday + n) % 7 in window.days)
    return datetime.combine(wall.date() + timedelta(days=ahead), window.start)


def _offset_change(
    start: datetime, end: datetime, tz: ZoneInfo, offset: timedelta
) -> datetime | None:
    """The first instant in (start, end] whose UTC offset in ``tz`` is not ``offset``, if any."""
    low = start
    while low < end:
        high = min(low + _SCAN_STEP, end)
        if high.astimezone(tz).utcoffset() != offset:
            while high - low > _RESOLUTION:
                middle = low + (high - low) // 2
                if middle.astimezone(tz).utcoffset() == offset:
                    low = middle
                else:
                    high = middle
            return high
        low = high
    return None
