"""Our emails and the contacts a batch of incoming emails refers to, loaded together."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.inbound.replies.parse import Incoming
from engine.store.models import Contact, Enrollment, Message


@dataclass
class Lookups:
    """Our emails and the contacts a batch of incoming emails refers to, loaded with a few
    queries for the batch rather than a few per email."""

    session: Session
    messages: dict[str, Message]  # by Message-ID
    contacts: dict[str, Contact]  # by address
    newest: dict[int, Message | None] = field(default_factory=dict)  # by contact id
    # What needs the batch's events inserted first (their ids): notes to the owner.
    later: list[Callable[[], None]] = field(default_factory=list)
    soft_bounces: dict[int, int] = field(default_factory=dict)  # by contact id, this batch's too
    paused: bool = False  # a pause is in force (or this batch raised one)

    @classmethod
    def load(cls, session: Session, emails: Seq[Incoming]) -> Lookups:
        ids = {r for e in emails for r in (*e.refs[:20], e.original_message_id) if r}
        addresses = {
            a
            for e in emails
            for a in (
                e.from_addr,
                *(d.recipient for d in e.delivery),
                *(e.feedback.recipients if e.feedback else ()),
            )
            if a
        }
        messages: dict[str, Message] = {}
        for chunk in _chunks(sorted(ids)):
            for message in session.scalars(select(Message).where(Message.message_id.in_(chunk))):
                messages[message.message_id] = message
        contact_ids = {m.contact_id for m in messages.values()}
        contacts: dict[str, Contact] = {}
        for chunk in _chunks(sorted(addresses)):
            for contact in session.scalars(select(Contact).where(Contact.email.in_(chunk))):
                contacts[contact.email] = contact
        missing = contact_ids - {c.id for c in contacts.values()}
        for chunk in _chunks(sorted(missing)):
            for contact in session.scalars(select(Contact).where(Contact.id.in_(chunk))):
                contacts[contact.email] = contact
        return cls(session, messages, contacts)

    def sent(self, refs: Seq[str]) -> Message | None:
        """The newest of our emails among ``refs``."""
        found = [self.messages[r] for r in refs if r in self.messages]
        return max(found, key=lambda m: m.id) if found else None

    def contact(self, address: str) -> Contact | None:
        """The contact with this address (looked up when the batch did not name it)."""
        if not address:
            return None
        if address not in self.contacts:
            found = self.session.scalars(select(Contact).where(Contact.email == address)).first()
            if found is None:
                return None
            self.contacts[address] = found
        return self.contacts[address]

    def contact_of(self, message: Message) -> Contact | None:
        return self.session.get(Contact, message.contact_id)

    def latest(self, contact: Contact) -> Message | None:
        """The contact's last email: from a running sequence when there is one."""
        if contact.id not in self.newest:
            self.newest[contact.id] = self.session.scalars(
                select(Message)
                .join(Enrollment, Enrollment.id == Message.enrollment_id)
                .where(Message.contact_id == contact.id, Message.status == "sent")
                .order_by(Enrollment.status.in_(("active", "held")).desc(), Message.sent_at.desc())
                .limit(1)
            ).first()
        return self.newest[contact.id]


def _chunks(values: list[Any], size: int = 500) -> Iterator[list[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]
