"""The outbox under stress: leases with fencing, two workers, kill -9 in the middle of a batch."""

from __future__ import annotations

import signal
import subprocess
from collections import Counter
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from engine.sender import SendStats
from engine.store.models import Message
from engine.transport import SmtpTransport
from tests.conftest import ROOT, Project
from tests.scenario import HEADER, contacts, engine_command, setup


def promoters(n: int) -> list[str]:
    return [
        f"p{i:03d}@example.com,P{i},L,Co,UTC,10,2026-01-01,2025-01-01,,en,customer"
        for i in range(n)
    ]


@pytest.fixture
def program(make_project: Callable[..., Project]) -> Project:
    return setup(make_project(shipped=False))


async def test_a_worker_whose_lease_expired_cannot_send_or_record(program: Project) -> None:
    contacts(program, *promoters(5))
    engine = program.engine()
    engine.planner().plan()
    async with SmtpTransport(engine.settings.smtp) as transport:
        late = engine.sender(transport, worker_id="late")
        claimed = late.claim(10)
        assert len(claimed) == 5
        program.clock.advance(timedelta(seconds=engine.settings.schedule.lease_seconds + 1))
        fresh = engine.sender(transport, worker_id="fresh")
        stats = await fresh.send_due()
        assert stats.sent == 5
        # The late worker wakes up: its fence is stale, so nothing is sent or recorded again.
        late_stats = SendStats()
        await late.deliver(claimed, late_stats, None)
        assert late_stats.sent == 0 and late_stats.skipped == 5
        await late._record_sent(claimed[0], late_stats)
        assert late_stats.sent == 0
    assert len(program.sink.messages) == 5
    with engine.db.session() as s:
        assert (
            s.scalar(select(func.count()).select_from(Message).where(Message.status == "sent")) == 5
        )
    engine.close()


async def test_two_workers_share_the_work_without_sending_twice(program: Project) -> None:
    import asyncio

    contacts(program, *promoters(40))
    engine = program.engine()
    engine.planner().plan()
    async with SmtpTransport(engine.settings.smtp) as transport:
        a = engine.sender(transport, worker_id="a")
        b = engine.sender(transport, worker_id="b")
        sa, sb = await asyncio.gather(a.send_due(), b.send_due())
    assert sa.sent + sb.sent == 40
    received = Counter(m.rcpt_tos[0] for m in program.sink.messages)
    assert len(received) == 40 and set(received.values()) == {1}
    engine.close()


@pytest.mark.slow
def test_kill_9_in_the_middle_of_a_batch_loses_nothing(program: Project) -> None:
    n = 12
    contacts(program, *promoters(n))
    program.sink.delay_seconds = 0.15
    cmd, env = engine_command(program, "tick")
    env["ENGINE_SMTP_CONNECTIONS"] = "1"
    proc = subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert program.sink.wait_for(4, timeout=60), proc.stdout.read() if proc.stdout else ""
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    before = len(program.sink.messages)
    assert before < n, "the kill came too late to test anything"
    program.sink.delay_seconds = 0
    # Same instant: the killed worker's leases still hold, so nothing is sent twice now.
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    # After the lease expires, the rows it held are claimed again.
    later = (program.clock.now() + timedelta(minutes=6)).isoformat()
    done = subprocess.run(
        [*cmd[:6], later, "tick"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    received = Counter(m.rcpt_tos[0] for m in program.sink.messages)
    assert len(received) == n  # nothing lost
    twice = [r for r, c in received.items() if c > 1]
    assert len(twice) <= 1  # at most the one in flight at the kill (one connection)
    for rcpt in twice:
        ids = {m.message["Message-ID"] for m in program.sink.messages if m.rcpt_tos[0] == rcpt}
        assert len(ids) == 1  # and it went again with the same Message-ID


def test_planning_touches_only_due_work(program: Project) -> None:
    contacts(program, *promoters(3))
    engine = program.engine()
    first = engine.planner().plan()
    assert first.checked == 3 and first.enrolled == 3 and first.planned == 3
    again = engine.planner().plan()
    assert (again.checked, again.enrolled, again.planned, again.events) == (0, 0, 0, 0)
    engine.close()


def test_header_row_only_csv(program: Project) -> None:
    path = program.contacts(HEADER)
    code, out = program.cli("contacts", "import", str(path))
    assert code == 0 and "0 created" in out
