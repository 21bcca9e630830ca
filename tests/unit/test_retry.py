"""The one backoff rule (engine.base.retry.retry_delay), and each of its users' settings."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.base.retry import retry_delay
from engine.inbound.replies.poller import RECONNECT_FIRST_SECONDS, RECONNECT_JITTER
from engine.outbound import notes
from engine.outbound.webhooks import JITTER as WEBHOOK_JITTER
from engine.program.settings import ImapSettings, SmtpSettings, WebhookSettings
from engine.send.outcomes import RETRY_JITTER as SMTP_JITTER

attempts = st.integers(min_value=1, max_value=10**6)
bases = st.floats(min_value=0.001, max_value=10**5)
caps = st.floats(min_value=0.0, max_value=10**7)
jitters = st.floats(min_value=0.0, max_value=1.0)
rands = st.floats(min_value=0.0, max_value=1.0)
hints = st.none() | st.floats(min_value=0.0, max_value=10**9)


def nominal(attempt: int, base: float, cap: float) -> float:
    return retry_delay(attempt, base, cap)


@given(attempts, bases, caps)
def test_the_wait_doubles_per_attempt_up_to_the_cap(attempt: int, base: float, cap: float) -> None:
    assert nominal(1, base, cap) == min(base, cap)
    assert nominal(attempt + 1, base, cap) == min(cap, 2 * nominal(attempt, base, cap))


@given(attempts, bases, caps, jitters, rands)
def test_jitter_only_shortens_a_wait_so_the_cap_holds(
    attempt: int, base: float, cap: float, jitter: float, rand: float
) -> None:
    full = nominal(attempt, base, cap)
    delay = retry_delay(attempt, base, cap, jitter=jitter, rand=lambda: rand)
    assert delay == pytest.approx(full * (1 - jitter * rand))
    assert (1 - jitter) * full - 1e-9 <= delay <= full <= cap


@given(attempts, bases, caps, jitters, rands, hints)
def test_a_servers_hint_is_a_floor_within_the_cap(
    attempt: int, base: float, cap: float, jitter: float, rand: float, hint: float | None
) -> None:
    delay = retry_delay(attempt, base, cap, jitter=jitter, retry_after=hint, rand=lambda: rand)
    assert delay <= cap
    if hint is not None:
        assert delay >= min(hint, cap)
    assert delay >= retry_delay(attempt, base, cap, jitter=jitter, rand=lambda: rand)


@given(attempts, bases, caps)
def test_a_later_attempt_never_waits_less(attempt: int, base: float, cap: float) -> None:
    assert nominal(attempt, base, cap) <= nominal(attempt + 1, base, cap)


@pytest.mark.parametrize(
    ("call", "problem"),
    [
        (lambda: retry_delay(0, 60, 3600), "attempt counts from 1"),
        (lambda: retry_delay(1, 0, 3600), "base must be positive"),
        (lambda: retry_delay(1, 60, -1), "cap not negative"),
        (lambda: retry_delay(1, 60, 3600, jitter=1.5), "jitter is a fraction"),
    ],
)
def test_nonsense_is_refused_with_the_reason(call: Callable[[], float], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        call()


# -- each user keeps its documented behaviour --------------------------------------------


def test_emails_wait_the_smtp_base_doubled_jittered_by_a_fifth_at_most() -> None:
    smtp = SmtpSettings()
    base, cap = smtp.retry_base_seconds, smtp.retry_max_seconds

    def wait(attempt: int, rand: float, hint: float | None = None) -> float:
        return retry_delay(
            attempt, base, cap, jitter=SMTP_JITTER, retry_after=hint, rand=lambda: rand
        )

    assert [wait(a, 0.0) for a in (1, 2, 3)] == [60.0, 120.0, 240.0]
    assert [wait(a, 1.0) for a in (1, 2)] == [48.0, 96.0]  # a second wait is never shorter
    assert wait(12, 0.0) == cap
    assert wait(1, 1.0, hint=120) == 120.0  # "try again in 120 seconds"


def test_webhooks_wait_the_documented_schedule() -> None:
    hooks = WebhookSettings()

    def wait(attempt: int, rand: float, hint: float | None = None) -> float:
        return retry_delay(
            attempt,
            hooks.retry_base_seconds,
            hooks.retry_max_seconds,
            jitter=WEBHOOK_JITTER,
            retry_after=hint,
            rand=lambda: rand,
        )

    # README: retry_base_seconds, doubled per attempt, jittered down by up to half, at most
    # retry_max_seconds; with the defaults, 10 attempts over 2 to 4 1/4 hours.
    assert [wait(a, 0.0) for a in (1, 2, 3)] == [30.0, 60.0, 120.0]
    assert wait(1, 1.0) == 15.0
    waits = range(1, hooks.max_attempts)  # the waits between the attempts
    shortest, longest = (sum(wait(a, rand) for a in waits) for rand in (1.0, 0.0))
    assert (shortest, longest) == (7665.0, 15330.0)  # 2 h 8 min to 4 h 15 min 30 s
    assert wait(1, 1.0, hint=3600) == 3600.0


@pytest.mark.parametrize("attempt", range(1, notes.MAX_ATTEMPTS + 1))
def test_notes_wait_two_minutes_doubled_up_to_256(attempt: int) -> None:
    delay = retry_delay(attempt, notes.RETRY_BASE_SECONDS, notes.RETRY_MAX_SECONDS)
    assert delay == 60 * 2 ** min(attempt, 8)


def test_imap_reconnects_double_from_one_second_up_to_the_longest_wait() -> None:
    cap = ImapSettings().reconnect_max_seconds

    def wait(failures: int, rand: float) -> float:
        return retry_delay(
            failures, RECONNECT_FIRST_SECONDS, cap, jitter=RECONNECT_JITTER, rand=lambda: rand
        )

    assert [wait(n, 0.0) for n in range(1, 5)] == [1.0, 2.0, 4.0, 8.0]
    assert wait(50, 0.0) == cap and wait(50, 1.0) == 0.8 * cap  # never past the cap
    # A server that allows less than the first second is waited for that long at most.
    assert retry_delay(1, RECONNECT_FIRST_SECONDS, 0.5, jitter=RECONNECT_JITTER) <= 0.5
