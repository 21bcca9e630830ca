"""The program's health at a glance (the ``status`` command): pauses of sending, the emails
due and why some wait, the last tick, failing webhook deliveries.

``record_tick`` keeps the outcome of the last tick in a ``meta`` row; ``health`` reads
everything else from the tables as they are.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from engine.program.sequences import NotifyStep, Sequence
from engine.program.settings import Settings
from engine.records.pauses import Pause, pauses_in_force
from engine.store.db import Database
from engine.store.models import Message, Meta, WebhookDelivery
from engine.store.status import DeliveryStatus, MessageStatus

LAST_TICK = "last_tick"
# A reason is counted by its first this many characters: the same refusal, whatever the
# address or template name at its end, is one line in `tick`'s and `status`'s reasons.
REASON_WIDTH = 60


def short_reason(reason: str) -> str:
    """A reason on one line, cut to ``REASON_WIDTH`` characters, to count alike ones together."""
    reason = " ".join(reason.split())
    return reason if len(reason) <= REASON_WIDTH else reason[: REASON_WIDTH - 1] + "…"


@dataclass
class Health:
    """What ``status`` shows. ``needs_attention`` lists what a person should look at."""

    pauses: list[Pause] = field(default_factory=list)
    due_now: int = 0
    later_today: int = 0
    retrying: int = 0
    held: Counter[str] = field(default_factory=Counter)  # reason -> emails
    last_tick: dict[str, Any] | None = None
    webhooks_failed: int = 0
    webhooks_erroring: int = 0  # pending, with an error from their last attempt
    mailbox: str = "not configured"

    @property
    def needs_attention(self) -> list[str]:
        """Why ``status`` exits 1: a pause in force, held emails, failing webhooks."""
        problems = [f"sending paused ({p.kind})" for p in self.pauses]
        if self.held:
            problems.append(f"{sum(self.held.values())} email(s) held")
        if self.webhooks_failed or self.webhooks_erroring:
            problems.append("webhook deliveries failing")
        return problems


def record_tick(db: Database, now: datetime, summary: dict[str, int]) -> None:
    """Remember when the last tick ended and what it did (``status`` shows it)."""
    value = json.dumps({"at": now.isoformat(), **summary})
    with db.write() as session:
        row = session.get(Meta, LAST_TICK)
        if row is None:
            session.add(Meta(key=LAST_TICK, value=value))
        else:
            row.value = value


def health(db: Database, settings: Settings, now: datetime) -> Health:
    """The program's state at ``now``."""
    end_of_day = now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    with db.session() as session:
        report = Health(pauses=pauses_in_force(session, now))
        if settings.imap.username:  # the poller keeps no record of its polls yet
            report.mailbox = f"{settings.imap.host}:{settings.imap.port}, last poll not recorded"
        queued = Message.status == MessageStatus.QUEUED
        report.due_now = _count(session, queued, Message.due_at <= now)
        report.later_today = _count(
            session, queued, Message.due_at > now, Message.due_at < end_of_day
        )
        report.retrying = _count(session, queued, Message.attempts > 0)
        for reason, emails in session.execute(
            select(Message.last_error, func.count())
            .where(Message.status == MessageStatus.RENDER_FAILED)
            .group_by(Message.last_error)
        ):
            report.held[short_reason(reason or "no reason recorded")] += emails
        stored = session.get(Meta, LAST_TICK)
        report.last_tick = json.loads(stored.value) if stored is not None else None
        report.webhooks_failed = _count(
            session, WebhookDelivery.status == DeliveryStatus.FAILED, model=WebhookDelivery
        )
        report.webhooks_erroring = _count(
            session,
            WebhookDelivery.status == DeliveryStatus.PENDING,
            or_(WebhookDelivery.last_error.is_not(None), WebhookDelivery.last_status >= 400),
            model=WebhookDelivery,
        )
    return report


def _count(session: Session, *where: Any, model: Any = Message) -> int:
    return session.scalar(select(func.count()).select_from(model).where(*where)) or 0


def lines(report: Health, now: datetime) -> list[str]:
    """``report`` as the lines ``status`` prints."""
    out = [f"status at {now:%Y-%m-%d %H:%M} UTC"]
    out += [f"PAUSED {p.describe()}" for p in report.pauses] or ["sending: not paused"]
    out.append(
        f"emails: due now {report.due_now}, later today {report.later_today}, "
        f"retrying {report.retrying}, held {sum(report.held.values())}"
    )
    out += [f"  held {n}: {reason}" for reason, n in report.held.most_common()]
    tick = report.last_tick
    out.append(
        "last tick: never"
        if tick is None
        else "last tick: " + ", ".join(f"{k} {v}" for k, v in tick.items())
    )
    out.append(f"mailbox: {report.mailbox}")
    out.append(
        f"webhooks: {report.webhooks_failed} failed, {report.webhooks_erroring} pending with errors"
    )
    return out


def notify_warnings(settings: Settings, sequences: dict[str, Sequence]) -> list[str]:
    """One warning per ``[notify]`` role that a sequence (or the reply mailbox, which tells
    the owner about replies) would email, but that has no address: those notes go nowhere."""
    users: dict[str, list[str]] = {}
    for seq in sorted(sequences.values(), key=lambda s: s.id):
        for step in seq.steps:
            if isinstance(step, NotifyStep):
                users.setdefault(step.role, []).append(f"{seq.id}/{step.id}")
    if settings.imap.username:
        users.setdefault("owner", []).append("replies from the mailbox")
    return [
        f"warning: [notify] {role} has no address, so the notes of {', '.join(where)} go to nobody"
        for role, where in sorted(users.items())
        if not getattr(settings.notify, role)
    ]
