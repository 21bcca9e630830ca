"""Durations as sequence files write them: ``30d``, ``12h``, ``90m``, ``2w``, ``1d12h``."""

from __future__ import annotations

import re
from datetime import timedelta

# Units in the order w, d, h, m, each at most once; ECMA-262 compatible (the JSON Schema uses it).
DURATION_PATTERN = r"^(?=[0-9])(?:([0-9]+)w)?(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?$"
# What a duration must look like, in words: parse_duration's errors and the JSON Schema's say it.
DURATION_RULE = "expected a number and a unit (w, d, h, m), e.g. 30d, 12h, 90m, 2w or 1d12h"


def parse_duration(text: str) -> timedelta:
    """``"1d12h"`` -> ``timedelta(days=1, hours=12)``; ``"0d"`` is zero. ValueError otherwise."""
    match = re.fullmatch(DURATION_PATTERN, text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"invalid duration {text!r}; {DURATION_RULE}")
    weeks, days, hours, minutes = (int(group or 0) for group in match.groups())
    try:
        return timedelta(weeks=weeks, days=days, hours=hours, minutes=minutes)
    except OverflowError:
        raise ValueError(f"duration {text!r} is too long") from None
