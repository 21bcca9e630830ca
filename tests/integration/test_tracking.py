"""The tracking app under real uvicorn: opens, clicks, unsubscribe, NPS, referral page, events
API, and everything a hostile or broken client may send. Emails are sent through the engine to
the real SMTP sink, and their links are followed as they are."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import re
import signal
import socket
import string
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from email.message import EmailMessage
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import select

from engine.inbound.tracking.links import message_links
from engine.inbound.tracking.web import GIF
from engine.mail.tokens import Signer
from engine.scheduler import tick
from engine.store.models import Contact, Enrollment, Event, Message, Referral
from tests.conftest import Project
from tests.support.http_server import BROWSER_UA, TrackingServer
from tests.support.mail_links import UNSAFE_DESTINATIONS, link, links_in
from tests.support.pg import free_port
from tests.support.scenario import contacts, engine_command, setup

ANA = "ana@example.com,Ana,Lima,Lima Co,UTC,10,2026-01-01,2025-01-01,,en,customer"
BOB = "bob@example.com,Bob,Stone,Stone Co,UTC,9,2026-01-01,2025-01-01,,en,customer"
CAT = "cat@example.com,Cat,Wu,Wu Co,UTC,10,2026-01-01,2025-01-01,,id,customer"
API_TOKEN = "api-token-0123456789abcdef"
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
ALPHABET = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"  # value order


@pytest.fixture
def program(make_project: Callable[..., Project]) -> Project:
    return setup(make_project(shipped=False))


@pytest.fixture
def server(program: Project) -> Iterator[TrackingServer]:
    with TrackingServer(program.settings, program.clock, api_token=API_TOKEN) as running:
        yield running


@pytest.fixture
def client(server: TrackingServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers={"user-agent": BROWSER_UA}, timeout=10) as c:
        yield c


def send(program: Project, server: TrackingServer, *rows: str) -> list[EmailMessage]:
    """Import ``rows`` and run one tick of the server's engine: the emails link to it."""
    contacts(program, *rows)
    asyncio.run(tick(server.engine))
    return [m.message for m in program.sink.messages]


def events(server: TrackingServer, type_: str | None = None) -> list[Event]:
    with server.engine.db.session() as session:
        query = select(Event).order_by(Event.id)
        if type_ is not None:
            query = query.where(Event.type == type_)
        return list(session.scalars(query))


def contact(server: TrackingServer, email: str) -> Contact:
    with server.engine.db.session() as session:
        return session.scalars(select(Contact).where(Contact.email == email)).one()


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None, page
    return found.group(1)


# -- the open pixel ------------------------------------------------------------------------------


