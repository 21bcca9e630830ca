"""Pauses of sending as a whole: an alert with ``pause_until`` in the future holds every
email back. The one pause mechanism of the engine, whatever its cause:

- the relay cannot be reached (connection refused, timed out, a 421 greeting), or it refuses
  our login or its TLS certificate: ``relay_failed`` pauses sending and the pause ends at the
  next *probe*, the first send after it, which either goes through (sending resumes by
  itself) or fails the same way and pauses again, for longer (``engine.base.retry``);
- a server refuses us, the sender, by policy (at SMTP time or in a bounce): a fixed pause
  (``[smtp] policy_pause_seconds``) and a person told.

A pause is one ``Alert`` row: ``kind`` (``PauseKind``), ``message`` (the reason), ``created_at``
(since when) and ``pause_until`` (the end, or the next probe). ``lift`` ends pauses by hand
(``sending resume``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from engine.base.retry import retry_delay
from engine.records.events import record_event
from engine.store.models import Alert, Message

# However long the relay has been down, a probe comes at least this often: a relay back up
# is noticed within 15 minutes (``[smtp] retry_max_seconds``, when shorter, wins).
RELAY_PROBE_MAX_SECONDS = 900.0
RESUMED_EVENT = "sending.resumed"


class PauseKind(StrEnum):
    """Why sending is paused (the ``alerts.kind`` of a pause)."""

    RELAY_DOWN = "relay_down"  # the relay cannot be reached: probed with backoff
    LOGIN_REFUSED = "login_refused"  # the relay refuses our login: probed with backoff
    TLS_FAILED = "tls_failed"  # the relay's certificate is not trusted: probed with backoff
    POLICY = "sending_paused"  # an SMTP policy rejection: a fixed pause
    BOUNCE_POLICY = "bounce_policy"  # a bounce saying we were refused by policy: a fixed pause


# Kinds about reaching the relay at all: they end at the next probe, and grow by backoff.
PROBED = frozenset({PauseKind.RELAY_DOWN, PauseKind.LOGIN_REFUSED, PauseKind.TLS_FAILED})
_KINDS = frozenset(PauseKind)
_LABELS = {
    PauseKind.RELAY_DOWN: "relay down",
    PauseKind.LOGIN_REFUSED: "login refused",
    PauseKind.TLS_FAILED: "TLS refused",
    PauseKind.POLICY: "policy rejection",
    PauseKind.BOUNCE_POLICY: "policy bounce",
}


@dataclass(frozen=True)
class Pause:
    """A pause of sending: its kind, reason, since when, and until when (or the next probe)."""

    id: int
    kind: str
    reason: str
    since: datetime
    until: datetime

    @property
    def probed(self) -> bool:
        """Ends at the next probe of the relay rather than at a fixed time."""
        return self.kind in PROBED

    def describe(self) -> str:
        """One line: ``relay down since 10:00, next probe 10:04 UTC: cannot connect ...``."""
        label = _LABELS.get(PauseKind(self.kind), self.kind) if self.kind in _KINDS else self.kind
        end = "next probe" if self.probed else "until"
        return (
            f"{label} since {self.since:%Y-%m-%d %H:%M}, {end} {self.until:%Y-%m-%d %H:%M} UTC: "
            f"{self.reason}"
        )


def _pause(alert: Alert) -> Pause:
    assert alert.pause_until is not None
    return Pause(alert.id, alert.kind, alert.message, alert.created_at, alert.pause_until)


def active_pause(session: Session, now: datetime) -> Alert | None:
    """The alert that currently pauses sending, if any."""
    return session.scalars(
        select(Alert).where(Alert.pause_until > now).order_by(Alert.pause_until.desc()).limit(1)
    ).first()


def pauses_in_force(session: Session, now: datetime, kind: str | None = None) -> list[Pause]:
    """Every pause in force at ``now`` (of ``kind`` only, when given), the oldest first."""
    query = select(Alert).where(Alert.pause_until > now)
    if kind is not None:
        query = query.where(Alert.kind == kind)
    return [_pause(a) for a in session.scalars(query.order_by(Alert.created_at, Alert.id))]


def probe_number(down_for: float, base: float) -> int:
    """Which probe fails after the relay has been down ``down_for`` seconds: probe ``n`` comes
    ``base * (2 ** n - 1)`` seconds after the first failure (waits of base, 2 base, 4 base ...),
    so the count follows from the time alone.

    ``probe_number(0, 60)`` -> 1; ``probe_number(60, 60)`` -> 2; ``probe_number(180, 60)`` -> 3.
    """
    return 1 + math.floor(math.log2(max(down_for, 0.0) / base + 1.0))


def relay_failed(
    session: Session, now: datetime, kind: PauseKind, reason: str, *, base: float, cap: float
) -> Pause:
    """The relay could not be reached (or refused our login or TLS): pause sending until the
    next probe. Returns the pause in force.

    A failure while a relay pause is already in force was in flight when it began: nothing
    changes. A failed probe (no email went out since the last pause ended) extends the same
    pause with the next, longer wait; otherwise a new outage starts a new pause.
    """
    if kind not in PROBED:
        raise ValueError(f"{kind} is not a pause ended by probing the relay")
    in_force = session.scalars(
        select(Alert)
        .where(Alert.kind.in_(sorted(PROBED)), Alert.pause_until > now)
        .order_by(Alert.pause_until.desc())
        .limit(1)
    ).first()
    if in_force is not None:
        return _pause(in_force)
    cap = min(cap, RELAY_PROBE_MAX_SECONDS)
    last = session.scalars(
        select(Alert).where(Alert.kind.in_(sorted(PROBED))).order_by(Alert.id.desc()).limit(1)
    ).first()
    if (
        last is not None
        and last.pause_until is not None
        and not _sent_since(session, last.pause_until)
    ):
        probe = probe_number((now - last.created_at).total_seconds(), base)
        last.kind, last.message = kind, reason
        last.pause_until = now + timedelta(seconds=retry_delay(probe, base, cap))
        session.flush()
        return _pause(last)
    alert = Alert(
        kind=kind,
        message=reason,
        created_at=now,
        pause_until=now + timedelta(seconds=retry_delay(1, base, cap)),
    )
    session.add(alert)
    session.flush()
    return _pause(alert)


def _sent_since(session: Session, instant: datetime) -> bool:
    """Whether an email went out at or after ``instant`` (the relay worked since then)."""
    return bool(
        session.scalar(select(exists().where(Message.status == "sent", Message.sent_at >= instant)))
    )


def lift(session: Session, now: datetime, kind: str | None = None) -> list[Pause]:
    """End every pause in force (of ``kind`` only, when given) now, and record it as a
    ``sending.resumed`` event; returns the pauses lifted."""
    lifted = pauses_in_force(session, now, kind)
    if not lifted:
        return []
    for alert in session.scalars(select(Alert).where(Alert.id.in_([p.id for p in lifted]))):
        alert.pause_until = now
    record_event(
        session,
        RESUMED_EVENT,
        now,
        contact_id=None,
        data={"lifted": [{"kind": p.kind, "reason": p.reason} for p in lifted]},
    )
    return lifted
