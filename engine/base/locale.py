"""Locales: the one place that reads a language tag, normalises it and knows its direction.

Contacts carry a ``locale`` (``en``, ``pt_BR``, ``ar-EG`` ...); templates have per-language
variants (``referral-ask.ar.mjml``), sequences per-language subjects, and landing pages are
translated. All of them read the tag here, so an email and its landing page always agree on
the language and on the text direction.

Text direction comes from the Unicode CLDR data shipped with Babel (every script written
right to left, not a hand-kept list that drifts).
"""

from __future__ import annotations

import functools
import re

from babel import Locale, UnknownLocaleError

# A BCP 47-ish tag: a 2-3 letter language, then subtags (script, region, variants) separated
# by "-" or "_". Deliberately loose: anything else is "no usable locale", never an error.
TAG = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*")


def normalize(locale: str | None) -> str | None:
    """The canonical form of a tag, or None for nothing usable.

    ``"pt_br"`` -> ``"pt-BR"``; ``"zh_hant_tw"`` -> ``"zh-Hant-TW"``; ``" EN "`` -> ``"en"``;
    ``"??"`` -> None.
    """
    if not locale or not TAG.fullmatch(locale.strip()):
        return None
    first, *rest = locale.strip().replace("_", "-").split("-")
    parts = [first.lower()]
    for part in rest:
        if len(part) == 2 and part.isalpha():
            parts.append(part.upper())  # a region
        elif len(part) == 4 and part.isalpha():
            parts.append(part.title())  # a script
        else:
            parts.append(part)
    return "-".join(parts)


def language(locale: str | None) -> str | None:
    """The language subtag of a locale, lower case: ``"pt_BR"`` -> ``"pt"``; None if unusable."""
    tag = normalize(locale)
    return tag.split("-", 1)[0] if tag else None


def variants(locale: str | None) -> tuple[str, ...]:
    """The tags to try for ``locale``, most specific first, one subtag less each time:
    ``"pt_BR"`` -> ``("pt-BR", "pt")``; ``"zh_hant_tw"`` -> ``("zh-Hant-TW", "zh-Hant", "zh")``;
    ``None`` -> ``()``."""
    tag = normalize(locale)
    if tag is None:
        return ()
    parts = tag.split("-")
    return tuple("-".join(parts[:n]) for n in range(len(parts), 0, -1))


@functools.lru_cache(maxsize=512)
def direction(locale: str | None) -> str:
    """``"rtl"`` for a locale written right to left (Arabic, Hebrew, Persian, Urdu, Pashto,
    Sindhi, Uyghur, Yiddish, Dhivehi ...), else ``"ltr"``; unknown tags are ``"ltr"``."""
    tag = normalize(locale)
    if tag is None:
        return "ltr"
    try:
        found = Locale.parse(tag, sep="-")
    except (UnknownLocaleError, ValueError):
        try:  # a region or script Babel does not know: the language alone decides
            found = Locale.parse(tag.split("-", 1)[0])
        except (UnknownLocaleError, ValueError):
            return "ltr"
    return "rtl" if found.text_direction == "rtl" else "ltr"
