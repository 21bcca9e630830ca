"""Which file and which language: template names, locale variants, a contact's locale.

``x.mjml`` for a contact with locale ``pt_BR`` is ``x.pt-BR.mjml``, else ``x.pt.mjml``, else
``x.mjml``; the email's ``lang`` and ``dir`` come from the same tag (engine.base.locale).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from pathlib import Path, PurePosixPath

from engine.base import locale
from engine.base.errors import TemplateError
from engine.send.render.model import DEFAULT_LANG

# How many (template, locale) lookups are kept before the table starts again.
_KEPT = 4096


def file_key(path: str | Path) -> tuple[int, int] | None:
    """``(mtime_ns, size)`` of a file, the cache's sign of an edit; None when it is missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=_KEPT)
def email_locale(tag: str | None) -> tuple[str | None, str, str]:
    """A contact's locale -> (normal form or None, the email's ``lang``, its ``dir``).

    ``"ar_eg"`` -> ``("ar-EG", "ar", "rtl")``; ``None`` -> ``(None, "en", "ltr")``.
    """
    norm = locale.normalize(tag)
    return norm, locale.language(norm) or DEFAULT_LANG, locale.direction(norm)


class TemplateFiles:
    """The templates folder: template names checked, the file for a locale, its variants."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._candidates: dict[tuple[str, str | None], tuple[Path, ...]] = {}

    def base_path(self, template: str) -> Path:
        """The file of ``template`` (a .mjml name relative to the folder); TemplateError for
        any other name."""
        rel = PurePosixPath(template)
        if rel.is_absolute() or ".." in rel.parts or "\\" in template or not template:
            raise TemplateError(f"{template}: template names are relative to the templates folder")
        if rel.suffix != ".mjml":
            raise TemplateError(f"{template}: templates are .mjml files")
        return self.root.joinpath(*rel.parts)

    def locate(self, template: str, norm: str | None) -> tuple[Path, tuple[int, int]]:
        """The file (and its cache key) for an already normalized locale ``norm``."""
        candidates = self._lookup(template, norm)
        for path in candidates:
            key = file_key(path)
            if key is not None:
                return path, key
        tried = ", ".join(p.name for p in candidates)
        raise TemplateError(f"{template}: template not found (looked for {tried})")

    def with_variants(self, base: Path) -> list[Path]:
        """``base`` (if it is a file) and its locale variants (``base.<locale>.mjml``)."""
        variant = re.compile(re.escape(base.stem) + r"\.([A-Za-z0-9_-]+)\.mjml\Z")
        paths = [base] if base.is_file() else []
        with contextlib.suppress(OSError):
            paths += sorted(
                p
                for p in base.parent.iterdir()
                if (m := variant.match(p.name)) and locale.normalize(m.group(1)) and p.is_file()
            )
        return paths

    def _lookup(self, template: str, norm: str | None) -> tuple[Path, ...]:
        key = (template, norm)
        found = self._candidates.get(key)
        if found is None:
            base = self.base_path(template)
            found = tuple(
                [base.with_name(f"{base.stem}.{tag}.mjml") for tag in locale.variants(norm)]
                + [base]
            )
            if len(self._candidates) > _KEPT:
                self._candidates.clear()
            self._candidates[key] = found
        return found
