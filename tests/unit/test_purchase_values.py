"""A purchase is read the same way whichever door it comes through: a row of
``purchases import`` and a ``purchase`` posted to the events API take their amount, currency,
order id and time from ``engine.records.money``, so one is refused exactly when the other is,
each naming the field its own way (the CSV's ``amount: ...``, the API's ``"field": "value"``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from engine.base.errors import ImportRowError
from engine.inbound.tracking.api import ApiError, parse_event
from engine.records import money
from engine.records.purchases import parse_purchase_row
from engine.store.models import Purchase

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
API_FIELD = {"amount": "value"}  # the API calls the amount "value"


def through_csv(field: str, text: str) -> Any:
    """The value the CSV import reads from ``text`` in column ``field``, or its refusal."""
    row = {"email": "fay@example.com", "amount": "10", field: text}
    try:
        read = parse_purchase_row(row, NOW)
    except ImportRowError as exc:
        assert str(exc).startswith(f"{field}: "), exc  # "row N: <field>: <why>" in the report
        return "refused"
    return getattr(read, field)


def through_api(field: str, text: str) -> Any:
    """The value the events API reads from ``text`` in ``field``, or its refusal."""
    name = API_FIELD.get(field, field)
    body = {"type": "purchase", "email": "fay@example.com", "value": "10", name: text}
    try:
        read = parse_event(body, NOW)
    except ApiError as exc:
        assert exc.body()["field"] == name
        return "refused"
    return getattr(read, name)


def test_the_limits_are_the_columns_of_the_purchases_table() -> None:
    amount, order_id = Purchase.__table__.c.amount.type, Purchase.__table__.c.external_id.type
    assert (amount.precision, amount.scale) == (12, 2)  # type: ignore[attr-defined]
    assert order_id.length == 200  # type: ignore[attr-defined]
    limits = (money.MAX_AMOUNT, money.MAX_ORDER_ID)  # what those columns hold
    assert limits == (Decimal("9999999999.99"), 200)


# Each rule once: (field, text, what both doors read from it).
RULES: list[Any] = [
    # An order id as long as the column holds is accepted, one more character is not (the
    # API used to stop at 100, which the CSV took).
    pytest.param("order_id", "A" * 200, "A" * 200, id="order-id-fits-the-column"),
    pytest.param("order_id", "A" * 201, "refused", id="order-id-longer-than-the-column"),
    # Blanks around an order id are not part of it: the same order twice is recorded once.
    pytest.param("order_id", " A-1001 ", "A-1001", id="order-id-blanks"),
    pytest.param("order_id", "A\t1", "refused", id="order-id-control-character"),
    # More decimals than cents are refused, never rounded (the CSV used to round 1.005 to 1.00).
    pytest.param("amount", "80.5", Decimal("80.50"), id="amount-in-cents"),
    pytest.param("amount", "1.500", Decimal("1.50"), id="amount-trailing-zeros"),
    pytest.param("amount", "1.005", "refused", id="amount-more-decimals-than-cents"),
    # The largest amount Numeric(12, 2) holds, and no more (the CSV had no cap).
    pytest.param("amount", "9999999999.99", Decimal("9999999999.99"), id="amount-largest"),
    pytest.param("amount", "10000000000", "refused", id="amount-too-large"),
    pytest.param("amount", "-1", "refused", id="amount-negative"),
    pytest.param("amount", "-0", Decimal("0.00"), id="amount-negative-zero"),
    pytest.param("amount", "NaN", "refused", id="amount-not-finite"),
    pytest.param("amount", "ten", "refused", id="amount-not-a-number"),
    pytest.param("currency", "eur", "EUR", id="currency-upper-case"),
    pytest.param("currency", "euro", "refused", id="currency-not-iso-4217"),
    # A purchase in the future is refused (the CSV used to take it), a clock a few minutes
    # ahead is not; a time is kept in UTC.
    pytest.param(
        "occurred_at",
        (NOW + timedelta(minutes=4)).isoformat(),
        NOW + timedelta(minutes=4),
        id="occurred-at-clock-a-little-ahead",
    ),
    pytest.param("occurred_at", "2026-03-09", "refused", id="occurred-at-next-week"),
    pytest.param(
        "occurred_at",
        "2026-03-01T12:00:00+02:00",
        datetime(2026, 3, 1, 10, tzinfo=UTC),
        id="occurred-at-in-utc",
    ),
    pytest.param("occurred_at", "yesterday", "refused", id="occurred-at-not-iso"),
    pytest.param("occurred_at", "9999-12-31T23:00-05:00", "refused", id="occurred-at-beyond-9999"),
]


@pytest.mark.parametrize(("field", "text", "expected"), RULES)
def test_a_purchase_value_is_read_the_same_way_through_both_doors(
    field: str, text: str, expected: Any
) -> None:
    assert through_csv(field, text) == expected
    assert through_api(field, text) == expected
