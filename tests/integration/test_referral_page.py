"""The referral page counted honestly (a visitor once per page and day, a capped number of
counted visits per client, nothing about the visitor in clear) and the intro form thanked for
once; under real uvicorn, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Callable, Iterator
from datetime import timedelta
from email.message import EmailMessage

import httpx
import pytest
from sqlalchemy import select

from engine.inbound.tracking.links import message_links
from engine.inbound.tracking.routes.referral import VISITS_PER_CLIENT_HOUR
from engine.scheduler import tick
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


# -- the intro form: one thank-you per form ------------------------------------------------------


@pytest.fixture
def shipped(make_project: Callable[..., Project]) -> Project:
    """The shipped program (its referral-thanks sequence), with Ana, a promoter."""
    project = make_project()
    contacts(project, ANA)
    return project


def introduce(server: TrackingServer, project: Project, *people: tuple[str, str]) -> None:
    """Ana fills in the intro form of her ask email with ``people`` (name, email)."""
    asyncio.run(tick(server.engine))
    (ask,) = [m.message for m in project.sink.messages]
    links = message_links(server.engine.db, server.engine.renderer.links, ask["Message-ID"])
    assert links is not None
    with httpx.Client(headers={"user-agent": BROWSER_UA}, timeout=10) as client:
        page = client.get(links.intro_form)
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf is not None, page.text
        form = {"csrf": csrf.group(1), "consent": "on"}
        for n, (name, email) in enumerate(people, start=1):
            form |= {f"name{n}": name, f"email{n}": email}
        done = client.post(links.intro_form, data=form)
        assert done.status_code == 200 and "Thank you for the introduction" in done.text


def thank_yous(server: TrackingServer, project: Project) -> list[EmailMessage]:
    project.clock.advance(timedelta(minutes=5))
    asyncio.run(tick(server.engine))
    return [
        m.message for m in project.sink.messages if m.message["Subject"].startswith("Thank you for")
    ]


def test_one_form_with_two_people_is_one_thank_you_naming_both(shipped: Project) -> None:
    with TrackingServer(shipped.settings, shipped.clock) as server:
        introduce(server, shipped, ("Gus Green", "gus@example.com"), ("Hana Hill", "hana@x.org"))
        (thanks,) = thank_yous(server, shipped)
        created = [e.data for e in events_of(server, "referral.created") if e.data.get("thank_you")]
        assert created == [
            {
                **created[0],
                "friends": [
                    {"name": "Gus Green", "email": "gus@example.com"},
                    {"name": "Hana Hill", "email": "hana@x.org"},
                ],
            }
        ]
        assert len(events_of(server, "referral.created")) == 2  # each referral still recorded
        assert thanks["To"].addresses[0].addr_spec == "ana@example.com"
        text = thanks.get_body(("plain",)).get_content()  # the email itself names both
        assert "Gus Green" in text and "Hana Hill" in text, text


def test_a_flagged_introduction_gets_no_thank_you(shipped: Project) -> None:
    with TrackingServer(shipped.settings, shipped.clock) as server:
        # Ana's own mailbox under a tag: a self-referral, flagged, never thanked for.
        introduce(server, shipped, ("Gus Green", "gus@example.com"), ("Me", "ana+x@example.com"))
        (thanks,) = thank_yous(server, shipped)
        assert thanks["Subject"] == "Thank you for introducing Gus Green"
        flagged = [e.data for e in events_of(server, "referral.created") if e.data.get("flag")]
        assert [(d["flag"], d["thank_you"]) for d in flagged] == [("self_referral", False)]


def test_a_form_of_only_flagged_people_thanks_nobody(shipped: Project) -> None:
    with TrackingServer(shipped.settings, shipped.clock) as server:
        introduce(server, shipped, ("Me", "ana+x@example.com"))
        assert thank_yous(server, shipped) == []


def events_of(server: TrackingServer, type_: str) -> list[Event]:
    with server.engine.db.session() as s:
        return list(s.scalars(select(Event).where(Event.type == type_).order_by(Event.id)))
