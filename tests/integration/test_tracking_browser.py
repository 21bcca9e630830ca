"""The landing pages in real headless Chromium: forms filled and sent as a person would (with
the keyboard where it matters), errors shown next to their field, answers stored."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import select

from engine.inbound.tracking.links import MessageLinks, message_links
from engine.scheduler import tick
from engine.store.models import Contact, Event, Referral
from tests.conftest import Project
from tests.support.browser import browser_fixture, page_fixture  # noqa: F401  (fixtures)
from tests.support.http_server import TrackingServer
from tests.support.scenario import contacts, setup

ANA = "ana@example.com,Ana,Lima,Lima Co,UTC,10,2026-01-01,2025-01-01,,en,customer"
ALI = "ali@example.com,Ali,Hassan,Hassan Co,UTC,10,2026-01-01,2025-01-01,,ar,customer"
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
BLUE = "rgb(29, 78, 216)"


@dataclass
class Site:
    """A test program and the tracking server its emails link to."""

    program: Project
    server: TrackingServer

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture
def site(make_project: Callable[..., Project]) -> Iterator[Site]:
    program = setup(make_project(shipped=False))
    with TrackingServer(program.settings, program.clock) as server:
        yield Site(program, server)


def sent_to(site: Site, row: str) -> MessageLinks:
    """Send the ask email to ``row``'s contact; the links it carries."""
    contacts(site.program, row)
    # Playwright's sync API runs an event loop in this thread: the tick gets a thread of its own.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, tick(site.server.engine)).result()
    received = site.program.sink.messages[-1].message
    links = message_links(
        site.server.engine.db, site.server.engine.renderer.links, received["Message-ID"]
    )
    assert links is not None
    return links


def events(site: Site, type_: str) -> list[Event]:
    with site.server.engine.db.session() as session:
        return list(session.scalars(select(Event).where(Event.type == type_).order_by(Event.id)))


def contact(site: Site, email: str) -> Contact:
    with site.server.engine.db.session() as session:
        return session.scalars(select(Contact).where(Contact.email == email)).one()


def focused(page: Page) -> str:
    return str(page.evaluate("document.activeElement.id || document.activeElement.tagName"))


@SQLITE_ONLY
def test_a_friend_leaves_name_and_email_on_the_referral_page_with_the_keyboard(
    site: Site, page: Page
) -> None:
    contacts(site.program, ANA)
    code = contact(site, "ana@example.com").referral_code
    page.goto(f"{site.url}/r/{code}")
    expect(page.get_by_role("heading", level=1)).to_have_text("Ana recommended Acme Team")
    expect(page.get_by_role("button", name="Send")).to_have_css("background-color", BLUE)

    page.get_by_role("button", name="Send").click()  # nothing filled in
    expect(page.get_by_role("alert")).to_have_text("Please correct the highlighted fields.")
    name = page.get_by_label("Your name")
    expect(name).to_have_attribute("aria-invalid", "true")
    expect(name).to_have_attribute("aria-describedby", "name-error")
    expect(page.locator("#name-error")).to_have_text("Please fill this in.")
    expect(page.locator("#consent-error")).to_have_text("Please tick this box to continue.")

    name.focus()
    page.keyboard.type("Fay Friend")
    page.keyboard.press("Tab")
    assert focused(page) == "email"
    page.keyboard.type("fay@example")  # not an address yet
    page.keyboard.press("Tab")
    assert focused(page) == "consent"
    page.keyboard.press("Space")
    page.keyboard.press("Tab")
    assert focused(page) == "BUTTON"
    page.keyboard.press("Enter")
    expect(page.locator("#email-error")).to_have_text(
        "Please enter an email address like name@example.com."
    )
    expect(page.get_by_label("Your name")).to_have_value("Fay Friend")  # kept
    expect(page.get_by_role("checkbox")).to_be_checked()
    page.get_by_label("Your email address").fill("fay@example.com")
    page.get_by_role("button", name="Send").press("Enter")
    expect(page.get_by_role("status")).to_have_text("Thank you! We will be in touch soon.")

    with site.server.engine.db.session() as session:
        referral = session.scalars(select(Referral)).one()
    assert (referral.friend_email, referral.friend_name, referral.channel) == (
        "fay@example.com",
        "Fay Friend",
        "link",
    )
    (created,) = events(site, "referral.created")
    assert created.contact_id == contact(site, "ana@example.com").id
    assert created.data["consent"].startswith("I agree that Acme Team may email me")
    assert [e.machine for e in events(site, "referral.visited")] == [False]


