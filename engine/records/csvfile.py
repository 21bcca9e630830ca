"""The one CSV reader behind every import (contacts, purchases): rows that lose nothing.

- **Delimiter**: comma, semicolon or tab, detected from the header line by the standard
  library's ``csv.Sniffer`` (restricted to those three); comma when it cannot tell. A UTF-8
  byte order mark is accepted.
- **Header**: column names are matched ignoring case, spaces, underscores and hyphens
  (``First Name`` is ``first_name``); columns that are not known are listed as custom.
- **Line breaks**: the file's own line ending is the header's. A different one outside quotes
  (a stray CR in a CRLF or LF file, an LF in a CRLF file) is not a new row: the row it broke is
  rejected whole, with its line numbers. A row with more or fewer values than the header has
  columns is rejected too (a stray line break in an LF file shows that way).
- **Size**: a value may hold up to ``FIELD_LIMIT`` characters; a longer one rejects its row
  (with the column), never the file.

Row numbers are records: the header is row 1, as a spreadsheet numbers them; a row that spans
several lines of the file also gives its lines.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from engine.base.errors import ImportRowError

# Characters per value: the csv module's own limit (it raises on a longer value). Kept as is,
# since changing it would change it for the whole process.
FIELD_LIMIT = 131_072
DELIMITERS = ",;\t"
_NAMES = {",": "comma", ";": "semicolon", "\t": "tab"}
_IGNORED_IN_NAMES = re.compile(r"[\s_\-]+")
_FIELD_TOO_LARGE = "field larger than field limit"


def column_key(name: str) -> str:
    """A header name as matched: ``" First Name"`` -> ``"firstname"`` (case, spaces,
    underscores and hyphens ignored)."""
    return _IGNORED_IN_NAMES.sub("", name).casefold()


@dataclass(frozen=True)
class CsvRow:
    """One record after the header: its number, the file lines it spans, and its cells by
    column (known columns by their standard name, others as the header writes them), or the
    reason it cannot be read (``problem``)."""

    number: int
    first_line: int
    last_line: int
    cells: dict[str, str] = field(default_factory=dict)
    problem: str | None = None

    @property
    def where(self) -> str:
        """``row 7``, or ``row 7 (lines 7-8)`` for a row over several lines of the file."""
        if self.last_line == self.first_line == self.number:
            return f"row {self.number}"
        if self.last_line == self.first_line:
            return f"row {self.number} (line {self.first_line})"
        return f"row {self.number} (lines {self.first_line}-{self.last_line})"


class _Lines:
    """The file's lines for the csv reader, split only at the file's own line ending (the
    header's), counting physical lines (any CR, LF or CRLF) so rows can name theirs."""

    def __init__(self, fh: Iterator[str]) -> None:
        self._pieces = fh
        self.ending: str | None = None
        self.line = 0  # physical lines handed out so far
        self.first = 1  # the first physical line of the record being read
        self.record = ""  # the text of the record being read

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        text = ""
        for piece in self._pieces:  # with newline="", a piece ends at any CR, LF or CRLF
            self.line += 1
            text += piece
            if self.ending is None:
                self.ending = "\r\n" if piece.endswith("\r\n") else piece[-1:]
            if piece.endswith(self.ending):
                self.record += text
                return text
        if text:
            self.record += text
            return text
        raise StopIteration

    def mark(self) -> None:
        """The next line starts a new record."""
        self.first = self.line + 1
        self.record = ""


class CsvTable:
    """A CSV file to import: its header read and matched against ``known`` column names
    (``required`` ones must be there), its rows read one at a time by ``rows()``."""

    def __init__(self, path: Path, *, known: Sequence[str], required: Sequence[str]) -> None:
        if not path.is_file():
            raise ImportRowError(
                f"{path}: not a file" if path.exists() else f"{path}: no such file"
            )
        self.path = path
        try:
            with self._open() as fh:
                head = fh.readline()
        except UnicodeDecodeError as exc:
            raise self._not_utf8(exc, 0) from None
        try:
            self.delimiter = csv.Sniffer().sniff(head, delimiters=DELIMITERS).delimiter
        except csv.Error:  # one column, or nothing to tell by
            self.delimiter = ","
        header = next(csv.reader([head], delimiter=self.delimiter), [])
        by_key = {column_key(name): name for name in known}
        self.columns: list[str] = []
        self.custom: list[str] = []
        seen: dict[str, str] = {}
        for written in header:
            name = by_key.get(column_key(written), written.strip())
            if name and name in seen:
                raise ImportRowError(
                    f"{path}: row 1: columns {seen[name]!r} and {written!r} are the same column"
                )
            seen[name] = written
            self.columns.append(name)
            if name and name not in by_key.values():
                self.custom.append(name)
        for name in required:
            if name not in self.columns:
                found = ", ".join(repr(c) for c in header) or "nothing"
                raise ImportRowError(
                    f"{path}: row 1: the header has no {name} column (found {found}, read as "
                    f"{_NAMES[self.delimiter]}-separated)"
                )

    def _open(self) -> TextIO:
        # newline="": the csv module sees line endings as they are (quoted ones included).
        return self.path.open(newline="", encoding="utf-8-sig")

    def rows(self) -> Iterator[CsvRow]:
        """Every record after the header, in order; empty lines are skipped (but counted)."""
        with self._open() as fh:
            lines = _Lines(fh)
            reader = csv.reader(lines, delimiter=self.delimiter)
            number = 0
            while True:
                lines.mark()
                number += 1
                try:
                    cells = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    yield self._unreadable(number, lines, str(exc))
                    continue
                except UnicodeDecodeError as exc:
                    raise self._not_utf8(exc, lines.line) from None
                if number == 1 or not cells:
                    continue  # the header, or an empty line
                yield self._row(number, lines, cells)

    def _not_utf8(self, exc: UnicodeDecodeError, line: int) -> ImportRowError:
        # Rows before this one are imported; the file must be re-saved as UTF-8.
        return ImportRowError(
            f"{self.path}: after line {line}: not UTF-8 text ({exc.reason}); "
            "save the file as UTF-8 and import it again"
        )

    def _row(self, number: int, lines: _Lines, cells: list[str]) -> CsvRow:
        if len(cells) != len(self.columns):
            return CsvRow(
                number,
                lines.first,
                lines.line,
                problem=f"{len(cells)} values where the header has {len(self.columns)} columns "
                "(a line break inside a value? put such values in double quotes)",
            )
        named = {name: text for name, text in zip(self.columns, cells, strict=True) if name}
        return CsvRow(number, lines.first, lines.line, named)

    def _too_large(self, text: str) -> str:
        """Which column of the record ``text`` holds the value over the limit."""
        # Read once more without the limit, to name the column: only this record, and only
        # in an import (a command of its own), so the process-wide setting is put back at once.
        limit = csv.field_size_limit(len(text) + 1)
        try:
            cells = next(csv.reader([text], delimiter=self.delimiter), [])
        except csv.Error:
            cells = []
        finally:
            csv.field_size_limit(limit)
        for name, value in zip(self.columns, cells, strict=False):
            if len(value) > FIELD_LIMIT:
                return f"{name or 'an unnamed column'}: "
        return ""

    def _unreadable(self, number: int, lines: _Lines, error: str) -> CsvRow:
        if error.startswith(_FIELD_TOO_LARGE):
            column = self._too_large(lines.record)
            problem = f"{column}a value longer than {FIELD_LIMIT:,} characters (the limit)"
        elif "new-line character" in error:
            problem = (
                "a line break inside a value that is not in double quotes splits this row; "
                "the whole row is left out"
            )
        else:
            problem = f"not readable as CSV ({error})"
        return CsvRow(number, lines.first, lines.line, problem=problem)
