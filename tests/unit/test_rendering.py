"""Rendering: MJML compiled once, Jinja per recipient, safe, tracked, localized, validated."""

from __future__ import annotations

import email
import email.policy
import html
import re
import time
import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2.filters
import markupsafe
import pytest
from hypothesis import given
from hypothesis import strategies as st
from markupsafe import Markup

from engine.base.errors import RenderTimeout, TemplateError
from engine.mail.mime import OutgoingEmail, build_message
from engine.mail.tokens import Links, Signer, Token
from engine.program.sequences import SendStep, Sequence, load_sequences
from engine.program.settings import SenderSettings
from engine.send.render import Rendered, Renderer, Sandbox, TemplateLinks, TemplateProblem

BASE = "https://t.example.com"
REF = bytes.fromhex("a1b2c3d4e5f60718293a4b5c")
POSTAL = "Acme Inc., 1 Main St, Springfield"
SENDER = SenderSettings(postal_address=POSTAL)


def mjml(body: str, head: str = "") -> str:
    """A complete MJML document around ``body`` (components inside one column)."""
    return (
        f"<mjml>\n<mj-head>{head}</mj-head>\n<mj-body>\n<mj-section>\n<mj-column>\n"
        f"{body}\n</mj-column>\n</mj-section>\n</mj-body>\n</mjml>\n"
    )


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    folder = tmp_path / "templates"
    folder.mkdir()
    return folder


@pytest.fixture
def signer() -> Signer:
    return Signer("test-secret")


@pytest.fixture
def make(templates: Path, signer: Signer) -> Callable[..., Renderer]:
    def build(render_timeout: float = 2.0, reload_interval: float = 0.0) -> Renderer:
        links = Links(BASE, signer)
        return Renderer(
            templates,
            links=links,
            sender=SENDER,
            render_timeout=render_timeout,
            reload_interval=reload_interval,
        )

    return build


@pytest.fixture
def renderer(make: Callable[..., Renderer]) -> Renderer:
    return make()


def write(folder: Path, name: str, content: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, encoding="utf-8")
    return path


def context(**contact: Any) -> dict[str, Any]:
    person = {"first_name": "Ana", "email": "ana@example.com", "referral_code": "ANA42"}
    person.update(contact)
    return {"contact": person, "sequence": "referral-ask", "step": "ask"}


def render(
    renderer: Renderer,
    template: str = "ask.mjml",
    *,
    subject: str = "Hi {{ contact.first_name }}",
    locale: str | None = "en",
    **contact: Any,
) -> Rendered:
    return renderer.render(template, subject, context(**contact), locale=locale, ref=REF)


def verified(signer: Signer, url: str) -> Token:
    token = signer.verify(url.rsplit("/", 1)[1].removesuffix(".gif"))
    assert token is not None, url
    return token


def hrefs(markup: str) -> list[str]:
    return [html.unescape(h) for h in re.findall(r'href="([^"]*)"', markup)]


# --- locales ----------------------------------------------------------------------------------


def test_locale_variant_wins_over_the_base_template(templates: Path, renderer: Renderer) -> None:
    write(templates, "ask.mjml", mjml("<mj-text>Hello</mj-text>"))
    write(templates, "ask.ar.mjml", mjml("<mj-text>مرحبا</mj-text>"))
    write(templates, "ask.pt.mjml", mjml("<mj-text>Olá</mj-text>"))
    assert renderer.resolve("ask.mjml", "ar") == templates / "ask.ar.mjml"
    assert renderer.resolve("ask.mjml", "pt-BR") == templates / "ask.pt.mjml"
    assert renderer.resolve("ask.mjml", "pt_br") == templates / "ask.pt.mjml"
    assert renderer.resolve("ask.mjml", "id") == templates / "ask.mjml"
    assert renderer.resolve("ask.mjml", None) == templates / "ask.mjml"
    assert "مرحبا" in render(renderer, locale="ar").text
    assert "Hello" in render(renderer, locale="fr").text


def test_most_specific_locale_first(templates: Path, renderer: Renderer) -> None:
    for name in ("ask.mjml", "ask.pt.mjml", "ask.pt-BR.mjml"):
        write(templates, name, mjml("<mj-text>x</mj-text>"))
    assert renderer.resolve("ask.mjml", "pt-BR") == templates / "ask.pt-BR.mjml"
    assert renderer.resolve("ask.mjml", "pt-PT") == templates / "ask.pt.mjml"


def test_missing_template_is_a_template_error(renderer: Renderer) -> None:
    with pytest.raises(TemplateError, match=r"nope\.mjml"):
        renderer.resolve("nope.mjml", "en")
    with pytest.raises(TemplateError):
        render(renderer, "nope.mjml")
    with pytest.raises(TemplateError):
        renderer.resolve("../outside.mjml", None)


def test_arabic_renders_right_to_left(templates: Path, renderer: Renderer) -> None:
    body = '<mj-text>{{ lang }} {{ dir }} <a href="https://example.com/">x</a></mj-text>'
    write(templates, "ask.mjml", mjml(body))
    arabic = render(renderer, locale="ar")
    assert f'href="{BASE}/c/' in arabic.html and "https://example.com/" not in arabic.html
    root = re.search(r"<html[^>]*>", arabic.html)
    assert root is not None and 'lang="ar"' in root.group() and 'dir="rtl"' in root.group()
    assert "ar rtl" in arabic.text
    assert "direction:rtl" in arabic.html and "direction:ltr" not in arabic.html
    english = render(renderer, locale="en")
    root = re.search(r"<html[^>]*>", english.html)
    assert root is not None and 'lang="en"' in root.group() and 'dir="ltr"' in root.group()
    assert "en ltr" in english.text


# --- safety -----------------------------------------------------------------------------------


