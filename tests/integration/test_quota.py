"""The default sender's daily cap and warm-up ramp (engine.send.quota), on SQLite and
PostgreSQL: counted in the claim's transaction, so racing workers never exceed it; what does
not fit waits for the next day, never failed and no attempt counted."""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from engine.base.errors import SettingsError
from engine.program.settings import Warmup, load_settings
from engine.send.quota import DailyQuota, cap_on
from engine.store.db import Database
from engine.store.models import Message
from tests.conftest import MONDAY, ROOT, Project
from tests.support.scenario import contacts, engine_command, setup


def promoters(n: int, *, named: bool = True) -> list[str]:
    first = "Q{i}" if named else ""
    return [
        f"q{i:03d}@example.com,{first.format(i=i)},L,Co,UTC,10,2026-01-01,2025-01-01,,en,customer"
        for i in range(n)
    ]


@pytest.fixture
def program(make_project: Callable[..., Project]) -> Project:
    return setup(make_project(shipped=False))


def outbox(project: Project) -> list[Message]:
    engine = project.engine()
    with engine.db.session() as session:
        rows = list(session.scalars(select(Message).order_by(Message.id)))
    engine.close()
    return rows


def test_two_workers_racing_never_exceed_the_daily_cap(program: Project) -> None:
    cap, n = 20, 60
    contacts(program, *promoters(n))
    env_cap = {"ENGINE_SENDER_DAILY_CAP": str(cap), "ENGINE_SENDER_WARMUP": "off"}
    engine = program.engine()
    assert engine.planner().plan().planned == n
    engine.close()
    program.sink.delay_seconds = 0.02  # both workers are still sending when the other claims
    cmd, env = engine_command(program, "tick")
    env |= env_cap | {"ENGINE_SCHEDULE_BATCH_SIZE": "3"}
    workers = [
        subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=120)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs
    received = Counter(m.rcpt_tos[0] for m in program.sink.messages)
    assert sum(received.values()) == cap and set(received.values()) == {1}, outputs
    rows = outbox(program)
    waiting = [r for r in rows if r.status != "sent"]
    assert len(waiting) == n - cap
    # Over the cap is not a failure: queued as planned, no attempt counted.
    assert {(r.status, r.attempts, r.last_error) for r in waiting} == {("queued", 0, None)}
    # The next day the cap starts again, oldest due first.
    program.clock.advance(timedelta(days=1))
    done = subprocess.run(
        engine_command(program, "tick")[0], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "due today 20, waiting for tomorrow's cap 20" in done.stdout, done.stdout
    assert len(program.sink.messages) == 2 * cap


def test_the_warm_up_ramp_over_five_days_and_a_weekend(
    program: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENGINE_SENDER_DAILY_CAP", "100")
    monkeypatch.setenv("ENGINE_SENDER_WARMUP", "5,5")
    contacts(program, *promoters(150))
    per_day: list[int] = []
    lines: list[str] = []
    for day in (0, 1, 2, 3, 4, 7):  # Monday to Friday, then the next Monday
        program.clock.set(MONDAY + timedelta(days=day))
        before = len(program.sink.messages)
        code, out = program.cli("tick")
        assert code == 0, out
        per_day.append(len(program.sink.messages) - before)
        lines.append(out)
    # 5 on the day of the first send, 5 more each day since then (weekend days count).
    assert per_day == [5, 10, 15, 20, 25, 40], lines
    assert "due today 5, waiting for tomorrow's cap 145" in lines[0], lines[0]
    rows = outbox(program)
    assert not [r for r in rows if r.status not in {"sent", "queued"}]
    assert {r.attempts for r in rows if r.status == "queued"} == {0}


def test_emails_that_did_not_go_out_do_not_count_against_the_cap(
    program: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENGINE_SENDER_DAILY_CAP", "5")
    monkeypatch.setenv("ENGINE_SENDER_WARMUP", "off")
    # The first three have no first name: the template holds their emails back.
    contacts(program, *promoters(3, named=False), *promoters(10)[3:])
    code, out = program.cli("tick")
    assert code == 0, out
    assert len(program.sink.messages) == 5, out
    assert "held 3" in out, out


def test_the_cap_counts_the_senders_day_in_its_time_zone(db_url: str) -> None:
    db = Database(db_url)
    quota = DailyQuota(
        db=db, daily_cap=10, warmup=Warmup(start=0, step=0), timezone=ZoneInfo("Asia/Jakarta")
    )
    monday_night = datetime(2026, 3, 2, 23, 30, tzinfo=UTC)  # Tuesday 06:30 in Jakarta
    with db.write() as session:
        assert quota.take(session, monday_night, 25) == 10
        quota.charge(session, 10)
    with db.write() as session:  # Tuesday 07:30 in Jakarta: the same day, full
        assert quota.take(session, monday_night + timedelta(hours=1), 25) == 0
    assert quota.room(monday_night + timedelta(hours=1)) == 0
    quota.refund(date(2026, 3, 3), 4)  # four of them did not go out after all
    assert quota.room(monday_night) == 4
    with db.write() as session:  # Wednesday 00:30 in Jakarta: a new day
        assert quota.take(session, monday_night + timedelta(hours=18), 25) == 10
    db.dispose()


def test_ramp_and_cap_arithmetic() -> None:
    ramp = Warmup(start=50, step=50)
    first = date(2026, 3, 2)
    assert cap_on(first, None, 1000, ramp) == 50
    assert cap_on(first + timedelta(days=2), first, 1000, ramp) == 150
    assert cap_on(first + timedelta(days=60), first, 1000, ramp) == 1000
    assert cap_on(first, first, 1000, Warmup(start=0, step=0)) == 1000  # no ramp
    assert cap_on(first, first, 0, ramp) is None  # no cap


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"ENGINE_SENDER_WARMUP": "50"}, "ENGINE_SENDER_WARMUP"),
        ({"ENGINE_SENDER_WARMUP": "-5,5"}, "ENGINE_SENDER_WARMUP"),
        ({"ENGINE_SENDER_DAILY_CAP": "-1"}, "sender.daily_cap"),
        (
            {"ENGINE_SMTP_RATE_PER_SECOND": "0.5", "ENGINE_SCHEDULE_LEASE_SECONDS": "5"},
            "smtp.rate_per_second",
        ),
    ],
)
def test_bad_quota_settings_name_their_key(program: Project, env: dict[str, str], key: str) -> None:
    with pytest.raises(SettingsError, match=key.replace(".", r"\.")):
        load_settings(program.settings_path, env=env)


def test_quota_settings_from_the_file(program: Project) -> None:
    text = program.settings_path.read_text()
    program.settings_path.write_text(
        text.replace("[sender]\n", "[sender]\ndaily_cap = 300\nwarmup = {start = 20, step = 40}\n")
    )
    sender = load_settings(program.settings_path, env={}).sender
    assert (sender.daily_cap, sender.warmup) == (300, Warmup(start=20, step=40))
