"""Contacts CSV import: upsert by email, every bad row reported with its row number and field.

Rows are validated one by one; a rejected row never stops the others. Re-importing the same
file changes nothing (idempotent). A changed NPS score counts as a survey answer.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.base import locale
from engine.base.errors import ImportRowError
from engine.mail.mime import check_address
from engine.program.windows import parse_zone
from engine.records.csvfile import CsvTable
from engine.records.events import record_event
from engine.records.privacy import was_erased
from engine.store.db import Database
from engine.store.models import Contact, Event, Message

STANDARD = (
    "email",
    "first_name",
    "last_name",
    "company",
    "timezone",
    "nps_score",
    "nps_at",
    "customer_since",
    "last_complaint_at",
    "locale",
    "kind",
)
DATES = ("nps_at", "customer_since", "last_complaint_at")
KINDS = ("customer", "partner")
FORBIDDEN = re.compile("[\x00-\x08\x0a-\x1f\x7f\u2028\u2029]")
CHUNK = 500


@dataclass
class ImportReport:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[str] = field(default_factory=list)  # "row 7: email: missing"
    erased_before: int = 0  # created again after an erasure: kept unsubscribed
    custom_columns: list[str] = field(default_factory=list)  # kept as custom fields
    dry_run: bool = False  # what would change; nothing was written

    @property
    def total(self) -> int:
        return self.created + self.updated + self.unchanged + len(self.rejected)


def new_referral_code() -> str:
    return secrets.token_urlsafe(6).replace("-", "x").replace("_", "y")


def _date(name: str, text: str) -> datetime:
    try:
        if len(text) == 10:
            d = date.fromisoformat(text)
            return datetime(d.year, d.month, d.day, tzinfo=UTC)
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ImportRowError(f"{name}: {text!r} is not an ISO date (YYYY-MM-DD)") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def parse_row(row: dict[str, str]) -> dict[str, Any]:
    """Validate one CSV row (cells by column: standard columns by their standard name) into
    contact values; raise ImportRowError naming the field."""
    values: dict[str, Any] = {}
    custom: dict[str, str] = {}
    for name, raw in row.items():
        text = (raw or "").strip()
        if FORBIDDEN.search(text):
            raise ImportRowError(f"{name}: contains a line break or control character")
        if name not in STANDARD:
            if text:
                custom[name] = text
            continue
        if not text:
            continue
        if name == "email":
            try:
                values["email"] = check_address(text).lower()
            except ValueError as exc:
                raise ImportRowError(f"email: {exc}") from None
        elif name == "nps_score":
            if not re.fullmatch(r"[0-9]{1,2}", text) or not 0 <= int(text) <= 10:
                raise ImportRowError(f"nps_score: {text!r} is not a whole number from 0 to 10")
            values["nps_score"] = int(text)
        elif name in DATES:
            values[name] = _date(name, text)
        elif name == "timezone":
            try:
                parse_zone(text)
            except ValueError:
                raise ImportRowError(f"timezone: unknown time zone {text!r}") from None
            values["timezone"] = text
        elif name == "locale":
            tag = locale.normalize(text)
            if tag is None:
                raise ImportRowError(f"locale: {text!r} is not a language code like en, id, ar")
            values["locale"] = tag  # its normal form: "pt_br" is stored as "pt-BR"
        elif name == "kind":
            if text.lower() not in KINDS:
                raise ImportRowError(f"kind: {text!r} must be customer or partner")
            values["kind"] = text.lower()
        else:
            values[name] = text
    if "email" not in values:
        raise ImportRowError("email: missing (the email column is required)")
    values["fields"] = custom
    return values


def import_contacts(
    db: Database,
    path: Path,
    now: datetime,
    progress: Callable[[int], None] | None = None,
    *,
    dry_run: bool = False,
) -> ImportReport:
    """Upsert every valid row of ``path``; return what happened to each. With ``dry_run``
    the same report, every transaction rolled back: nothing is written."""
    table = CsvTable(path, known=STANDARD, required=("email",))
    report = ImportReport(custom_columns=table.custom, dry_run=dry_run)
    pending: list[tuple[int, dict[str, Any]]] = []
    seen: dict[str, int] = {}
    for row in table.rows():
        if progress:
            progress(row.last_line - row.first_line + 1)
        if row.problem is not None:
            report.rejected.append(f"{row.where}: {row.problem}")
            continue
        try:
            values = parse_row(row.cells)
        except ImportRowError as exc:
            report.rejected.append(f"{row.where}: {exc}")
            continue
        if (first := seen.get(values["email"])) is not None:
            report.rejected.append(f"{row.where}: email: {values['email']} repeats row {first}")
            continue
        seen[values["email"]] = row.number
        pending.append((row.number, values))
        if len(pending) >= CHUNK:
            _upsert(db, pending, now, report)
            pending.clear()
    _upsert(db, pending, now, report)
    return report


@contextmanager
def _writing(db: Database, dry_run: bool) -> Iterator[Session]:
    """A write transaction, committed; or for a dry run, always rolled back."""
    if not dry_run:
        with db.write() as session:
            yield session
        return
    with db.writers() as session:
        try:
            yield session
            session.flush()  # what a commit would check (constraints) is checked
        finally:
            session.rollback()


def _upsert(
    db: Database, rows: list[tuple[int, dict[str, Any]]], now: datetime, report: ImportReport
) -> None:
    if not rows:
        return
    with _writing(db, report.dry_run) as session:
        existing = {
            c.email: c
            for c in session.scalars(
                select(Contact).where(Contact.email.in_([v["email"] for _, v in rows]))
            )
        }
        for _, values in rows:
            contact = existing.get(values["email"])
            if contact is None:
                contact = Contact(
                    **{"kind": "customer", **values},
                    referral_code=new_referral_code(),
                    created_at=now,
                    updated_at=now,
                    check_at=now,
                )
                if was_erased(session, values["email"]):
                    # They asked to be forgotten: back in the list, never emailed again.
                    contact.unsubscribed_at = now
                    report.erased_before += 1
                session.add(contact)
                session.flush()
                report.created += 1
                if contact.nps_score is not None:
                    _nps_answered(session, contact, now)
                continue
            changed = {
                k: v for k, v in values.items() if k != "fields" and getattr(contact, k) != v
            }
            fields = {**(contact.fields or {}), **values["fields"]}
            if fields != (contact.fields or {}):
                changed["fields"] = fields
            if not changed:
                report.unchanged += 1
                continue
            for key, value in changed.items():
                setattr(contact, key, value)
            contact.updated_at = now
            contact.check_at = now  # new facts: audience rules must look again
            report.updated += 1
            if "nps_score" in changed or "nps_at" in changed:
                _nps_answered(session, contact, now)


def _nps_answered(session: Any, contact: Contact, now: datetime) -> None:
    record_event(
        session,
        "nps.answered",
        contact.nps_at or now,
        contact_id=contact.id,
        data={"score": contact.nps_score, "source": "import"},
    )


def record_nps_answer(db: Database, email: str, score: int, now: datetime, *, source: str) -> None:
    """A survey answer: latest wins; the planner routes on the ``nps.answered`` event."""
    with db.write() as session:
        contact = session.scalar(select(Contact).where(Contact.email == email.lower()))
        if contact is None:
            raise LookupError(f"no contact {email}")
        apply_nps_answer(session, contact, score, now, source=source)


def apply_nps_answer(
    session: Session,
    contact: Contact,
    score: int,
    now: datetime,
    *,
    source: str,
    message: Message | None = None,
) -> Event | None:
    """Set ``contact``'s score (latest answer wins) and record ``nps.answered`` in ``session``.

    With ``message`` (a click in the survey email), repeating the answer that is already the
    latest one records nothing and returns None: a double click is one answer.
    """
    if isinstance(score, bool) or not isinstance(score, int) or not 0 <= score <= 10:
        raise ImportRowError(f"nps_score: {score!r} is not from 0 to 10")
    if message is not None and contact.nps_score == score:
        latest = session.scalar(
            select(Event)
            .where(Event.contact_id == contact.id, Event.type == "nps.answered")
            .order_by(Event.occurred_at.desc(), Event.id.desc())
            .limit(1)
        )
        if latest is not None and latest.message_id == message.id:
            return None
    contact.nps_score, contact.nps_at, contact.updated_at = score, now, now
    contact.check_at = now
    return record_event(
        session,
        "nps.answered",
        now,
        contact_id=contact.id,
        message=message,
        data={"score": score, "source": source},
    )
