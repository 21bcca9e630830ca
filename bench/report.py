"""Time `report` over 1,000,000 contacts, 5,000,000 emails and 10,000,000 events on SQLite.

Prints the set-up time, then for the report in totals, by month and for one quarter: its time,
peak Python memory and peak process RSS; then every query of the totals report with its time
and its EXPLAIN QUERY PLAN.
The database is filled in SQL (INSERT ... SELECT over a recursive counter) with the secondary
indexes dropped and built again afterwards; that part is set-up, not measured. Each email
has its own enrollment, so the store's references hold (a later migration checks them). The
emails' engagement masks are filled in from the events afterwards, as migration 0005 does (its
time is printed), and the triggers that keep them are created again.

Run: .venv/bin/python bench/report.py [CONTACTS] [EMAILS] [EVENTS]
(REPORT_BENCH_DB=FILE keeps the database there and reuses it on the next run.)
"""

from __future__ import annotations

import os
import resource
import sqlite3
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import event

from engine.program.sequences import load_sequences
from engine.report.figures import Report, build_report
from engine.store import engagement
from engine.store.db import Database

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
START = "2025-03-01 08:00:00"  # the emails are spread over the year before NOW
YEAR_SECONDS = 365 * 86400
# (sequence, step) of the shipped sequences, chosen per email by its id.
STEPS = (
    ("referral-ask", "ask"),
    ("referral-ask", "reminder"),
    ("nps-survey", "survey"),
    ("nps-survey", "survey-reminder"),
    ("nps-promoter", "thanks"),
    ("referral-thanks", "thanks"),
    ("referral-reward", "reward"),
    ("partner-intro-reverse", "intro"),
)
COUNTER = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {count})"


def _step_case(column: str, part: int) -> str:
    """SQL for the sequence (part 0) or step (part 1) of the email with id ``column``."""
    whens = " ".join(f"WHEN {i} THEN '{s[part]}'" for i, s in enumerate(STEPS))
    return f"CASE {column} % {len(STEPS)} {whens} END"


def _sent_at(column: str, emails: int) -> str:
    """Emails spread evenly over the year from START, in id order."""
    return f"datetime('{START}', '+' || ({column} * {YEAR_SECONDS} / {emails}) || ' seconds')"


