"""The compiled HTML's shape: SMTP-friendly line breaks, ``lang`` / ``dir`` on the root, the
right-to-left mirror and lower-case links (all at compile time)."""

from __future__ import annotations

import re

# An <a> tag, whatever its case.
_LINK_TAG_ANY_CASE = re.compile(r"<(a)(?=[\s>])[^>]*>", re.I)
# Tags between which a line break renders as nothing (table structure, blocks, conditional
# comments). mjml-python writes the body as one line of ~15k characters; broken here, once,
# at compile time, an English email fits SMTP's 998-octet lines and goes out unencoded (7bit,
# engine.mail.mime) instead of paying quoted-printable per recipient. The JavaScript mjml writes
# line breaks at the same places, and columns sit in font-size:0 cells for that reason.
_BREAK_AFTER = re.compile(
    r"(</?(?:table|tbody|thead|tfoot|tr|td|th|div|head|body|html|meta|title|style|link|center)"
    r"\b[^<>]*>|<!\[endif\]-->|<!--\[if [^\]<>]*\]>)(?=<)",
    re.I,
)
# The HTML part uses only as many of those breaks as keep lines of fixed HTML within this many
# characters (each line break costs the MIME builder a CR per email); a stretch with a value
# written per recipient, of a length unknown here (a link, tracked per recipient, is one), is a
# line of its own.
_LINE_BUDGET = 800
# A long tag, or one with a value written per recipient (a mailto: link holding a whole
# ready-made introduction), also gets a line break between its attributes, where HTML allows
# any whitespace.
_START_TAG = re.compile(r"<[a-zA-Z][^<>]*>")
_LONG_TAG_CHARS = 400
_ATTRIBUTE_GAP = re.compile(r'"[ \t]+(?=[\w:-]+=")')


def break_lines(html: str, per_recipient: str, budget: int = _LINE_BUDGET) -> str:
    """``html`` with line breaks where they render as nothing (see _BREAK_AFTER): lines of
    fixed HTML up to ``budget`` characters (0: a break at every place); ``per_recipient`` is
    the placeholders' prefix."""

    def attributes(m: re.Match[str]) -> str:
        tag = m[0]
        if len(tag) < _LONG_TAG_CHARS and per_recipient not in tag:
            return tag
        return _ATTRIBUTE_GAP.sub('"\n', tag)

    html = _START_TAG.sub(attributes, html)
    pieces: list[str] = []
    width = 0  # characters on the line being written
    after_value = False
    pos = 0
    for cut in [*(m.end() for m in _BREAK_AFTER.finditer(html)), len(html)]:
        piece = html[pos:cut]
        value = per_recipient in piece or "<a" in piece
        first_line = piece.find("\n")
        if pieces and (
            value or after_value or width + (len(piece) if first_line < 0 else first_line) > budget
        ):
            pieces.append("\n")
            width = 0
        pieces.append(piece)
        last_break = piece.rfind("\n")
        width = width + len(piece) if last_break < 0 else len(piece) - last_break - 1
        after_value = value
        pos = cut
    return "".join(pieces)


_HREF_ANY_CASE = re.compile(r"(?<![\w-])href(?=\s*=)", re.I)


_HTML_ROOT = re.compile(r"<html\b[^>]*>", re.I)
_EMAIL_DIV = re.compile(r"<div\b[^>]*\baria-roledescription=\"email\"[^>]*>", re.I)
_LANG_ATTR = re.compile(r"""\s(lang|dir)=("[^"]*"|'[^']*')""", re.I)


def set_root_attrs(markup: str, lang: str, direction: str) -> str:
    """``lang`` / ``dir`` on the html element and MJML's wrapper div."""

    def fix(m: re.Match[str]) -> str:
        tag = _LANG_ATTR.sub("", m.group())
        return f'{tag[:-1].rstrip("/").rstrip()} lang="{lang}" dir="{direction}">'

    markup = _HTML_ROOT.sub(fix, markup, count=1)
    return _EMAIL_DIV.sub(fix, markup, count=1)


def _lower_link_tag(m: re.Match[str]) -> str:
    """``<A HREF=...>`` -> ``<a href=...>``, so the per-recipient pass can be case-sensitive."""
    tag = m.group()
    return "<" + m.group(1).lower() + _HREF_ANY_CASE.sub("href", tag[1 + len(m.group(1)) :])


def mirror(markup: str) -> str:
    """The right-to-left version of MJML's output: columns and text start on the right."""
    markup = markup.replace("direction:ltr", "direction:rtl")
    markup = markup.replace("text-align:left", "text-align:right")
    return markup.replace('align="left"', 'align="right"')


def lower_links(markup: str) -> str:
    """Every ``<A HREF=...>`` of ``markup`` as ``<a href=...>``: the per-recipient link scan
    (``tracking.track_html``) is then case-sensitive."""
    return _LINK_TAG_ANY_CASE.sub(_lower_link_tag, markup)
