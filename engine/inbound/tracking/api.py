"""``POST /api/events``: a shop or CRM reports purchases, conversions and survey answers.

Authenticated with ``Authorization: Bearer <tracking.api_token>`` (the API answers 404 while
the token is empty). The body is one JSON object:

    {"type": "purchase", "email": "buyer@example.com", "value": "120.00",
     "currency": "EUR", "order_id": "A-1001", "occurred_at": "2026-03-02T10:00:00Z"}
    {"type": "referral.converted", "email": "friend@example.com", "value": 250}
    {"type": "nps.answered", "email": "ana@example.com", "score": 9}

``email`` is required; ``value`` (>= 0, at most 2 decimals), ``currency`` (ISO 4217),
``order_id`` (a purchase reported twice with the same order id is recorded once) and
``occurred_at`` (ISO-8601, default now, not in the future) are optional, read by the rules of
``engine.records.money`` as a row of ``purchases import`` is; ``score`` (0-10) is required for
``nps.answered``. A purchase by someone who was referred also converts their referral (once).
Errors answer 400 ``{"error": "...", "field": "..."}`` naming the field.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from engine.mail.mime import check_address
from engine.records import money
from engine.records.contacts import record_nps_answer
from engine.records.purchases import record_purchase
from engine.records.referrals import ReferralError, convert_referral
from engine.store.db import Database

TYPES = ("purchase", "referral.converted", "nps.answered")
FIELDS: dict[str, frozenset[str]] = {
    "purchase": frozenset({"type", "email", "value", "currency", "order_id", "occurred_at"}),
    "referral.converted": frozenset({"type", "email", "value", "occurred_at"}),
    "nps.answered": frozenset({"type", "email", "score", "occurred_at"}),
}


class ApiError(ValueError):
    """A request the API refuses; ``field`` names the part of the body at fault."""

    def __init__(self, message: str, field: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.field = field
        self.status = status

    def body(self) -> dict[str, Any]:
        return {"error": str(self), "field": self.field}


@dataclass(frozen=True)
class ApiEvent:
    """A validated event from the API."""

    type: str
    email: str
    occurred_at: datetime
    value: Decimal | None = None
    currency: str | None = None
    order_id: str | None = None
    score: int | None = None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_body(raw: bytes, now: datetime) -> ApiEvent:
    """Decode and validate a request body; ApiError naming the field otherwise."""
    try:
        payload = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ApiError(f"the body is not valid JSON: {exc}") from None
    return parse_event(payload, now)


def parse_event(payload: object, now: datetime) -> ApiEvent:
    """Validate a decoded JSON body. ``{"type": "purchase", "email": "A@B.example", "value": 5}``
    -> ``ApiEvent("purchase", "A@b.example", now, Decimal("5.00"))``."""
    if not isinstance(payload, dict):
        raise ApiError("the body must be a JSON object")
    kind = payload.get("type")
    if kind not in TYPES:
        raise ApiError(f"type must be one of {', '.join(TYPES)}", "type")
    for name in payload:
        if name not in FIELDS[kind]:
            raise ApiError(f"unknown field for {kind}", str(name)[:100])
    email = payload.get("email")
    if not isinstance(email, str):
        raise ApiError("required: the contact's email address", "email")
    try:
        email = check_address(email).lower()
    except ValueError as exc:
        raise ApiError(str(exc), "email") from None
    value = _value(payload.get("value"))
    if kind == "purchase" and value is None:
        raise ApiError("required for a purchase: its amount", "value")
    return ApiEvent(
        type=kind,
        email=email,
        occurred_at=_instant(payload.get("occurred_at"), now),
        value=value,
        currency=_currency(payload.get("currency")),
        order_id=_order_id(payload.get("order_id")),
        score=_score(payload.get("score")) if kind == "nps.answered" else None,
    )


def _instant(value: object, now: datetime) -> datetime:
    if value is None:
        return now
    if not isinstance(value, str):
        raise ApiError("must be an ISO-8601 date/time string", "occurred_at")
    with _field("occurred_at"):
        return money.parse_occurred_at(value, now)


def _value(value: object) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ApiError("must be a number or a decimal string", "value")
    with _field("value"):
        return money.parse_amount(str(value))


def _currency(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError("must be a string", "currency")
    with _field("currency"):
        return money.parse_currency(value)


def _order_id(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise ApiError("must be a string", "order_id")
    with _field("order_id"):
        return money.parse_order_id(str(value))


@contextlib.contextmanager
def _field(name: str) -> Iterator[None]:
    """A purchase value refused by ``engine.records.money`` as an ApiError naming ``name``."""
    try:
        yield
    except ValueError as exc:
        raise ApiError(str(exc), name) from None


def _score(value: object) -> int:
    if value is None:
        raise ApiError("required for nps.answered", "score")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10:
        raise ApiError("must be a whole number from 0 to 10", "score")
    return value


def apply_event(db: Database, ev: ApiEvent) -> dict[str, Any]:
    """Record ``ev``; returns the response body. ApiError when it names nobody we know."""
    if ev.type == "nps.answered":
        assert ev.score is not None
        try:
            record_nps_answer(db, ev.email, ev.score, ev.occurred_at, source="api")
        except LookupError:
            raise ApiError("no contact with this address", "email") from None
        return {"ok": True, "type": ev.type, "recorded": True}
    if ev.type == "referral.converted":
        converted = _convert(db, ev)
        if converted is None:
            raise ApiError("nobody referred this address", "email")
        return {"ok": True, "type": ev.type, "recorded": converted}
    assert ev.value is not None
    with db.write() as session:
        done = record_purchase(
            session,
            ev.email,
            ev.value,
            ev.occurred_at,
            currency=ev.currency or "",
            order_id=ev.order_id,
            source="api",
        )
    return {
        "ok": True,
        "type": ev.type,
        "recorded": done.created,
        "referral_converted": done.converted,
    }


def _convert(db: Database, ev: ApiEvent) -> bool | None:
    """Convert the referral of ``ev.email``: True now, False already, None never referred."""
    try:
        return convert_referral(db, ev.email, ev.occurred_at, value=ev.value).created
    except ReferralError:
        return None
