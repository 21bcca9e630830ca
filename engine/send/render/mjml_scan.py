"""A light MJML structure scan: where the placeholders sit, and MJML errors located as written.

Not an MJML parser: enough of the tag structure to tell whether a placeholder stands between
components (wrapped in ``mj-raw`` so MJML keeps it), in content, in an attribute or loose in
markup, and to point an MJML error at the file, line and column the marketer wrote.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import NamedTuple

from engine.send.render.model import TemplateProblem
from engine.send.render.protect import JINJA_TAG, Restorer, SourceFile, Tag, line_col

# --- a light MJML structure scan (where do the placeholders sit?) ---------------------------

_MJ_TAG = re.compile(
    r"""<!--.*?-->|<(/?)(mjml|mj-[a-z-]+)\b((?:[^>"']|"[^"]*"|'[^']*')*?)(/?)>""", re.S | re.I
)
_MJ_ATTR = re.compile(r"""([^\s=/>"']+)\s*=\s*(?:"([^"]*)"|'([^']*)')""")
# Components whose content is HTML that MJML copies as it is.
_ENDING = frozenset(
    {
        "mj-text",
        "mj-button",
        "mj-raw",
        "mj-table",
        "mj-navbar-link",
        "mj-accordion-title",
        "mj-accordion-text",
        "mj-social-element",
        "mj-style",
        "mj-title",
        "mj-preview",
    }
)
# Where an mj-raw may stand in for a Jinja tag between components.
_WRAP_PARENTS = frozenset(
    {"mj-body", "mj-wrapper", "mj-section", "mj-column", "mj-group", "mj-hero"}
)
# Attributes MJML computes the layout from at compile time: a per-recipient value is lost.
LAYOUT_ATTRS = frozenset(
    {
        "width",
        "height",
        "border",
        "border-top",
        "border-right",
        "border-bottom",
        "border-left",
        "inner-border",
        "full-width",
        "direction",
        "mode",
        "icon-size",
        "icon-height",
        "icon-width",
        "mj-class",
        "background-size",
        "background-position",
        "background-repeat",
    }
)


class _MjToken(NamedTuple):
    kind: str  # open | close | content | comment
    name: str
    start: int
    end: int
    self_closing: bool = False
    attrs_start: int = 0
    attrs: str = ""


def _mjml_tokens(text: str) -> Iterator[_MjToken]:
    i = 0
    while True:
        m = _MJ_TAG.search(text, i)
        if m is None:
            return
        if m.group(2) is None:
            yield _MjToken("comment", "", m.start(), m.end())
            i = m.end()
            continue
        name = m.group(2).lower()
        if m.group(1):
            yield _MjToken("close", name, m.start(), m.end())
            i = m.end()
            continue
        closed = bool(m.group(4))
        yield _MjToken("open", name, m.start(), m.end(), closed, m.start(3), m.group(3))
        i = m.end()
        if not closed and name in _ENDING:
            close = text.find("</" + name, i)
            end = len(text) if close < 0 else close
            yield _MjToken("content", name, i, end)
            i = end


class Spot(NamedTuple):
    """Where a placeholder sits in the MJML document."""

    start: int
    end: int
    tag: int  # index of the Tag behind the placeholder
    where: str  # wrap | bare | content | attribute | markup
    element: str
    attribute: str


def placeholder_spots(text: str, pattern: re.Pattern[str]) -> list[Spot]:
    """Where each placeholder ``pattern`` finds in the MJML ``text`` sits, in order."""
    found = [(m.start(), m.end(), int(m.group(1))) for m in pattern.finditer(text)]
    starts = [f[0] for f in found]
    spots: list[Spot] = []

    def within(a: int, b: int) -> list[tuple[int, int, int]]:
        return found[bisect.bisect_left(starts, a) : bisect.bisect_left(starts, b)]

    stack: list[str] = []
    pos = 0

    def gap(a: int, b: int) -> None:
        parent = stack[-1] if stack else ""
        where = "wrap" if parent in _WRAP_PARENTS else "bare"
        spots.extend(Spot(s, e, i, where, parent, "") for s, e, i in within(a, b))

    for tok in _mjml_tokens(text):
        gap(pos, tok.start)
        pos = tok.end
        if tok.kind in {"content", "comment"}:
            spots.extend(
                Spot(s, e, i, "content", tok.name, "") for s, e, i in within(tok.start, tok.end)
            )
        elif tok.kind == "open":
            attrs = [
                (tok.attrs_start + a.start(), tok.attrs_start + a.end(), a.group(1).lower())
                for a in _MJ_ATTR.finditer(tok.attrs)
            ]
            for s, e, i in within(tok.start, tok.end):
                owner = next((name for a, b, name in attrs if a <= s and e <= b), None)
                where = "markup" if owner is None else "attribute"
                spots.append(Spot(s, e, i, where, tok.name, owner or ""))
            if not tok.self_closing:
                stack.append(tok.name)
        elif tok.name in stack:
            del stack[len(stack) - 1 - stack[::-1].index(tok.name) :]
    gap(pos, len(text))
    return spots


def _blank_tags(source: str) -> str:
    """The source with Jinja tags blanked out, keeping every position (for diagnostics)."""
    return JINJA_TAG.sub(lambda m: re.sub(r"[^\n]", " ", m.group()), source)


def balance_problems(record: SourceFile) -> list[TemplateProblem]:
    """Unclosed / stray MJML tags in one file, located as written."""
    text = _blank_tags(record.source)
    problems: list[TemplateProblem] = []
    stack: list[tuple[str, int]] = []

    def report(pos: int, message: str) -> None:
        problems.append(TemplateProblem(record.path, *line_col(text, pos), message))

    for tok in _mjml_tokens(text):
        if tok.kind == "content" and tok.end == len(text):
            report(stack[-1][1], f"<{tok.name}> is not closed")
            return problems
        if tok.kind == "open" and not tok.self_closing:
            stack.append((tok.name, tok.start))
        elif tok.kind == "close":
            names = [n for n, _ in stack]
            if tok.name not in names:
                report(tok.start, f"</{tok.name}> closes nothing")
                continue
            while stack[-1][0] != tok.name:
                name, start = stack.pop()
                report(start, f"<{name}> is not closed")
            stack.pop()
    if stack:  # the innermost one: the outer ones only look unclosed because of it
        report(stack[-1][1], f"<{stack[-1][0]}> is not closed")
    return problems


def mjml_error(
    message: str,
    source: str,
    tags: Sequence[Tag],
    pattern: re.Pattern[str],
    problem: Callable[[str, int, int, str], None],
) -> None:
    """Locate an MJML parse error: at a Jinja tag next to the failing spot, if any."""
    m = re.search(r"at position (\d+):(\d+)", message)
    if m is None:
        problem("", 1, 1, f"MJML: {message}")
        return
    raw = source.encode("utf-8")
    start, end = int(m.group(1)), int(m.group(2))
    near = raw[max(start - 40, 0) : end + 40].decode("utf-8", "replace")
    snippet = raw[start : max(end, start + 30)].decode("utf-8", "replace")
    snippet = " ".join(Restorer(tags, pattern)(snippet).split())
    tag = pattern.search(near)
    if tag is None:
        problem("", 1, 1, f"MJML: {message} (near {snippet!r})")
        return
    t = tags[int(tag.group(1))]
    problem(t.path, t.line, t.col, f"MJML cannot place this Jinja tag here: {message}")


def first_place(files: Mapping[str, SourceFile], needle: re.Pattern[str]) -> tuple[str, int, int]:
    """The first place ``needle`` is written in the template or its partials."""
    for record in files.values():
        m = needle.search(record.source)
        if m is not None:
            return (record.path, *line_col(record.source, m.start()))
    return next(iter(files)), 1, 1
