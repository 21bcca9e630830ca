"""The compiled template cache: compile once per file, render many.

A compiled template is kept by path and used while its file, its partials and its ``.txt``
twin are unchanged (mtime and size); ``render`` looks at those files at most once per
``reload_interval`` for a (template, locale), ``check`` every time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from jinja2 import Template

from engine.send.render.locales import TemplateFiles, file_key
from engine.send.render.model import TemplateProblem

# How many (template, locale) checks are kept before the table starts again.
_KEPT = 4096


@dataclass
class Compiled:
    """One template file compiled: its Jinja templates, or the problems that stop it."""

    name: str  # relative to the templates folder, for messages
    key: tuple[int, int]  # (mtime_ns, size) of the file
    deps: tuple[tuple[str, tuple[int, int] | None], ...]  # partials and the .txt twin
    problems: list[TemplateProblem]
    error: TemplateProblem | None = None  # the first fatal problem: render refuses
    html: Template | None = None
    rtl_source: str = ""
    rtl: Template | None = None
    text: Template | None = None
    text_name: str = ""
    scan: bool = True  # links tracked by scanning the output, not by the template itself


class CompiledCache:
    """Compiled templates by file, compiled by ``compile`` when missing or out of date.

    Thread-safe: compiles are serialised, lookups take no lock.
    """

    def __init__(
        self,
        files: TemplateFiles,
        compile: Callable[[Path, tuple[int, int]], Compiled],
        *,
        reload_interval: float,
    ) -> None:
        self._files = files
        self._compile = compile
        self._reload_interval = reload_interval
        self._by_path: dict[Path, Compiled] = {}
        # (template, locale) -> (when its files were last checked, what they compiled to)
        self._checked: dict[tuple[str, str | None], tuple[float, Compiled]] = {}
        self._lock = threading.Lock()

    def for_locale(self, template: str, norm: str | None) -> Compiled:
        """The compiled template for an already normalized locale ``norm``; its files are
        looked at (a few stat calls, ~4 us each) once per reload_interval, not for every
        email."""
        key = (template, norm)
        now = time.monotonic()
        found = self._checked.get(key)
        if found is not None and now - found[0] < self._reload_interval:
            return found[1]
        compiled = self.get(*self._files.locate(template, norm))
        if len(self._checked) > _KEPT:
            self._checked.clear()
        self._checked[key] = (now, compiled)
        return compiled

    def get(self, path: Path, key: tuple[int, int]) -> Compiled:
        """The compiled template of ``path`` whose (mtime, size) is ``key``."""
        compiled = self._by_path.get(path)
        if compiled is not None and compiled.key == key and _fresh(compiled):
            return compiled
        with self._lock:
            compiled = self._by_path.get(path)
            if compiled is None or compiled.key != key or not _fresh(compiled):
                compiled = self._compile(path, key)
                self._by_path[path] = compiled
        return compiled


def _fresh(compiled: Compiled) -> bool:
    return all(file_key(dep) == key for dep, key in compiled.deps)
