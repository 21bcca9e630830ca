"""Locales: one reading of a language tag and its text direction, for emails, pages and contacts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine.base.errors import ImportRowError
from engine.base.locale import direction, language, normalize, variants
from engine.inbound.tracking import i18n
from engine.inbound.tracking.pages import Pages
from engine.mail.tokens import Links, Signer
from engine.program.settings import SenderSettings
from engine.records.contacts import parse_row
from engine.send.render import Renderer

# The right-to-left sets the renderer and the landing pages each kept before there was one rule
# (they disagreed on four languages), and two the CLDR data adds.
OLD_EMAIL_RTL = {"ar", "he", "fa", "ur", "ps", "sd", "ug", "yi"}
OLD_PAGE_RTL = {"ar", "he", "fa", "ur"}
MORE_RTL = {"dv", "ckb"}


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("pt_br", "pt-BR"),
        ("zh_hant_tw", "zh-Hant-TW"),
        (" EN ", "en"),
        ("es-419", "es-419"),
        ("AR-eg", "ar-EG"),
        ("en-x-private", "en-x-private"),
        ("??", None),
        ("e", None),
        ("english", None),
        ("en--US", None),
        ("", None),
        (None, None),
    ],
)
def test_normalize_gives_one_form_or_nothing(tag: str | None, expected: str | None) -> None:
    assert normalize(tag) == expected
    if expected is not None:
        assert normalize(expected) == expected  # the normal form is stable


def test_language_is_the_first_subtag_in_lower_case() -> None:
    assert [language(t) for t in ("pt_BR", "AR-eg", "zh-Hant-TW", "ckb", "??", None)] == [
        "pt",
        "ar",
        "zh",
        "ckb",
        None,
        None,
    ]


def test_variants_drop_one_subtag_at_a_time() -> None:
    assert variants("pt_BR") == ("pt-BR", "pt")
    assert variants("zh_hant_tw") == ("zh-Hant-TW", "zh-Hant", "zh")
    assert variants("en") == ("en",)
    assert variants(None) == variants("??") == ()


@pytest.mark.parametrize("lang", sorted(OLD_EMAIL_RTL | OLD_PAGE_RTL | MORE_RTL))
def test_right_to_left_languages(lang: str) -> None:
    assert direction(lang) == "rtl"
    assert direction(f"{lang}_XX") == "rtl"  # a region Babel does not know: the language decides


@pytest.mark.parametrize("tag", ["en", "id", "fr", "pt-BR", "ku", "pa", "zz", "??", None])
def test_left_to_right_and_unknown(tag: str | None) -> None:
    assert direction(tag) == "ltr"


def test_the_script_decides_when_it_is_given() -> None:
    assert (direction("pa"), direction("pa-Arab")) == ("ltr", "rtl")


def email_dir(renderer: Renderer, lang: str) -> str:
    html = renderer.render("t.mjml", "Hi", {"contact": {}}, locale=lang, ref=b"r" * 12).html
    found = re.search(r'<html\b[^>]*\bdir="(\w+)"', html)
    assert found is not None
    return found[1]


def page_dir(pages: Pages, lang: str) -> str:
    page = bytes(pages.not_found(lang).body).decode()
    found = re.search(r'<html\b[^>]*\bdir="(\w+)"', page)
    assert found is not None
    return found[1]


def test_an_email_and_its_landing_page_take_the_same_direction(tmp_path: Path) -> None:
    (tmp_path / "t.mjml").write_text(
        "<mjml><mj-body><mj-section><mj-column><mj-text>Hi</mj-text>"
        "</mj-column></mj-section></mj-body></mjml>",
        encoding="utf-8",
    )
    sender = SenderSettings()
    renderer = Renderer(tmp_path, links=Links("https://t.example.com", Signer("s")), sender=sender)
    pages = Pages(sender)
    for lang in sorted(OLD_EMAIL_RTL | OLD_PAGE_RTL | MORE_RTL | {"en", "id"}):
        expected = direction(lang)
        assert (email_dir(renderer, lang), page_dir(pages, lang)) == (expected, expected), lang
    assert {lang for lang in OLD_EMAIL_RTL | MORE_RTL if email_dir(renderer, lang) == "rtl"} == (
        OLD_EMAIL_RTL | MORE_RTL
    )


def test_page_languages_read_tags_as_the_emails_do() -> None:
    assert i18n.language(" ar_eg ") == "ar"
    assert i18n.negotiate("id_ID, en;q=0.5", None) == "id"
    assert i18n.negotiate("*, fr", "AR") == "ar"


def test_contacts_store_the_normal_form_of_their_locale() -> None:
    assert parse_row({"email": "ana@example.com", "locale": "pt_br"})["locale"] == "pt-BR"
    assert parse_row({"email": "ana@example.com", "locale": "zh_hant"})["locale"] == "zh-Hant"
    with pytest.raises(ImportRowError, match="locale: 'english' is not a language code"):
        parse_row({"email": "ana@example.com", "locale": "english"})
