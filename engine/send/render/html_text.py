"""The text part: readable plain text from email HTML (compile time).

A template without a ``.txt`` twin gets its text part from its compiled HTML once, as a Jinja
template of its own that keeps every Jinja statement in the HTML's order.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from html.parser import HTMLParser

from engine.send.render.protect import RAW_TAG, Placeholders, Tag

_BLOCK_TAGS = frozenset(
    {"p", "div", "table", "tr", "ul", "ol", "blockquote", "section", "article", "header",
     "footer", "center", "h1", "h2", "h3", "h4", "h5", "h6", "hr"}
)  # fmt: skip
_SKIP_TAGS = frozenset({"head", "style", "script", "title"})
_VOID_TAGS = frozenset(
    {"br", "img", "hr", "meta", "link", "input", "col", "area", "base", "wbr", "source"}
)
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|mso-hide\s*:\s*all", re.I)


class _TextExtractor(HTMLParser):
    """Readable text from email HTML: paragraphs, "- " list items, links as "text (url)".

    Markers matched by ``keep`` survive wherever they sit, in document order: in hidden
    content, comments (MJML puts ``mj-raw`` between sections inside Outlook conditional
    comments) and attributes too.
    """

    def __init__(self, keep: re.Pattern[str] | None = None) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._keep = keep
        self._stack: list[tuple[str, bool]] = []  # (tag, hides its content)
        self._hidden = 0
        self._links: list[tuple[str, int]] = []  # (href, index in parts where its text starts)

    def _kept(self, text: str) -> str:
        if self._keep is None:
            return ""
        return "".join(m.group() for m in self._keep.finditer(text))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag not in _VOID_TAGS:
            hides = tag in _SKIP_TAGS or bool(_HIDDEN_STYLE.search(a.get("style", "")))
            self._stack.append((tag, hides))
            self._hidden += hides
        # Attributes that do not reach the text still hold their markers.
        shown = ""
        if not self._hidden:
            if tag == "a":
                shown = "href"
            elif tag == "img" and self._links and a.get("alt"):
                shown = "alt"
        if self._keep is not None:
            self.parts += [self._kept(v) for k, v in attrs if k != shown and v]
        if self._hidden:
            return
        if tag == "br":
            self.parts.append("\n")
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n\n")
        elif tag == "li":
            self.parts.append("\n- ")
        elif tag in {"td", "th"}:
            self.parts.append(" ")
        elif tag == "a":
            self._links.append((a.get("href", "").strip(), len(self.parts)))
        elif shown:
            self.parts.append(a["alt"])

    def handle_endtag(self, tag: str) -> None:
        if not any(t == tag for t, _ in self._stack):
            return
        while self._stack:
            name, hides = self._stack.pop()
            self._hidden -= hides
            if name == tag:
                break
        if self._hidden:
            return
        if tag in _BLOCK_TAGS:
            self.parts.append("\n\n")
        elif tag == "a" and self._links:
            href, start = self._links.pop()
            label = re.sub(r"\s+", " ", "".join(self.parts[start:])).strip()
            del self.parts[start:]
            link = _link_text(label, href)
            # Markers of an href the text leaves out (mailto: queries, tel:) go before the label,
            # where the href stood.
            if self._keep is not None:
                gone = [m.group() for m in self._keep.finditer(href) if m.group() not in link]
                link = "".join(gone) + link
            self.parts.append(link)

    def handle_data(self, data: str) -> None:
        if self._hidden:
            self.parts.append(self._kept(data))
        else:
            self.parts.append(re.sub(r"\s+", " ", data))

    def handle_comment(self, data: str) -> None:
        self.parts.append(self._kept(data))

    def unknown_decl(self, data: str) -> None:  # <![if !mso]>, <![CDATA[...]]>
        self.parts.append(self._kept(data))

    def text(self) -> str:
        for href, start in reversed(self._links):  # never closed: keep the href's markers
            self.parts.insert(start, self._kept(href))
        lines = [line.strip() for line in "".join(self.parts).split("\n")]
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


def _link_text(label: str, href: str) -> str:
    scheme = href.split(":", 1)[0].lower() if ":" in href else ""
    if scheme == "mailto":
        target = href[7:].split("?", 1)[0]
    elif scheme in {"http", "https"} or (href and not scheme and not href.startswith("#")):
        target = href
    else:  # tel:, #anchors, javascript: ... the label says enough
        return label
    if not label or label == target:
        return target
    return f"{label} ({target})"


def html_to_text(markup: str, keep: re.Pattern[str] | None = None) -> str:
    """Readable plain text for ``markup`` (paragraphs, links as "text (url)", no CSS).

    Whatever ``keep`` matches is kept in place even where the text drops the HTML around it
    (hidden content, comments, attributes); the compile step passes the Jinja block tags.
    """
    parser = _TextExtractor(keep)
    parser.feed(markup)
    parser.close()
    return parser.text()


def derive_text(compiled_html: str, tags: Sequence[Tag], placeholders: Placeholders) -> str | int:
    """The text part (with placeholders) derived from ``compiled_html``, or the index of the
    first Jinja block tag it could not keep in the HTML's order.

    Block tags (if, for, set ...) must survive even where the text drops the HTML around
    them, or the text part would render what the HTML guards (``reward.description``
    under ``{% if reward %}`` with reward None).
    """
    structural = [str(i) for i, t in enumerate(tags) if t.block and not RAW_TAG.match(t.text)]
    if not structural:
        return html_to_text(compiled_html)
    keep = re.compile(placeholders(f"({'|'.join(structural)})"))
    text = html_to_text(compiled_html, keep)
    in_html = [int(m.group(1)) for m in keep.finditer(compiled_html)]
    in_text = [int(m.group(1)) for m in keep.finditer(text)]
    if in_html == in_text:
        return text
    pairs = enumerate(itertools.zip_longest(in_html, in_text))
    first = next(i for i, (h, t) in pairs if h != t)
    return in_html[first] if first < len(in_html) else in_text[first]
