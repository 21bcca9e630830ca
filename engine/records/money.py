"""Purchase values: the one reading of an amount, a currency, an order id and a purchase time.

A purchase comes through the CSV import (``purchases import``) or the events API; both read
its values here, so the same purchase is accepted or refused the same way whichever door it
came through. Each function takes the text as given (surrounding blanks are not part of a
value) and raises ValueError with a sentence; the caller names the field its own way (the
CSV's ``row 4: amount: ...``, the API's ``{"error": ..., "field": "value"}``).

The limits are the ``purchases`` table's: an amount fits ``Numeric(12, 2)``, an order id
``String(200)``; a value the database could not hold is refused, never cut or rounded.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation

from sqlalchemy import Numeric, String

from engine.base.clock import parse_instant
from engine.store.models import Purchase

_AMOUNT = Purchase.__table__.c.amount.type
_ORDER_ID = Purchase.__table__.c.external_id.type
assert isinstance(_AMOUNT, Numeric) and _AMOUNT.precision and _AMOUNT.scale is not None
assert isinstance(_ORDER_ID, String) and _ORDER_ID.length

DECIMALS = _AMOUNT.scale  # 2: cents
CENT = Decimal(1).scaleb(-DECIMALS)  # Decimal("0.01")
MAX_AMOUNT = Decimal(10) ** (_AMOUNT.precision - DECIMALS) - CENT  # 9999999999.99
MAX_ORDER_ID = _ORDER_ID.length  # 200
# A report from a machine whose clock runs a little ahead is fine; next week is not.
FUTURE_SKEW = timedelta(minutes=5)


def parse_amount(text: str) -> Decimal:
    """An amount from 0 to ``MAX_AMOUNT`` with at most 2 decimals, as cents.

    ``"80.5"`` -> ``Decimal("80.50")``; ``"1.005"``, ``"-1"``, ``"NaN"``, ``"ten"`` -> ValueError.
    """
    try:
        amount = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"{text.strip()[:40]!r} is not a number") from None
    if not amount.is_finite() or not 0 <= amount <= MAX_AMOUNT:
        raise ValueError(f"must be from 0 to {MAX_AMOUNT}")
    cents = amount.quantize(CENT)
    if cents != amount:  # rounding would change what the buyer paid
        raise ValueError(f"at most {DECIMALS} decimal places")
    return abs(cents)  # "-0" is 0.00, not -0.00


def parse_currency(text: str) -> str:
    """A 3-letter ISO 4217 code, upper case: ``"eur"`` -> ``"EUR"``; ``"euro"`` -> ValueError."""
    code = text.strip()
    if not (len(code) == 3 and code.isascii() and code.isalpha()):
        raise ValueError("must be a 3-letter ISO 4217 code like EUR")
    return code.upper()


def parse_order_id(text: str) -> str:
    """An order id: 1 to ``MAX_ORDER_ID`` printable characters. ``" A-1001 "`` -> ``"A-1001"``
    (the same order reported with a blank around it is still the same order)."""
    order_id = text.strip()
    if not 0 < len(order_id) <= MAX_ORDER_ID or not order_id.isprintable():
        raise ValueError(f"1 to {MAX_ORDER_ID} printable characters")
    return order_id


def parse_occurred_at(text: str, now: datetime) -> datetime:
    """When the purchase was made: ISO-8601, naive taken as UTC, in UTC; not after ``now``
    (give or take ``FUTURE_SKEW``). ``"2026-03-01"`` -> 2026-03-01 00:00 UTC."""
    try:
        at = parse_instant(text)
    except (ValueError, OverflowError):  # OverflowError: year 9999 moved to UTC
        raise ValueError(f"{text.strip()[:40]!r} is not an ISO-8601 date/time") from None
    if at > now + FUTURE_SKEW:
        raise ValueError("is in the future")
    return at
