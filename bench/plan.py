"""Plan one tick over N enrolled contacts of which D are due (default 1,000,000 / 1,000).

Prints the planning time, rows planned and peak Python memory. The database is built with
raw executemany (that part is set-up, not measured). Run: .venv/bin/python bench/plan.py [N] [D]
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.base.clock import FixedClock
from engine.plan.planner import Planner
from engine.program.sequences import load_sequences
from engine.program.settings import Settings
from engine.store.db import Database
from engine.store.models import Meta
from engine.wiring import build_renderer

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def fmt(dt: datetime) -> str:
    return dt.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ")


def populate(path: Path, total: int, due: int) -> None:
    Database(f"sqlite:///{path}").dispose()  # migrations
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    since = fmt(NOW - timedelta(days=400))
    conn.executemany(
        "INSERT INTO contacts (id, email, first_name, kind, nps_score, customer_since, fields,"
        " referral_code, created_at, updated_at, timezone, locale)"
        " VALUES (?, ?, ?, 'customer', 10, ?, '{}', ?, ?, ?, 'UTC', 'en')",
        (
            (i, f"c{i}@example.com", f"C{i}", since, f"r{i}", since, since)
            for i in range(1, total + 1)
        ),
    )
    future, past = fmt(NOW + timedelta(days=2)), fmt(NOW - timedelta(minutes=1))
    # Every contact is in referral-ask, waiting; `due` of them are due right now at step 0.
    conn.executemany(
        "INSERT INTO enrollments (id, contact_id, sequence_id, key, status, position, next_at,"
        " started_at) VALUES (?, ?, 'referral-ask', 'cycle-1', 'active', ?, ?, ?)",
        (
            (
                i,
                i,
                0 if i % (total // due) == 0 else 1,
                past if i % (total // due) == 0 else future,
                since,
            )
            for i in range(1, total + 1)
        ),
    )
    conn.commit()
    # Fold the bulk load into the main file now, so the measured pass does not pay a
    # one-off checkpoint of a million rows.
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def main() -> None:
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    due = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "plan.db"
        t0 = time.perf_counter()
        populate(path, total, due)
        print(f"set-up: {total:,} contacts and enrollments in {time.perf_counter() - t0:.1f} s")
        loaded = load_sequences(ROOT / "sequences")
        settings = Settings(base_dir=ROOT)
        db = Database(f"sqlite:///{path}")
        planner = Planner(
            db=db,
            sequences=loaded.sequences,
            settings=settings,
            clock=FixedClock(NOW),
            render_note=build_renderer(settings).render_note,
        )
        with db.write() as session:  # steady state: these rules were planned with before
            session.add(Meta(key="audience_fingerprint", value=planner.audience_fingerprint()))
        tracemalloc.start()
        t0 = time.perf_counter()
        stats = planner.plan()
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(
            f"plan: {elapsed * 1000:.0f} ms for {stats.planned:,} emails planned "
            f"({total:,} enrolled, {due:,} due); peak Python memory {peak / 1e6:.1f} MB"
        )
        t0 = time.perf_counter()
        db.checkpoint()
        print(
            f"WAL checkpoint after the pass (the scheduler runs it between ticks): "
            f"{(time.perf_counter() - t0) * 1000:.0f} ms"
        )
        t0 = time.perf_counter()
        again = planner.plan()
        print(
            f"second pass (nothing due): {(time.perf_counter() - t0) * 1000:.1f} ms, "
            f"planned {again.planned}"
        )
        db.dispose()


if __name__ == "__main__":
    main()
