"""The numbers a referral program is run by (basic funnel for now)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, distinct, false, func, or_, select, true

from engine.sequences import SendStep, Sequence
from engine.store.db import Database
from engine.store.models import Alert, Event, Message, Referral

ENGAGEMENT = ("opened", "clicked", "replied", "unsubscribed", "bounced", "auto_replied")

ALERT_DAYS = timedelta(days=30)  # how long an alert without a pause stays in the report


@dataclass
class StepRow:
    sequence: str
    step: str
    queued: int = 0
    sent: int = 0
    failed: int = 0
    held: int = 0
    cancelled: int = 0
    bounced: int = 0
    opened: int = 0
    clicked: int = 0
    replied: int = 0
    unsubscribed: int = 0
    auto_replied: int = 0  # out-of-office answers (they do not count as replies)
    hard_bounced: int = 0  # of ``bounced``: the address is gone (suppressed)
    soft_bounced: int = 0  # of ``bounced``: mailbox full, delayed, refused for now

    @property
    def ctr(self) -> float | None:
        """Click-through rate = emails clicked / emails opened."""
        return self.clicked / self.opened if self.opened else None

    @property
    def reply_rate(self) -> float | None:
        """Response rate = emails replied to / emails sent."""
        return self.replied / self.sent if self.sent else None


@dataclass
class Report:
    steps: list[StepRow] = field(default_factory=list)
    asked: int = 0  # contacts who were sent a referral ask
    referrals: int = 0
    converted: int = 0
    referral_value: float = 0.0
    alerts: list[str] = field(default_factory=list)  # what a person must look at now

    @property
    def conversion_rate(self) -> float | None:
        return self.converted / self.referrals if self.referrals else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "alerts": self.alerts,
            "steps": [{**asdict(s), "ctr": s.ctr, "reply_rate": s.reply_rate} for s in self.steps],
            "referrals": {
                "asked": self.asked,
                "referrals": self.referrals,
                "converted": self.converted,
                "conversion_rate": self.conversion_rate,
                "value": self.referral_value,
            },
        }


def build_report(db: Database, sequences: dict[str, Sequence], now: datetime) -> Report:
    """Count outbox states and engagement per sequence and step, and the referral funnel."""
    report = Report()
    rows: dict[tuple[str, str], StepRow] = {}
    with db.session() as session:
        report.alerts = [
            a.message
            for a in session.scalars(
                select(Alert)
                .where(
                    # sending paused now, or something to act on (no pause) from the last 30 days
                    or_(
                        Alert.pause_until > now,
                        and_(Alert.pause_until.is_(None), Alert.created_at > now - ALERT_DAYS),
                    )
                )
                .order_by(Alert.created_at)
            )
        ]
        status_counts = session.execute(
            select(Message.sequence_id, Message.step_id, Message.status, func.count()).group_by(
                Message.sequence_id, Message.step_id, Message.status
            )
        ).all()
        for seq_id, step_id, status, count in status_counts:
            row = rows.setdefault((seq_id, step_id), StepRow(seq_id, step_id))
            attr = {"sending": "queued", "render_failed": "held", "suppressed": "cancelled"}.get(
                status, status
            )
            setattr(row, attr, getattr(row, attr) + count)
        hard = func.coalesce(Event.data["hard"].as_boolean(), false())
        engaged = session.execute(
            select(
                Event.sequence_id,
                Event.step_id,
                *[
                    func.count(distinct(case((Event.type == t, Event.message_id))))
                    for t in ENGAGEMENT
                ],
                *[
                    func.count(
                        distinct(case((and_(Event.type == "bounced", hard == v), Event.message_id)))
                    )
                    for v in (true(), false())
                ],
            )
            .where(Event.message_id.is_not(None), Event.type.in_(ENGAGEMENT))
            .group_by(Event.sequence_id, Event.step_id)
        ).all()
        for event_seq, event_step, *counts, hard_count, soft_count in engaged:
            key = (str(event_seq), str(event_step))  # set on every event with a message
            row = rows.setdefault(key, StepRow(*key))
            for name, count in zip(ENGAGEMENT, counts, strict=True):
                setattr(row, name, count)
            row.hard_bounced, row.soft_bounced = hard_count, soft_count
        ask_steps = [
            (s.id, step.id)
            for s in sequences.values()
            for step in s.steps
            if isinstance(step, SendStep) and step.referral_ask
        ]
        if ask_steps:
            report.asked = (
                session.scalar(
                    select(func.count(distinct(Message.contact_id))).where(
                        Message.status == "sent",
                        or_(
                            *[
                                and_(Message.sequence_id == a, Message.step_id == b)
                                for a, b in ask_steps
                            ]
                        ),
                    )
                )
                or 0
            )
        report.referrals = session.scalar(select(func.count()).select_from(Referral)) or 0
        report.converted = (
            session.scalar(
                select(func.count()).select_from(Referral).where(Referral.status == "converted")
            )
            or 0
        )
        report.referral_value = float(
            session.scalar(select(func.coalesce(func.sum(Referral.value), 0))) or 0
        )
    order = {sid: i for i, sid in enumerate(sorted(sequences))}

    def position(row: StepRow) -> tuple[int, int]:
        seq = sequences.get(row.sequence)
        idx = next((i for i, s in enumerate(seq.steps) if s.id == row.step), 99) if seq else 99
        return order.get(row.sequence, 999), idx

    report.steps = sorted(rows.values(), key=position)
    return report


COLUMNS = (
    "sequence",
    "step",
    "queued",
    "sent",
    "failed",
    "held",
    "cancelled",
    "bounced",
    "hard_bounced",
    "soft_bounced",
    "opened",
    "clicked",
    "replied",
    "reply_rate",
    "auto_replied",
    "unsubscribed",
    "ctr",
)


def to_json(report: Report) -> str:
    return json.dumps(report.as_dict(), indent=2)


def to_csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in report.as_dict()["steps"]:
        writer.writerow([row[c] if row[c] is not None else "" for c in COLUMNS])
    return out.getvalue()
