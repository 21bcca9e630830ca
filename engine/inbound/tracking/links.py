"""Every landing-page URL of one sent message, for a person to open (the demo prints them)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from engine.mail.tokens import Links
from engine.store.db import Database
from engine.store.models import Contact, Message


@dataclass(frozen=True)
class MessageLinks:
    """The tracking URLs a message's recipient could open; ``nps[score]`` records ``score``."""

    open: str
    unsubscribe: str
    nps: tuple[str, ...]
    intro_form: str
    partner_form: str
    testimonial: str
    referral: str | None  # the contact's personal referral page


def message_links(db: Database, links: Links, message_id: str) -> MessageLinks | None:
    """The URLs of the message whose Message-ID header is ``message_id`` (``"<...@...>"``), as
    the email carries them (same tokens); None when there is no such message."""
    with db.session() as session:
        row = session.execute(
            select(Message.ref, Contact.referral_code)
            .join(Contact, Contact.id == Message.contact_id)
            .where(Message.message_id == message_id)
        ).first()
    if row is None:
        return None
    ref, code = row
    return MessageLinks(
        open=links.open(ref),
        unsubscribe=links.unsubscribe(ref),
        nps=tuple(links.nps(ref, score) for score in range(11)),
        intro_form=links.form("intro", ref),
        partner_form=links.form("partner", ref),
        testimonial=links.form("testimonial", ref),
        referral=links.referral(code) if code else None,
    )
