"""Notify steps: the note to a role on the team, with the contact and their NPS answer."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.base.errors import TemplateError
from engine.plan.context import PlanContext
from engine.program.sequences import NotifyStep, Sequence
from engine.records.events import record_event
from engine.records.notes import notify
from engine.store.models import Contact, Enrollment, Event

log = logging.getLogger("engine.planner")

# The body of a note whose step sets none.
DEFAULT_NOTE = """\
{{ contact.first_name | default("") }} {{ contact.last_name | default("") }} <{{ contact.email }}>\
{% if contact.company is defined %} ({{ contact.company }}){% endif %}
NPS: {{ nps.score if nps.score is not none else "no answer yet" }}\
{% if nps.answered_at %} (answered {{ nps.answered_at }}){% endif %}
What would move the score closer to 10: {{ nps.improve or "(nothing written)" }}
Anything else: {{ nps.other or "(nothing written)" }}

Sequence {{ sequence }}, step {{ step }}.
"""


def send_note(
    ctx: PlanContext,
    session: Session,
    seq: Sequence,
    step: NotifyStep,
    enrollment: Enrollment,
    contact: Contact,
    now: datetime,
) -> None:
    """Queue the note (once per run and step) and record the ``notified`` event. A note
    whose text fails to render still goes out, as the standard summary with the error:
    the team hears about the customer either way."""
    context = note_context(session, seq, step, enrollment, contact)
    try:
        subject = " ".join(ctx.render_note(step.subject, context).split())
        body = ctx.render_note(step.body or DEFAULT_NOTE, context)
    except TemplateError as exc:
        log.warning("note_render_failed %s/%s: %s", seq.id, step.id, exc)
        subject = f"[{step.role}] {contact.email} ({seq.id})"
        body = ctx.render_note(DEFAULT_NOTE, context)
        body += f"\n(The note in {seq.path} step {step.id} failed to render: {exc})\n"
    ev = record_event(
        session,
        "notified",
        now,
        contact_id=contact.id,
        data={"role": step.role, "subject": subject, "sequence": seq.id, "step": step.id},
    )
    ev.handled_at = now  # for webhooks and reports; no sequence reacts to it
    session.flush()
    notify(
        session,
        ctx.db,
        ctx.settings.notify,
        step.role,
        key=f"step:{enrollment.id}:{step.id}",
        subject=subject,
        body=body,
        now=now,
        contact_id=contact.id,
        event_id=ev.id,
    )


def note_context(
    session: Session, seq: Sequence, step: NotifyStep, enrollment: Enrollment, contact: Contact
) -> dict[str, Any]:
    """contact, sequence, step, event (the trigger's data) and nps: the latest answer
    with what the contact wrote on the survey page for that score."""
    trigger = (
        session.get(Event, enrollment.trigger_event_id) if enrollment.trigger_event_id else None
    )
    comment = session.scalar(
        select(Event)
        .where(Event.contact_id == contact.id, Event.type == "nps.comment")
        .order_by(Event.occurred_at.desc(), Event.id.desc())
        .limit(1)
    )
    written = (comment.data or {}) if comment is not None else {}
    if written.get("score") != contact.nps_score:
        written = {}
    return {
        "contact": contact.template_context(),
        "sequence": seq.id,
        "step": step.id,
        "event": dict(trigger.data or {}) if trigger is not None else {},
        "nps": {
            "score": contact.nps_score,
            "answered_at": f"{contact.nps_at:%Y-%m-%d %H:%M} UTC" if contact.nps_at else "",
            "improve": written.get("improve") or "",
            "other": written.get("other") or "",
        },
    }
