"""Recording who referred whom, and conversions. Each is an event the planner reacts to:
``referral.created`` starts the thank-you and stops the ask; ``referral.converted`` starts the
reward email. A conversion reported twice is recorded once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import select

from engine.errors import EngineError
from engine.mime import check_address
from engine.planner import record_event
from engine.store.db import Database
from engine.store.models import Contact, Referral


class ReferralError(EngineError, ValueError):
    """A referral cannot be recorded as asked (unknown referrer, bad address ...)."""


@dataclass(frozen=True)
class ReferralOutcome:
    referral_id: int
    created: bool  # False: it was already recorded (nothing new happened)
    message: str


def _address(text: str, what: str) -> str:
    try:
        return check_address(text.strip()).lower()
    except ValueError as exc:
        raise ReferralError(f"{what}: {exc}") from None


def add_referral(
    db: Database,
    referrer_email: str,
    friend_email: str,
    now: datetime,
    *,
    name: str | None = None,
    channel: str = "cli",
) -> ReferralOutcome:
    """Record that ``referrer_email`` introduced ``friend_email``."""
    referrer_addr = _address(referrer_email, "--referrer")
    friend = _address(friend_email, "--email")
    if referrer_addr == friend:
        raise ReferralError("--email: a contact cannot refer themselves")
    with db.write() as session:
        referrer = session.scalar(select(Contact).where(Contact.email == referrer_addr))
        if referrer is None:
            raise ReferralError(f"--referrer: no contact {referrer_addr}; import them first")
        existing = session.scalar(
            select(Referral).where(
                Referral.referrer_id == referrer.id, Referral.friend_email == friend
            )
        )
        if existing is not None:
            return ReferralOutcome(
                existing.id, False, f"{referrer_addr} -> {friend} was already recorded"
            )
        friend_contact = session.scalar(select(Contact).where(Contact.email == friend))
        referral = Referral(
            referrer_id=referrer.id,
            friend_email=friend,
            friend_name=name,
            friend_contact_id=friend_contact.id if friend_contact else None,
            channel=channel,
            status="introduced",
            created_at=now,
        )
        session.add(referral)
        session.flush()
        record_event(
            session,
            "referral.created",
            now,
            contact_id=referrer.id,
            data={
                "referral_id": referral.id,
                "friend_email": friend,
                "friend_name": name,
                "channel": channel,
                "status": "introduced",
            },
        )
        return ReferralOutcome(referral.id, True, f"recorded: {referrer_addr} introduced {friend}")


def convert_referral(
    db: Database, friend_email: str, now: datetime, *, value: Decimal | None = None
) -> ReferralOutcome:
    """Mark the referred person as a customer; the earliest referrer gets the credit."""
    friend = _address(friend_email, "--email")
    with db.write() as session:
        referral = session.scalar(
            select(Referral)
            .where(Referral.friend_email == friend)
            .order_by(Referral.created_at, Referral.id)
            .limit(1)
            .with_for_update()
        )
        if referral is None:
            raise ReferralError(f"--email: nobody referred {friend}; record it with referrals add")
        if referral.status == "converted":
            return ReferralOutcome(referral.id, False, f"{friend} had already converted")
        referral.status = "converted"
        referral.converted_at = now
        referral.value = value
        record_event(
            session,
            "referral.converted",
            now,
            contact_id=referral.referrer_id,
            data={
                "referral_id": referral.id,
                "friend_email": friend,
                "friend_name": referral.friend_name,
                "status": "converted",
                "value": str(value) if value is not None else None,
            },
        )
        return ReferralOutcome(referral.id, True, f"converted: {friend}")
