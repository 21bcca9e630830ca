"""Every URL ``tokens.Links`` puts in an email is one the tracking app answers: both take their
paths from ``tokens.LINK_PATHS``, so a path typed again in one place would fail here."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.routing import Match, Route

from engine.base.clock import FixedClock
from engine.inbound.tracking.app import build_app
from engine.inbound.tracking.buffer import Hit, HitBuffer
from engine.inbound.tracking.context import TrackingContext
from engine.inbound.tracking.web import GIF
from engine.mail.tokens import FORM_KINDS, LINK_PATHS, Links, Signer
from engine.program.settings import SenderSettings, TrackingSettings
from engine.store.db import Database

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
BASE = "https://t.example.com"
REF = b"0123456789abcdef"
LINKS = Links(BASE, Signer("route-test-secret"))

# One URL of each kind Links builds, keyed by its method (a form: one of each form).
MADE: dict[str, Callable[[Links], str]] = {
    "open": lambda links: links.open(REF),
    "click": lambda links: links.click(REF, "https://shop.example/pricing?plan=pro"),
    "honeypot": lambda links: links.honeypot(REF),
    "unsubscribe": lambda links: links.unsubscribe(REF),
    "nps": lambda links: links.nps(REF, 9),
    "referral": lambda links: links.referral("ana-lima_7"),
    **{f"form.{name}": functools.partial(Links.form, name=name, ref=REF) for name in FORM_KINDS},
}


class ListWriter:
    """Keeps what the buffer would write (no database: routing is what is under test)."""

    def __init__(self) -> None:
        self.hits: list[Hit] = []

    def prepare(self, hits: list[Hit]) -> list[Hit]:
        return hits

    def write(self, prepared: list[Hit]) -> int:
        self.hits.extend(prepared)
        return len(prepared)


def tracking_app(buffer: HitBuffer) -> Any:
    ctx = TrackingContext(
        db=cast(Database, None),  # never reached: no handler that reads the store is called
        clock=FixedClock(NOW),
        links=LINKS,
        tracking=TrackingSettings(base_url=BASE, secret="route-test-secret"),
        sender=SenderSettings(),
    )
    return build_app(ctx, buffer=buffer)


def test_every_kind_of_url_links_builds_has_a_path_in_the_table() -> None:
    methods = {
        name
        for name, _ in inspect.getmembers(Links, inspect.isfunction)
        if not name.startswith("_") and name != "is_tracking"
    }
    assert methods == set(LINK_PATHS)
    assert {kind.partition(".")[0] for kind in MADE} == methods


@pytest.mark.parametrize("kind", [k for k in MADE if k != "open"])
def test_every_url_in_an_email_is_routed(kind: str) -> None:
    url = MADE[kind](LINKS)
    assert url.startswith(BASE + "/")
    path = urlsplit(url).path
    scope = {"type": "http", "method": "GET", "path": path, "root_path": ""}
    app = tracking_app(HitBuffer(ListWriter()))
    matched = [r for r in app.routes if isinstance(r, Route) and r.matches(scope)[0] is Match.FULL]
    assert [r.path for r in matched] == [LINK_PATHS[kind.partition(".")[0]]], url


async def test_the_open_pixel_url_is_answered_ahead_of_the_router() -> None:
    buffer = HitBuffer(ListWriter())
    transport = httpx.ASGITransport(app=tracking_app(buffer))
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get(MADE["open"](LINKS))
    assert (response.status_code, response.content) == (200, GIF)
    assert buffer.pending == 1  # the open was taken, not the 404 page
