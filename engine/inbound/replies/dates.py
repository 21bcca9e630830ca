"""Reading a return date out of an out-of-office reply, in any language of the phrases file.

Works on ``normalize``d text (Arabic-Indic digits are ASCII there). Recognized forms:
``10 March 2026``, ``10th of March``, ``March 10, 2026``, ``10 Maret 2026``, ``10hb Mac``,
``١٠ مارس ٢٠٢٦``, ``2026-03-10``, ``10/03/2026``, ``10.03.2026``, ``10/3``, and a weekday
right after a return cue (``back on Monday``, ``kembali hari Senin``, ``سأعود يوم الأحد``).
A date with a return cue ("back", "until", "kembali", "حتى" ...) shortly before it wins over
one without; among equals the latest counts (``from 2 to 10 March`` -> 10 March). Numeric
dates without a month name are ambiguous (10/03 or 03/10): the reading nearest after the
day the reply was written is taken.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache

from engine.inbound.replies.phrases import Phrases, normalize

# How far before a date its return cue may stand, in characters of normalized text.
CUE_REACH = 40
# A return date further than this after the reply is more likely a typo than a plan.
HORIZON = timedelta(days=366)
_ORDINAL = r"(?:st|nd|rd|th|hb|h\.?b\.?)?"


@dataclass(frozen=True)
class _Patterns:
    day_month: re.Pattern[str]
    month_day: re.Pattern[str]
    weekday: re.Pattern[str]


@lru_cache(maxsize=8)
def _patterns(months: tuple[str, ...], weekdays: tuple[str, ...]) -> _Patterns:
    month = "|".join(re.escape(m).replace(r"\ ", r"\s+") for m in months)
    weekday = "|".join(re.escape(w) for w in weekdays)
    return _Patterns(
        day_month=re.compile(
            rf"(?<!\d)(?P<day>\d{{1,2}}){_ORDINAL}\s*(?:of\s+|de\s+)?(?P<month>{month})\.?"
            rf"(?!\w)(?:,?\s*(?P<year>\d{{4}})(?!\d))?"
        ),
        month_day=re.compile(
            rf"(?<!\w)(?P<month>{month})\.?\s+(?P<day>\d{{1,2}}){_ORDINAL}(?!\d)"
            rf"(?:,?\s*(?P<year>\d{{4}})(?!\d))?"
        ),
        weekday=re.compile(rf"(?<!\w)(?P<weekday>{weekday})(?!\w)"),
    )


_ISO = re.compile(r"(?<![\d/.-])(?P<year>\d{4})-(?P<m>\d{1,2})-(?P<d>\d{1,2})(?![\d-])")
_NUMERIC = re.compile(
    r"(?<![\d/.:-])(?P<a>\d{1,2})(?P<sep>[/.-])(?P<b>\d{1,2})"
    r"(?:(?P=sep)(?P<year>\d{4}|\d{2}))?(?![\d/:]|\.\d)"
)
# What may stand between a return cue and a weekday: a few words, no end of sentence.
_WEEKDAY_REACH = re.compile(r"[^.!?\n]{0,30}")


def _make(year: int, month: int, day: int) -> date | None:
    try:
        return date(year, month, day)
    except ValueError:
        return None


def _resolve(month: int, day: int, year: int | None, written: date) -> date | None:
    """A date from its parts; without a year, its next occurrence from the day written."""
    if year is not None:
        if year < 100:
            year += 2000
        return _make(year, month, day)
    for candidate_year in (written.year, written.year + 1):
        found = _make(candidate_year, month, day)
        if found is not None and found >= written - timedelta(days=1):
            return found
    return None


def _plausible(found: date | None, written: date) -> bool:
    return found is not None and written - timedelta(days=1) <= found <= written + HORIZON


def find_return_date(text: str, written: date, phrases: Phrases) -> date | None:
    """The date the author of an out-of-office reply is back, if the text says; else None.

    ``written`` is the day the reply was written (the year of dates given without one and
    the reference for plausibility: from the day before up to a year after).
    """
    norm = normalize(text[:4000])
    pats = _patterns(tuple(sorted(phrases.months, key=len, reverse=True)), tuple(phrases.weekdays))
    found: list[tuple[int, date]] = []  # (position, date)

    def add(position: int, value: date | None) -> None:
        if value is not None and _plausible(value, written):
            found.append((position, value))

    for pattern in (pats.day_month, pats.month_day):
        for m in pattern.finditer(norm):
            month = phrases.months[" ".join(m["month"].split())]
            year = int(m["year"]) if m["year"] else None
            add(m.start(), _resolve(month, int(m["day"]), year, written))
    for m in _ISO.finditer(norm):
        add(m.start(), _make(int(m["year"]), int(m["m"]), int(m["d"])))
    for m in _NUMERIC.finditer(norm):
        if m["year"] is None and m["sep"] != "/":
            continue  # "9.30" or "10-12" without a year is a time or a range, not a date
        year = int(m["year"]) if m["year"] else None
        a, b = int(m["a"]), int(m["b"])
        readings = [_resolve(b, a, year, written), _resolve(a, b, year, written)]
        plausible = sorted(r for r in readings if r is not None and _plausible(r, written))
        if plausible:
            add(m.start(), plausible[0])
    cues = phrases.return_cues.ends(norm)
    for m in pats.weekday.finditer(norm):
        # Only a weekday right after a return cue, in the same sentence: "back on Monday".
        cue = max((c for c in cues if c <= m.start()), default=None)
        if cue is not None and _WEEKDAY_REACH.fullmatch(norm[cue : m.start()]):
            ahead = (phrases.weekdays[m["weekday"]] - written.weekday() - 1) % 7 + 1
            add(m.start(), written + timedelta(days=ahead))
    if not found:
        return None
    cued = [d for pos, d in found if any(0 <= pos - c <= CUE_REACH for c in cues)]
    return max(cued or [d for _, d in found])
