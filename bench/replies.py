"""One `replies poll` pass over a mailbox of N mixed emails (default 10,000) on a real Dovecot.

The mix: replies in the thread of one of our emails (some introducing someone), replies in
Indonesian, Malay and Arabic, "not interested" answers, out-of-office replies with and without
a return date, DSN bounces (hard, soft, policy), Exim-style prose bounces, mail from strangers,
emails with a 300 kB or 8 MB attachment, and garbage. Set-up (contacts and sent emails in the
database with raw executemany, the emails written straight into the maildir) is not measured.

Prints the pass's time and rate, what it found, and the process's peak RSS before and after
the pass. Nothing traces memory during a timed pass (tracemalloc slows parsing several times):
with --trace the pass runs under tracemalloc instead and its peak is printed (the time is then
not the figure to quote). Run: .venv/bin/python bench/replies.py [N] [--trace]
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import resource
import shutil
import sqlite3
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.base.clock import FixedClock
from engine.demo import samples
from engine.inbound.replies.poller import poll_once
from engine.program.settings import (
    DatabaseSettings,
    NotifySettings,
    PathSettings,
    SenderSettings,
    Settings,
)
from engine.store.db import Database
from engine.wiring import Engine
from tests.support.dovecot import Dovecot, find_dovecot

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
CONTACTS = 2000
US = "hello@acme.example"


def populate(db_path: Path) -> list[tuple[str, str]]:
    """Contacts, each in referral-ask with its ask sent; returns (address, Message-ID) pairs."""
    Database(f"sqlite:///{db_path}").dispose()  # migrations
    stamp = (NOW - timedelta(days=1)).replace(tzinfo=None).isoformat(sep=" ")
    since = (NOW - timedelta(days=400)).replace(tzinfo=None).isoformat(sep=" ")
    sent = [
        (f"person{i}@example.com", f"<ask{i}.{os.urandom(4).hex()}@acme.example>")
        for i in range(1, CONTACTS + 1)
    ]
    conn = sqlite3.connect(db_path)
    conn.executemany(
        "INSERT INTO contacts (id, email, first_name, last_name, kind, nps_score, customer_since,"
        " fields, referral_code, created_at, updated_at, timezone, locale)"
        " VALUES (?, ?, ?, 'Lima', 'customer', 10, ?, '{}', ?, ?, ?, 'UTC', 'en')",
        ((i, a, f"Person{i}", since, f"r{i}", since, since) for i, (a, _) in enumerate(sent, 1)),
    )
    conn.executemany(
        "INSERT INTO enrollments (id, contact_id, sequence_id, key, status, position, step,"
        " next_at, started_at) VALUES (?, ?, 'referral-ask', 'cycle-1', 'active', 2,"
        " 'reminder', ?, ?)",
        ((i, i, stamp, stamp) for i in range(1, CONTACTS + 1)),
    )
    conn.executemany(
        "INSERT INTO messages (enrollment_id, contact_id, sequence_id, step_id, message_id, ref,"
        " status, due_at, attempts, fence, created_at, sent_at, subject)"
        " VALUES (?, ?, 'referral-ask', 'ask', ?, ?, 'sent', ?, 1, 1, ?, ?, 'Who?')",
        ((i, i, mid, os.urandom(12), stamp, stamp, stamp) for i, (_, mid) in enumerate(sent, 1)),
    )
    conn.commit()
    conn.close()
    return sent


def mailbox(n: int, sent: list[tuple[str, str]]) -> Iterator[bytes]:
    """N emails of every kind the poller meets, in a fixed pseudo-random order."""
    pick = random.Random(4).choice
    texts = [
        "Happy to help! Let me think about who could use this.",
        "Boleh, saya kenalkan dengan rekan saya minggu depan.",
        "Boleh, nanti saya hubungi kawan saya.",
        "شكرا لك، سأفكر في الأمر.",
    ]
    no = ["Not interested, thanks.", "Saya tidak tertarik.", "Kami tidak berminat.", "غير مهتم"]
    away = [
        "I am out of the office until 16 March.",
        "Saya sedang cuti dan akan kembali pada 20 Maret 2026.",
        "سأعود في ١٥ مارس",
        "I am away with limited access to email.",
    ]
    attachment = b"A" * 300_000
    huge = os.urandom(8 * 1024 * 1024)
    for n_ in range(n):
        who, ours = pick(sent)
        roll = n_ % 100
        if roll < 35:
            yield samples.reply(who, US, ours, pick(texts), date=NOW)
        elif roll < 38:
            yield samples.reply(
                who, US, ours, "Meet Budi <budi@santoso.example>!", date=NOW, cc=f"x{n_}@f.example"
            )
        elif roll < 46:
            yield samples.reply(who, US, ours, pick(no), date=NOW)
        elif roll < 61:
            yield samples.auto_reply(who, US, ours, pick(away), date=NOW)
        elif roll < 71:
            yield samples.dsn(who, ours, date=NOW)
        elif roll < 77:
            yield samples.dsn(who, ours, date=NOW, status="4.2.2", diagnostic="452 4.2.2 Full")
        elif roll < 78:
            yield samples.dsn(who, ours, date=NOW, status="5.7.1", diagnostic="554 5.7.1 Blocked")
        elif roll < 81:
            yield EXIM.format(who=who, ours=ours).replace("\n", "\r\n").encode()
        elif roll < 93:
            yield samples.reply(f"stranger{n_}@elsewhere.example", US, None, "Hi!", date=NOW)
        elif roll < 97:
            yield with_attachment(who, ours, attachment)
        elif roll < 99:
            yield b"\x80\xff\xfe garbage " + str(n_).encode() + b"\r\n"
        elif n_ % 1000 == 99:
            yield with_attachment(who, ours, huge)
        else:
            yield samples.reply(who, US, ours, "Thanks!", date=NOW)


EXIM = """\
From: Mail Delivery System <Mailer-Daemon@mx.example.net>
To: team@acme.example
Subject: Mail delivery failed: returning message to sender
X-Failed-Recipients: {who}

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  {who}
    550 5.1.1 <{who}>: Recipient address rejected: User unknown

