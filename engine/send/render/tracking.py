"""Click tracking: every http(s) link of an email, in its HTML and text, goes through the
tracker; one token per destination, shared by both parts.

Templates that cannot write links of their own are tracked by the template itself (the two
filters below, placed at compile time by ``link_slots``); the output of the others is scanned
(``track_html``). Bare URLs in the text part are always scanned (``track_text``).
"""

from __future__ import annotations

import html as htmllib
import re
from contextvars import ContextVar

from markupsafe import escape

from engine.mail.tokens import Links

CLICK_FILTER = "_engine_click"  # {{ "https://..." | _engine_click }}: a static link, tracked
HREF_FILTER = "_engine_href"  # {% filter _engine_href %}: an href computed per recipient
# An http(s) href inside one <a ...> tag (never <link> stylesheets); the URL is group 1 or 2.
_HREF = re.compile(r"""href\s*=\s*(?:"\s*(https?://[^"]*?)\s*"|'\s*(https?://[^']*?)\s*')""")
_SPACES = frozenset(" \t\r\n\f")


_TEXT_URL = re.compile(r"""https?://[^\s<>"'()\[\]{}]+""")
_TRAILING_PUNCT = ".,;:!?"


# What a tracked link starts with.
HTTP = ("http://", "https://")


class Clicks:
    """One email's click tracking: one token per destination, shared by its HTML and text."""

    __slots__ = ("_links", "_ref", "_tracked")

    def __init__(self, links: Links, ref: bytes) -> None:
        self._links = links
        self._ref = ref
        self._tracked: dict[str, str] = {}

    def url(self, destination: str) -> str:
        """The click-tracking URL that redirects to ``destination``."""
        tracked = self._tracked.get(destination)
        if tracked is None:
            tracked = self._tracked[destination] = self._links.click(self._ref, destination)
        return tracked

    def is_ours(self, url: str) -> bool:
        """Is ``url`` one of our tracking URLs (never tracked again)?"""
        return self._links.is_tracking(url)


# The render in progress's clicks (set by Renderer.render around its Jinja calls).
CLICKS: ContextVar[Clicks] = ContextVar("render_clicks")


def click_filter(url: str) -> str:
    """A static link's destination (decoded at compile time) -> this email's tracking URL."""
    return CLICKS.get().url(url)


def href_filter(value: str) -> str:
    """A per-recipient ``<a href>`` value, as rendered (escaped): the tracking URL instead when
    it is an http(s) URL that is not ours. Filter blocks are not escaped again: escape here."""
    core = str(value).strip()
    if not core.startswith(HTTP):
        return value
    url = htmllib.unescape(core) if "&" in core else core
    clicks = CLICKS.get()
    if clicks.is_ours(url):
        return value
    return escape(clicks.url(url))


def track_html(markup: str, links: Links, clicks: Clicks) -> str:
    """Every http(s) ``<a href>`` not already ours goes through the click tracker (the
    output of templates that may write links of their own).

    One pass with str.find from one ``<a`` to the next (much faster than a regex over the
    whole document); templates' ``<A HREF`` are lower-cased at compile time.
    """
    out: list[str] = []
    pos = 0
    find = markup.find
    while (start := find("<a", pos)) >= 0:
        end = find(">", start)
        if end < 0:
            break
        m = _HREF.search(markup, start, end) if markup[start + 2 : start + 3] in _SPACES else None
        while m is not None and markup[m.start() - 1] not in _SPACES:  # data-href= ...
            m = _HREF.search(markup, m.end(), end)
        if m is not None:
            value = m.group(1) if m.group(1) is not None else m.group(2)
            url = htmllib.unescape(value) if "&" in value else value
            if not links.is_tracking(url):
                group = 1 if m.group(1) is not None else 2
                tracked = htmllib.escape(clicks.url(url))
                out += (markup[pos : m.start(group)], tracked)
                pos = m.end(group)
        out.append(markup[pos : end + 1])
        pos = end + 1
    out.append(markup[pos:])
    return "".join(out)


def track_text(text: str, links: Links, clicks: Clicks) -> str:
    """Bare http(s) URLs in the text part go through the click tracker too."""
    ours = links.base_url + "/"
    # Most text parts only hold our own URLs (links.*), which stay as they are: when every
    # "http" starts one of them (C counts, a few times faster than the scan), nothing
    # changes. Our prefix must then be one URL to the scan, with a single "http".
    if (
        text.count("http") == text.count(ours)
        and ours.count("http") == 1
        and _TEXT_URL.fullmatch(ours)
    ):
        return text

    def swap(m: re.Match[str]) -> str:
        before = text[m.start() - 1] if m.start() else " "
        if before.isalnum() or before in "@/_":
            return m.group()
        url = m.group()
        trailing = ""
        while url and url[-1] in _TRAILING_PUNCT:
            url, trailing = url[:-1], url[-1] + trailing
        if links.is_tracking(url):
            return m.group()
        return clicks.url(url) + trailing

    return _TEXT_URL.sub(swap, text)
