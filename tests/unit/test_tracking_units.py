"""The tracking app's pure parts: machine traffic, redirect targets, CSRF tokens, form checks,
languages, the hit buffer and the events API's validation."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Table

from engine.base.errors import SettingsError
from engine.inbound.tracking import forms
from engine.inbound.tracking.api import ApiError, parse_body, parse_event
from engine.inbound.tracking.bots import classify_click, classify_request
from engine.inbound.tracking.buffer import Hit, HitBuffer
from engine.inbound.tracking.csrf import CsrfTokens
from engine.inbound.tracking.i18n import STRINGS, Translator, direction, language, negotiate
from engine.inbound.tracking.pages import Pages
from engine.inbound.tracking.records import HitWriter
from engine.inbound.tracking.web import GIF, safe_location
from engine.program.settings import SenderSettings, load_settings
from engine.store.db import Database
from engine.store.models import Event
from tests.support.mail_links import UNSAFE_DESTINATIONS

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"
)


# -- machine traffic ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "agent", "client", "reason"),
    [
        ("GET", FIREFOX, "203.0.113.9", None),
        ("GET", IPHONE, "2001:db8::1", None),
        ("GET", "Mozilla/5.0", "203.0.113.9", "apple-mpp"),
        ("GET", FIREFOX, "17.58.100.1", "apple-mpp"),
        (
            "GET",
            "Mozilla/5.0 (Windows NT 5.1) Firefox/11.0 (via ggpht.com GoogleImageProxy)",
            None,
            "image-proxy",
        ),
        (
            "GET",
            "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html",
            None,
            "image-proxy",
        ),
        ("GET", FIREFOX, "66.102.8.1", "google-proxy"),
        ("GET", FIREFOX, "40.107.22.5", "mail-security"),
        ("HEAD", FIREFOX, "203.0.113.9", "head-request"),
        ("GET", "", "203.0.113.9", "no-user-agent"),
        ("GET", None, None, "no-user-agent"),
        ("GET", "python-requests/2.32", None, "scanner-agent"),
        ("GET", "Mozilla/5.0 (compatible; Mimecast URL Protect)", None, "scanner-agent"),
        ("GET", "Mozilla/5.0 HeadlessChrome/126.0", None, "scanner-agent"),
        ("GET", "Slackbot-LinkExpanding 1.0", None, "scanner-agent"),
        ("GET", FIREFOX, "not an address", None),
    ],
)
def test_requests_are_classified_as_people_or_machines(
    method: str, agent: str | None, client: str | None, reason: str | None
) -> None:
    assert classify_request(method, agent, client) == reason


def test_clicks_right_after_delivery_or_next_to_the_honeypot_are_scanners() -> None:
    sent = NOW
    assert classify_click(sent + timedelta(seconds=3), sent, []) == "fast-click"
    assert classify_click(sent + timedelta(seconds=11), sent, []) is None
    assert classify_click(sent + timedelta(hours=1), None, []) is None
    later = sent + timedelta(hours=1)
    assert classify_click(later, sent, [later - timedelta(seconds=20)]) == "near-honeypot"
    assert classify_click(later, sent, [later + timedelta(seconds=5)]) == "near-honeypot"
    assert classify_click(later, sent, [later - timedelta(minutes=5)]) is None


# -- redirects ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "location"),
    [
        ("https://example.com/a?b=1&c=2#top", "https://example.com/a?b=1&c=2#top"),
        ("HTTP://Example.com:8080/x", "http://example.com:8080/x"),
        ("https://example.com/a b?q=é", "https://example.com/a%20b?q=%C3%A9"),
        ("https://bücher.example/", "https://xn--bcher-kva.example/"),
        ("https://[2001:db8::1]:8443/p", "https://[2001:db8::1]:8443/p"),
        ("https://example.com/%7Euser?x=%2F", "https://example.com/%7Euser?x=%2F"),
    ],
)
def test_safe_destinations_become_plain_ascii_locations(url: str, location: str) -> None:
    assert safe_location(url) == location


@pytest.mark.parametrize("url", [*UNSAFE_DESTINATIONS, "https://example.com:99999/", "ftp://x.y"])
def test_unsafe_destinations_have_no_location(url: str) -> None:
    assert safe_location(url) is None


def test_the_pixel_is_the_43_byte_transparent_gif() -> None:
    assert len(GIF) == 43 and GIF.startswith(b"GIF89a") and GIF.endswith(b";")


# -- CSRF ---------------------------------------------------------------------------------------


def test_csrf_tokens_are_bound_to_their_page_secret_and_age() -> None:
    tokens = CsrfTokens("secret-0123456789abcdef", max_age=3600)
    token = tokens.issue("/f/intro/abc", 1000.0)
    assert tokens.check(token, "/f/intro/abc", 1000.0 + 3599)
    assert not tokens.check(token, "/f/intro/abd", 1000.0)
    assert not tokens.check(token, "/f/intro/abc", 1000.0 + 3601)
    assert not tokens.check(token, "/f/intro/abc", 1000.0 - 120)  # from the future
    assert not CsrfTokens("another-secret-0123456789").check(token, "/f/intro/abc", 1000.0)
    for bad in (None, "", "x", token[:-2], token + "AA", "é" * 10, "A" * 100):
        assert not tokens.check(bad, "/f/intro/abc", 1000.0)


# -- forms --------------------------------------------------------------------------------------


def t(key: str, **fields: object) -> str:
    return Translator("en")(key, **fields)


def test_typed_values_are_cleaned() -> None:
    assert forms.clean(" Ana\r\nLima\x00 ", "line") == "Ana Lima"
    assert forms.clean(" one\r\ntwo\u2028 ", "text") == "one\ntwo"


def test_form_checks_name_each_problem_next_to_its_field() -> None:
    result = forms.check(
        {"name": "  ", "email": "Fay@EXAMPLE.com", "consent": "yes"}, forms.REFERRAL, t
    )
    assert result.errors == {"name": "Please fill this in."}
    assert result.values["email"] == "fay@example.com"
    bad = forms.check({"name": "x" * 201, "email": "fay@", "other": "ignored"}, forms.REFERRAL, t)
    assert bad.errors == {
        "name": "Please keep this under 200 characters.",
        "email": "Please enter an email address like name@example.com.",
        "consent": "Please tick this box to continue.",
    }
    assert "other" not in bad.values
    for score, ok in (("0", True), ("10", True), ("11", False), ("-1", False), ("٣", False)):
        assert forms.check({"score": score}, forms.NPS, t).ok is ok, score


def test_the_intro_form_takes_one_or_two_people_but_not_the_referrer() -> None:
    one = forms.check_intro({"email1": "gus@example.com", "consent": "yes"}, "ana@example.com", t)
    assert one.ok and forms.friends(one) == [("gus@example.com", None)]
    self_ref = forms.check_intro(
        {"email1": "ANA@example.com", "consent": "yes"}, "ana@example.com", t
    )
    assert self_ref.errors == {"email1": t("self_referral")}
    twice = forms.check_intro(
        {"email1": "gus@example.com", "email2": "gus@example.com", "consent": "yes"},
        "ana@example.com",
        t,
    )
    assert twice.errors == {"email2": t("same_friend")}
    nameless = forms.check_intro(
        {"email1": "gus@example.com", "name2": "Hana", "consent": "yes"}, "ana@example.com", t
    )
    assert nameless.errors == {"email2": t("required")}


# -- languages and pages ------------------------------------------------------------------------


def test_every_language_has_every_text_with_the_same_fields() -> None:
    def fields(text: str) -> set[str]:
        return {part.split("}")[0] for part in text.split("{")[1:]}

    for lang, strings in STRINGS.items():
        assert strings.keys() == STRINGS["en"].keys(), lang
        for key, text in strings.items():
            assert fields(text) == fields(STRINGS["en"][key]), (lang, key)


def test_page_languages() -> None:
    assert [language(x) for x in ("ar_EG", "id-ID", "pt-BR", None, "")] == [
        "ar",
        "id",
        "en",
        "en",
        "en",
    ]
    assert negotiate("fr-FR,id;q=0.8,en;q=0.5", None) == "id"
    assert negotiate("en;q=0.2, ar;q=0.9", "id") == "ar"
    assert negotiate("fr, de;q=x", "ar_EG") == "ar"
    assert negotiate(None, None) == "en"
    assert (direction("ar"), direction("id")) == ("rtl", "ltr")
    assert Translator("xx")("send") == "Send"


@pytest.mark.parametrize("lang", sorted(STRINGS))
def test_every_page_renders_in_every_language_with_data_escaped(lang: str) -> None:
    pages = Pages(SenderSettings(from_name="<Acme & Co>"))
    common: dict[str, Any] = {
        "csrf": "token",
        "values": {"name": '"><script>', "score": "7"},
        "errors": {"name": "<b>bad</b>"},
        "expired": False,
        "done": False,
        "consent": "I agree",
        "email": "a•••@example.com",
        "title_fields": {"referrer": "<i>Ana</i>"},
    }
    for name, title in (
        ("unsubscribe", "unsubscribe.title"),
        ("nps", "nps.title"),
        ("referral", "referral.title"),
        ("intro", "intro.title"),
        ("partner", "partner.title"),
        ("testimonial", "testimonial.title"),
    ):
        for done in (False, True):
            page = bytes(pages.render(name, lang, title, **{**common, "done": done}).body).decode()
            assert f'<html lang="{lang}" dir="{direction(lang)}">' in page
            assert "<script>" not in page and "<i>Ana" not in page and "<Acme" not in page
    assert pages.not_found(lang).status_code == 404


# -- the hit buffer -----------------------------------------------------------------------------


SQLITE_HITS = HitWriter(Database("sqlite://", auto_migrate=False))


def core_timestamp(at: datetime) -> Any:
    """What SQLAlchemy itself binds for ``events.occurred_at`` on SQLite."""
    dialect = SQLITE_HITS.db.engine.dialect
    column = cast(Table, Event.__table__).c.occurred_at
    process = column.type.dialect_impl(dialect).bind_processor(dialect)
    assert process is not None
    return process(at)


def hit(ref: bytes, seconds: float, kind: str = "opened", **more: Any) -> Hit:
    return Hit(kind, ref, NOW + timedelta(seconds=seconds), more.pop("machine", None), **more)


class ListWriter:
    """A writer keeping batches in memory; ``fail`` makes the next writes raise."""

    def __init__(self) -> None:
        self.batches: list[list[Hit]] = []
        self.fail = False

    def prepare(self, hits: list[Hit]) -> list[Hit]:
        return list(hits)

    def write(self, prepared: list[Hit]) -> int:
        if self.fail:
            raise ConnectionError("database down")
        self.batches.append(prepared)
        return len(prepared)


async def test_duplicates_within_the_window_are_one_hit_and_later_ones_count() -> None:
    writer = ListWriter()
    buffer = HitBuffer(writer, batch=2)
    added = [
        buffer.add(hit(b"a", 0)),
        buffer.add(hit(b"a", 3)),  # the same open again
        buffer.add(hit(b"a", 3, machine="apple-mpp")),  # a proxy is counted apart
        buffer.add(hit(b"b", 4)),  # another email
        buffer.add(hit(b"a", 5, "clicked", url="https://x.example/")),
        buffer.add(hit(b"a", 11)),  # a new open, past the window
        buffer.add(hit(b"a", 25)),  # and another, two windows on
    ]
    assert added == [True, False, True, True, True, True, True]
    assert await buffer.flush() == 6
    assert [len(batch) for batch in writer.batches] == [2, 2, 2]
    assert buffer.pending == 0 and buffer.written == 6


async def test_a_failed_write_keeps_the_hits_and_stop_flushes_them() -> None:
    writer = ListWriter()
    writer.fail = True
    buffer = HitBuffer(writer, interval=0.01)
    buffer.add(hit(b"a", 0))
    buffer.add(hit(b"b", 0))
    with pytest.raises(ConnectionError):
        await buffer.flush()
    assert buffer.pending == 2
    writer.fail = False
    stop = asyncio.Event()
    task = asyncio.create_task(buffer.run(stop))
    buffer.add(hit(b"c", 0))
    stop.set()
    await task
    assert [h.ref for batch in writer.batches for h in batch] == [b"a", b"b", b"c"]
    assert buffer.pending == 0


class SlowWriter(ListWriter):
    """A ListWriter whose writes take ``seconds`` each (in the buffer's worker thread)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.started = threading.Event()
        self.go_on = threading.Event()
        self.go_on.set()

    def write(self, prepared: list[Hit]) -> int:
        self.started.set()
        self.go_on.wait(10)
        time.sleep(self.seconds)
        return super().write(prepared)


async def test_a_flush_writes_what_was_waiting_and_later_hits_wait_for_the_next() -> None:
    writer = SlowWriter(0)
    writer.go_on.clear()
    buffer = HitBuffer(writer, batch=2)
    for i in range(3):
        buffer.add(hit(bytes([i]), 0))
    flushing = asyncio.create_task(buffer.flush())
    await asyncio.to_thread(writer.started.wait, 10)
    buffer.add(hit(b"late", 0))  # arrives while the first batch is being written
    writer.go_on.set()
    assert await flushing == 3
    assert [len(batch) for batch in writer.batches] == [2, 1]
    assert buffer.pending == 1 and buffer.written == 3
    assert await buffer.flush() == 1


async def test_steady_traffic_is_written_a_whole_interval_at_a_time_not_a_trickle() -> None:
    # Each write takes 10 ms while a hit arrives every millisecond: chasing the new hits after
    # every write would make ~50 tiny transactions of the 500 hits, one per 10 ms.
    writer = SlowWriter(0.01)
    buffer = HitBuffer(writer, interval=0.1)
    stop = asyncio.Event()
    task = asyncio.create_task(buffer.run(stop))
    start = time.monotonic()
    for i in range(500):
        buffer.add(hit(i.to_bytes(2, "big"), 0))
        await asyncio.sleep(0.001)
    elapsed = time.monotonic() - start
    stop.set()
    await task
    assert sum(len(batch) for batch in writer.batches) == 500
    assert len(writer.batches) <= elapsed / 0.1 + 3  # one per interval (and the last one)


async def test_stop_writes_the_hits_that_arrive_during_the_last_flush() -> None:
    writer = SlowWriter(0)
    writer.go_on.clear()
    buffer = HitBuffer(writer, interval=3600)
    stop = asyncio.Event()
    task = asyncio.create_task(buffer.run(stop))
    buffer.add(hit(b"a", 0))
    stop.set()
    await asyncio.to_thread(writer.started.wait, 10)
    buffer.add(hit(b"b", 0))  # a request still finishing while the server shuts down
    writer.go_on.set()
    await task
    assert [h.ref for batch in writer.batches for h in batch] == [b"a", b"b"]
    assert buffer.pending == 0


@given(
    st.datetimes(
        max_value=datetime(9999, 12, 30),  # in UTC too
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=-3))]),
    )
)
def test_open_timestamps_are_stored_exactly_as_the_column_type_stores_them(at: datetime) -> None:
    # HitWriter formats SQLite timestamps itself (cheaper): the same text as SQLAlchemy's.
    assert SQLITE_HITS.at(at) == core_timestamp(at)