def test_contact_data_is_escaped_in_html_only(templates: Path, renderer: Renderer) -> None:
    write(templates, "ask.mjml", mjml("<mj-text>Hi {{ contact.first_name }}!</mj-text>"))
    hostile = '<script>alert("x")</script>'
    out = render(renderer, first_name=hostile, subject="{{ contact.first_name }}, hi")
    assert "<script>" not in out.html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in out.html
    assert f"Hi {hostile}!" in out.text
    assert out.subject == f"{hostile}, hi"


def test_a_missing_variable_fails_the_email_naming_it(templates: Path, renderer: Renderer) -> None:
    write(templates, "ask.mjml", mjml("<mj-text>How is {{ contact.company }}?</mj-text>"))
    with pytest.raises(TemplateError, match=r"ask\.mjml: 'company' is undefined"):
        render(renderer)
    with pytest.raises(TemplateError, match=r"\(subject\): 'last_name' is undefined"):
        render(renderer, subject="{{ contact.last_name }}", company="Acme")
    assert "How is Acme?" in render(renderer, company="Acme").text


def test_default_filter_gives_a_fallback(templates: Path, renderer: Renderer) -> None:
    write(
        templates, "ask.mjml", mjml('<mj-text>Hi {{ contact.nick | default("there") }}</mj-text>')
    )
    assert "Hi there" in render(renderer).text


@given(st.one_of(st.text(), st.integers(), st.lists(st.text(max_size=5), max_size=3)))
def test_html_output_is_escaped_exactly_like_markupsafe_does(value: object) -> None:
    # The engine writes {{ }} without a Markup copy when there is nothing to escape.
    env = Sandbox(autoescape=True)
    assert env.from_string("{{ v }}").render(v=value) == str(markupsafe.escape(value))
    assert env.from_string("{{ v|e }}{{ v|safe }}").render(v=Markup("<b>")) == "<b><b>"


@given(st.one_of(st.text(), st.dictionaries(st.text(max_size=5), st.text(max_size=5))))
def test_urlencode_is_jinjas(value: str | dict[str, str]) -> None:
    urlencode = Sandbox().filters["urlencode"]
    assert urlencode(value) == jinja2.filters.do_urlencode(value)


HOSTILE = {
    "dunder": "{{ ''.__class__.__mro__ }}",
    "attr filter": "{{ ''|attr('__class__') }}",
    "globals": "{{ cycler.__init__.__globals__ }}",
    "huge range": "{% for i in range(10**9) %}x{% endfor %}",
    "nested loops": "{% for i in range(99999) %}{% for j in range(99999) %}"
    "{% endfor %}{% endfor %}",
    "loops over strings": "{% for a in 'x'*999999 %}{% for b in 'y'*999999 %}"
    "{% endfor %}{% endfor %}",
    "huge string": "{{ 'x' * 10**9 }}",
    "huge width": "{{ 'x'|center(1000000000) }}",
    "huge format": "{{ '%999999999d'|format(1) }}",
    "doubling": "{% set ns = namespace(s='x') %}{% for i in range(64) %}"
    "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
    "exponential macro": "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}"
    "{% endmacro %}{{ f(60) }}",
    "output flood": "{% set s = 'x' * 999999 %}{% for i in range(1000) %}{{ s }}{% endfor %}",
    "replace bomb": "{% set s = 'x' * 99999 %}{{ s|replace('x', s) }}",
    # short loops are not wrapped in a checking generator: each one's start is checked
    "nested short loops": "{% for a in range(255) %}{% for b in range(255) %}"
    "{% for c in [1, 2, 3] * 85 %}{% endfor %}{% endfor %}{% endfor %}",
}