@SQLITE_ONLY
def test_a_referrer_introduces_two_people_with_the_intro_form(site: Site, page: Page) -> None:
    links = sent_to(site, ANA)
    page.goto(links.intro_form)
    expect(page.get_by_role("heading", level=1)).to_have_text(
        "Who are one or two people we could help?"
    )
    person1 = page.get_by_role("group", name="Person 1")
    person2 = page.get_by_role("group", name="Person 2 (optional)")
    person1.get_by_label("Name").fill("Gus Green")
    person1.get_by_label("Email address").fill("gus@example.com")
    person2.get_by_label("Name").fill("Hana Hill")
    person2.get_by_label("Email address").fill("GUS@example.com")
    page.get_by_role("checkbox").check()
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#email2-error")).to_have_text("You entered the same address twice.")
    assert events(site, "referral.created") == []
    page.get_by_role("group", name="Person 2 (optional)").get_by_label("Email address").fill(
        "hana@example.com"
    )
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("status")).to_have_text(
        "Thank you for the introduction! We will take good care of them."
    )
    created = events(site, "referral.created")
    assert [
        (e.data["friend_email"], e.data["friend_name"], e.data["channel"]) for e in created
    ] == [
        ("gus@example.com", "Gus Green", "form"),
        ("hana@example.com", "Hana Hill", "form"),
    ]


def test_a_partner_says_how_to_be_introduced_and_can_change_it_later(
    site: Site, page: Page
) -> None:
    links = sent_to(site, ANA)
    page.goto(links.partner_form)
    page.get_by_label("Your ideal client").fill("Couples planning a wedding for 50-150 guests.")
    page.get_by_label("The problem you solve").fill("Flowers are one more thing to organise.")
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#how_to_introduce-error")).to_have_text("Please fill this in.")
    page.get_by_label("How we should introduce you").fill('"Mia visits the venue with you."')
    page.get_by_label("An example introduction").fill("You mentioned you still need flowers.")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("status")).to_have_text(
        "Thank you! We will start sending the right people your way."
    )
    fields = contact(site, "ana@example.com").fields
    assert fields["ideal_client"] == "Couples planning a wedding for 50-150 guests."
    assert fields["how_to_introduce"] == '"Mia visits the venue with you."'
    (submitted,) = events(site, "form.submitted")
    assert submitted.data["form"] == "partner"

    page.goto(links.partner_form)  # the answers are there to be changed
    expect(page.get_by_label("The problem you solve")).to_have_value(
        "Flowers are one more thing to organise."
    )
    page.get_by_role("button", name="Send").click()  # unchanged: nothing new recorded
    expect(page.get_by_role("status")).to_be_visible()
    assert len(events(site, "form.submitted")) == 1


@SQLITE_ONLY
def test_the_survey_answer_then_the_two_follow_up_questions(site: Site, page: Page) -> None:
    links = sent_to(site, ANA)
    site.program.clock.advance(timedelta(minutes=5))
    page.goto(links.nps[9])
    expect(page.get_by_text("You chose 9 out of 10.")).to_be_visible()
    nine = page.get_by_role("radio", name="9")
    expect(nine).to_be_checked()
    assert contact(site, "ana@example.com").nps_score == 9
    nine.focus()
    page.keyboard.press("ArrowRight")  # a radio group moves with the arrow keys
    expect(page.get_by_role("radio", name="10")).to_be_checked()
    page.get_by_label("What one thing would move this score closer to 10?").fill(
        "Faster <b>replies</b> on Fridays."
    )
    page.get_by_label("Anything else you would like to add?").fill("Keep it up!")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("status")).to_have_text("Thank you. We read every answer.")
    assert contact(site, "ana@example.com").nps_score == 10
    assert [e.data["score"] for e in events(site, "nps.answered")][-2:] == [9, 10]
    (comment,) = events(site, "nps.comment")
    assert comment.data == {
        "score": 10,
        "improve": "Faster <b>replies</b> on Fridays.",
        "other": "Keep it up!",
    }


