"""A person's data: export it (GDPR access) or erase it (GDPR erasure).

Erasure keeps the rows that anonymous counts are made of (the contact row, its emails and
events, referrals, purchases, rewards), strips everything that identifies the person (address,
names, custom fields, subjects, free text, tracking details), and leaves a hashed suppression
entry, so that importing the address again never starts sending to it again.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from engine.base.errors import EngineError
from engine.store.db import Database
from engine.store.models import (
    Alert,
    Contact,
    Enrollment,
    Event,
    Message,
    Meta,
    Notification,
    Purchase,
    Referral,
    Reward,
    Suppression,
)

ERASED_DOMAIN = "erased.invalid"  # RFC 6761: can never be an address that receives mail
# Event data keys that name or describe a person other than by the contact row.
_PERSONAL_KEYS = frozenset(
    {
        *("friend_email", "friend_name", "email", "name", "improve", "other", "text"),
        *("quote", "from", "cc", "ip", "user_agent", "consent", "subject", "reason"),
        *("answers", "intake", "testimonial", "url"),
    }
)


class PrivacyError(EngineError, LookupError):
    """No such person in the store."""


# The key of the suppression hash: 32 random bytes made at the first erasure and kept in
# `meta`, never rotated (a new key would let every erased address back in). In the database
# rather than in the settings: every process and host sharing the data uses the same key,
# and it cannot be lost, retyped or rotated with the settings. It is apart from the tracking
# secret (which rotates) and protects the suppression list itself: a hash in it can no
# longer be checked against a list of addresses without the key.
ERASURE_KEY = "erasure_hash_key"


def hashed(email: str, key: bytes) -> str:
    """The suppression key of an erased address: ``hmac-sha256:<hex>`` of its lower-case form
    under the erasure key."""
    mac = hmac.new(key, email.strip().lower().encode("utf-8"), hashlib.sha256)
    return "hmac-sha256:" + mac.hexdigest()


def _unkeyed(email: str) -> str:
    """The suppression key erasures wrote before the key existed (still checked)."""
    return "sha256:" + hashlib.sha256(email.strip().lower().encode("utf-8")).hexdigest()


def _erasure_key(session: Session, *, create: bool) -> bytes | None:
    row = session.get(Meta, ERASURE_KEY)
    if row is None and create:
        dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
        new = secrets.token_bytes(32).hex()
        # Two processes erasing at once: one key wins, both use it.
        stmt = dialect.insert(Meta).values(key=ERASURE_KEY, value=new).on_conflict_do_nothing()
        session.execute(stmt)
        row = session.get(Meta, ERASURE_KEY, populate_existing=True)
    return bytes.fromhex(row.value) if row is not None else None


def was_erased(session: Session, email: str) -> bool:
    """True when ``email`` belonged to a person whose data was erased (keyed hash, or the
    unkeyed one of erasures made before the key)."""
    key = _erasure_key(session, create=False)
    keys = [_unkeyed(email)] + ([hashed(email, key)] if key is not None else [])
    return any(session.get(Suppression, k) is not None for k in keys)


def _find(session: Session, email: str) -> Contact:
    contact = session.scalar(select(Contact).where(Contact.email == email.strip().lower()))
    if contact is None:
        raise PrivacyError(f"no contact {email.strip()}")
    return contact


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def export_contact(db: Database, email: str) -> dict[str, Any]:
    """Everything the store holds about ``email``, as JSON-ready data."""
    with db.session() as session:
        contact = _find(session, email)
        address = contact.email
        messages = session.scalars(
            select(Message).where(Message.contact_id == contact.id).order_by(Message.id)
        ).all()
        return {
            "contact": {
                "email": address,
                **contact.template_context(),
                "nps_at": _iso(contact.nps_at),
                "customer_since": _iso(contact.customer_since),
                "last_complaint_at": _iso(contact.last_complaint_at),
                "unsubscribed_at": _iso(contact.unsubscribed_at),
                "created_at": _iso(contact.created_at),
            },
            "suppressed": [
                {"reason": s.reason, "since": _iso(s.created_at)}
                for s in session.scalars(select(Suppression).where(Suppression.email == address))
            ],
            "sequences": [
                {
                    "sequence": e.sequence_id,
                    "status": e.status,
                    "started_at": _iso(e.started_at),
                    "ended_at": _iso(e.ended_at),
                    "reason": e.reason,
                }
                for e in session.scalars(
                    select(Enrollment)
                    .where(Enrollment.contact_id == contact.id)
                    .order_by(Enrollment.id)
                )
            ],
            "emails": [
                {
                    "sequence": m.sequence_id,
                    "step": m.step_id,
                    "subject": m.subject,
                    "status": m.status,
                    "sent_at": _iso(m.sent_at),
                    "message_id": m.message_id,
                }
                for m in messages
            ],
            "events": [
                {"type": ev.type, "at": _iso(ev.occurred_at), "data": ev.data or {}}
                for ev in session.scalars(
                    select(Event).where(Event.contact_id == contact.id).order_by(Event.id)
                )
            ],
            "referrals_made": [
                _referral(r)
                for r in session.scalars(
                    select(Referral).where(Referral.referrer_id == contact.id).order_by(Referral.id)
                )
            ],
            "referred_by": [
                _referral(r)
                for r in session.scalars(
                    select(Referral)
                    .where(
                        or_(
                            Referral.friend_email == address,
                            Referral.friend_contact_id == contact.id,
                        )
                    )
                    .order_by(Referral.id)
                )
            ],
            "rewards": [
                {"role": r.role, "gift": r.description, "issued_at": _iso(r.issued_at)}
                for r in session.scalars(select(Reward).where(Reward.contact_id == contact.id))
            ],
            "purchases": [
                {"amount": str(p.amount), "currency": p.currency, "at": _iso(p.occurred_at)}
                for p in session.scalars(select(Purchase).where(Purchase.contact_id == contact.id))
            ],
        }


def _referral(r: Referral) -> dict[str, Any]:
    return {
        "friend_email": r.friend_email,
        "friend_name": r.friend_name,
        "channel": r.channel,
        "status": r.status,
        "flag": r.flag,
        "consent": r.consent_text,
        "consent_at": _iso(r.consent_at),
        "created_at": _iso(r.created_at),
        "converted_at": _iso(r.converted_at),
    }


def _scrubbed(data: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (data or {}).items() if k not in _PERSONAL_KEYS}


def erase_contact(db: Database, email: str, now: datetime) -> str:
    """Erase ``email``'s personal data everywhere; returns a one-line summary."""
    with db.write() as session:
        contact = _find(session, email)
        address = contact.email
        placeholder = f"erased-{contact.id}@{ERASED_DOMAIN}"
        # Introductions of this person by others: keep the count, drop who they were.
        friend_of = session.scalars(
            select(Referral).where(
                or_(Referral.friend_email == address, Referral.friend_contact_id == contact.id)
            )
        ).all()
        for referral in friend_of:
            referral.friend_email = f"erased-referral-{referral.id}@{ERASED_DOMAIN}"
            referral.friend_name = None
            referral.consent_text = None
        for ev in session.scalars(
            select(Event).where(
                or_(
                    Event.contact_id == contact.id,
                    Event.data["referral_id"].as_integer().in_([r.id for r in friend_of]),
                )
            )
        ):
            ev.data = _scrubbed(ev.data)
        session.execute(
            update(Message)
            .where(Message.contact_id == contact.id)
            .values(subject=None, last_error=None)
        )
        session.execute(delete(Notification).where(Notification.contact_id == contact.id))
        for alert in session.scalars(select(Alert).where(Alert.message.contains(address))):
            alert.message = alert.message.replace(address, "[erased]")
        session.execute(delete(Suppression).where(Suppression.email == address))
        key = _erasure_key(session, create=True)
        assert key is not None
        session.add(Suppression(email=hashed(address, key), reason="erased", created_at=now))
        contact.email = placeholder
        for name in ("first_name", "last_name", "company", "timezone", "locale"):
            setattr(contact, name, None)
        contact.fields = {}
        contact.referral_code = secrets.token_urlsafe(12)
        contact.unsubscribed_at = contact.unsubscribed_at or now
        contact.check_at = None
        contact.erased_at = now
        contact.updated_at = now
        session.execute(
            update(Enrollment)
            .where(Enrollment.contact_id == contact.id, Enrollment.status.in_(("active", "held")))
            .values(status="stopped", reason="erased", ended_at=now, next_at=None)
        )
        session.execute(
            update(Message)
            .where(
                Message.contact_id == contact.id,
                Message.status.in_(("queued", "sending", "render_failed")),
            )
            .values(status="cancelled", lease_owner=None, lease_until=None)
        )
        return (
            f"erased {address}: contact #{contact.id} anonymised, {len(friend_of)} introduction(s)"
            " of them anonymised; the address stays suppressed (hashed)"
        )
