"""Loading sequence files: one file's problems all at once, a folder's files each on its own.

One file goes through three steps, each reporting at file:line:col: YAML (syntax, and keys
that JSON cannot hold), the JSON Schema (every shape and value rule), and the Builder (what
needs the whole file: references between steps, time zones, the referral-ask policy).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from engine.base.errors import SequenceError
from engine.program.sequences.build import Builder, label
from engine.program.sequences.model import LoadResult, Sequence, TemplateRef
from engine.program.sequences.source import Document, Problem, read
from engine.program.sequences.validation import schema_problems


def sequence_files(directory: Path) -> list[Path]:
    """The sequence files in ``directory``: ``*.yaml`` and ``*.yml``, hidden files excluded."""
    return sorted(
        path
        for path in directory.iterdir()
        if path.suffix in {".yaml", ".yml"} and not path.name.startswith(".") and path.is_file()
    )


def load_sequences(
    directory: Path,
    *,
    template_exists: Callable[[str], bool] | None = None,
) -> LoadResult:
    """Load every sequence file in ``directory``; a broken file is reported, the others load.

    ``template_exists`` (a template file name -> bool) also checks that templates exist.
    """
    if not directory.is_dir():
        return LoadResult({}, [SequenceError(str(directory), 1, 1, "sequences folder not found")])
    return load_files(sequence_files(directory), template_exists=template_exists)


def load_files(
    paths: Iterable[Path],
    *,
    template_exists: Callable[[str], bool] | None = None,
) -> LoadResult:
    """Load the given sequence files; like load_sequences, for an explicit list of files.

    An id used by two files is an error in the later one (the first one keeps it).
    """
    sequences: dict[str, Sequence] = {}
    owners: dict[str, str] = {}  # sequence id -> the first file that used it
    errors: list[SequenceError] = []
    for path in paths:
        checked = _check(path)
        found = list(checked.errors)
        if template_exists is not None:
            found += [
                SequenceError(
                    str(path), ref.line, ref.col, f"template {ref.template!r} does not exist"
                )
                for ref in checked.template_refs
                if not template_exists(ref.template)
            ]
        if checked.id is not None:
            if checked.id in owners:
                message = (
                    f"duplicate sequence id {checked.id!r}: {owners[checked.id]} already uses it"
                )
                found.append(SequenceError(str(path), *checked.id_at, message))
            else:
                owners[checked.id] = str(path)
        if found:
            errors += sorted(found, key=lambda error: (error.line, error.col))
        elif checked.sequence is not None:
            sequences[checked.sequence.id] = checked.sequence
    return LoadResult(sequences, errors)


def load_sequence(
    path: Path,
    *,
    template_exists: Callable[[str], bool] | None = None,
) -> Sequence:
    """Load one sequence file; raises its first SequenceError."""
    result = load_files([path], template_exists=template_exists)
    if result.errors:
        raise result.errors[0]
    (sequence,) = result.sequences.values()
    return sequence


@dataclass(frozen=True)
class _Checked:
    """One file's outcome; ``id`` and ``template_refs`` are kept even when the file is broken."""

    sequence: Sequence | None
    errors: list[SequenceError]
    id: str | None = None
    id_at: tuple[int, int] = (1, 1)
    template_refs: tuple[TemplateRef, ...] = ()


def _check(path: Path) -> _Checked:
    document = read(path)
    if isinstance(document, SequenceError):
        return _Checked(None, [document])
    problems = document.problems + schema_problems(document)
    builder = Builder(document, str(path), problems)
    sequence = builder.sequence()
    errors = [_error(document, str(path), problem) for problem in (*problems, *builder.problems)]
    data = document.data
    named = data.get("id") if isinstance(data, dict) else None
    sequence_id = named if isinstance(named, str) and named.strip() else None
    return _Checked(
        sequence,
        list(dict.fromkeys(errors)),
        sequence_id,
        document.position(("id",)) if sequence_id else (1, 1),
        tuple(builder.template_refs),
    )


def _error(document: Document, path: str, problem: Problem) -> SequenceError:
    where = label(document.data, problem.path)
    message = f"{where}: {problem.message}" if where else problem.message
    return SequenceError(path, *document.locate(problem), message)
