"""Notes to the team, queued: "Ann replied", "a promoter to call within 24 h", "a detractor wrote".

``notify`` queues one plain-text email to the address a role has in ``[notify]`` (idempotent by
key: one note per event and role, however often the event is processed); the outbound stage
sends the due ones (``engine.outbound.notes``).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from engine.program.sequences import NOTIFY_ROLES
from engine.program.settings import NotifySettings
from engine.store.db import Database, insert_ignore
from engine.store.models import Notification


def notify(
    session: Session,
    db: Database,
    addresses: NotifySettings,
    role: str,
    *,
    key: str,
    subject: str,
    body: str,
    now: datetime,
    contact_id: int | None = None,
    event_id: int | None = None,
) -> bool:
    """Queue a note to ``role``'s address; False when the role has none (nothing to email) or
    a note with ``key`` exists already."""
    if role not in NOTIFY_ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {', '.join(NOTIFY_ROLES)}")
    address = getattr(addresses, role)
    if not address:
        return False
    row = {
        "key": key[:200],
        "role": role,
        "to_email": address,
        "subject": subject,
        "body": body,
        "contact_id": contact_id,
        "event_id": event_id,
        "status": "queued",
        "attempts": 0,
        "due_at": now,
        "created_at": now,
    }
    return insert_ignore(session, db, Notification, [row]) == 1
