"""End-to-end sending rate vs bare aiosmtplib, in one run, to one sink in another process.

Engine: plan + render (precompiled MJML) + MIME + SMTP + outbox bookkeeping, N personalised
emails. Bare: the same number of pre-built messages of the same size through plain
aiosmtplib over the same number of connections. Prints both rates and their ratio.
The machine's speed drifts by tens of percent within a minute (a shared VM), so the run is
ROUNDS interleaved rounds, each a bare run next to an engine run on a fresh copy of the
contacts (which goes first alternates); the verdict is the median of the rounds' ratios, each
measured under the same load. Nothing traces memory during the timed runs (tracemalloc slows
allocation-heavy code several times); the peak RSS is printed.
The sink is aiosmtpd by default; ``--sink fast`` uses a bare asyncio SMTP server instead, which
needs a fraction of aiosmtpd's CPU: the stricter comparison on two cores, where the sink's
process competes with the sender's for the CPU.
Run: .venv/bin/python bench/send.py [N] [CONNECTIONS] [ROUNDS] [--sink aiosmtpd|fast]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiosmtplib

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.base.clock import FixedClock  # noqa: E402
from engine.mail.smtp import SmtpTransport  # noqa: E402
from engine.program.settings import Settings  # noqa: E402
from engine.store.db import Database  # noqa: E402
from engine.wiring import Engine  # noqa: E402

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # Monday, inside the send window
# As the engine's own process does once its modules are imported (engine.cli.main freeze_heap).
gc.freeze()


def start_sink(kind: str) -> tuple[subprocess.Popen[str], int]:
    options = ["--aiosmtpd"] if kind == "aiosmtpd" else []
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "smtp_sink.py"), "--port", "0", *options],
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
    from engine.mail.mime import OutgoingEmail, build_message
    from engine.wiring import build_renderer

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
            list_unsubscribe_url=r.unsubscribe_url,
            feedback_id="ask:referral-ask:referral:acme",
        )
    )


def run_round(
    template_db: Path, tmp: Path, port: int, n: int, connections: int, engine_first: bool
) -> tuple[float, float, float]:
    """One interleaved round on a fresh copy of the contacts: (bare s, engine s, planning s)."""
    db_path = tmp / "send.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(template_db, db_path)
    settings = bench_settings(db_path, port, connections, tmp)
    message = sample_message(settings)
    if engine_first:
        elapsed, planning = asyncio.run(engine_run(settings, n))
        bare = asyncio.run(bare_run(port, n, connections, message))
    else:
        bare = asyncio.run(bare_run(port, n, connections, message))
        elapsed, planning = asyncio.run(engine_run(settings, n))
    return bare, elapsed, planning


def bench_settings(db_path: Path, port: int, connections: int, tmp: Path) -> Settings:
    base = Settings()
    return dataclasses.replace(
        base,
        database=dataclasses.replace(base.database, url=f"sqlite:///{db_path}"),
        smtp=dataclasses.replace(base.smtp, port=port, connections=connections),
        paths=dataclasses.replace(
            base.paths, sequences=str(ROOT / "sequences"), templates=str(ROOT / "templates")
        ),
        schedule=dataclasses.replace(base.schedule, batch_size=500),
        sender=dataclasses.replace(base.sender, daily_cap=0),  # the bench measures speed, not caps
        base_dir=tmp,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", nargs="?", type=int, default=2000, help="emails per run")
    parser.add_argument("connections", nargs="?", type=int, default=4)
    parser.add_argument("rounds", nargs="?", type=int, default=7)
    parser.add_argument("--sink", choices=("aiosmtpd", "fast"), default="aiosmtpd")
    args = parser.parse_args()
    n, connections, rounds = args.n, args.connections, args.rounds
    sink, port = start_sink(args.sink)
    results: list[tuple[float, float, float]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            template_db = Path(tmp) / "contacts.db"
            populate(template_db, n)
            size = len(sample_message(bench_settings(template_db, port, connections, Path(tmp))))
            for r in range(rounds):
                results.append(run_round(template_db, Path(tmp), port, n, connections, r % 2 == 1))
    finally:
        sink.terminate()
        out, _ = sink.communicate(timeout=30)
    received = int(out.split()[-1])  # its last line: "smtp_sink received <count>"
    assert received == 2 * n * rounds, f"the sink accepted {received}, expected {2 * n * rounds}"
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    print(
        f"messages: {n}, connections: {connections}, message size {size:,} bytes, sink: {args.sink}"
    )
    print("round  bare emails/s  engine emails/s  planning  ratio")
    ratios = []
    for r, (bare, elapsed, planning) in enumerate(results, 1):
        ratios.append(bare / elapsed)
        print(
            f"{r:5}  {n / bare:13.0f}  {n / elapsed:15.0f}  {planning / elapsed:8.0%}  "
            f"{bare / elapsed:5.2f}"
        )
    print(f"peak RSS {peak_rss:.0f} MB")
    print(
        f"ratio engine/bare: {statistics.median(ratios):.2f} median of {rounds} rounds "
        f"(range {min(ratios):.2f}-{max(ratios):.2f}; target >= 0.60)"
    )


if __name__ == "__main__":
    main()
