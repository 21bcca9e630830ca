"""A claimed batch, loaded and made ready: what rendering each email needs, read for the whole
batch in a few queries, and the email composed from it.

Nothing here writes: what becomes of an email that cannot go out (held, deferred, rejected) is
engine.send.outcomes' business.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from engine.base.errors import TemplateError
from engine.mail.mime import OutgoingEmail
from engine.program.sequences import SendStep, Sequence
from engine.program.settings import SenderSettings
from engine.send.render import Renderer
from engine.store.db import Database
from engine.store.lease import Claimed
from engine.store.models import Contact, Enrollment, Event, Message, Referral

T = TypeVar("T")
# Claimed rows are loaded this many at a time (bound parameters per IN list stay modest).
LOAD_CHUNK = 500


@dataclass(frozen=True, slots=True)
class Loaded:
    """What rendering one claimed message needs, read for the whole batch in one go."""

    message: Message
    contact: Contact
    trigger: Event | None
    parent_subject: str | None
    advocate: bool = False  # see advocates()


@dataclass(frozen=True, slots=True)
class Ready:
    """A rendered message, ready for SMTP."""

    recipient: str
    subject: str
    data: bytes


def load(db: Database, claimed: list[Claimed]) -> dict[int, Loaded]:
    """Message, contact, trigger event and parent subject of every claimed row, by id.

    A few queries per batch instead of several per message; a row whose fence moved on
    (claimed again meanwhile) is left out.
    """
    fences = {c.id: c.fence for c in claimed}
    found: list[tuple[Message, Contact, int | None]] = []
    triggers: dict[int, Event] = {}
    subjects: dict[str, str | None] = {}
    with db.session() as session:
        for ids in _chunks(list(fences)):
            rows = session.execute(
                select(Message, Contact, Enrollment.trigger_event_id)
                .join(Contact, Contact.id == Message.contact_id)
                .join(Enrollment, Enrollment.id == Message.enrollment_id)
                .where(Message.id.in_(ids))
            )
            found.extend((m, ct, t) for m, ct, t in rows if m.fence == fences[m.id])
        for ids in _chunks(sorted({t for _, _, t in found if t is not None})):
            for event in session.scalars(select(Event).where(Event.id.in_(ids))):
                triggers[event.id] = event
        parents = select(Message.message_id, Message.subject)
        for keys in _chunks(sorted({m.in_reply_to for m, _, _ in found if m.in_reply_to})):
            for message_id, subject in session.execute(parents.where(Message.message_id.in_(keys))):
                subjects[message_id] = subject
        known = advocates(session, [contact.id for _, contact, _ in found])
    return {
        m.id: Loaded(
            m,
            contact,
            triggers.get(trigger_id) if trigger_id is not None else None,
            subjects.get(m.in_reply_to) if m.in_reply_to else None,
            contact.id in known,
        )
        for m, contact, trigger_id in found
    }


def find_step(sequences: dict[str, Sequence], message: Message) -> tuple[Sequence, SendStep] | None:
    """The sequence and send step an outbox row was planned for; None once either is gone."""
    seq = sequences.get(message.sequence_id)
    if seq is None:
        return None
    step = next((s for s in seq.steps if isinstance(s, SendStep) and s.id == message.step_id), None)
    return None if step is None else (seq, step)


def compose(
    renderer: Renderer,
    sender: SenderSettings,
    seq: Sequence,
    step: SendStep,
    loaded: Loaded,
    now: datetime,
) -> OutgoingEmail:
    """The email ``step`` makes for the loaded row, dated ``now`` (``build_message`` turns it
    into bytes). Raises TemplateError naming the step when the template cannot be rendered
    for this contact (a missing variable, a render limit ...)."""
    message, contact, trigger = loaded.message, loaded.contact, loaded.trigger
    context: dict[str, Any] = {
        "contact": contact.template_context() | ({"advocate": True} if loaded.advocate else {}),
        "sequence": seq.id,
        "step": step.id,
        "referral": _referral_context(trigger),
        "reward": (trigger.data or {}).get("reward") if trigger else None,
    }
    try:
        rendered = renderer.render(
            step.template,
            step.subject_for(contact.locale),
            context,
            locale=contact.locale,
            ref=message.ref,
        )
    except TemplateError as exc:
        # The held email's reason names the step as well as the template (and the limit).
        raise type(exc)(f"step {seq.id}/{step.id}: {exc}") from exc
    parent_subject = loaded.parent_subject
    subject = rendered.subject or (f"Re: {parent_subject}" if parent_subject else "")
    return OutgoingEmail(
        message_id=message.message_id,
        from_name=sender.from_name,
        from_email=sender.from_email,
        reply_to=sender.reply_to,
        to_name=" ".join(filter(None, [contact.first_name, contact.last_name])),
        to_email=contact.email,
        subject=subject,
        html=rendered.html,
        text=rendered.text,
        date=now,
        list_unsubscribe_url=rendered.unsubscribe_url,
        list_unsubscribe_mailto=sender.unsubscribe_mailto,
        feedback_id=f"{step.id}:{seq.id}:{seq.category}:{sender.feedback_id}",
        in_reply_to=message.in_reply_to,
        references=tuple((message.references or "").split()),
    )


def _chunks(values: list[T]) -> Iterator[list[T]]:
    """``values`` in slices of LOAD_CHUNK: IN lists with a bounded number of parameters."""
    for start in range(0, len(values), LOAD_CHUNK):
        yield values[start : start + LOAD_CHUNK]


def advocates(session: Session, contact_ids: list[int]) -> set[int]:
    """Which of these contacts are advocates (a promoter who already introduced someone, or
    who scored 10 twice): templates see ``contact.advocate`` and can be more personal."""
    found: set[int] = set()
    for ids in _chunks(sorted(set(contact_ids))):
        found.update(
            session.scalars(
                select(Referral.referrer_id).where(
                    Referral.referrer_id.in_(ids), Referral.flag.is_(None)
                )
            )
        )
        found.update(
            session.scalars(
                select(Event.contact_id)
                .where(
                    Event.contact_id.in_(ids),
                    Event.type == "nps.answered",
                    Event.data["score"].as_integer() == 10,
                )
                .group_by(Event.contact_id)
                .having(func.count() >= 2)
            )
        )
    return found


def _referral_context(trigger: Event | None) -> dict[str, Any] | None:
    if trigger is None or not trigger.type.startswith("referral."):
        return None
    data = trigger.data or {}
    return {
        k: data.get(k)
        for k in ("friend_name", "friend_email", "status", "value", "friends")
        if data.get(k) is not None
    }