def test_the_open_pixel_is_a_43_byte_gif_recorded_without_waiting_for_the_database(
    program: Project, server: TrackingServer, client: httpx.Client
) -> None:
    (ask,) = send(program, server, ANA)
    program.clock.advance(timedelta(minutes=5))
    response = client.get(link(ask, "/o/"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/gif"
    assert response.headers["cache-control"] == "no-store"
    assert len(response.content) == 43 and response.content.startswith(b"GIF89a")
    assert events(server, "opened") == []  # answered first, written by the buffer
    assert server.flush() == 1
    (opened,) = events(server, "opened")
    assert (opened.machine, opened.data, opened.occurred_at) == (False, {}, program.clock.now())
    assert (opened.sequence_id, opened.step_id) == ("ask", "ask")
    assert opened.contact_id == contact(server, "ana@example.com").id


def on_the_wire(port: int, method: str, path: str) -> tuple[bytes, list[bytes], bytes]:
    """Status line, header lines (but ``date``) and body exactly as the server sends them."""
    request = f"{method} {path} HTTP/1.1\r\nHost: t\r\nUser-Agent: {BROWSER_UA}\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"{request}Connection: close\r\n\r\n".encode())
        received = b"".join(iter(lambda: sock.recv(65536), b""))
    head, _, body = received.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    return status, [line for line in lines if not line.startswith(b"date: ")], body


@SQLITE_ONLY
def test_the_pixel_answers_get_and_head_alike_and_a_bad_token_like_any_unknown_page(
    program: Project, server: TrackingServer
) -> None:
    (ask,) = send(program, server, ANA)
    program.clock.advance(timedelta(minutes=5))
    pixel = urlsplit(link(ask, "/o/")).path
    token = pixel[3:-4]
    image_headers = [
        b"content-type: image/gif",
        b"content-length: 43",
        b"x-content-type-options: nosniff",
        b"cache-control: no-store",
        b"connection: close",
    ]
    assert on_the_wire(server.port, "GET", pixel) == (b"HTTP/1.1 200 OK", image_headers, GIF)
    assert on_the_wire(server.port, "HEAD", pixel) == (b"HTTP/1.1 200 OK", image_headers, b"")
    last = ALPHABET.index(token[-1])
    spare_bits = {0: 0, 2: 15, 3: 3}[len(token) % 4]
    bad = [
        token[:10] + ("A" if token[10] != "A" else "B") + token[11:],  # tampered
        token[:-2],  # truncated
        token + "=",  # padded
        token[:-1] + ALPHABET[last ^ spare_bits] if spare_bits else token + "AAAA",
        Signer("another-secret-0123456789").sign("open", b"0123456789ab"),
        server.engine.renderer.links.signer.sign("unsubscribe", b"0123456789ab"),
    ]
    for method in ("GET", "HEAD"):
        not_found = on_the_wire(server.port, method, "/no/such/page")
        assert not_found[0] == b"HTTP/1.1 404 Not Found"
        assert b"x-frame-options: DENY" in not_found[1]
        for bad_token in bad:
            assert on_the_wire(server.port, method, f"/o/{bad_token}.gif") == not_found
    assert server.flush() == 2
    opened = events(server, "opened")
    assert sorted((e.machine, e.data.get("machine")) for e in opened) == [
        (False, None),
        (True, "head-request"),
    ]


@SQLITE_ONLY
def test_a_burst_of_duplicate_pixel_hits_is_one_open_and_a_later_open_counts_again(
    program: Project, server: TrackingServer
) -> None:
    (ask,) = send(program, server, ANA)
    pixel = link(ask, "/o/")

    def burst(connections: int, each: int) -> set[int]:
        def hits(_: int) -> list[int]:
            with httpx.Client(headers={"user-agent": BROWSER_UA}, timeout=10) as c:
                return [c.get(pixel).status_code for _ in range(each)]

        with ThreadPoolExecutor(connections) as pool:
            return {code for codes in pool.map(hits, range(connections)) for code in codes}

    program.clock.advance(timedelta(minutes=5))
    assert burst(5, 10) == {200}
    server.flush()
    assert len(events(server, "opened")) == 1
    program.clock.advance(timedelta(minutes=2))  # the person opens the email again
    burst(3, 1)
    server.flush()
    assert len(events(server, "opened")) == 2


@SQLITE_ONLY
def test_image_proxies_open_as_machines_kept_apart_from_people(
    program: Project, server: TrackingServer, client: httpx.Client
) -> None:
    (ask,) = send(program, server, ANA)
    pixel = link(ask, "/o/")
    program.clock.advance(timedelta(minutes=1))
    client.get(pixel, headers={"user-agent": "Mozilla/5.0"})  # Apple Mail Privacy Protection
    client.get(pixel, headers={"user-agent": "Mozilla/5.0 (via ggpht.com GoogleImageProxy)"})
    client.get(pixel, headers={"user-agent": "YahooMailProxy; https://help.yahoo.com"})
    client.get(pixel)  # a person
    server.flush()
    opened = events(server, "opened")
    assert sorted((e.machine, e.data.get("machine")) for e in opened) == [
        (False, None),
        (True, "apple-mpp"),
        (True, "image-proxy"),
    ]  # Google's and Yahoo's proxies: one reason, seconds apart, so one machine open


# -- clicks --------------------------------------------------------------------------------------


@SQLITE_ONLY
def test_a_click_redirects_to_the_url_in_the_email_and_is_recorded(
    program: Project, server: TrackingServer, client: httpx.Client
) -> None:
    (ask,) = send(program, server, ANA)
    program.clock.advance(timedelta(minutes=5))
    # A destination in the query string is ignored: only the signed one counts.
    response = client.get(link(ask, "/c/"), params={"url": "https://evil.example/"})
    assert response.status_code == 302
    assert response.headers["location"] == "https://acme.example/why?a=1&b=2"
    assert response.headers["referrer-policy"] == "no-referrer"
    server.flush()
    (clicked,) = events(server, "clicked")
    assert not clicked.machine
    assert clicked.data == {"url": "https://acme.example/why?a=1&b=2"}


def test_link_scanners_are_machine_clicks_recorded_apart(
    program: Project, server: TrackingServer, client: httpx.Client
) -> None:
    (ask,) = send(program, server, ANA)
    click, honeypot = link(ask, "/c/"), link(ask, "/h/")

    def last_click() -> Event:
        server.flush()
        return events(server, "clicked")[-1]

    program.clock.advance(timedelta(seconds=3))  # the recipient's mail server scans on arrival
    assert client.get(click).status_code == 302
    assert (last_click().machine, last_click().data["machine"]) == (True, "fast-click")
    program.clock.advance(timedelta(minutes=10))
    assert client.head(click).status_code == 302
    assert last_click().data["machine"] == "head-request"
    client.get(click, headers={"user-agent": "Mozilla/5.0 (compatible; Barracuda Sentinel)"})
    assert last_click().data["machine"] == "scanner-agent"
    program.clock.advance(timedelta(hours=1))
    client.get(click)  # looks like a person ...
    assert not last_click().machine
    program.clock.advance(timedelta(seconds=2))
    assert client.get(honeypot).status_code == 200  # ... until the hidden link is requested
    server.flush()
    clicks = events(server, "clicked")
    assert clicks[-1].data == {"machine": "honeypot"}
    assert clicks[-2].machine  # the click next to it was the same scanner
    program.clock.advance(timedelta(days=1))
    client.get(click)  # a person, a day later
    assert not last_click().machine
    people = [e for e in events(server, "clicked") if not e.machine]
    assert len(people) == 1


@SQLITE_ONLY
def test_tampered_truncated_and_foreign_tokens_get_a_plain_404(
    program: Project, server: TrackingServer, client: httpx.Client
) -> None:
    (ask,) = send(program, server, ANA)
    click = link(ask, "/c/")
    base, token = click.rsplit("/", 1)
    flipped = token[:10] + ("A" if token[10] != "A" else "B") + token[11:]
    ref = server.engine.renderer.links.signer.verify(token)
    assert ref is not None
    foreign = Signer("another-secret-0123456789").sign("click", ref.ref, url="https://x.example")
    pixel_token = link(ask, "/o/").rsplit("/", 1)[1].removesuffix(".gif")
    for bad in (flipped, token[:-3], token + "A", foreign, pixel_token, "", "%00", "x" * 9000):
        response = client.get(f"{base}/{bad}")
        assert response.status_code == 404, bad
        assert "location" not in response.headers
        assert "acme.example" not in response.text and "x.example" not in response.text
    server.flush()
    assert events(server, "clicked") == []


@SQLITE_ONLY
def test_even_a_signed_token_can_never_open_redirect(
    program: Project, server: TrackingServer, client: httpx.Client
) -> None:
    # Only the renderer signs click tokens, from http(s) links in the email; still, whatever a
    # token carries, the redirect goes nowhere unsafe.
    send(program, server, ANA)
    with server.engine.db.session() as session:
        ref = session.scalars(select(Message.ref)).one()
    for destination in UNSAFE_DESTINATIONS:
        response = client.get(server.engine.renderer.links.click(ref, destination))
        assert response.status_code == 404, destination
        assert "location" not in response.headers
    for path in ("/c//evil.example", "/c/%2F%2Fevil.example", "/c/javascript:alert(1)"):
        assert client.get(path).status_code == 404
    server.flush()
    assert events(server, "clicked") == []


# -- unsubscribe ---------------------------------------------------------------------------------


def test_one_click_unsubscribe_from_the_header_stops_every_later_email(
    program: Project, server: TrackingServer, client: httpx.Client
) -> None:
    (ask,) = send(program, server, ANA)
    assert ask["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    found = re.search(r"<(https?://[^>]+)>", ask["List-Unsubscribe"])
    assert found is not None
    url = found.group(1)
    assert url.startswith(f"{server.url}/u/")
    program.clock.advance(timedelta(days=3))
    server.engine.planner().plan()  # the reminder is queued, not sent yet

    def statuses() -> dict[str, str]:
        with server.engine.db.session() as session:
            return {s: st for s, st in session.execute(select(Message.step_id, Message.status))}

    assert statuses() == {"ask": "sent", "reminder": "queued"}
    page = client.get(url)  # a scanner prefetching the link unsubscribes nobody
    assert page.status_code == 200 and "Unsubscribe" in page.text
    assert contact(server, "ana@example.com").unsubscribed_at is None

    with httpx.Client(timeout=10) as provider:  # a mailbox provider: no cookie, no token
        for _ in range(2):  # repeating it is harmless
            response = provider.post(
                url,
                content=b"List-Unsubscribe=One-Click",
                headers={"content-type": "application/x-www-form-urlencoded"},
            )
            assert response.status_code == 200
            assert "set-cookie" not in response.headers and "location" not in response.headers
    assert contact(server, "ana@example.com").unsubscribed_at == program.clock.now()
    (unsubscribed,) = events(server, "unsubscribed")
    assert unsubscribed.data == {"via": "one-click"}
    assert statuses() == {"ask": "sent", "reminder": "cancelled"}

    for _ in range(3):
        program.clock.advance(timedelta(days=30))
        asyncio.run(tick(server.engine))
    assert len(program.sink.messages) == 1
    with server.engine.db.session() as session:
        (enrollment,) = session.scalars(select(Enrollment)).all()
    assert enrollment.status == "stopped" and "unsubscribed" in (enrollment.reason or "")


@SQLITE_ONLY
def test_unsubscribe_links_of_old_emails_work_after_the_secret_is_rotated(
    program: Project,
) -> None:
    settings = program.settings
    with TrackingServer(settings, program.clock) as before:
        (ask,) = send(program, before, ANA)
    path = urlsplit(link(ask, "/u/")).path
    old, new = settings.tracking.secret, "the-new-secret-0123456789abcdef"

    def rotated(*old_secrets: str) -> TrackingServer:
        tracking = dataclasses.replace(settings.tracking, secret=new, old_secrets=old_secrets)
        return TrackingServer(dataclasses.replace(settings, tracking=tracking), program.clock)

    body = {"List-Unsubscribe": "One-Click"}
    with rotated() as forgotten:
        assert httpx.post(forgotten.url + path, data=body).status_code == 404
    with rotated(old) as after:
        assert httpx.post(after.url + path, data=body).status_code == 200
        assert contact(after, "ana@example.com").unsubscribed_at is not None


# -- NPS ---------------------------------------------------------------------------------------


def test_a_score_click_is_one_answer_and_the_latest_answer_wins(
    program: Project, server: TrackingServer, client: httpx.Client
) -> None:
    (ask,) = send(program, server, CAT)
    links = message_links(server.engine.db, server.engine.renderer.links, ask["Message-ID"])
    assert links is not None and links.unsubscribe == link(ask, "/u/")
    assert (
        message_links(server.engine.db, server.engine.renderer.links, "<nobody@acme.example>")
        is None
    )
    program.clock.advance(timedelta(minutes=5))
    answered_before = len(events(server, "nps.answered"))  # the import's
    page = client.get(links.nps[9])
    assert page.status_code == 200
    assert 'lang="id"' in page.text and "Anda memilih 9 dari 10." in page.text
    assert 'value="9" checked' in page.text
    client.get(links.nps[9])  # a double click
    assert len(events(server, "nps.answered")) == answered_before + 1
    program.clock.advance(timedelta(minutes=1))
    client.get(links.nps[7])
    answers = events(server, "nps.answered")[answered_before:]
    assert [e.data for e in answers] == [
        {"score": 9, "source": "email"},
        {"score": 7, "source": "email"},
    ]
    assert contact(server, "cat@example.com").nps_score == 7
    client.get(links.nps[0], headers={"user-agent": "Mozilla/5.0 (compatible; Proofpoint)"})
    assert contact(server, "cat@example.com").nps_score == 7  # scanners never answer
    assert events(server, "clicked")[-1].data == {"nps": 0, "machine": "scanner-agent"}


# -- forms: CSRF, origin, sizes, malformed input --------------------------------------------------


@SQLITE_ONLY
def test_form_posts_without_a_valid_csrf_token_or_from_another_site_are_refused(
    program: Project, server: TrackingServer, client: httpx.Client
) -> None:
    (ask,) = send(program, server, ANA)
    links = message_links(server.engine.db, server.engine.renderer.links, ask["Message-ID"])
    assert links is not None
    url = links.testimonial
    token = csrf_of(client.get(url).text)
    other_page = csrf_of(client.get(links.partner_form).text)
    form = {"text": "Great people."}
    refused = [
        client.post(url, data=form),
        client.post(url, data={**form, "csrf": "forged"}),
        client.post(url, data={**form, "csrf": other_page}),
        client.post(url, data={**form, "csrf": token}, headers={"origin": "https://evil.example"}),
        client.post(url, data={**form, "csrf": token}, headers={"sec-fetch-site": "cross-site"}),
    ]
    assert [r.status_code for r in refused] == [403] * 5
    assert "Great people." in refused[0].text  # a person's answer is kept to send again
    assert events(server, "form.submitted") == []
    accepted = client.post(url, data={**form, "csrf": token}, headers={"origin": server.url})
    assert accepted.status_code == 200
    (submitted,) = events(server, "form.submitted")
    assert submitted.data == {
        "form": "testimonial",
        "text": "Great people.",
        "publish_with_name": False,
    }


@SQLITE_ONLY
def test_oversized_and_malformed_requests_are_refused(
    program: Project, server: TrackingServer, client: httpx.Client
) -> None:
    (ask,) = send(program, server, ANA)
    links = message_links(server.engine.db, server.engine.renderer.links, ask["Message-ID"])
    assert links is not None
    url = links.testimonial
    token = csrf_of(client.get(url).text)
    big = {"csrf": token, "text": "x" * 100_000}
    assert client.post(url, data=big).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield f"csrf={token}&text=".encode()
        for _ in range(100):
            yield b"y" * 1000

    assert (
        client.post(
            url, content=chunks(), headers={"content-type": "application/x-www-form-urlencoded"}
        ).status_code
        == 413
    )
    with_file = client.post(url, data={"csrf": token}, files={"text": ("a.txt", b"hello")})
    assert with_file.status_code == 400
    many = {f"f{i}": "1" for i in range(50)}
    assert client.post(url, data={"csrf": token, **many}).status_code == 400
    long_text = client.post(url, data={"csrf": token, "text": "z" * 2001})
    assert long_text.status_code == 400 and "under 2000 characters" in long_text.text
    assert client.get("/f/unknown/" + url.rsplit("/", 1)[1]).status_code == 404
    unsubscribe = links.unsubscribe  # a post without the RFC 8058 body unsubscribes nobody
    assert client.post(unsubscribe, data={"List-Unsubscribe": "yes"}).status_code == 400
    assert client.post(unsubscribe, content=b"{}").status_code == 400
    assert contact(server, "ana@example.com").unsubscribed_at is None
    assert client.get("/no/such/page").status_code == 404
    assert client.delete(url).status_code == 405
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        raw.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert b"400" in raw.recv(1000)
    assert client.get("/healthz").json()["status"] == "ok"
    assert events(server, "form.submitted") == []


@SQLITE_ONLY
def test_every_response_carries_the_security_headers(
    program: Project, server: TrackingServer, client: httpx.Client
) -> None:
    (ask,) = send(program, server, ANA)
    program.clock.advance(timedelta(minutes=5))
    documents = [
        client.get(link(ask, "/c/")),
        client.get(link(ask, "/u/")),
        client.get("/no/such/page"),
        client.get(link(ask, "/o/")[:-8] + ".gif"),  # a broken pixel token: the 404 page
        client.get("/healthz"),
        client.post("/api/events", json={}),
    ]
    for response in documents:
        headers = response.headers
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert "script-src" not in headers["content-security-policy"]  # default-src 'none'
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "DENY"
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["cache-control"] == "no-store"
        assert "server" not in headers
    pixel = client.get(link(ask, "/o/"))  # an image: its type as declared, never cached
    assert pixel.headers["x-content-type-options"] == "nosniff"
    assert pixel.headers["cache-control"] == "no-store"
    assert "server" not in pixel.headers


@SQLITE_ONLY
def test_no_email_address_or_sequential_id_in_any_url(
    program: Project, server: TrackingServer
) -> None:
    (ask,) = send(program, server, ANA)
    urls = [u for u in links_in(ask) if u.startswith(server.url)]
    assert {urlsplit(u).path.split("/")[1] for u in urls} == {"c", "u", "h", "o"}
    with server.engine.db.session() as session:
        message = session.scalars(select(Message)).one()
    for url in urls:
        token = urlsplit(url).path.rsplit("/", 1)[1].removesuffix(".gif")
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        assert b"ana@example.com" not in raw and "ana" not in url.lower()
        assert message.ref in raw  # the random public id, not the row id
        assert len(token) >= 40


# -- the referral page ---------------------------------------------------------------------------


@SQLITE_ONLY
def test_the_referral_page_counts_visits_and_speaks_the_visitors_language(
    program: Project, server: TrackingServer, client: httpx.Client
) -> None:
    contacts(program, ANA.replace("Ana,", "<b>Ana</b>,", 1))
    code = contact(server, "ana@example.com").referral_code
    page = client.get(f"/r/{code}")
    assert page.status_code == 200
    assert "&lt;b&gt;Ana&lt;/b&gt; recommended Acme Team" in page.text and "<b>Ana" not in page.text
    arabic = client.get(f"/r/{code}", headers={"accept-language": "ar-EG,ar;q=0.9,en;q=0.5"})
    assert '<html lang="ar" dir="rtl">' in arabic.text
    client.get(f"/r/{code}", headers={"user-agent": "Slackbot-LinkExpanding 1.0"})
    visits = events(server, "referral.visited")
    # The reload in Arabic is the same visitor on the same day: counted once (issue 13).
    assert [e.machine for e in visits] == [False, True]
    assert {e.contact_id for e in visits} == {contact(server, "ana@example.com").id}
    for bad in ("nosuchcode", "a" * 40, "..%2F..%2Fetc", "ab<script>"):
        assert client.get(f"/r/{bad}").status_code == 404
    assert len(events(server, "referral.visited")) == 2


# -- the events API -----------------------------------------------------------------------------


def test_the_events_api_records_purchases_conversions_and_answers(
    program: Project, server: TrackingServer, client: httpx.Client
) -> None:
    contacts(program, ANA)
    program.cli("referrals", "add", "--referrer", "ana@example.com", "--email", "fay@example.com")
    auth = {"authorization": f"Bearer {API_TOKEN}"}

    def post(body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
        return client.post("/api/events", json=body, headers=auth if headers is None else headers)

    assert post({"type": "purchase", "email": "fay@example.com", "value": 1}, {}).status_code == 401
    wrong = {"authorization": "Bearer wrong-token-0123456789"}
    assert (
        post({"type": "purchase", "email": "fay@example.com", "value": 1}, wrong).status_code == 401
    )
    assert post({"type": "purchase", "email": "fay@example.com"}).json()["field"] == "value"
    purchase = {"type": "purchase", "email": "Fay@Example.com", "value": "80.50", "order_id": "A1"}
    first = post(purchase)
    assert first.status_code == 201
    assert first.json() == {
        "ok": True,
        "type": "purchase",
        "recorded": True,
        "referral_converted": True,
    }
    assert post(purchase).json()["recorded"] is False  # the same order, reported twice
    assert post({"type": "purchase", "email": "ana@example.com", "value": 20}).status_code == 201
    with server.engine.db.session() as session:
        referral = session.scalars(select(Referral)).one()
    assert (referral.status, str(referral.value)) == ("converted", "80.50")
    assert (
        post({"type": "referral.converted", "email": "fay@example.com"}).json()["recorded"] is False
    )
    answer = post({"type": "nps.answered", "email": "ana@example.com", "score": 6})
    assert answer.status_code == 201
    assert contact(server, "ana@example.com").nps_score == 6
    purchases = events(server, "purchase")
    assert [(e.contact_id is None, e.data["referred"]) for e in purchases] == [
        (True, True),
        (False, False),
    ]
    converted = events(server, "referral.converted")
    assert [e.data["value"] for e in converted] == ["80.50"]


REFUSED_EVENTS: list[tuple[Any, str | None]] = [
    ({"type": "refund", "email": "ana@example.com"}, "type"),
    ({"type": "purchase"}, "email"),
    ({"type": "purchase", "email": "not an address"}, "email"),
    ({"type": "purchase", "email": "ana@example.com", "value": "ten"}, "value"),
    ({"type": "purchase", "email": "ana@example.com", "value": -1}, "value"),
    ({"type": "purchase", "email": "ana@example.com", "value": "1.005"}, "value"),
    ({"type": "purchase", "email": "ana@example.com", "value": True}, "value"),
    ({"type": "purchase", "email": "ana@example.com", "value": 1, "currency": "euro"}, "currency"),
    (
        {"type": "purchase", "email": "ana@example.com", "value": 1, "occurred_at": "soon"},
        "occurred_at",
    ),
    (
        {"type": "purchase", "email": "ana@example.com", "value": 1, "occurred_at": "2099-01-01"},
        "occurred_at",
    ),
    ({"type": "purchase", "email": "ana@example.com", "coupon": "X"}, "coupon"),
    ({"type": "nps.answered", "email": "ana@example.com"}, "score"),
    ({"type": "nps.answered", "email": "ana@example.com", "score": 11}, "score"),
    ({"type": "nps.answered", "email": "nobody@example.com", "score": 9}, "email"),
    ({"type": "referral.converted", "email": "stranger@example.com"}, "email"),
    ([1, 2], None),
]


@SQLITE_ONLY
def test_the_events_api_refuses_bad_requests_and_names_the_field(
    program: Project, server: TrackingServer, client: httpx.Client
) -> None:
    contacts(program, ANA)
    auth = {"authorization": f"Bearer {API_TOKEN}"}
    for body, field in REFUSED_EVENTS:
        response = client.post("/api/events", json=body, headers=auth)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["field"] == field, body
    json_type = {**auth, "content-type": "application/json"}
    not_json = client.post("/api/events", content=b"{oops", headers=json_type)
    assert not_json.status_code == 400 and "not valid JSON" in not_json.json()["error"]
    nan = b'{"type": "purchase", "email": "a@b.example", "value": NaN}'
    assert client.post("/api/events", content=nan, headers=json_type).status_code == 400
    text = client.post("/api/events", content=b"x", headers={**auth, "content-type": "text/plain"})
    assert text.status_code == 415
    huge = client.post("/api/events", json={"type": "purchase", "pad": "x" * 20_000}, headers=auth)
    assert huge.status_code == 413
    assert events(server, "purchase") == []
    with TrackingServer(program.settings, program.clock) as off:  # api_token empty: no API
        assert httpx.post(f"{off.url}/api/events", json={}, headers=auth).status_code == 404


# -- health and the serve command ----------------------------------------------------------------


@SQLITE_ONLY
def test_serve_writes_every_buffered_hit_before_exiting_on_sigterm(program: Project) -> None:
    contacts(program, ANA, BOB, CAT)
    code, out = program.cli("tick")
    assert code == 0 and len(program.sink.messages) == 3, out
    port = free_port()
    cmd, env = engine_command(program, "serve")
    env["ENGINE_TRACKING_LISTEN"] = f"127.0.0.1:{port}"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(headers={"user-agent": BROWSER_UA}, timeout=5) as c:
            deadline = time.monotonic() + 20
            while True:  # the process starts (imports, migrations) in a second or two
                try:
                    if c.get(f"{base}/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise
                time.sleep(0.05)
            hits = 0
            for received in program.sink.messages:
                for url in links_in(received.message):
                    path = urlsplit(url).path
                    if path.startswith(("/o/", "/c/")):
                        assert c.get(base + path).status_code in (200, 302)
                        hits += 1
        proc.send_signal(signal.SIGTERM)
        out_bytes, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()
    assert b"tracking app listening on 127.0.0.1:" in out_bytes
    engine = program.engine()
    with engine.db.session() as session:
        recorded = session.scalars(select(Event).where(Event.type.in_(("opened", "clicked"))))
        assert len(list(recorded)) == hits == 6
    engine.close()
