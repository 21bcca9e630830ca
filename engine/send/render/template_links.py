"""``links`` in templates: one recipient's tracking URLs and ready-made ``mailto:`` links.

Also the ``urlencode`` filter, by table (the mailto: links encode a whole email per recipient).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from jinja2 import UndefinedError

from engine.mail.tokens import Links
from engine.send.render.budget import MAX_OUTPUT_CHARS, capped, too_big
from engine.send.render.jinja_internals import jinja_urlencode

# urlencode as Jinja does it (UTF-8, "/" kept), by table: about twice as fast as urllib's quote.
_URL_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~/")
_URL_QUOTED = [chr(b) if b in _URL_SAFE else f"%{b:02X}" for b in range(256)]


# The same for ASCII text in one str.translate (C), from a table indexed by code point: about
# twice as fast as from a dict, which translate looks up with a new int per character.
_URL_ASCII = tuple(_URL_QUOTED[:128])


def urlencode(value: Any) -> str:
    """The ``urlencode`` filter: ``"a b/é"`` -> ``"a%20b/%C3%A9"`` (as Jinja's, faster)."""
    if type(value) is str:
        if value.isascii():
            return value.translate(_URL_ASCII)
        return "".join(map(_URL_QUOTED.__getitem__, value.encode("utf-8")))
    return jinja_urlencode(value)  # dicts, pairs and other types: Jinja's own rules


# links.mailto encodes a ready-made email (~1 kB) for every recipient, yet most of its lines are
# the same for all of them: each line's encoding is kept (least recently used out), so only the
# lines holding contact data are encoded again. Longer lines are not kept (memory).
_MAILTO_KEPT_LINE = 1_000  # characters


@lru_cache(maxsize=512)
def _urlencode_kept(line: str) -> str:
    return urlencode(line)


def _mailto_value(value: Any) -> str:
    """One value of a mailto: link, percent-encoded (UTF-8, "/" kept)."""
    text = str(value)  # as Jinja's filters do; an undefined value raises
    return _urlencode_kept(text) if len(text) <= _MAILTO_KEPT_LINE else urlencode(text)


def _mailto_body(body: Any) -> str:
    """A mailto: body, percent-encoded: the lines of a list (or of a text) joined with CRLF,
    the line break RFC 6068 asks for. ``["Hi,", "", "Ana"]`` -> ``"Hi%2C%0D%0A%0D%0AAna"``"""
    text = body.replace("\r\n", "\n").split("\n") if isinstance(body, str) else body
    lines = list(map(str, text))  # as Jinja's join does; an undefined value raises
    # Checked before encoding (which only makes it longer), as join() is, and after.
    if sum(map(len, lines)) + len(lines) > MAX_OUTPUT_CHARS:
        raise too_big("a mailto: body")
    if max(map(len, lines), default=0) <= _MAILTO_KEPT_LINE:
        encoded = "%0D%0A".join(map(_urlencode_kept, lines))
    else:
        encoded = "%0D%0A".join(map(_mailto_value, lines))
    return capped(encoded)


class TemplateLinks:
    """``links`` in a template: this recipient's tracking URLs (never click-rewritten).

    Each URL is signed once per recipient, however often the HTML and text parts use it.
    """

    __slots__ = ("_code", "_links", "_memo", "_ref")

    def __init__(self, links: Links, ref: bytes, referral_code: str | None) -> None:
        self._links = links
        self._ref = ref
        self._code = referral_code
        self._memo: dict[str, str] = {}

    def _form(self, name: str) -> str:
        url = self._memo.get(name)
        if url is None:
            url = self._memo[name] = self._links.form(name, self._ref)
        return url

    @property
    def referral(self) -> str:
        """The personal referral page (needs ``contact.referral_code``)."""
        url = self._memo.get("referral")
        if url is None:
            if not self._code:
                raise UndefinedError("'referral_code' is undefined (links.referral needs it)")
            url = self._memo["referral"] = self._links.referral(self._code)
        return url

    @property
    def intro_form(self) -> str:
        """The "introduce one or two people" form."""
        return self._form("intro")

    @property
    def testimonial(self) -> str:
        """The testimonial form."""
        return self._form("testimonial")

    @property
    def partner_form(self) -> str:
        """The partner intake form."""
        return self._form("partner")

    @property
    def unsubscribe(self) -> str:
        """One-click unsubscribe."""
        url = self._memo.get("unsubscribe")
        if url is None:
            url = self._memo["unsubscribe"] = self._links.unsubscribe(self._ref)
        return url

    def nps(self, score: int) -> str:
        """A URL that records NPS ``score`` (0-10)."""
        key = f"nps{score}"
        url = self._memo.get(key)
        if url is None:
            url = self._memo[key] = self._links.nps(self._ref, score)
        return url

    def mailto(self, *, cc: Any = None, subject: Any = None, body: Any = None) -> str:
        """A ``mailto:`` link that opens a ready-made email; the reader adds the recipient.

        Each field is percent-encoded (UTF-8), so no value can add a field or leave the link;
        ``body`` may be a list of lines (joined with CRLF). Empty fields are left out.
        ``mailto(cc="team@acme.example", subject="Meet Acme", body=["Hi,", "", "Ana"])`` ->
        ``"mailto:?cc=team%40acme.example&subject=Meet%20Acme&body=Hi%2C%0D%0A%0D%0AAna"``
        """
        fields = []
        if _given(cc):
            fields.append("cc=" + _mailto_value(cc))
        if _given(subject):
            fields.append("subject=" + _mailto_value(subject))
        if _given(body):
            fields.append("body=" + _mailto_body(body))
        return "mailto:?" + "&".join(fields) if fields else "mailto:"


def _given(value: Any) -> bool:
    """A mailto: field to write: not None, not an empty text or list (an undefined value is
    given: writing it raises)."""
    return value is not None and not (isinstance(value, str | list | tuple) and not value)