def populate(path: Path, contacts: int, emails: int, events: int) -> None:
    Database(f"sqlite:///{path}").dispose()  # migrations
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-1000000")  # 1 GB while loading
    # Inserting into nine indexes row by row is slower than sorting each once at the end.
    indexes = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        " AND tbl_name IN ('contacts', 'enrollments', 'messages', 'events')"
    ).fetchall()
    for name, _ in indexes:
        conn.execute(f"DROP INDEX {name}")
    # Likewise each email's engagement mask: one UPDATE ... FROM after the load (migration
    # 0005's backfill, timed) rather than a trigger per event.
    for statement in engagement.drop_triggers_sql("sqlite"):
        conn.execute(statement)
    # 40% are customers since a day in the last two years (CAC counts them, LTV starts there).
    conn.execute(
        COUNTER.format(count=contacts)
        + " INSERT INTO contacts (id, email, first_name, kind, nps_score, customer_since, fields,"
        " referral_code, created_at, updated_at, timezone, locale)"
        " SELECT i, 'c' || i || '@example.com', 'C' || i, 'customer', i % 11,"
        " CASE WHEN i % 5 < 2 THEN datetime('2024-03-01', '+' || (i % 730) || ' days') END,"
        " '{}', 'r' || i, '2024-01-01 00:00:00', '2024-01-01 00:00:00', 'UTC', 'en' FROM n"
    )
    # One run per email (every email points at a real enrollment: migrations check that).
    conn.execute(
        COUNTER.format(count=emails)
        + " INSERT INTO enrollments (id, contact_id, sequence_id, key, status, position,"
        f" started_at) SELECT i, (i * 7919) % {contacts} + 1, {_step_case('i', 0)},"
        " 'cycle-' || i, 'completed', 1, '2025-03-01 08:00:00' FROM n"
    )
    # 95% sent, 2% failed, 3% queued; the subject gives rows their real width.
    conn.execute(
        COUNTER.format(count=emails)
        + " INSERT INTO messages (id, enrollment_id, contact_id, sequence_id, step_id,"
        " message_id, ref, subject, status, due_at, attempts, fence, created_at, sent_at)"
        f" SELECT i, i, (i * 7919) % {contacts} + 1, {_step_case('i', 0)}, {_step_case('i', 1)},"
        " '<' || i || '@bench.example>', CAST(printf('%016d', i) AS BLOB),"
        " 'Who could you introduce, C' || i || '?',"
        " CASE WHEN i % 100 < 95 THEN 'sent' WHEN i % 100 < 97 THEN 'failed' ELSE 'queued' END,"
        f" {_sent_at('i', emails)}, 1, 1, {_sent_at('i', emails)},"
        f" CASE WHEN i % 100 < 95 THEN {_sent_at('i', emails)} END FROM n"
    )
    # Per 100 events: 45 opens (a third by image proxies), 20 clicks (a quarter by scanners),
    # 5 replies, 2 bounces (half hard), 1 unsubscribe, 1 auto-reply, 6 referral page visits
    # (a sixth by scanners), 20 other events without an email (NPS answers, purchases, ...).
    kinds = (
        "CASE WHEN k < 45 THEN 'opened' WHEN k < 65 THEN 'clicked' WHEN k < 70 THEN 'replied'"
        " WHEN k < 72 THEN 'bounced' WHEN k < 73 THEN 'unsubscribed' WHEN k < 74 THEN"
        " 'auto_replied' WHEN k < 80 THEN 'referral.visited' WHEN k < 90 THEN 'nps.answered'"
        " ELSE 'purchase' END"
    )
    with_email = "k < 74"
    conn.execute(
        COUNTER.format(count=events)
        + ", e(i, k, m) AS (SELECT i, i % 100, (i * 104729) % "
        + str(emails)
        + " + 1 FROM n)"
        " INSERT INTO events (id, type, contact_id, message_id, sequence_id, step_id,"
        " occurred_at, data, handled_at, machine)"
        f" SELECT i, {kinds}, (m * 7919) % {contacts} + 1,"
        f" CASE WHEN {with_email} THEN m END,"
        f" CASE WHEN {with_email} THEN {_step_case('m', 0)} END,"
        f" CASE WHEN {with_email} THEN {_step_case('m', 1)} END,"
        f" datetime({_sent_at('m', emails)}, '+' || (i % 72) || ' hours'),"
        " CASE WHEN k BETWEEN 70 AND 71 THEN json_object('hard', json(CASE WHEN i % 2 = 0"
        " THEN 'true' ELSE 'false' END)) ELSE '{}' END,"
        f" {_sent_at('m', emails)},"
        " (k < 45 AND i % 3 = 0) OR (k BETWEEN 45 AND 64 AND i % 4 = 0)"
        " OR (k BETWEEN 74 AND 79 AND i % 6 = 0)"
        " FROM e"
    )
    referrals = contacts // 20
    conn.execute(
        COUNTER.format(count=referrals)
        + " INSERT INTO referrals (id, referrer_id, friend_email, channel, status, value,"
        " created_at, converted_at, updated_at, flag)"
        " SELECT i, (i * 31) % " + str(contacts) + " + 1, 'friend' || i || '@example.net', 'link',"
        " CASE WHEN i % 4 = 0 THEN 'converted' WHEN i % 10 = 1 THEN 'lost' ELSE 'introduced' END,"
        " CASE WHEN i % 4 = 0 THEN 100 + i % 400 END,"
        f" {_sent_at('i', referrals)},"
        f" CASE WHEN i % 4 = 0 THEN datetime({_sent_at('i', referrals)}, '+14 days') END,"
        f" {_sent_at('i', referrals)}, CASE WHEN i % 50 = 0 THEN 'duplicate' END FROM n"
    )
    purchases = contacts // 5
    conn.execute(
        COUNTER.format(count=purchases)
        + " INSERT INTO purchases (id, external_id, contact_id, referral_id, amount, currency,"
        " occurred_at, source, created_at)"
        f" SELECT i, 'order-' || i, (i * 13) % {contacts} + 1,"
        f" CASE WHEN i % 10 = 0 THEN (i / 10) % {referrals} + 1 END, 20 + i % 300, 'USD',"
        f" {_sent_at('i', purchases)}, 'import', {_sent_at('i', purchases)} FROM n"
    )
    conn.commit()
    t0 = time.perf_counter()
    conn.execute(engagement.backfill_sql("sqlite"))
    for statement in engagement.create_triggers_sql("sqlite"):
        conn.execute(statement)
    conn.commit()
    print(
        f"engagement masks of {emails:,} emails from the events: {time.perf_counter() - t0:.0f} s"
    )
    for _, sql in indexes:
        conn.execute(sql)
    conn.commit()
    # Fold the bulk load into the main file, so the measured pass does not pay for it.
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def timed(label: str, run: Callable[[], Report]) -> Report:
    tracemalloc.start()
    t0 = time.perf_counter()
    report = run()
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{label}: {elapsed:.2f} s; peak Python memory {peak / 1e6:.1f} MB, "
        f"process RSS high-water mark {rss:.0f} MB"
    )
    return report


