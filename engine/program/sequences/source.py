"""A sequence file's text as data with positions: every value and key is found again by its
path (``("steps", 2, "send", "template")``), so any problem is reported at file:line:col.

Also what JSON cannot say and so the schema cannot check: a key written twice, a key that is not
text (YAML 1.1 reads ``no:`` as false), and how to describe a value the way YAML read it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import yaml

from engine.base.errors import SequenceError

DataPath: TypeAlias = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    """One thing wrong, before it has a file position: ``path`` names the value it is about
    (and prefixes the message, ``audience.kind: ...``); ``at`` is where to point, ``path`` when
    None; ``key`` points at the key of ``at`` rather than its value; ``mark`` is a line and
    column found otherwise (a key that is not text has no path)."""

    path: DataPath
    message: str
    at: DataPath | None = None
    key: bool = False
    mark: tuple[int, int] | None = None


@dataclass
class Document:
    """The data of one YAML document and the node of each value and key, by path."""

    data: Any
    nodes: dict[DataPath, yaml.Node] = field(default_factory=dict)
    key_nodes: dict[DataPath, yaml.Node] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)  # duplicate and non-text keys

    def position(self, path: DataPath, *, key: bool = False) -> tuple[int, int]:
        """1-based line and column of the value (or key) at ``path``, else of its nearest parent."""
        found = self.key_nodes.get(path) if key else None
        while found is None:
            found = self.nodes.get(path)
            path = path[:-1]
        mark = found.start_mark
        return mark.line + 1, mark.column + 1

    def locate(self, problem: Problem) -> tuple[int, int]:
        """Where a problem points: its mark, else the value (or key) at ``at`` or ``path``."""
        if problem.mark is not None:
            return problem.mark
        return self.position(problem.path if problem.at is None else problem.at, key=problem.key)

    def value(self, path: DataPath) -> Any:
        """The value at ``path`` (which must exist)."""
        value = self.data
        for part in path:
            value = value[part]
        return value

    def describe(self, path: DataPath) -> str:
        """The value at ``path`` as YAML read it: ``the number 9:00``, ``yes, which YAML reads
        as true``, ``a list``."""
        return describe(self.nodes[path], self.value(path))


def describe(node: yaml.Node, value: Any) -> str:
    """How to name a value in a message, from its node (as written) and value (as read)."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"{node.value}, which YAML reads as {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {node.value}"
    if isinstance(value, str):
        return f"the text {value!r}"
    return f"{node.value} ({type(value).__name__})"


def quote_hint(node: yaml.Node, value: Any) -> str:
    """`` (put it in quotes)`` for a scalar YAML read as something other than text."""
    if isinstance(node, yaml.ScalarNode) and value is not None and not isinstance(value, str):
        return " (put it in quotes)"
    return ""


def suggest(word: str, options: Iterable[str]) -> str:
    """``"; did you mean 'steps'?"``, or the list of options when it is short."""
    by_folded = {option.casefold(): option for option in options}
    close = difflib.get_close_matches(word.casefold(), by_folded, n=1)
    if close:
        return f"; did you mean {by_folded[close[0]]!r}?"
    if len(by_folded) <= 15:
        return f"; expected one of {', '.join(by_folded.values())}"
    return ""


def read(path: Path) -> Document | SequenceError:
    """The file at ``path`` as a Document, or the error that stops it being read at all."""
    name = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return SequenceError(name, 1, 1, f"cannot read the file: {exc.strerror}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start].decode("utf-8")  # valid: the first bad byte is at exc.start
        return SequenceError(name, *_position(before, len(before)), "not UTF-8 text")
    return parse(text, name)


def parse(text: str, name: str) -> Document | SequenceError:
    """YAML ``text`` (the file called ``name``) as a Document, or its syntax error."""
    try:
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
            if root is None:
                message = "the file is empty; a sequence needs at least id, name and steps"
                return SequenceError(name, 1, 1, message)
            # Constructing up front reports a bad tag now; _index then reads keys freely.
            document = Document(loader.construct_document(root))
            _index(document, loader, root, (), set())
            return document
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        return _yaml_error(name, exc)
    except yaml.reader.ReaderError as exc:
        line, col = _position(text, exc.position)
        message = f"invalid YAML: {exc.reason} (character U+{exc.character:04X})"
        return SequenceError(name, line, col, message)


def _index(
    document: Document,
    loader: yaml.SafeLoader,
    node: yaml.Node,
    path: DataPath,
    above: set[int],
) -> None:
    """Record the node of every value and key below ``node``, and the keys JSON cannot hold.

    ``above`` holds the ids of the nodes on the way down: an alias may point back up to one.
    """
    document.nodes[path] = node
    if id(node) in above:
        return
    above = above | {id(node)}
    if isinstance(node, yaml.SequenceNode):
        for number, item in enumerate(node.value):
            _index(document, loader, item, (*path, number), above)
    elif isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node)
            if not isinstance(key, str):
                message = f"keys must be plain names, got {describe(key_node, key)}"
                mark = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                message += quote_hint(key_node, key)
                document.problems.append(Problem(path, message, mark=mark))
                continue
            if (*path, key) in document.key_nodes:
                document.problems.append(
                    Problem(path, f"duplicate key {key!r}", at=(*path, key), key=True)
                )
            document.key_nodes[(*path, key)] = key_node
            _index(document, loader, value_node, (*path, key), above)


def _position(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column of character ``offset`` in ``text``."""
    before = text[:offset]
    return before.count("\n") + 1, offset - (before.rfind("\n") + 1) + 1


def _yaml_error(path: str, exc: yaml.MarkedYAMLError) -> SequenceError:
    """PyYAML's problem and context as one line, at the problem's position."""
    problem, context = exc.problem or "", exc.context or ""
    if problem and context.startswith("while "):
        start = exc.context_mark
        message = f"{problem} ({context}{f' at line {start.line + 1}' if start else ''})"
    else:  # e.g. "expected a single document in the stream" + "but found another document"
        message = ", ".join(part for part in (context, problem) if part) or "syntax error"
    mark = exc.problem_mark or exc.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    return SequenceError(path, line, col, f"invalid YAML: {message}")
