"""The phrase data the classifier reads (``phrases.toml``), loaded once into compiled matchers.

Every language's lists are merged: a reply's language is not known beforehand (an Indonesian
customer may answer in English), so all phrases are looked for and the match names its language.
"""

from __future__ import annotations

import re
import tomllib
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from engine.base.errors import SettingsError

SHIPPED = Path(__file__).with_name("phrases.toml")
LISTS = (
    "not_interested",
    "alone",
    "auto_reply_subjects",
    "bounce_subjects",
    "return_cues",
    "introduction_cues",
)
PATTERNS = ("quote_markers", "signature_markers")
NAMES = ("months", "weekdays")

# Arabic short vowels, shadda, sukun, superscript alef and Quranic marks; tatweel (U+0640).
_ARABIC_MARKS = re.compile("[\u0610-\u061a\u064b-\u065f\u0670\u06d6-\u06ed\u0640]")
_FOLD = str.maketrans(
    {
        "أ": "ا",
        "إ": "ا",
        "آ": "ا",
        "ٱ": "ا",
        "ى": "ي",
        "ة": "ه",
        "،": ",",
        "؛": ";",
        "’": "'",
        "‘": "'",
        # Arabic-Indic and Eastern Arabic-Indic (Persian, Urdu) digits: NFKC keeps them.
        **{chr(0x660 + d): str(d) for d in range(10)},
        **{chr(0x6F0 + d): str(d) for d in range(10)},
    }
)
_SPACES = re.compile(r"\s+")
# Arabic proclitics written joined to the next word ("وغير مهتم" = "and not interested").
_ARABIC_PREFIX = "وفبل"


def normalize(text: str) -> str:
    """Text as phrases are compared: NFKC, case-folded, Arabic marks removed and letters
    unified, Arabic-Indic digits as ASCII, runs of whitespace as one space.

    ``normalize("غيرُ  مهتمٍ ١٠")`` -> ``"غير مهتم 10"``.
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    text = _ARABIC_MARKS.sub("", text).translate(_FOLD)
    return _SPACES.sub(" ", text).strip()


@dataclass(frozen=True)
class Match:
    """A phrase found in a text: which one, in which language's list."""

    phrase: str
    language: str


class PhraseList:
    """Whole-word matching of many phrases at once, remembering each phrase's language."""

    def __init__(self, entries: list[tuple[str, str]]) -> None:
        self._language: dict[str, str] = {}
        for language, phrase in entries:
            self._language.setdefault(normalize(phrase), language)
        phrases = sorted(self._language, key=len, reverse=True)  # longest wins at a position
        alternation = "|".join(re.escape(p).replace(r"\ ", r"\s+") for p in phrases) or "(?!)"
        # A phrase is a word sequence: no word character right before (an Arabic proclitic
        # letter is allowed there) or right after it.
        before = rf"(?<![^\W{_ARABIC_PREFIX}])"
        self._regex = re.compile(rf"{before}(?:{alternation})(?!\w)")
        self._overlapping = re.compile(rf"{before}(?=({alternation})(?!\w))")

    def search(self, normalized: str) -> Match | None:
        """The first phrase in ``normalized`` (text already passed through ``normalize``)."""
        found = self._regex.search(normalized)
        if found is None:
            return None
        phrase = _SPACES.sub(" ", found[0])
        return Match(phrase, self._language.get(phrase, ""))

    def ends(self, normalized: str) -> list[int]:
        """Where each occurrence ends, overlapping ones included ("let me introduce" and
        "introduce you to" both end inside "let me introduce you to")."""
        return [m.start() + len(m[1]) for m in self._overlapping.finditer(normalized)]

    def exactly(self, normalized: str) -> Match | None:
        """``normalized`` is one of the phrases and nothing else."""
        language = self._language.get(normalized)
        return None if language is None else Match(normalized, language)


@dataclass(frozen=True)
class Phrases:
    """Compiled phrase data of every language in one file."""

    not_interested: PhraseList
    alone: PhraseList
    auto_reply_subjects: PhraseList
    bounce_subjects: PhraseList
    return_cues: PhraseList
    introduction_cues: PhraseList
    quote_markers: tuple[re.Pattern[str], ...]
    signature_markers: tuple[re.Pattern[str], ...]
    months: dict[str, int]  # normalized name -> 1..12
    weekdays: dict[str, int]  # normalized name -> 0 (Monday) .. 6
    languages: tuple[str, ...]


def load_phrases(path: Path | None = None) -> Phrases:
    """Read and compile a phrases file (the shipped one when ``path`` is None); cached.

    Raises SettingsError naming ``imap.phrases`` when the file is missing or malformed.
    """
    return _load(path or SHIPPED)


@lru_cache(maxsize=4)
def _load(path: Path) -> Phrases:
    key = "imap.phrases"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(key, f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(key, f"{path} is not valid TOML: {exc}") from None
    lists: dict[str, list[tuple[str, str]]] = {name: [] for name in LISTS}
    patterns: dict[str, list[re.Pattern[str]]] = {name: [] for name in PATTERNS}
    names: dict[str, dict[str, int]] = {name: {} for name in NAMES}
    for language, table in data.items():
        if not isinstance(table, dict):
            raise SettingsError(key, f"{path}: [{language}] must be a table")
        for name, value in table.items():
            where = f"{path}: {language}.{name}"
            if name in LISTS or name in PATTERNS:
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise SettingsError(key, f"{where} must be a list of strings")
                if name in LISTS:
                    lists[name] += [(language, v) for v in value if v.strip()]
                    continue
                for text in value:
                    try:
                        patterns[name].append(re.compile(text, re.IGNORECASE))
                    except re.error as exc:
                        raise SettingsError(key, f"{where}: {text!r}: {exc}") from None
            elif name in NAMES:
                limit = 12 if name == "months" else 6
                low = 1 if name == "months" else 0
                if not isinstance(value, dict) or not all(
                    isinstance(n, int) and low <= n <= limit for n in value.values()
                ):
                    raise SettingsError(key, f"{where} must map names to {low}..{limit}")
                names[name].update({normalize(k): v for k, v in value.items()})
            else:
                raise SettingsError(key, f"{where}: unknown key")
    return Phrases(
        **{name: PhraseList(entries) for name, entries in lists.items()},
        quote_markers=tuple(patterns["quote_markers"]),
        signature_markers=tuple(patterns["signature_markers"]),
        months=names["months"],
        weekdays=names["weekdays"],
        languages=tuple(data),
    )