@SQLITE_ONLY
def test_pages_speak_arabic_right_to_left_and_fit_a_phone(site: Site, page: Page) -> None:
    links = sent_to(site, ALI)
    page.goto(links.testimonial)
    assert page.evaluate("[document.documentElement.lang, document.documentElement.dir]") == [
        "ar",
        "rtl",
    ]
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.get_by_role("button", name="إرسال").click()
    expect(page.locator("#text-error")).to_have_text("يرجى تعبئة هذا الحقل.")
    page.get_by_label("ماذا ستقول لصديق عن Acme Team؟").fill("فريق رائع")
    page.get_by_role("checkbox").check()
    page.get_by_role("button", name="إرسال").click()
    expect(page.get_by_role("status")).to_have_text("شكرًا على كلماتك اللطيفة!")
    (submitted,) = events(site, "form.submitted")
    assert submitted.data == {"form": "testimonial", "text": "فريق رائع", "publish_with_name": True}


@SQLITE_ONLY
def test_the_unsubscribe_page_asks_first_and_one_click_does_it(site: Site, page: Page) -> None:
    links = sent_to(site, ANA)
    page.goto(links.unsubscribe)
    expect(
        page.get_by_text("Stop receiving emails from Acme Team at a•••@example.com?")
    ).to_be_visible()
    assert contact(site, "ana@example.com").unsubscribed_at is None
    page.get_by_role("button", name="Unsubscribe").click()
    expect(page.get_by_role("status")).to_have_text(
        "You are unsubscribed. You will not receive any more emails from Acme Team."
    )
    assert contact(site, "ana@example.com").unsubscribed_at is not None
    assert [e.data for e in events(site, "unsubscribed")] == [{"via": "page"}]


# -- NPS targets: big enough for a thumb, one line on a desktop ------------------------------------

PHONE_375 = {"width": 375, "height": 812}
DESKTOP = {"width": 1280, "height": 800}
TAP = 44  # px: the smallest comfortable touch target (WCAG 2.5.5, Apple's HIG)


def score_boxes(page: Page, selector: str) -> list[dict[str, float]]:
    """Width, height and top of each element ``selector`` finds, in CSS pixels."""
    return page.eval_on_selector_all(
        selector,
        "els => els.map(e => { const r = e.getBoundingClientRect();"
        " return {w: r.width, h: r.height, top: Math.round(r.top)}; })",
    )


def check_scores(page: Page, selector: str, where: str) -> None:
    for name, viewport in (("phone", PHONE_375), ("desktop", DESKTOP)):
        page.set_viewport_size(viewport)  # type: ignore[arg-type]
        boxes = score_boxes(page, selector)
        assert len(boxes) == 11, (where, boxes)
        small = [(n, b["w"], b["h"]) for n, b in enumerate(boxes) if min(b["w"], b["h"]) < TAP]
        assert small == [], f"{where} on a {name}: targets under {TAP}x{TAP} px: {small}"
        if name == "desktop":
            assert len({b["top"] for b in boxes}) == 1, f"{where}: 0-10 not on one line: {boxes}"
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), where


@SQLITE_ONLY
def test_nps_scores_fit_a_thumb_on_a_phone_and_one_line_on_a_desktop(
    site: Site, page: Page
) -> None:
    links = sent_to(site, ANA)
    site.program.clock.advance(timedelta(minutes=5))
    page.goto(links.nps[9])
    check_scores(page, ".score", "the NPS page")


@pytest.mark.parametrize("template", ["nps-survey.mjml", "nps-survey-reminder.mjml"])
def test_the_survey_emails_scores_fit_a_thumb_too(page: Page, template: str) -> None:
    from pathlib import Path

    from engine.mail.tokens import Links, Signer
    from engine.program.settings import SenderSettings
    from engine.send.render import Renderer

    root = Path(__file__).resolve().parents[2]
    renderer = Renderer(
        root / "templates",
        links=Links("https://t.example.com", Signer("test-secret")),
        sender=SenderSettings(postal_address="Acme Inc., 1 Main St, Springfield"),
    )
    context = {
        "contact": {"email": "ana@example.com", "first_name": "Ana"},
        "referral": None,
        "reward": None,
        "sequence": "nps-survey",
        "step": "survey",
    }
    out = renderer.render(template, "", context, locale="en", ref=bytes(12))
    page.set_content(out.html)
    check_scores(page, 'a[href*="/nps/"]', template)