def test_a_full_buffer_drops_new_hits_instead_of_growing() -> None:
    buffer = HitBuffer(ListWriter(), max_pending=2)
    assert [buffer.add(hit(bytes([i]), 0)) for i in range(3)] == [True, True, False]
    assert buffer.dropped == 1


# -- the events API -----------------------------------------------------------------------------


def test_api_events_are_normalised() -> None:
    ev = parse_event(
        {"type": "purchase", "email": "Fay@EXAMPLE.com", "value": 80.5, "currency": "eur"}, NOW
    )
    assert (ev.email, ev.value, ev.currency, ev.occurred_at) == (
        "fay@example.com",
        Decimal("80.50"),
        "EUR",
        NOW,
    )
    at = parse_event(
        {"type": "nps.answered", "email": "a@b.example", "score": 0, "occurred_at": "2026-03-01"},
        NOW,
    )
    assert (at.score, at.occurred_at) == (0, datetime(2026, 3, 1, tzinfo=UTC))
    with pytest.raises(ApiError, match="not valid JSON"):
        parse_body(b'{"type": "purchase", "value": Infinity}', NOW)
    with pytest.raises(ApiError) as refused:
        parse_body(b'{"type": "purchase", "email": "a@b.example", "value": 1, "order_id": ""}', NOW)
    assert refused.value.body()["field"] == "order_id"
    with pytest.raises(ApiError) as refused:
        parse_body(b'{"type": "purchase", "email": "a@b.example"}', NOW)  # no amount
    assert refused.value.body()["field"] == "value"


# -- settings -----------------------------------------------------------------------------------


def test_the_api_token_and_listen_address_are_checked_at_start_up(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text("[tracking]\nsecret = 'test-secret-0123456789'\n", encoding="utf-8")
    assert load_settings(path, env={}).tracking.api_token == ""
    token = {"ENGINE_TRACKING_API_TOKEN": "a" * 16}
    assert load_settings(path, env=token).tracking.api_token == "a" * 16
    for bad in ("short", "with a space 0123456789", "é" * 20):
        with pytest.raises(SettingsError, match=r"tracking\.api_token"):
            load_settings(path, env={"ENGINE_TRACKING_API_TOKEN": bad})
    listen = load_settings(path, env={"ENGINE_TRACKING_LISTEN": "[::1]:8081"}).tracking
    assert listen.listen_address == ("::1", 8081)
    for bad in ("8080", "host:", "host:0", "host:70000", ":8080"):
        with pytest.raises(SettingsError, match=r"tracking\.listen"):
            load_settings(path, env={"ENGINE_TRACKING_LISTEN": bad})
