"""End-to-end sending rate vs bare aiosmtplib, in one run, to one sink in another process.

Engine: plan + render (precompiled MJML) + MIME + SMTP + outbox bookkeeping, N personalised
emails. Bare: the same number of pre-built messages of the same size through plain
aiosmtplib over the same number of connections. Prints both rates and their ratio.
The bare run goes once before and once after the engine run; the ratio uses their mean, and
the two bare rates show how noisy the machine was meanwhile. Nothing traces memory during the
timed runs (tracemalloc slows allocation-heavy code several times); the peak RSS is printed.
Run: .venv/bin/python bench/send.py [N] [CONNECTIONS]
"""

from __future__ import annotations

import asyncio
import dataclasses
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiosmtplib

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.clock import FixedClock  # noqa: E402
from engine.scheduler import Engine  # noqa: E402
from engine.settings import Settings  # noqa: E402
from engine.store.db import Database  # noqa: E402
from engine.transport import SmtpTransport  # noqa: E402

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # Monday, inside the send window


def start_sink() -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "smtp_sink.py"), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline().split()[-1])


def populate(db_path: Path, n: int) -> None:
    Database(f"sqlite:///{db_path}").dispose()
    since = (NOW - timedelta(days=400)).replace(tzinfo=None).isoformat(sep=" ")
    conn = sqlite3.connect(db_path)
    conn.executemany(
        "INSERT INTO contacts (email, first_name, last_name, company, kind, nps_score,"
        " customer_since, fields, referral_code, created_at, updated_at, timezone, locale,"
        " check_at) VALUES (?, ?, 'Lima', ?, 'customer', 10, ?, '{}', ?, ?, ?, 'UTC', 'en', ?)",
        (
            (
                f"person{i}@example.com",
                f"Person{i}",
                f"Company {i}",
                since,
                f"code{i}",
                since,
                since,
                since,
            )
            for i in range(n)
        ),
    )
    conn.commit()
    conn.close()


async def engine_run(settings: Settings, n: int) -> tuple[float, float]:
    """Plan and send ``n`` emails; (seconds in total, seconds of it spent planning)."""
    engine = Engine.build(settings, FixedClock(NOW))
    # only the ask sequence enrolls (the survey would double the emails)
    engine.loaded.sequences.pop("nps-survey", None)
    async with SmtpTransport(settings.smtp) as transport:
        t0 = time.perf_counter()
        plan = engine.planner().plan()
        planned = time.perf_counter() - t0
        stats = await engine.sender(transport).send_due()
        elapsed = time.perf_counter() - t0
    assert plan.planned == n and stats.sent == n, (plan, stats)
    engine.close()
    return elapsed, planned


async def bare_run(port: int, n: int, connections: int, message: bytes) -> float:
    async def worker(count: int) -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port)
        await client.connect()
        for i in range(count):
            await client.sendmail("team@example.com", [f"person{i}@example.com"], message)
        await client.quit()

    share = [n // connections + (1 if i < n % connections else 0) for i in range(connections)]
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in share))
    return time.perf_counter() - t0


def sample_message(settings: Settings) -> bytes:
    """One real engine-built message, the bare run's payload (same size as the engine's)."""
    from engine.mime import OutgoingEmail, build_message
    from engine.scheduler import build_renderer

    renderer = build_renderer(settings)
    ctx = {
        "contact": {
            "first_name": "Person1",
            "last_name": "Lima",
            "company": "Company 1",
            "email": "person1@example.com",
            "referral_code": "code1",
        },
        "sequence": "referral-ask",
        "step": "ask",
        "referral": None,
        "reward": None,
    }
    r = renderer.render(
        "referral-ask.mjml",
        "Person1, who are one or two people?",
        ctx,
        locale="en",
        ref=b"\x01" * 12,
    )
    return build_message(
        OutgoingEmail(
            message_id="<bench@example.com>",
            from_name="Acme",
            from_email="team@example.com",
            reply_to="team@example.com",
            to_name="Person1 Lima",
            to_email="person1@example.com",
            subject=r.subject,
            html=r.html,
            text=r.text,
            date=NOW,
            list_unsubscribe_url=renderer.links.unsubscribe(b"\x01" * 12),
            feedback_id="ask:referral-ask:referral:acme",
        )
    )


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    connections = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    sink, port = start_sink()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            db_path = Path(tmp) / "send.db"
            populate(db_path, n)
            base = Settings()
            settings = dataclasses.replace(
                base,
                database=dataclasses.replace(base.database, url=f"sqlite:///{db_path}"),
                smtp=dataclasses.replace(base.smtp, port=port, connections=connections),
                paths=dataclasses.replace(
                    base.paths,
                    sequences=str(ROOT / "sequences"),
                    templates=str(ROOT / "templates"),
                ),
                schedule=dataclasses.replace(base.schedule, batch_size=500),
                base_dir=Path(tmp),
            )
            message = sample_message(settings)
            bare_before = asyncio.run(bare_run(port, n, connections, message))
            elapsed, planning = asyncio.run(engine_run(settings, n))
            bare_after = asyncio.run(bare_run(port, n, connections, message))
    finally:
        sink.terminate()
        out, _ = sink.communicate(timeout=30)
    received = int(out.split()[-1])  # its last line: "smtp_sink received <count>"
    assert received == 3 * n, f"the sink accepted {received} messages, expected {3 * n}"
    bare = (bare_before + bare_after) / 2
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    print(f"messages: {n}, connections: {connections}, message size {len(message):,} bytes")
    print(
        f"bare aiosmtplib (pre-built):      {n / bare:8.0f} emails/s  "
        f"(before {n / bare_before:.0f}, after {n / bare_after:.0f})"
    )
    print(
        f"engine end-to-end (plan..record): {n / elapsed:8.0f} emails/s  "
        f"(planning {planning / elapsed:.0%} of the time; peak RSS {peak_rss:.0f} MB)"
    )
    print(f"ratio engine/bare: {bare / elapsed:.2f}  (target >= 0.60)")


if __name__ == "__main__":
    main()
