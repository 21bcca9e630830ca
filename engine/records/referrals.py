"""Recording who referred whom, and conversions. Each is an event the planner reacts to:
``referral.created`` starts the thank-you and stops the ask; ``referral.converted`` starts the
reward email. A conversion reported twice is recorded once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.base.errors import EngineError
from engine.mail.mime import check_address
from engine.records.events import record_event
from engine.store.db import Database
from engine.store.models import Contact, Referral


class ReferralError(EngineError, ValueError):
    """A referral cannot be recorded as asked (unknown referrer, bad address ...)."""


@dataclass(frozen=True)
class ReferralOutcome:
    referral_id: int
    created: bool  # False: it was already recorded (nothing new happened)
    message: str


def referral_event(
    session: Session, type_: str, referral: Referral, now: datetime, **extra: Any
) -> None:
    """Record ``type_`` about ``referral`` on its referrer, with what the emails and webhooks
    need (friend, channel, status) and ``extra``."""
    record_event(
        session,
        type_,
        now,
        contact_id=referral.referrer_id,
        data={
            "referral_id": referral.id,
            "friend_email": referral.friend_email,
            "friend_name": referral.friend_name,
            "channel": referral.channel,
            "status": referral.status,
            **extra,
        },
    )


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
    consent: str | None = None,
) -> ReferralOutcome:
    """Record that ``referrer_email`` introduced ``friend_email``.

    ``consent``: the wording the person ticked on a web form (kept in the event's data).
    """
    (outcome,) = add_referrals(
        db, referrer_email, [(friend_email, name)], now, channel=channel, consent=consent
    )
    return outcome


def add_referrals(
    db: Database,
    referrer_email: str,
    friends: Sequence[tuple[str, str | None]],
    now: datetime,
    *,
    channel: str = "cli",
    consent: str | None = None,
) -> list[ReferralOutcome]:
    """Record, in one transaction, introductions made together (``friends``: (email, name)
    pairs, e.g. the two people of one intro form); one outcome each.

    Each new introduction gets its referral and ``referral.created`` event. The referrer is
    thanked once for them all: the event of the first unflagged one has ``thank_you: true``
    and ``friends`` (``name``, ``email`` of every unflagged one); the others have
    ``thank_you: false``, flagged ones (a self-referral ...) included, so the thank-you
    sequence (triggered on ``thank_you: true``) sends one email naming the real introductions.
    """
    referrer_addr = _address(referrer_email, "--referrer")
    wanted = [(_address(email, "--email"), name) for email, name in friends]
    if any(friend == referrer_addr for friend, _ in wanted):
        raise ReferralError("--email: a contact cannot refer themselves")
    with db.write() as session:
        referrer = session.scalar(select(Contact).where(Contact.email == referrer_addr))
        if referrer is None:
            raise ReferralError(f"--referrer: no contact {referrer_addr}; import them first")
        outcomes: list[ReferralOutcome] = []
        recorded: list[tuple[Referral, dict[str, Any]]] = []
        for friend, name in wanted:
            outcome, new = _introduce(
                session, referrer, friend, now, name=name, channel=channel, consent=consent
            )
            outcomes.append(outcome)
            if new is not None:
                recorded.append(new)
        real = [referral for referral, _ in recorded if referral.flag is None]
        for referral, extra in recorded:
            thanked = bool(real) and referral is real[0]
            if thanked:
                extra["friends"] = [{"name": r.friend_name, "email": r.friend_email} for r in real]
            referral_event(session, "referral.created", referral, now, thank_you=thanked, **extra)
        return outcomes


def _introduce(
    session: Session,
    referrer: Contact,
    friend: str,
    now: datetime,
    *,
    name: str | None,
    channel: str,
    consent: str | None,
) -> tuple[ReferralOutcome, tuple[Referral, dict[str, Any]] | None]:
    """One introduction by ``referrer``, in ``session``: its outcome, and the referral with
    the extra data of the ``referral.created`` event to record (None: nothing new)."""
    who = f"{referrer.email} introduced {friend}"
    existing = session.scalar(
        select(Referral).where(Referral.referrer_id == referrer.id, Referral.friend_email == friend)
    )
    if existing is not None and existing.status == "detected":
        # A person confirms what the engine found in a reply: now it is an introduction.
        existing.status, existing.updated_at = "introduced", now
        existing.friend_name = name or existing.friend_name
        extra: dict[str, Any] = {"confirmed": True}
        if existing.flag is not None:
            extra["flag"] = existing.flag
        return ReferralOutcome(existing.id, True, f"confirmed: {who}"), (existing, extra)
    if existing is not None:
        return ReferralOutcome(existing.id, False, f"{who} was already recorded"), None
    referral = _new_referral(
        session,
        referrer,
        friend,
        now,
        name=name,
        channel=channel,
        status="introduced",
        consent=consent,
    )
    flag = referral.flag
    extra = {
        **({"flag": flag} if flag is not None else {}),
        **({"consent": consent} if consent is not None else {}),
    }
    note = f" (flagged: {flag.replace('_', ' ')}, no reward)" if flag else ""
    return ReferralOutcome(referral.id, True, f"recorded: {who}{note}"), (referral, extra)


def _mailbox(address: str) -> str:
    """The mailbox an address reaches: ``ann+promo@x.com`` and ``ann@x.com`` are one."""
    local, _, domain = address.partition("@")
    return f"{local.split('+', 1)[0]}@{domain}"


def attribution_flag(
    session: Session,
    referrer: Contact,
    friend: str,
    friend_contact: Contact | None,
    now: datetime,
) -> str | None:
    """Why an introduction must not be rewarded, else None: ``self_referral`` (the referrer's
    own mailbox), ``duplicate`` (somebody else introduced this friend first) or
    ``existing_customer`` (the friend was a customer before the introduction)."""
    if _mailbox(friend) == _mailbox(referrer.email):
        return "self_referral"
    if session.scalar(select(Referral.id).where(Referral.friend_email == friend).limit(1)):
        return "duplicate"
    if friend_contact is not None and friend_contact.kind == "customer":
        since = friend_contact.customer_since
        if since is None or since <= now:
            return "existing_customer"
    return None


def _credited(session: Session, friend: str) -> Referral:
    """The referral of ``friend`` that gets the credit (the earliest), locked for update."""
    referral = session.scalar(
        select(Referral)
        .where(Referral.friend_email == friend)
        .order_by(Referral.created_at, Referral.id)
        .limit(1)
        .with_for_update()
    )
    if referral is None:
        raise ReferralError(f"--email: nobody referred {friend}; record it with referrals add")
    return referral


def convert_referral(
    db: Database, friend_email: str, now: datetime, *, value: Decimal | None = None
) -> ReferralOutcome:
    """Mark the referred person as a customer; the earliest referrer gets the credit."""
    friend = _address(friend_email, "--email")
    with db.write() as session:
        referral = _credited(session, friend)
        if not convert_in_session(session, referral, now, value=value):
            return ReferralOutcome(referral.id, False, f"{friend} had already converted")
        return ReferralOutcome(referral.id, True, f"converted: {friend}")


UPDATE_STATUSES = ("contacted", "lost")


def update_referral(
    db: Database, friend_email: str, status: str, now: datetime, *, note: str | None = None
) -> ReferralOutcome:
    """Move the friend's referral on (``contacted`` or ``lost``) and record it in the follow-up
    history (``referral.updated``, which starts the "how it went" email to the referrer)."""
    if status not in UPDATE_STATUSES:
        raise ReferralError(f"--status: {status!r} is not one of {', '.join(UPDATE_STATUSES)}")
    friend = _address(friend_email, "--email")
    with db.write() as session:
        referral = _credited(session, friend)
        if referral.status == "converted":
            raise ReferralError(f"--status: {friend} already converted; that is final")
        if referral.status == status:
            return ReferralOutcome(referral.id, False, f"{friend} was already {status}")
        referral.status, referral.updated_at = status, now
        referral_event(
            session, "referral.updated", referral, now, **({"note": note} if note else {})
        )
        return ReferralOutcome(referral.id, True, f"{friend}: {status}")


def convert_in_session(
    session: Session, referral: Referral, now: datetime, *, value: Decimal | None
) -> bool:
    """Convert ``referral`` in the caller's transaction and record ``referral.converted``
    (the planner gives the gifts and starts the reward email); False if it had converted."""
    if referral.status == "converted":
        return False
    referral.status = "converted"
    referral.converted_at = referral.updated_at = now
    referral.value = value
    referral_event(
        session,
        "referral.converted",
        referral,
        now,
        value=str(value) if value is not None else None,
    )
    return True


def _new_referral(
    session: Session,
    referrer: Contact,
    friend: str,
    now: datetime,
    *,
    name: str | None,
    channel: str,
    status: str,
    consent: str | None = None,
) -> Referral:
    """Insert a referral of ``friend`` (a normalised address), linked to their contact row
    when they have one and flagged as ``attribution_flag`` finds it; ``consent`` is the
    wording the friend agreed to, now."""
    friend_contact = session.scalar(select(Contact).where(Contact.email == friend))
    referral = Referral(
        referrer_id=referrer.id,
        friend_email=friend,
        friend_name=name,
        friend_contact_id=friend_contact.id if friend_contact else None,
        channel=channel,
        status=status,
        created_at=now,
        updated_at=now,
        flag=attribution_flag(session, referrer, friend, friend_contact, now),
        consent_text=consent,
        consent_at=now if consent is not None else None,
    )
    session.add(referral)
    session.flush()
    return referral


def record_detected_referral(
    session: Session,
    referrer: Contact,
    friend_email: str,
    now: datetime,
    *,
    name: str | None,
    channel: str,
    evidence: dict[str, Any],
) -> Referral | None:
    """Record, in the caller's transaction, an introduction the engine found by itself (a new
    address in a reply's Cc, "meet X <x@...>"): a referral with status "detected" and a
    ``referral.created`` event whose data has ``detected`` and ``review`` true, so a person
    can confirm it. None when this referrer already introduced that address."""
    friend = friend_email.strip().lower()
    if friend == referrer.email:
        return None
    name = (name or "").strip()[:200] or None  # a display name can be any length
    existing = session.scalar(
        select(Referral.id).where(
            Referral.referrer_id == referrer.id, Referral.friend_email == friend
        )
    )
    if existing is not None:
        return None
    referral = _new_referral(
        session, referrer, friend, now, name=name, channel=channel, status="detected"
    )
    referral_event(
        session, "referral.created", referral, now, detected=True, review=True, **evidence
    )
    return referral
