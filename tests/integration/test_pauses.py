"""A relay outage pauses sending as a whole: probed with backoff, no email charged an attempt,
every email delivered once when the relay comes back; pauses shown and lifted by hand."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from datetime import timedelta
from select import select as select_fds

import pytest
from sqlalchemy import func, select

from engine.mail.smtp import BeforeData, SmtpTransport
from engine.records.pauses import PauseKind, pauses_in_force
from engine.scheduler import TickResult, tick
from engine.store.models import Event, Message
from engine.wiring import Engine
from tests.conftest import Project
from tests.support.scenario import contacts, engine_command, setup
from tests.support.smtp_server import SmtpSink, sink_factory_fixture  # noqa: F401  (fixture)

ALL_DAYS = '["mon", "tue", "wed", "thu", "fri", "sat", "sun"]'


def promoters(n: int) -> list[str]:
    return [
        f"p{i:03d}@example.com,P{i},L,Co,UTC,10,2026-01-01,2025-01-01,,en,customer"
        for i in range(n)
    ]


def refusing_port() -> int:
    """A port nothing listens on: bound, then closed, so connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CountingTransport:
    """The real SMTP transport, counting the sends handed to it: against a relay that refuses
    connections, each one is a connection attempt."""

    def __init__(self, inner: SmtpTransport) -> None:
        self.inner = inner
        self.sends = 0

    async def send(
        self,
        sender: str,
        recipient: str,
        data: bytes,
        *,
        before_data: BeforeData | None = None,
        paced: bool = False,
    ) -> None:
        self.sends += 1
        await self.inner.send(sender, recipient, data, before_data=before_data, paced=paced)

    async def close(self) -> None:
        await self.inner.close()


@pytest.fixture
def program(make_project: Callable[..., Project]) -> Project:
    return setup(make_project(shipped=False))


def engine_on(program: Project, port: int, **smtp: object) -> Engine:
    settings = program.settings
    settings = dataclasses.replace(
        settings,
        smtp=dataclasses.replace(settings.smtp, port=port, timeout=5.0, **smtp),
        # 200 emails in a day: the new sender's warm-up ramp is not what this test is about.
        sender=dataclasses.replace(settings.sender, daily_cap=0),
    )
    return Engine.build(settings, program.clock)


def count(engine: Engine, status: str) -> int:
    with engine.db.session() as s:
        query = select(func.count()).select_from(Message).where(Message.status == status)
        return s.scalar(query) or 0


async def test_a_relay_outage_pauses_sending_and_every_email_goes_out_once_it_is_back(
    program: Project,
) -> None:
    contacts(program, *promoters(200))
    port = refusing_port()
    # 3 attempts 60 s apart cover 3 minutes; the relay stays down for 2 hours.
    engine = engine_on(program, port, max_attempts=3, retry_base_seconds=60, connections=4)
    transport = CountingTransport(SmtpTransport(engine.settings.smtp))
    first = await tick(engine, transport)
    assert first.send.paused and first.send.failed == 0
    assert first.send.pause_reason is not None and "relay down" in first.send.pause_reason
    with engine.db.session() as s:
        ids_before = list(s.scalars(select(Message.message_id)))
    assert len(ids_before) == 200
    for _ in range(24):  # a tick every 5 minutes for 2 hours
        program.clock.advance(timedelta(minutes=5))
        result = await tick(engine, transport)
        assert result.send.failed == 0 and result.send.sent == 0
    outage_attempts = transport.sends
    with engine.db.session() as s:
        (pause,) = pauses_in_force(s, program.clock.now())
        attempts = s.scalars(select(Message.attempts)).all()
    assert pause.kind == PauseKind.RELAY_DOWN and "cannot connect" in pause.reason
    assert set(attempts) == {0}  # no email was charged an attempt
    assert count(engine, "failed") == 0
    # Probes after 1, 2, 4, 8, 15, 15 ... minutes, each over at most 4 connections: a few
    # dozen attempts, not 200 emails x 3 attempts.
    assert outage_attempts <= 4 * 14, outage_attempts

    with SmtpSink(port=port) as sink:
        program.clock.advance(timedelta(minutes=15))
        result = await tick(engine, transport)
        received = sink.wait_for(200)
    await transport.close()
    assert result.send.sent == 200 and result.send.failed == 0
    assert sorted(m.rcpt_tos[0] for m in received) == sorted(
        f"p{i:03d}@example.com" for i in range(200)
    )
    # Once each, with the Message-ID written when the email was planned.
    with engine.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Message)) == 200
    assert sorted(m.message["Message-ID"] for m in received) == sorted(ids_before)
    assert count(engine, "sent") == 200
    engine.close()


