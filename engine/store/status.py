"""The status values stored in the database, one ``StrEnum`` per table.

They are strings in the database (and in reports, webhooks and exports), so a member compares
equal to its value: ``MessageStatus.QUEUED == "queued"``. Code names the member, never the bare
literal, so a typo is an error at import time rather than a query that silently matches nothing.
"""

from __future__ import annotations

from enum import StrEnum


class MessageStatus(StrEnum):
    """An outbox row: queued -> sending -> sent | failed | render_failed | cancelled."""

    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    RENDER_FAILED = "render_failed"  # held: its template failed; `outbox retry` requeues it
    CANCELLED = "cancelled"


class EnrollmentStatus(StrEnum):
    """A contact's run through a sequence."""

    ACTIVE = "active"
    COMPLETED = "completed"
    STOPPED = "stopped"
    HELD = "held"


class ReferralStatus(StrEnum):
    """introduced -> contacted -> converted | lost; detected (found in a reply) until reviewed."""

    DETECTED = "detected"
    INTRODUCED = "introduced"
    CONTACTED = "contacted"
    CONVERTED = "converted"
    LOST = "lost"


class DeliveryStatus(StrEnum):
    """A webhook delivery."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class NoteStatus(StrEnum):
    """A note to the team."""

    QUEUED = "queued"
    SENT = "sent"
    FAILED = "failed"
