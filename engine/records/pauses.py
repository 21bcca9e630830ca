"""Pauses of sending as a whole: an alert with ``pause_until`` in the future holds every
email back (a policy rejection at SMTP time or in a bounce: ours to fix)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.store.models import Alert


def active_pause(session: Session, now: datetime) -> Alert | None:
    """The alert that currently pauses sending, if any."""
    return session.scalars(
        select(Alert).where(Alert.pause_until > now).order_by(Alert.pause_until.desc()).limit(1)
    ).first()