def tick_once(engine: Engine) -> TickResult:
    """One tick over a transport of its own (a test that also runs CLI commands)."""

    async def one() -> TickResult:
        async with SmtpTransport(engine.settings.smtp) as transport:
            return await tick(engine, transport)

    return asyncio.run(one())


def test_a_refused_login_pauses_sending_until_sending_resume_lifts_it(
    program: Project, smtp_sink_factory: Callable[..., SmtpSink]
) -> None:
    contacts(program, *promoters(1))
    relay = smtp_sink_factory(credentials={"team": "right"})
    engine = engine_on(program, relay.port, username="team", password="wrong", connections=1)
    first = tick_once(engine)
    assert first.send.paused and first.send.failed == 0
    with engine.db.session() as s:
        (pause,) = pauses_in_force(s, program.clock.now())
        assert s.scalar(select(Message.attempts)) == 0
    assert pause.kind == PauseKind.LOGIN_REFUSED and "login" in pause.reason

    # Shown by tick, status and report until it ends.
    program.clock.advance(timedelta(seconds=10))
    code, out = program.cli("tick")
    assert code == 0 and "sending paused: login refused since 2026-03-02 10:00" in out, out
    code, out = program.cli("status")
    assert code == 1 and "PAUSED login refused" in out and "needs attention" in out, out
    code, out = program.cli("report")
    assert "sending paused: login refused" in out, out

    # The password is fixed: a person lifts the pause rather than wait for the next probe.
    code, out = program.cli("sending", "resume", "--kind", "policy")
    assert code == 2 and "is not one of" in out, out
    code, out = program.cli("sending", "resume")
    assert code == 0 and "lifted: login refused" in out and "1 pause(s) lifted" in out, out
    with engine.db.session() as s:
        assert pauses_in_force(s, program.clock.now()) == []
        resumed = s.scalars(select(Event).where(Event.type == "sending.resumed")).one()
    assert resumed.data["lifted"][0]["kind"] == "login_refused"
    code, out = program.cli("report")
    assert "sending paused" not in out, out
    engine.close()

    fixed = engine_on(program, relay.port, username="team", password="right", connections=1)
    result = tick_once(fixed)
    assert result.send.sent == 1 and [m.login for m in relay.wait_for(1)] == ["team"]
    fixed.close()


def read_until(process: subprocess.Popen[str], text: str, seen: list[str], timeout: float) -> str:
    """Lines of the process's output until one holds ``text``; fails after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select_fds([process.stdout], [], [], 0.2)
        if ready:
            line = process.stdout.readline()
            seen.append(line)
            if text in line:
                return line
    raise AssertionError(f"no {text!r} within {timeout} s in:\n{''.join(seen)}")


@pytest.mark.slow
def test_run_says_once_when_sending_starts_failing_and_once_when_it_works_again(
    program: Project,
) -> None:
    contacts(program, *promoters(5))
    port = refusing_port()
    text = program.settings_path.read_text(encoding="utf-8")
    text = text.replace(f"port = {program.sink.port}", f"port = {port}\nmax_attempts = 2")
    text = text.replace("retry_base_seconds = 60", "retry_base_seconds = 1")
    text = text.replace('days = ["mon", "tue", "wed", "thu", "fri"]', "days = " + ALL_DAYS)
    text = text.replace('hours = "09:00-17:00"', 'hours = "00:00-23:59"')
    program.settings_path.write_text(text, encoding="utf-8")
    cmd, env = engine_command(program, "run", "--interval", "0.2")
    cmd.remove("--now")
    cmd.remove(program.clock.now().isoformat())  # the real clock: the relay is real
    env = {**env, "ENGINE_TRACKING_LISTEN": f"127.0.0.1:{refusing_port()}"}
    process = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    seen: list[str] = []
    try:
        failing = read_until(process, "sending is failing", seen, 30)
        assert "relay down" in failing and "cannot connect" in failing
        time.sleep(2.5)  # a probe or two fail meanwhile: no more lines about it
        with SmtpSink(port=port) as sink:
            read_until(process, "sending works again", seen, 30)
            assert len(sink.wait_for(5)) == 5
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    assert sum("sending is failing" in line for line in seen) == 1, seen