def main() -> None:
    contacts, emails, events = (
        int(sys.argv[i]) if len(sys.argv) > i else default
        for i, default in ((1, 1_000_000), (2, 5_000_000), (3, 10_000_000))
    )
    keep = os.environ.get("REPORT_BENCH_DB")  # a file kept (and reused) between runs
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(keep) if keep else Path(tmp) / "report.db"
        if not path.exists():
            t0 = time.perf_counter()
            populate(path, contacts, emails, events)
            size = path.stat().st_size / 1e9
            print(
                f"set-up: {contacts:,} contacts, {emails:,} emails, {events:,} events in "
                f"{time.perf_counter() - t0:.0f} s ({size:.1f} GB)"
            )
        sequences = load_sequences(ROOT / "sequences").sequences
        db = Database(f"sqlite:///{path}")
        statements: list[tuple[str, Any]] = []

        def collect(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
            statements.append((statement, params))

        event.listen(db.engine, "before_cursor_execute", collect)
        report = timed("report (totals)", lambda: build_report(db, sequences, NOW))
        event.remove(db.engine, "before_cursor_execute", collect)
        timed("report again (totals)", lambda: build_report(db, sequences, NOW))
        timed("report --period month", lambda: build_report(db, sequences, NOW, period="month"))
        timed(
            "report --since 2025-12-01 --until 2026-02-28",
            lambda: build_report(
                db, sequences, NOW, since=date(2025, 12, 1), until=date(2026, 2, 28)
            ),
        )
        f = report.funnel
        print(
            f"check: {sum(s.sent for s in report.steps):,} sent, "
            f"{sum(s.opened for s in report.steps):,} opened by people; asked {f.asked:,}, "
            f"visits {f.visits:,}, referrals {f.referrals:,}, converted {f.converted:,}, "
            f"purchases {f.purchases:,}, LTV {report.ltv.value:,.2f}"
        )
        raw = sqlite3.connect(path)
        for statement, params in statements:
            if not statement.lstrip().upper().startswith("SELECT"):
                continue
            t0 = time.perf_counter()
            raw.execute(statement, params).fetchall()  # alone, to the last row
            seconds = time.perf_counter() - t0
            print(f"\n[{seconds:.2f} s] " + " ".join(statement.split())[:150] + " ...")
            for row in raw.execute("EXPLAIN QUERY PLAN " + statement, params):
                print(f"  {row[3]}")
        raw.close()
        db.dispose()


if __name__ == "__main__":
    main()
