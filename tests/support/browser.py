"""Real headless Chromium (Debian's ``chromium``) driven by Playwright for Python.

``browser`` is started once per test module: Playwright's sync API runs an event loop in the
main thread while it is up, which would stop later modules' asyncio tests. ``page`` opens a
fresh context (no cookies or storage shared between tests) with a phone-sized viewport and a
desktop browser's user agent (headless Chromium's own says "HeadlessChrome", which the
tracking app rightly takes for a machine), and fails the test on any Content-Security-Policy
violation the page reports.
Import ``browser_fixture`` and ``page_fixture`` to use them in a test module.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, ViewportSize, sync_playwright

from tests.support.http_server import BROWSER_UA

CHROMIUM = os.environ.get("ENGINE_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
PHONE = ViewportSize(width=390, height=844)


@pytest.fixture(name="browser", scope="module")
def browser_fixture() -> Iterator[Browser]:
    if not os.path.exists(CHROMIUM):
        if os.environ.get("ENGINE_REQUIRE_BROWSER"):
            pytest.fail(f"Chromium is required (ENGINE_REQUIRE_BROWSER) but {CHROMIUM} is missing")
        pytest.skip(f"Chromium not installed at {CHROMIUM} (make test installs it)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(name="page")
def page_fixture(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(user_agent=BROWSER_UA, viewport=PHONE)
    context.set_default_timeout(10_000)
    violations: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            violations.append(message.text)

    page = context.new_page()
    page.on("console", on_console)
    try:
        yield page
    finally:
        context.close()
    assert violations == [], violations
