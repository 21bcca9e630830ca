"""How long to wait before trying again: the one backoff rule of the engine.

Emails (``[smtp]`` ``retry_base_seconds``, ``retry_max_seconds``), webhook deliveries
(``[webhooks]`` the same keys), notes to the team and IMAP reconnections (``[imap]``
``reconnect_max_seconds``) all wait ``base`` doubled per failed attempt, at most ``cap``.
Jitter only ever shortens a wait (by up to the given fraction of it), so the cap stays a real
bound and retries that failed together come back apart. A server's own "try again in N
seconds" (an SMTP reply's text, an HTTP Retry-After) is a floor, itself within the cap: a
server cannot park work for longer than the settings allow.
"""

from __future__ import annotations

import random
from collections.abc import Callable

# 2.0 ** 1024 overflows a float; any cap is reached long before this many doublings.
_MAX_DOUBLINGS = 60


def retry_delay(
    attempt: int,
    base: float,
    cap: float,
    *,
    jitter: float = 0.0,
    retry_after: float | None = None,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1, 2, ...).

    ``base * 2 ** (attempt - 1)``, at most ``cap``; then shortened by up to ``jitter`` of it
    (``rand()`` in [0, 1] picks how much); then at least ``retry_after`` (within ``cap``).

    ``retry_delay(1, 60, 3600)`` -> 60.0; ``retry_delay(3, 60, 3600)`` -> 240.0;
    ``retry_delay(9, 60, 3600)`` -> 3600.0; ``retry_delay(1, 30, 21600, jitter=0.5)`` is in
    [15, 30]; ``retry_delay(1, 60, 3600, retry_after=120)`` -> 120.0;
    ``retry_delay(1, 60, 3600, retry_after=10**9)`` -> 3600.0.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, not {attempt}")
    if base <= 0 or cap < 0:
        raise ValueError(f"base must be positive and cap not negative (base {base}, cap {cap})")
    if not 0.0 <= jitter <= 1.0:
        raise ValueError(f"jitter is a fraction of the wait, from 0 to 1, not {jitter}")
    delay = min(cap, base * 2.0 ** min(attempt - 1, _MAX_DOUBLINGS))
    if jitter:
        delay *= 1.0 - jitter * rand()
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return delay