------ This is a copy of the message, including all the headers. ------

Message-ID: {ours}
"""


def with_attachment(who: str, ours: str, data: bytes) -> bytes:
    import base64

    return (
        (
            f"From: {who}\r\nTo: {US}\r\nSubject: Re: Who?\r\nIn-Reply-To: {ours}\r\n"
            f"Message-ID: <att{os.urandom(6).hex()}@example.com>\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
            "Content-Type: text/plain\r\n\r\nHere is our deck, have a look.\r\n--b\r\n"
            "Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        ).encode()
        + base64.encodebytes(data)
        + b"\r\n--b--\r\n"
    )


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--trace"]
    trace = "--trace" in sys.argv[1:]
    n = int(args[0]) if args else 10_000
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(message)s")
    binary = find_dovecot()
    if binary is None:
        raise SystemExit("Dovecot is not installed (apt-get install dovecot-imapd)")
    server = Dovecot(binary).start()
    folder = Path(tempfile.mkdtemp(prefix="bench-replies-"))
    try:
        user = server.new_user()
        sent = populate(folder / "engine.db")
        started = time.perf_counter()
        server.fill(user, mailbox(n, sent))
        print(f"mailbox: {n} emails written in {time.perf_counter() - started:.1f} s")
        settings = Settings(
            database=DatabaseSettings(url=f"sqlite:///{folder / 'engine.db'}"),
            imap=server.settings(user, timeout=60.0),
            sender=SenderSettings(from_email="team@acme.example", reply_to=US),
            notify=NotifySettings(owner="owner@acme.example"),
            paths=PathSettings(str(ROOT / "sequences"), str(ROOT / "templates")),
        )
        engine = Engine.build(settings, FixedClock(NOW))
        before = peak_rss_mb()
        if trace:
            tracemalloc.start()
        started = time.perf_counter()
        stats = asyncio.run(poll_once(engine.replies()))
        elapsed = time.perf_counter() - started
        engine.close()
        print(f"one pass: {stats.read} emails in {elapsed:.1f} s ({stats.read / elapsed:.0f}/s)")
        print(f"  {stats.summary()}")
        print(f"peak RSS: {before:.0f} MB before the pass, {peak_rss_mb():.0f} MB after")
        if trace:
            peak = tracemalloc.get_traced_memory()[1] / 1e6
            print(f"tracemalloc peak during the pass: {peak:.1f} MB (timing slowed by tracing)")
    finally:
        server.remove()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
