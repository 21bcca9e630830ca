"""The referral page counted honestly: a visitor once per page and day, a capped number of
counted visits per client, nothing about the visitor in clear; under real uvicorn, on SQLite
and PostgreSQL."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select

from engine.inbound.tracking.routes.referral import VISITS_PER_CLIENT_HOUR
from engine.store.models import Contact, Event
from tests.conftest import Project
from tests.support.http_server import BROWSER_UA, TrackingServer
from tests.support.scenario import contacts, setup

ANA = "ana@example.com,Ana,Lima,Lima Co,UTC,10,2026-01-01,2025-01-01,,en,customer"
BOB = "bob@example.com,Bob,Stone,Stone Co,UTC,9,2026-01-01,2025-01-01,,en,customer"


@pytest.fixture
def program(make_project: Callable[..., Project]) -> Project:
    project = setup(make_project(shipped=False))
    contacts(project, ANA, BOB)
    return project


@pytest.fixture
def server(program: Project) -> Iterator[TrackingServer]:
    with TrackingServer(program.settings, program.clock) as running:
        yield running


def code_of(server: TrackingServer, email: str) -> str:
    with server.engine.db.session() as s:
        code = s.scalar(select(Contact.referral_code).where(Contact.email == email))
    assert code is not None
    return code


def visits(server: TrackingServer) -> list[Event]:
    with server.engine.db.session() as s:
        query = select(Event).where(Event.type == "referral.visited").order_by(Event.id)
        return list(s.scalars(query))


def get_page(server: TrackingServer, code: str, times: int, agent: str = BROWSER_UA) -> None:
    with httpx.Client(base_url=server.url, headers={"user-agent": agent}, timeout=10) as client:
        for _ in range(times):
            assert client.get(f"/r/{code}").status_code == 200


def test_a_thousand_loads_by_one_visitor_are_one_visit_a_day(
    program: Project, server: TrackingServer
) -> None:
    ana = code_of(server, "ana@example.com")
    get_page(server, ana, 1000)
    (visit,) = visits(server)
    assert visit.machine is False
    get_page(server, code_of(server, "bob@example.com"), 3)  # another page: its own visit
    assert len(visits(server)) == 2
    program.clock.advance(timedelta(days=1))
    get_page(server, ana, 3)  # a new day: they count again
    assert len(visits(server)) == 3


def test_the_visitor_is_a_keyed_hash_never_an_address_or_agent(
    program: Project, server: TrackingServer
) -> None:
    get_page(server, code_of(server, "ana@example.com"), 1)
    (visit,) = visits(server)
    stored = str(visit.data)
    assert "127.0.0.1" not in stored and "Mozilla" not in stored and "Chrome" not in stored
    hashed = visit.data["visitor"]
    assert len(hashed) == 32 and int(hashed, 16) >= 0
    day = f"{program.clock.now():%Y-%m-%d}"
    code = code_of(server, "ana@example.com")
    for unkeyed in (f"127.0.0.1{BROWSER_UA}", f"{day}\0{code}\0127.0.0.1\0{BROWSER_UA}"):
        assert hashlib.sha256(unkeyed.encode()).hexdigest()[:32] != hashed


def test_changing_the_agent_buys_a_few_visits_not_a_thousand(
    program: Project, server: TrackingServer
) -> None:
    ana = code_of(server, "ana@example.com")
    for n in range(200):
        get_page(server, ana, 1, agent=f"{BROWSER_UA} variant/{n}")
    assert len(visits(server)) == VISITS_PER_CLIENT_HOUR
    program.clock.advance(timedelta(hours=1))  # the next hour: a fresh allowance
    get_page(server, ana, 1, agent=f"{BROWSER_UA} later")
    assert len(visits(server)) == VISITS_PER_CLIENT_HOUR + 1


def test_two_copies_of_the_app_count_a_visitor_once(program: Project) -> None:
    with (
        TrackingServer(program.settings, program.clock) as one,
        TrackingServer(program.settings, program.clock) as two,
    ):
        ana = code_of(one, "ana@example.com")
        get_page(one, ana, 2)
        get_page(two, ana, 2)  # its own memory has never seen them: the database has
        assert len(visits(one)) == 1
