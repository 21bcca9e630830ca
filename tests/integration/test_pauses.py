"""A relay outage pauses sending as a whole: probed with backoff, no email charged an attempt,
every email delivered once when the relay comes back; pauses shown and lifted by hand."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from engine.mail.smtp import SmtpTransport
from engine.records.pauses import PauseKind, pauses_in_force
from engine.scheduler import tick
from engine.store.models import Message
from engine.wiring import Engine
from tests.conftest import Project
from tests.support.scenario import contacts, setup
from tests.support.smtp_server import SmtpSink


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

    async def send(self, sender: str, recipient: str, data: bytes) -> None:
        self.sends += 1
        await self.inner.send(sender, recipient, data)

    async def close(self) -> None:
        await self.inner.close()


@pytest.fixture
def program(make_project: Callable[..., Project]) -> Project:
    return setup(make_project(shipped=False))


def engine_on(program: Project, port: int, **smtp: object) -> Engine:
    settings = program.settings
    settings = dataclasses.replace(
        settings, smtp=dataclasses.replace(settings.smtp, port=port, timeout=5.0, **smtp)
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