@pytest.mark.parametrize("code", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_templates_are_stopped_quickly(
    templates: Path, make: Callable[..., Renderer], code: str
) -> None:
    write(templates, "ask.mjml", mjml(f"<mj-text>{code}</mj-text>"))
    renderer = make(render_timeout=0.3)
    start = time.perf_counter()
    with pytest.raises(TemplateError):  # RenderTimeout is a TemplateError
        render(renderer)
    assert time.perf_counter() - start < 3.0


def test_a_runaway_loop_is_a_render_timeout(templates: Path, make: Callable[..., Renderer]) -> None:
    write(templates, "ask.mjml", mjml(f"<mj-text>{HOSTILE['nested loops']}</mj-text>"))
    with pytest.raises(RenderTimeout, match=r"ask\.mjml"):
        render(make(render_timeout=0.2))


# --- compile once -----------------------------------------------------------------------------


def test_mjml_is_compiled_once_per_file_version(templates: Path, renderer: Renderer) -> None:
    path = write(templates, "ask.mjml", mjml("<mj-text>Hi {{ contact.first_name }}</mj-text>"))
    for name in ("Ana", "Bo", "Cy"):
        assert f"Hi {name}" in render(renderer, first_name=name).text
    assert renderer.compile_count == 1
    path.write_text(mjml("<mj-text>Hello again {{ contact.first_name }}</mj-text>"), "utf-8")
    assert "Hello again Ana" in render(renderer).text
    assert renderer.compile_count == 2


def test_render_looks_for_edits_once_per_reload_interval(
    templates: Path, make: Callable[..., Renderer]
) -> None:
    path = write(templates, "ask.mjml", mjml("<mj-text>First</mj-text>"))
    renderer = make(reload_interval=3600)
    assert "First" in render(renderer).text
    path.write_text(mjml("<mj-text>Second, longer</mj-text>"), "utf-8")
    assert "First" in render(renderer).text  # trusted for the interval: no stat per email
    assert renderer.check("ask.mjml") == [] and renderer.compile_count == 2  # check looks
    assert "Second, longer" in render(make()).text


def test_an_edited_partial_recompiles_its_templates(templates: Path, renderer: Renderer) -> None:
    write(templates, "ask.mjml", mjml('{% include "_partials/cta.mjml" %}'))
    partial = write(templates, "_partials/cta.mjml", "<mj-text>First version</mj-text>")
    assert "First version" in render(renderer).text
    partial.write_text("<mj-text>The second, longer version</mj-text>", "utf-8")
    assert "The second, longer version" in render(renderer).text
    assert renderer.compile_count == 2


# --- footer, pixel, links ---------------------------------------------------------------------


def test_footer_and_open_pixel_are_always_there(
    templates: Path, renderer: Renderer, signer: Signer
) -> None:
    write(templates, "ask.mjml", mjml("<mj-text>Hello</mj-text>"))
    out = render(renderer)
    unsubscribe = Links(BASE, signer).unsubscribe(REF)
    pixel = Links(BASE, signer).open(REF)
    body_end = out.html.index("</body>")
    footer = out.html[out.html.index(POSTAL) : body_end]
    assert f'href="{unsubscribe}"' in footer and "Unsubscribe" in footer
    assert out.html[:body_end].endswith(
        f'<img src="{pixel}" width="1" height="1" alt="" style="display:block;border:0">'
    )
    assert POSTAL in out.text and unsubscribe in out.text
    assert out.unsubscribe_url == unsubscribe  # the List-Unsubscribe header's, the same link
    assert verified(signer, unsubscribe).kind == "unsubscribe"
    assert verified(signer, pixel).kind == "open"


@pytest.mark.parametrize(
    ("locale", "label"),
    [
        ("en", "Unsubscribe"),
        ("id", "Berhenti berlangganan"),
        ("ar", "إلغاء الاشتراك"),
        ("xx", "Unsubscribe"),
    ],
)
def test_footer_speaks_the_contacts_language(
    templates: Path, renderer: Renderer, locale: str, label: str
) -> None:
    write(templates, "ask.mjml", mjml("<mj-text>Hello</mj-text>"))
    out = render(renderer, locale=locale)
    assert label in out.html and label in out.text


def test_http_links_go_through_the_click_tracker(
    templates: Path, renderer: Renderer, signer: Signer
) -> None:
    body = (
        '<mj-text><a href="https://example.com/offer?a=1&amp;b=2">Offer</a> '
        '<a href="mailto:help@example.com">Mail</a> <a href="tel:+155512345">Call</a> '
        '<a href="#top">Top</a> <a href="{{ links.referral }}">Your page</a></mj-text>'
        '<mj-button href="https://example.com/start?utm_source=email&amp;x=1">Start</mj-button>'
    )
    write(templates, "ask.mjml", mjml(body))
    out = render(renderer)
    found = hrefs(out.html)
    clicks = [verified(signer, h) for h in found if h.startswith(f"{BASE}/c/")]
    assert {t.url for t in clicks} == {
        "https://example.com/offer?a=1&b=2",
        "https://example.com/start?utm_source=email&x=1",
    }
    assert all(t.kind == "click" and t.ref == REF for t in clicks)
    assert {"mailto:help@example.com", "tel:+155512345", "#top", f"{BASE}/r/ANA42"} <= set(found)
    assert "https://example.com" not in out.html.replace("cdn.example.com", "")
    # the text part: links become "text (url)" with the same tracking
    assert f"Your page ({BASE}/r/ANA42)" in out.text
    text_clicks = re.findall(rf"{re.escape(BASE)}/c/[\w-]+", out.text)
    assert {verified(signer, u).url for u in text_clicks} == {t.url for t in clicks}


def test_links_built_per_recipient_are_tracked(
    templates: Path, renderer: Renderer, signer: Signer
) -> None:
    body = (
        '<mj-text><a href="{{ contact.site }}">Site</a> '
        '<a href="https://example.com/u/{{ contact.first_name }}?x=1&amp;y=2">Mine</a> '
        '<a href="{{ links.testimonial }}">Ours</a> '
        '<a href="mailto:{{ contact.email }}?subject=Hi">Mail</a></mj-text>'
        '<mj-button href="{{ contact.site }}">Again</mj-button>'
    )
    write(templates, "ask.mjml", mjml(body))
    site = 'https://example.com/a?b=1&c="2"'
    out = render(renderer, site=site, first_name="A&B")
    found = hrefs(out.html)
    tracked = [h for h in found if h.startswith(f"{BASE}/c/")]
    clicks = [verified(signer, h) for h in tracked]
    assert [t.url for t in clicks] == [site, "https://example.com/u/A&B?x=1&y=2", site]
    assert tracked[0] == tracked[2]  # one token per destination
    assert any(h.startswith(f"{BASE}/f/testimonial/") for h in found)
    assert "mailto:ana@example.com?subject=Hi" in found
    assert '"2"' not in out.html  # data stays escaped inside the attribute


def test_the_same_link_has_one_token_in_html_and_text(
    templates: Path, renderer: Renderer, signer: Signer
) -> None:
    body = (
        '<mj-text><a href="https://example.com/a?b=1&amp;c=2">Go</a> '
        '<a href="https://example.com/it&#39;s?q=&#123;&#123;x}}&quot;">Odd</a></mj-text>'
    )
    write(templates, "ask.mjml", mjml(body))
    out = render(renderer)
    tracked = [h for h in hrefs(out.html) if h.startswith(f"{BASE}/c/")]
    assert [verified(signer, h).url for h in tracked] == [
        "https://example.com/a?b=1&c=2",
        "https://example.com/it's?q={{x}}\"",
    ]
    assert f"Go ({tracked[0]})" in out.text


def test_an_href_with_jinja_statements_is_tracked(
    templates: Path, renderer: Renderer, signer: Signer
) -> None:
    body = (
        '<mj-text><a href="https://example.com/{% if contact.vip is defined %}vip'
        '{% else %}all{% endif %}">Go</a></mj-text>'
    )
    write(templates, "ask.mjml", mjml(body))
    for out, path in ((render(renderer, vip=True), "vip"), (render(renderer), "all")):
        (tracked,) = [h for h in hrefs(out.html) if h.startswith(f"{BASE}/c/")]
        assert verified(signer, tracked).url == f"https://example.com/{path}"


def test_links_in_data_made_markup_are_tracked_too(
    templates: Path, renderer: Renderer, signer: Signer
) -> None:
    # |safe (and the like) can write links no compile-time analysis sees: the output is scanned.
    write(templates, "ask.mjml", mjml("<mj-text>{{ contact.bio | safe }}</mj-text>"))
    out = render(renderer, bio='<a href="https://example.com/bio">Bio</a>')
    (tracked,) = [h for h in hrefs(out.html) if h.startswith(f"{BASE}/c/")]
    assert verified(signer, tracked).url == "https://example.com/bio"
    write(
        templates,
        "upper.mjml",
        mjml(
            '<mj-text>{% filter upper %}<a href="https://example.com/x">x</a>'
            "{% endfilter %}</mj-text>"
        ),
    )
    assert f"{BASE}/c/" not in render(renderer, "upper.mjml").html  # as before: HTTPS://


def test_bare_urls_in_the_text_twin_are_tracked(
    templates: Path, renderer: Renderer, signer: Signer
) -> None:
    write(templates, "ask.mjml", mjml("<mj-text>HTML part</mj-text>"))
    write(
        templates, "ask.txt", "Read https://example.com/guide?x=1&y=2. Ours: {{ links.referral }}\n"
    )
    out = render(renderer)
    assert out.text.startswith("Read https://t.example.com/c/")
    url = re.search(rf"{re.escape(BASE)}/c/[\w-]+", out.text)
    assert (
        url is not None and verified(signer, url.group()).url == "https://example.com/guide?x=1&y=2"
    )
    assert f"{url.group()}. Ours: {BASE}/r/ANA42" in out.text


def test_template_links_are_signed_for_this_message(
    templates: Path, renderer: Renderer, signer: Signer
) -> None:
    body = (
        '<mj-button href="{{ links.intro_form }}">Intro</mj-button>'
        '<mj-button href="{{ links.testimonial }}">Testimonial</mj-button>'
        '<mj-button href="{{ links.partner_form }}">Partner</mj-button>'
        '<mj-button href="{{ links.nps(9) }}">9</mj-button>'
        '<mj-text>{% for s in range(2) %}<a href="{{ links.nps(s) }}">{{ s }}</a>{% endfor %}'
        '<a href="{{ links.unsubscribe }}">Stop</a></mj-text>'
    )
    write(templates, "ask.mjml", mjml(body))
    found = [h for h in hrefs(render(renderer).html) if h.startswith(BASE)]
    tokens = [verified(signer, h) for h in found]
    assert [t.kind for t in tokens[:4]] == ["form.intro", "form.testimonial", "form.partner", "nps"]
    assert [t.value for t in tokens if t.kind == "nps"] == [9, 0, 1]
    assert all(t.ref == REF for t in tokens)
    assert found[0].startswith(f"{BASE}/f/intro/")


def test_sender_is_in_the_context(templates: Path, renderer: Renderer) -> None:
    write(
        templates,
        "ask.mjml",
        mjml("<mj-text>{{ sender.from_name }} / {{ sender.postal_address }}</mj-text>"),
    )
    assert f"Acme Team / {POSTAL}" in render(renderer).text


def test_an_href_from_links_is_tracked_unless_the_template_assigns_links(
    templates: Path, renderer: Renderer, signer: Signer
) -> None:
    # {{ links.x }} is ours or a mailto: link, written as it is; a template's own "links" may
    # hold anything, so its links are tracked as any value built per recipient.
    write(
        templates,
        "ask.mjml",
        mjml(
            '<mj-raw>{% set links = {"home": "https://example.com/home"} %}</mj-raw>'
            '<mj-text><a href="{{ links.home }}">Home</a></mj-text>'
        ),
    )
    (tracked,) = [h for h in hrefs(render(renderer).html) if h.startswith(f"{BASE}/c/")]
    assert verified(signer, tracked).url == "https://example.com/home"


def test_sender_values_are_written_in_once_and_escaped_in_html_only(
    templates: Path, signer: Signer
) -> None:
    sender = SenderSettings(from_name='Ann & Co <"A">', reply_to="ann@example.com")
    renderer = Renderer(templates, links=Links(BASE, signer), sender=sender, reload_interval=0)
    body = (
        "<mj-raw>{% set intro = 'Meet ' ~ sender.from_name %}</mj-raw>"
        "<mj-text>{{ sender.from_name }} / {{ intro }} / {{ sender.reply_to | upper }}</mj-text>"
    )
    write(templates, "ask.mjml", mjml(body))
    write(templates, "ask.txt", "{{ sender.from_name }} / {{ sender.postal_address }}\n")
    out = render(renderer)
    name = "Ann &amp; Co &lt;&#34;A&#34;&gt;"
    assert f"{name} / Meet {name} / ANN@EXAMPLE.COM" in out.html
    assert out.text.startswith(f'Ann & Co <"A"> / {sender.postal_address}\n')
    # a template's own "sender" is its own
    write(
        templates,
        "own.mjml",
        mjml(
            "<mj-raw>{% set sender = {'from_name': 'Bo'} %}</mj-raw>"
            "<mj-text>From {{ sender.from_name }}</mj-text>"
        ),
    )
    assert "From Bo" in render(renderer, "own.mjml").text
    write(templates, "names.txt", '{% set from_name = "Imported Co" %}')
    write(templates, "own.txt", '{% import "names.txt" as sender %}From {{ sender.from_name }}\n')
    assert render(renderer, "own.mjml").text.startswith("From Imported Co\n")


# --- ready-made emails: links.mailto ---------------------------------------------------------


def mailto_fields(href: str) -> dict[str, str]:
    """The fields of a mailto: link as a mail app reads them (percent-decoded UTF-8)."""
    parts = urllib.parse.urlsplit(href)
    assert parts.scheme == "mailto" and parts.path == "" and parts.fragment == ""
    fields = urllib.parse.parse_qs(parts.query, keep_blank_values=True, errors="strict")
    assert all(len(values) == 1 for values in fields.values()), fields  # no field added
    return {name: values[0] for name, values in fields.items()}


INTRO = (
    '<mj-button href="{{ links.mailto(cc=sender.reply_to, subject="Meet " ~ sender.from_name, '
    'body=["Hi,", "", "Meet us: " ~ links.referral, contact.first_name]) }}">Send</mj-button>'
)


def test_mailto_opens_a_ready_made_email(templates: Path, renderer: Renderer) -> None:
    write(templates, "ask.mjml", mjml(INTRO))
    out = render(renderer)
    (href,) = [h for h in hrefs(out.html) if h.startswith("mailto:")]  # never click-tracked
    assert href.startswith("mailto:?cc=team%40example.com&subject=Meet%20Acme%20Team&body=Hi%2C")
    assert mailto_fields(href) == {
        "cc": SENDER.reply_to,
        "subject": "Meet Acme Team",
        "body": f"Hi,\r\n\r\nMeet us: {BASE}/r/ANA42\r\nAna",
    }
    assert "&amp;subject=" in out.html  # the link is escaped in the attribute


HOSTILE_NAMES = [
    '"><script>alert(1)</script>',
    "Ana&bcc=evil@example.com&body=x",
    "Ana\r\nBcc: evil@example.com",
    "Ana?cc=evil@example.com#frag",
    "Ana%0D%0ABcc:%20x 50%",
    "أنا ☃ 𝔸",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_contact_data_cannot_leave_a_mailto_link(
    templates: Path, renderer: Renderer, name: str
) -> None:
    write(templates, "ask.mjml", mjml(INTRO))
    out = render(renderer, first_name=name)
    assert "<script>" not in out.html
    (href,) = [h for h in hrefs(out.html) if h.startswith("mailto:")]
    fields = mailto_fields(href)
    assert set(fields) == {"cc", "subject", "body"}
    assert fields["body"].endswith(f"\r\n{name}")


@given(
    subject=st.text(st.characters(codec="utf-8")),
    lines=st.lists(st.text(st.characters(codec="utf-8")), max_size=4),
)
def test_mailto_fields_are_percent_encoded_whatever_they_hold(
    subject: str, lines: list[str]
) -> None:
    links = TemplateLinks(Links(BASE, Signer("test-secret")), REF, "ANA42")
    href = links.mailto(cc="team@acme.example", subject=subject, body=lines)
    assert href.isascii() and not set(href) & set(" \"'<>\r\n#\\")
    expected = {"cc": "team@acme.example"}
    if subject:
        expected["subject"] = subject
    if lines:
        expected["body"] = "\r\n".join(lines)
    assert mailto_fields(href) == expected
    # a text body's own line breaks become CRLF, as RFC 6068 asks
    assert links.mailto(body="a\nb\r\nc") == "mailto:?body=a%0D%0Ab%0D%0Ac"
    assert links.mailto() == "mailto:"


def test_mailto_keeps_the_sandbox_rules(templates: Path, make: Callable[..., Renderer]) -> None:
    write(templates, "ask.mjml", mjml("<mj-text>{{ links.mailto(body=[contact.nick]) }}</mj-text>"))
    with pytest.raises(TemplateError, match="'nick' is undefined"):
        render(make())
    write(
        templates,
        "big.mjml",
        mjml("<mj-text>{{ links.mailto(body=['x' * 1000000, 'y' * 1000000]) }}</mj-text>"),
    )
    with pytest.raises(RenderTimeout, match="over the render budget"):
        render(make(), "big.mjml")


def test_html_lines_fit_smtp_so_an_english_email_goes_out_as_it_is(
    templates: Path, renderer: Renderer
) -> None:
    # The compiled HTML is broken into lines where a break renders as nothing, with values
    # written per recipient (here a whole ready-made email) on lines of their own.
    intro = "I recommend Acme: they answer quickly and do what they say. " * 8
    body = (
        ("<mj-text>" + "Fixed text. " * 50 + "</mj-text>") * 4
        + INTRO.replace('"Hi,", ""', f'"Hi,", "", "{intro}"')
        + "<mj-text>Hi {{ contact.first_name }}</mj-text>" * 20
    )
    write(templates, "ask.mjml", mjml(body))
    out = render(renderer, first_name="Ana Maria " * 10)
    assert max(len(line.encode()) for line in out.html.split("\n")) <= 998
    message = email.message_from_bytes(
        build_message(
            OutgoingEmail(
                message_id="<a@example.com>",
                from_name="Acme",
                from_email="team@example.com",
                reply_to="",
                to_name="Ana",
                to_email="ana@example.com",
                subject=out.subject,
                html=out.html,
                text=out.text,
                date=datetime(2026, 3, 2, 10, 0, tzinfo=UTC),
                list_unsubscribe_url=f"{BASE}/u/x",
            )
        ),
        policy=email.policy.default,
    )
    html_part = message.get_body(("html",))
    assert html_part is not None and html_part["Content-Transfer-Encoding"] == "7bit"
    assert html_part.get_content().replace("\r\n", "\n") == out.html


# --- the text part ----------------------------------------------------------------------------


def test_text_is_derived_from_the_html_when_there_is_no_twin(
    templates: Path, renderer: Renderer
) -> None:
    body = (
        "<mj-text><p>Hi {{ contact.first_name }},</p><p>Line one<br>line two</p></mj-text>"
        '<mj-button href="{{ links.referral }}">Share your page</mj-button>'
    )
    write(templates, "ask.mjml", mjml(body, head="<mj-style>.x { color: red; }</mj-style>"))
    text = render(renderer).text
    assert text.startswith(f"Hi Ana,\n\nLine one\nline two\n\nShare your page ({BASE}/r/ANA42)")
    assert "color" not in text and "<" not in text


def test_the_txt_twin_is_used_when_present(templates: Path, renderer: Renderer) -> None:
    write(templates, "ask.mjml", mjml("<mj-text>HTML only</mj-text>"))
    write(templates, "ask.ar.mjml", mjml("<mj-text>HTML ar</mj-text>"))
    write(templates, "ask.txt", "Plain {{ contact.first_name }}\n")
    write(templates, "ask.ar.txt", "نص {{ contact.first_name }}\n")
    assert render(renderer).text.startswith("Plain Ana\n")
    assert render(renderer, locale="ar").text.startswith("نص Ana\n")
    assert "HTML only" in render(renderer).html


# --- Jinja structure inside MJML --------------------------------------------------------------


def test_derived_text_keeps_the_if_around_sections_in_a_wrapper(
    templates: Path, renderer: Renderer
) -> None:
    # MJML puts an mj-raw between the sections of an mj-wrapper inside Outlook conditional
    # comments: the text part must keep the guard all the same.
    source = """<mjml><mj-body><mj-wrapper>
  <mj-section><mj-column><mj-text>Before</mj-text></mj-column></mj-section>
  <mj-raw>{% if reward %}</mj-raw>
  <mj-section><mj-column><mj-text>Gift: {{ reward.description }}</mj-text></mj-column></mj-section>
  <mj-raw>{% endif %}</mj-raw>
  <mj-section><mj-column><mj-text>After</mj-text></mj-column></mj-section>
</mj-wrapper></mj-body></mjml>
"""
    write(templates, "ask.mjml", source)
    assert renderer.check("ask.mjml") == []
    ctx = context()
    without = renderer.render("ask.mjml", "x", {**ctx, "reward": None}, locale="en", ref=REF)
    assert "Gift" not in without.html and "Gift" not in without.text
    assert without.text.startswith("Before\n\nAfter")
    gift = {**ctx, "reward": {"description": "a mug"}}
    out = renderer.render("ask.mjml", "x", gift, locale="en", ref=REF)
    assert "Gift: a mug" in out.html and out.text.startswith("Before\n\nGift: a mug\n\nAfter")


def test_derived_text_keeps_block_tags_from_hidden_content_and_attributes(
    templates: Path, renderer: Renderer
) -> None:
    body = (
        "<mj-text>{% set who = contact.first_name %}"
        '<span style="display:none">{% set who = who ~ "!" %}</span>'
        '<a href="mailto:help@example.com?subject={% if contact.vip is defined %}VIP'
        '{% endif %}">Write</a> to {{ who }}</mj-text>'
    )
    write(templates, "ask.mjml", mjml(body, head="<mj-preview>{% set who = 'x' %}</mj-preview>"))
    assert renderer.check("ask.mjml") == []
    out = render(renderer)
    assert "Write (help@example.com) to Ana!" in out.text
    assert "to Ana!" in out.html


def test_a_derived_text_that_would_reorder_jinja_asks_for_a_twin(
    templates: Path, renderer: Renderer
) -> None:
    # "label (url)" puts the label before the href: tags in both cannot keep their order.
    body = (
        '<mj-text><a href="https://example.com/{% if contact.vip is defined %}vip{% endif %}">'
        "{% for i in [1] %}Go{% endfor %}</a></mj-text>"
    )
    path = write(templates, "ask.mjml", mjml(body))
    problem = only(renderer.check("ask.mjml"), "write a .txt twin")
    assert problem.path == str(path)
    with pytest.raises(TemplateError, match="txt twin"):
        render(renderer)
    write(templates, "ask.txt", "Go: https://example.com/\n")
    assert render(renderer).text.startswith("Go: https://t.example.com/c/")


def test_if_around_sections_keeps_or_drops_them(templates: Path, renderer: Renderer) -> None:
    source = """<mjml>
<mj-body>
  <mj-section><mj-column><mj-text>Always</mj-text></mj-column></mj-section>
  {% if contact.plan is defined and contact.plan == "pro" %}
  <mj-section><mj-column><mj-text>Pro perk</mj-text></mj-column></mj-section>
  {% else %}
  <mj-section><mj-column><mj-text>Upgrade</mj-text></mj-column></mj-section>
  {% endif %}
  {% for item in ["one", "two"] %}
  <mj-section><mj-column><mj-text>Item {{ item }}</mj-text></mj-column></mj-section>
  {% endfor %}
</mj-body>
</mjml>
"""
    write(templates, "ask.mjml", source)
    assert renderer.check("ask.mjml") == []
    pro = render(renderer, plan="pro")
    free = render(renderer, plan="free")
    assert "Pro perk" in pro.html and "Upgrade" not in pro.html
    assert "Upgrade" in free.html and "Pro perk" not in free.html
    for out in (pro, free):
        assert "Item one" in out.html and "Item two" in out.html
        assert out.html.count("<table") == out.html.count("</table>")
    assert pro.text.startswith("Always\n\nPro perk\n\nItem one\n\nItem two")


def test_extends_and_include_within_the_templates_folder(
    templates: Path, renderer: Renderer
) -> None:
    write(
        templates,
        "_layout.mjml",
        "<mjml><mj-body>{% block content %}{% endblock %}"
        '{% include "_partials/sign-off.mjml" %}</mj-body></mjml>',
    )
    write(
        templates,
        "_partials/sign-off.mjml",
        "<mj-section><mj-column><mj-text>Cheers, {{ sender.from_name }}</mj-text></mj-column>"
        "</mj-section>",
    )
    write(
        templates,
        "ask.mjml",
        '{% extends "_layout.mjml" %}{% block content %}<mj-section><mj-column>'
        "<mj-text>Hi {{ contact.first_name }}</mj-text></mj-column></mj-section>{% endblock %}",
    )
    text = render(renderer).text
    assert text.startswith("Hi Ana\n\nCheers, Acme Team")
    write(templates, "escape.mjml", mjml('<mj-text>{% include "../secret.mjml" %}</mj-text>'))
    write(templates.parent, "secret.mjml", "top secret")
    with pytest.raises(TemplateError, match="not found"):
        render(renderer, "escape.mjml")


# --- validation -------------------------------------------------------------------------------


def only(problems: list[TemplateProblem], needle: str) -> TemplateProblem:
    matching = [p for p in problems if needle in p.message]
    assert len(matching) == 1, problems
    return matching[0]


def test_check_reports_jinja_in_a_layout_attribute(templates: Path, renderer: Renderer) -> None:
    source = mjml('<mj-image src="https://cdn.example.com/a.png" width="{{ contact.w }}" />')
    path = write(templates, "ask.mjml", source)
    problem = only(renderer.check("ask.mjml"), "layout attribute width")
    assert (problem.path, problem.line) == (str(path), 6)
    assert str(problem).startswith(f"{path}:6:{source.splitlines()[5].index('{{') + 1}: ")


def test_check_reports_a_syntax_error_on_its_line(templates: Path, renderer: Renderer) -> None:
    path = write(
        templates,
        "ask.mjml",
        mjml("<mj-text>ok</mj-text>\n<mj-text>{{ contact.first_name }</mj-text>"),
    )
    problem = only(renderer.check("ask.mjml"), "syntax")
    assert (problem.path, problem.line) == (str(path), 7)
    with pytest.raises(TemplateError, match=r"ask\.mjml:7:"):
        render(renderer)


def test_check_reports_a_missing_template(renderer: Renderer, templates: Path) -> None:
    (problem,) = renderer.check("nope.mjml")
    assert problem.path == str(templates / "nope.mjml") and "not found" in problem.message


def test_check_covers_every_locale_variant(templates: Path, renderer: Renderer) -> None:
    write(templates, "ask.mjml", mjml("<mj-text>fine</mj-text>"))
    bad = write(templates, "ask.ar.mjml", mjml("<mj-text>{% if x %}</mj-text>"))
    problems = renderer.check("ask.mjml")
    assert [p.path for p in problems] == [str(bad)]


def test_check_reports_mjml_mistakes_where_they_are(templates: Path, renderer: Renderer) -> None:
    path = write(templates, "ask.mjml", mjml("<mj-text>open</mj-text>\n<mj-colum>x</mj-colum>"))
    assert only(renderer.check("ask.mjml"), "unknown MJML element").line == 7
    write(templates, "open.mjml", mjml("<mj-text>never closed"))
    problem = only(renderer.check("open.mjml"), "not closed")
    assert problem.line == 6 and "<mj-text>" in problem.message
    assert path.exists()


def test_check_reports_unknown_variables(templates: Path, renderer: Renderer) -> None:
    write(templates, "ask.mjml", mjml("<mj-text>\n{{ contct.first_name }}</mj-text>"))
    assert only(renderer.check("ask.mjml"), "unknown variable 'contct'").line == 7


def test_a_clean_template_has_no_problems(templates: Path, renderer: Renderer) -> None:
    body = (
        '<mj-image src="https://cdn.example.com/logo.png" alt="{{ sender.from_name }}" />'
        "<mj-text>{% if contact.company is defined %}{{ contact.company }}{% endif %}</mj-text>"
        '<mj-button href="{{ links.nps(10) }}">10</mj-button>'
    )
    write(templates, "ask.mjml", mjml(body))
    assert renderer.check("ask.mjml") == []


def test_check_subject(renderer: Renderer) -> None:
    assert renderer.check_subject("{{ contact.first_name }}, who could we help?") is None
    assert "syntax" in (renderer.check_subject("{{ contact.first_name }, hi") or "")


def test_subjects_are_single_lines(templates: Path, renderer: Renderer) -> None:
    write(templates, "ask.mjml", mjml("<mj-text>x</mj-text>"))
    out = render(renderer, subject="Hi\r\n{{ contact.first_name }}\nBcc: x@example.com")
    assert out.subject == "Hi Ana Bcc: x@example.com"


# --- the shipped templates --------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p for p in (ROOT / "templates").glob("*.mjml") if not p.name.startswith("_"))
FULL_CONTACT = {
    "first_name": "Ana",
    "last_name": "Lima",
    "email": "ana@example.com",
    "company": "Lima & Co",
    "locale": "en",
    "timezone": "Europe/Lisbon",
    "kind": "customer",
    "nps_score": 10,
    "referral_code": "ANA42",
    "plan": "pro",
}
FRIEND = {"friend_name": "Mia", "friend_email": "mia@example.com", "status": "converted"}
GIFT = "a 50 EUR voucher"


def shipped_steps() -> dict[str, list[tuple[Sequence, SendStep]]]:
    """The shipped send steps by template file name."""
    loaded = load_sequences(ROOT / "sequences")
    assert loaded.errors == []
    steps: dict[str, list[tuple[Sequence, SendStep]]] = {}
    for sequence in loaded.sequences.values():
        for step in sequence.send_steps():
            steps.setdefault(step.template, []).append((sequence, step))
    return steps


@pytest.fixture(scope="module")
def shipped() -> Renderer:
    links = Links(BASE, Signer("test-secret"))
    return Renderer(ROOT / "templates", links=links, sender=SENDER)


@pytest.mark.parametrize("minimal", [False, True], ids=["full", "minimal"])
@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_template_renders(shipped: Renderer, path: Path, minimal: bool) -> None:
    base, _, variant = path.name.removesuffix(".mjml").partition(".")
    template, locale = f"{base}.mjml", variant or "en"
    assert shipped.resolve(template, locale) == path
    uses: list[tuple[Sequence | None, SendStep | None]] = list(shipped_steps().get(template, []))
    if not uses:  # in no sequence: no subject
        uses.append((None, None))
    for sequence, step in uses:
        # What sender.py gives: a referral only for sequences started by a referral event.
        trigger = sequence.trigger if sequence is not None else None
        by_referral = trigger is not None and trigger.event.startswith("referral.")
        # An NPS answer started it: the contact has a score.
        answered = (
            {"nps_score": 9} if trigger is not None and trigger.event == "nps.answered" else {}
        )
        subject = step.subject_for(locale) if step is not None else ""
        if minimal:
            ctx: dict[str, Any] = {
                "contact": {"email": "ana@example.com", "referral_code": "ANA42", **answered},
                "referral": {"friend_name": "Mia"} if by_referral else None,
                "reward": None,
            }
        else:
            ctx = {
                "contact": {**FULL_CONTACT, "locale": locale},
                "referral": FRIEND if by_referral else None,
                "reward": {"description": GIFT},
            }
        ctx |= {
            "sequence": sequence.id if sequence else "none",
            "step": step.id if step else "none",
        }
        if minimal and "{{ contact.first_name }}" in subject:
            # Intended: no first name, no "<name>, who ..." subject (render_failed).
            assert sequence is not None and sequence.id == "referral-ask"
            with pytest.raises(TemplateError, match=r"\(subject\): 'first_name' is undefined"):
                shipped.render(template, subject, ctx, locale=locale, ref=REF)
            subject = ""
        out = shipped.render(template, subject, ctx, locale=locale, ref=REF)
        for part in (out.html, out.text):
            # no Jinja left, nor a compile-time placeholder ("jjph<nonce>x<n>x")
            assert "{{" not in part and "{%" not in part and "jjph" not in part
            assert "/u/" in part  # the footer's unsubscribe link
        assert out.html.rstrip().endswith("</html>") and len(out.text) > 200
        source = path.read_text(encoding="utf-8")
        gift_shown = not minimal and "reward.description" in source
        assert (GIFT in out.html, GIFT in out.text) == (gift_shown, gift_shown)
        if "referral.friend_name" in source:
            assert "Mia" in out.html and "Mia" in out.text


@pytest.mark.parametrize("locale", ["en", "id", "ar"])
def test_referral_ask_sends_the_introduction_it_shows(shipped: Renderer, locale: str) -> None:
    # The "Send this introduction" link carries what the quoted box shows (the text part
    # quotes the same lines), whatever the contact's name holds.
    for name in ["Ana", *HOSTILE_NAMES]:
        ctx = {"contact": {**FULL_CONTACT, "first_name": name}, "referral": None, "reward": None}
        out = shipped.render("referral-ask.mjml", "", ctx, locale=locale, ref=REF)
        assert "<script>" not in out.html
        (href,) = [h for h in hrefs(out.html) if h.startswith("mailto:")]
        fields = mailto_fields(href)
        assert fields["cc"] == SENDER.reply_to
        assert fields["body"].endswith(f"\r\n{name}") and f"{BASE}/r/ANA42" in fields["body"]
        if name == "Ana":
            quoted = [line[1:].lstrip(" ") for line in out.text.splitlines() if line[:1] == ">"]
            assert quoted[0].endswith(fields["subject"])
            assert quoted[2:] == fields["body"].split("\r\n")


@pytest.mark.parametrize("advocate", [False, True])
def test_referral_ask_text_keeps_its_paragraphs(shipped: Renderer, advocate: bool) -> None:
    contact = {**FULL_CONTACT, **({"advocate": True} if advocate else {})}
    ctx = {"contact": contact, "referral": None, "reward": None}
    text = shipped.render("referral-ask.mjml", "", ctx, locale="en", ref=REF).text
    assert "\n\nSo here is a specific question" in text


# -- what the sandbox refuses, found by validate ------------------------------------------------


def test_check_refuses_what_the_sandbox_would_refuse_with_line_and_column(
    templates: Path, renderer: Renderer
) -> None:
    write(
        templates,
        "walk.mjml",
        mjml(
            "Hi {{ contact.first_name }} {{ ''.__class__.__mro__ }}\n"
            "{{ contact.tags.append(1) }} {{ '{0.__class__}'.format(contact) }}\n"
            "{{ contact | attr('__dict__') }} {{ range(10 ** 3, 10000000) }}\n"
            "{{ contact['__init__'] }} {{ '%999999999d' | format(1) }} {{ contact._custom }}"
        ),
    )
    found = [(p.line, p.col, p.message) for p in renderer.check("walk.mjml")]
    assert found == [
        (6, 35, "unsafe attribute '__class__': templates cannot reach it"),
        (6, 45, "unsafe attribute '__mro__': templates cannot reach it"),
        (7, 17, "unsafe call .append(): templates cannot change values"),
        (7, 49, "the format field {0.__class__} reaches into a private attribute"),
        (8, 20, "unsafe attribute '__dict__': templates cannot reach it"),
        (9, 13, "unsafe attribute '__init__': templates cannot reach it"),
        (9, 46, "a format width over the render budget"),
    ], found  # contact's own fields are data, even "_custom"; range's bound is not constant
    path = str(templates / "walk.mjml")
    assert all(str(p).startswith(f"{path}:") for p in renderer.check("walk.mjml"))


def test_check_subject_refuses_an_attribute_walk(renderer: Renderer) -> None:
    message = renderer.check_subject("Hi {{ contact.first_name.__class__.__base__ }}")
    assert message == "unsafe attribute '__class__': templates cannot reach it"  # the first
    assert renderer.check_subject("Hi {{ range(99999999) | length }}") == (
        "range() of 99999999 items is over the render budget"
    )
    assert renderer.check_subject("Hi {{ contact.first_name }}") is None
