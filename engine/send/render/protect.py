"""Protecting Jinja through the MJML compile: tags out, placeholders in, tags back.

MJML would mangle Jinja (``{% if %}`` between components, quotes in attributes), so every tag
is swapped for a placeholder while MJML runs, and put back in its result. Placeholders carry a
random nonce per renderer, so no template text can pass for one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from jinja2 import BaseLoader, FileSystemLoader
from jinja2.environment import Environment


class Placeholders:
    """``jjph<nonce>x<n>x``: the placeholder of tag ``n``; ``pattern`` finds them (group 1:
    ``n``), ``prefix`` is what each starts with."""

    __slots__ = ("_format", "pattern", "prefix")

    def __init__(self, nonce: str) -> None:
        self.prefix = "jjph" + nonce + "x"
        self._format = self.prefix + "{}x"
        self.pattern = re.compile("jjph" + nonce + r"x(\d+)x")

    def __call__(self, index: int | str) -> str:
        """The placeholder of tag ``index`` (or of a regex group of indexes)."""
        return self._format.format(index)


# One Jinja tag: a whole raw block, an expression, a statement or a comment.
JINJA_TAG = re.compile(
    r"""
    \{%[-+]?\s*raw\s*[-+]?%\}.*?\{%[-+]?\s*endraw\s*[-+]?%\}
  | \{\{(?:[^}'"]|'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|\}(?!\}))*\}\}
  | \{%(?:[^%'"]|'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|%(?!\}))*%\}
  | \{\#.*?\#\}
    """,
    re.S | re.X,
)
RAW_TAG = re.compile(r"\{%[-+]?\s*raw\b")
# Resolved by the compile-time Jinja pass; everything else waits for the recipient.
_STRUCTURAL = re.compile(
    r"\{%[-+]?\s*(?:extends|include|block|endblock)\b|\{\{[-+]?\s*super\(\s*\)\s*[-+]?\}\}\Z"
)


class Tag(NamedTuple):
    """An original Jinja tag behind a placeholder, and where it was written."""

    text: str
    path: str
    line: int
    col: int
    block: bool  # a statement: must come out of MJML exactly once


def line_col(text: str, pos: int) -> tuple[int, int]:
    """The 1-based line and column of ``pos`` in ``text``."""
    return text.count("\n", 0, pos) + 1, pos - text.rfind("\n", 0, pos)


@dataclass
class SourceFile:
    """A template file as read, with the line shifts its placeholders introduced."""

    path: str
    source: str
    # (line in the protected text, newlines removed there): to map errors back
    shifts: list[tuple[int, int]] = field(default_factory=list)

    def original_line(self, protected_line: int) -> int:
        """The line as written for a line of the protected text."""
        return protected_line + sum(k for line, k in self.shifts if line < protected_line)


class ProtectingLoader(BaseLoader):
    """Loads templates with their Jinja tags swapped for placeholders (compile time only)."""

    def __init__(self, root: Path, syntax_env: Environment, placeholders: Placeholders) -> None:
        self._files = FileSystemLoader(str(root))
        self._syntax_env = syntax_env
        self._placeholders = placeholders
        self.tags: list[Tag] = []
        self.files: dict[str, SourceFile] = {}

    def get_source(
        self, environment: Environment, template: str
    ) -> tuple[str, str | None, Callable[[], bool] | None]:
        source, filename, uptodate = self._files.get_source(environment, template)
        path = filename or template
        # Syntax errors are reported against the file as written, before any protection.
        self._syntax_env.parse(source, template, path)
        record = SourceFile(path, source)
        self.files[path] = record
        return self._protect(record), filename, uptodate

    def _protect(self, record: SourceFile) -> str:
        source = record.source
        out: list[str] = []
        pos = 0
        protected_line = 1
        for m in JINJA_TAG.finditer(source):
            text = m.group()
            out.append(source[pos : m.start()])
            protected_line += source.count("\n", pos, m.start())
            pos = m.end()
            if text.startswith("{#"):
                replacement = ""
            elif _STRUCTURAL.match(text):
                out.append(text)
                protected_line += text.count("\n")
                continue
            else:
                line, col = line_col(source, m.start())
                block = text.startswith("{%")
                self.tags.append(Tag(text, record.path, line, col, block))
                replacement = self._placeholders(len(self.tags) - 1)
            out.append(replacement)
            if "\n" in text:
                record.shifts.append((protected_line, text.count("\n")))
        out.append(source[pos:])
        return "".join(out)


class Restorer:
    """Puts the original Jinja tags back in place of their placeholders."""

    def __init__(self, tags: Sequence[Tag], pattern: re.Pattern[str]) -> None:
        self._tags = tags
        self._pattern = pattern

    def __call__(self, text: str) -> str:
        out: list[str] = []
        pos = 0
        for m in self._pattern.finditer(text):
            out.append(_literal(text[pos : m.start()]))
            out.append(self._tags[int(m.group(1))].text)
            pos = m.end()
        out.append(_literal(text[pos:]))
        return "".join(out)


def _literal(static: str) -> str:
    """Static text that Jinja must not read as a tag (MJML's CSS, entities decoded to braces)."""
    if "{{" in static or "{%" in static or "{#" in static or static.endswith("{"):
        return "{% raw %}" + static + "{% endraw %}"
    return static
