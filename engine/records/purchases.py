"""Purchases: the base of the program's numbers (referral rate, revenue, LTV).

A purchase arrives from a CSV import (`purchases import`) or the events API. It is a row in
``purchases`` (an order id makes it idempotent) and a ``purchase`` event (webhooks, reports).
A purchase by someone a contact introduced is a referred purchase: it is linked to the
referral (the first, unflagged one) and converts it, once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import TypeVar

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from engine.base.errors import ImportRowError
from engine.mail.mime import check_address
from engine.records import money
from engine.records.csvfile import CsvTable
from engine.records.events import record_event
from engine.records.referrals import convert_in_session
from engine.store.db import Database
from engine.store.models import Contact, Purchase, Referral

T = TypeVar("T")
# The columns of a purchases file (``date`` is another name for ``occurred_at``).
COLUMNS = ("email", "amount", "occurred_at", "date", "currency", "order_id")


@dataclass
class PurchaseReport:
    recorded: int = 0
    repeated: int = 0  # an order id already recorded
    referred: int = 0  # made by someone a contact introduced
    rejected: list[str] = field(default_factory=list)  # "row 4: amount: ..."
    ignored_columns: list[str] = field(default_factory=list)  # not a purchase's


@dataclass(frozen=True)
class Recorded:
    created: bool  # False: this order id was recorded before
    referred: bool  # linked to a referral
    converted: bool  # and that referral converted now


def record_purchase(
    session: Session,
    email: str,
    amount: Decimal,
    occurred_at: datetime,
    *,
    currency: str = "",
    order_id: str | None = None,
    source: str,
) -> Recorded:
    """Record one purchase in ``session`` (see the module docstring)."""
    if order_id is not None and session.scalar(
        select(Purchase.id).where(Purchase.external_id == order_id)
    ):
        return Recorded(False, False, False)
    buyer = session.scalar(select(Contact).where(Contact.email == email))
    referral = session.scalar(
        select(Referral)
        .where(
            or_(
                Referral.friend_email == email,
                *([Referral.friend_contact_id == buyer.id] if buyer is not None else []),
            ),
            Referral.flag.is_(None),
            Referral.status != "detected",
        )
        .order_by(Referral.created_at, Referral.id)
        .limit(1)
    )
    session.add(
        Purchase(
            external_id=order_id,
            contact_id=buyer.id if buyer is not None else None,
            referral_id=referral.id if referral is not None else None,
            amount=amount,
            currency=currency,
            occurred_at=occurred_at,
            source=source,
            created_at=occurred_at,
        )
    )
    record_event(
        session,
        "purchase",
        occurred_at,
        contact_id=buyer.id if buyer is not None else None,
        data={
            "amount": str(amount),
            "currency": currency,
            "order_id": order_id,
            "referred": referral is not None,
            "source": source,
        },
    )
    converted = False
    if referral is not None and referral.status != "converted":
        converted = convert_in_session(session, referral, occurred_at, value=amount)
    return Recorded(True, referral is not None, converted)


@dataclass(frozen=True)
class PurchaseRow:
    email: str
    amount: Decimal
    currency: str
    order_id: str | None
    occurred_at: datetime


def parse_purchase_row(row: dict[str, str], now: datetime) -> PurchaseRow:
    """A CSV row, its values read by the rules of ``engine.records.money`` (the events API's
    too); ImportRowError naming the field otherwise. An empty cell is an absent value."""
    values = {k: (v or "").strip() for k, v in row.items()}
    try:
        email = check_address(values.get("email", "")).lower()
    except ValueError as exc:
        raise ImportRowError(f"email: {exc}") from None
    amount = _cell(values, "amount", money.parse_amount)
    if amount is None:
        raise ImportRowError("amount: required")
    currency = _cell(values, "currency", money.parse_currency) or ""
    order_id = _cell(values, "order_id", money.parse_order_id)
    values["occurred_at"] = values.get("occurred_at") or values.get("date", "")
    occurred_at = _cell(values, "occurred_at", lambda text: money.parse_occurred_at(text, now))
    return PurchaseRow(email, amount, currency, order_id, occurred_at or now)


def _cell(values: dict[str, str], name: str, parse: Callable[[str], T]) -> T | None:
    """Cell ``name`` read by ``parse``; None when empty; ImportRowError naming it otherwise."""
    if not (text := values.get(name)):
        return None
    try:
        return parse(text)
    except ValueError as exc:
        raise ImportRowError(f"{name}: {exc}") from None


def import_purchases(db: Database, path: Path, now: datetime) -> PurchaseReport:
    """Record every valid row of ``path`` (email, amount, occurred_at, currency, order_id);
    rejected rows are reported with their number and field, the rest are recorded."""
    table = CsvTable(path, known=COLUMNS, required=("email", "amount"))
    report = PurchaseReport(ignored_columns=table.custom)
    for row in table.rows():
        if row.problem is not None:
            report.rejected.append(f"{row.where}: {row.problem}")
            continue
        try:
            values = parse_purchase_row(row.cells, now)
        except ImportRowError as exc:
            report.rejected.append(f"{row.where}: {exc}")
            continue
        with db.write() as session:
            done = record_purchase(
                session,
                values.email,
                values.amount,
                values.occurred_at,
                currency=values.currency,
                order_id=values.order_id,
                source="import",
            )
        report.recorded += done.created
        report.repeated += not done.created
        report.referred += done.referred
    return report
