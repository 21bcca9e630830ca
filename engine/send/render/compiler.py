"""Compile (once per template file, cached by ``cache``): MJML + Jinja -> Jinja templates of the
final HTML (one per text direction) and of the text part.

1. every Jinja tag of the template and of the partials it includes is replaced by a unique
   placeholder (``protect``), except ``extends`` / ``include`` / ``block`` / ``super()``, which a
   compile-time Jinja pass resolves, so inheritance and partials become one flat MJML document;
2. placeholders that sit between MJML components (``{% if %}`` around an ``mj-section``) are
   wrapped in ``mj-raw`` so MJML keeps them where they were (``mjml_scan``);
3. MJML -> HTML (mjml-python), then the placeholders are put back: the result is a Jinja
   template of the final HTML. A placeholder MJML dropped or duplicated is a problem located at
   the original tag (``check`` lists them, fatal ones also stop ``render``). Its ``<a href>``
   links are tracked by the template itself (``link_slots``) unless it may write links of its
   own. The HTML gets line breaks where they render as nothing, as few as keep it in SMTP's
   lines (``layout``);
4. the plain-text part is the ``.txt`` twin when there is one, else text derived from that HTML
   (``html_text``), also a Jinja template. In both parts ``sender.<name>`` is written in as the
   constant it is for the renderer, and Jinja folds what is built from it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import mjml
from jinja2 import Template, TemplateNotFound, TemplateSyntaxError, meta, nodes
from jinja2.environment import Environment
from jinja2.visitor import NodeTransformer

from engine.mail.tokens import Links
from engine.send.render.budget import DEADLINE
from engine.send.render.cache import Compiled
from engine.send.render.html_text import derive_text
from engine.send.render.jinja_internals import template_from_ast
from engine.send.render.layout import break_lines, lower_links, mirror, set_root_attrs
from engine.send.render.link_slots import slot_links, writes_markup
from engine.send.render.locales import file_key
from engine.send.render.mjml_scan import (
    LAYOUT_ATTRS,
    balance_problems,
    first_place,
    mjml_error,
    placeholder_spots,
)
from engine.send.render.model import CONTEXT_NAMES, TemplateProblem
from engine.send.render.protect import Placeholders, ProtectingLoader, Restorer, SourceFile, Tag
from engine.send.render.sandbox import Sandbox
from engine.send.render.unsafe import unsafe_code


class _Problems:
    """One compile's problems; the first fatal one is the compiled template's ``error``."""

    def __init__(self, compiled: Compiled, main: str, tags: Sequence[Tag]) -> None:
        self._compiled = compiled
        self._main = main
        self._tags = tags  # filled in as the flattening pass reads the files

    def __call__(self, where: str, line: int, col: int, message: str, fatal: bool = True) -> None:
        found = TemplateProblem(where or self._main, max(line, 1), max(col, 1), message)
        self._compiled.problems.append(found)
        if fatal and self._compiled.error is None:
            self._compiled.error = found

    def at(self, index: int, message: str, fatal: bool = True) -> None:
        """A problem located at the original Jinja tag number ``index``."""
        tag = self._tags[index]
        self(tag.path, tag.line, tag.col, message, fatal)


class Compiler:
    """Compiles the template files of ``root`` for one renderer (its environments, placeholders,
    tracking links and sender constants); ``count`` is how many MJML compilations it ran."""

    def __init__(
        self,
        root: Path,
        *,
        html_env: Sandbox,
        text_env: Sandbox,
        links: Links,
        sender: Mapping[str, str],
        timeout: float,
        placeholders: Placeholders,
    ) -> None:
        self._root = root
        self._html_env = html_env
        self._text_env = text_env
        self._links = links
        self._sender = sender
        self._timeout = timeout
        self._placeholders = placeholders
        self.count = 0

    def compile(self, path: Path, key: tuple[int, int]) -> Compiled:
        """``path`` (whose (mtime, size) is ``key``) compiled, or the problems that stop it."""
        name = path.relative_to(self._root).as_posix()
        compiled = Compiled(name=name, key=key, deps=(), problems=[])
        loader = ProtectingLoader(self._root, self._html_env, self._placeholders)
        twin = path.with_suffix(".txt")
        try:
            self._build(compiled, path, loader, twin)
        finally:
            files = [f for f in loader.files if Path(f) != path]
            compiled.deps = tuple((f, file_key(f)) for f in [*files, str(twin)])
        return compiled

    def rtl(self, compiled: Compiled) -> Template:
        """The right-to-left HTML template, compiled the first time an email needs it."""
        if compiled.rtl is None:
            path = self._root / compiled.name
            compiled.rtl = self.jinja(self._html_env, compiled.rtl_source, path)
        return compiled.rtl

    def jinja(self, env: Environment, source: str, path: Path) -> Template:
        """``source`` compiled, ``sender.<name>`` written in as the constant it is for this
        renderer (unless the template names something else ``sender``): Jinja then folds what
        is built from it (``"You should meet " ~ sender.from_name``) once, here."""
        ast = env.parse(source, path.name, str(path))
        if not reassigns(ast, "sender"):
            ast = SenderConstants(self._sender, env).visit(ast)
        return template_from_ast(env, ast, path.name, str(path))

    def _build(self, c: Compiled, path: Path, loader: ProtectingLoader, twin: Path) -> None:
        """Fills ``c`` (templates and problems); returns early at the first fatal problem."""
        problem = _Problems(c, str(path), loader.tags)
        flat = self._flatten(c.name, str(path), loader, problem)
        if flat is None:
            return
        source, explained = self._wrap(flat, problem)
        if c.error:
            return
        compiled_html = self._mjml(source, flat, loader, explained, problem)
        if compiled_html is None or c.error:
            return
        self._to_jinja(c, path, twin, compiled_html, loader.tags, problem)

    def _flatten(
        self, name: str, main: str, loader: ProtectingLoader, problem: _Problems
    ) -> str | None:
        """Step 1: includes / inheritance flattened with every other tag protected."""
        flattener = Sandbox(loader=loader, autoescape=False, keep_trailing_newline=True)
        token = DEADLINE.set(time.perf_counter() + self._timeout)
        try:
            return flattener.get_template(name).render()
        except TemplateSyntaxError as exc:
            problem(exc.filename or main, exc.lineno, 1, f"Jinja syntax error: {exc.message}")
        except TemplateNotFound as exc:
            where, line = _template_location(exc, loader.files)
            if not loader.files:
                problem(main, 1, 1, "template not found")
            else:
                problem(where, line, 1, f"included template {exc.name!r} not found")
        except Exception as exc:  # a dynamic include name, an include loop, bad encoding ...
            where, line = _template_location(exc, loader.files)
            problem(where, line, 1, f"include / extends failed (names must be fixed): {exc}")
        finally:
            DEADLINE.reset(token)
        return None

    def _wrap(self, flat: str, problem: _Problems) -> tuple[str, set[int]]:
        """Step 2: the placeholders between components wrapped in mj-raw; also the tags
        already reported for where they sit."""
        pieces: list[str] = []
        pos = 0
        explained: set[int] = set()
        for spot in placeholder_spots(flat, self._placeholders.pattern):
            if spot.where == "wrap":
                pieces += [
                    flat[pos : spot.start],
                    "<mj-raw>",
                    flat[spot.start : spot.end],
                    "</mj-raw>",
                ]
                pos = spot.end
            elif spot.where == "markup":
                problem.at(
                    spot.tag,
                    f"a Jinja tag inside the <{spot.element}> tag must be an attribute value",
                )
            elif spot.where == "attribute" and (
                spot.attribute in LAYOUT_ATTRS or spot.attribute.startswith("padding")
            ):
                problem.at(
                    spot.tag,
                    f'Jinja in the layout attribute {spot.attribute}="..." of <{spot.element}>: '
                    "MJML computes the layout once, so a per-recipient value is dropped or "
                    "ignored; use a fixed value",
                    fatal=False,
                )
                explained.add(spot.tag)
        pieces.append(flat[pos:])
        return "".join(pieces), explained

    def _mjml(
        self,
        source: str,
        flat: str,
        loader: ProtectingLoader,
        explained: set[int],
        problem: _Problems,
    ) -> str | None:
        """Step 3: MJML -> HTML, then a check that every placeholder came through."""
        self.count += 1
        try:
            compiled_html = mjml.mjml2html(source)
        except ValueError as exc:
            found = [p for f in loader.files.values() for p in balance_problems(f)]
            for p in found:
                problem(p.path, p.line, p.col, f"MJML: {p.message}")
            if not found:
                mjml_error(str(exc), source, loader.tags, self._placeholders.pattern, problem)
            return None
        for unknown in sorted(set(re.findall(r"<(mj-[a-z-]+)", compiled_html))):
            where, line, col = first_place(loader.files, re.compile(f"<{unknown}(?![\\w-])"))
            problem(where, line, col, f"unknown MJML element <{unknown}>")
        self._check_placeholders(flat, compiled_html, loader.tags, explained, problem)
        return compiled_html

    def _check_placeholders(
        self,
        flat: str,
        compiled_html: str,
        tags: Sequence[Tag],
        explained: set[int],
        problem: _Problems,
    ) -> None:
        """Every placeholder written in ``flat`` comes out of MJML (statements exactly once)."""
        pattern = self._placeholders.pattern
        emitted = {int(m.group(1)) for m in pattern.finditer(flat)}
        counts: dict[int, int] = {}
        for m in pattern.finditer(compiled_html):
            counts[int(m.group(1))] = counts.get(int(m.group(1)), 0) + 1
        for index in sorted(emitted):
            n = counts.get(index, 0)
            if n == 0 and tags[index].block:
                problem.at(
                    index,
                    "MJML dropped this Jinja tag (it must sit in content or between components)",
                )
            elif n == 0 and index not in explained:
                problem.at(
                    index,
                    "MJML dropped this Jinja expression (unsupported attribute or place)",
                    False,
                )
            elif n > 1 and tags[index].block:
                problem.at(
                    index, f"MJML copied this Jinja tag {n} times; move it out of this attribute"
                )

    def _to_jinja(
        self,
        c: Compiled,
        path: Path,
        twin: Path,
        compiled_html: str,
        tags: Sequence[Tag],
        problem: _Problems,
    ) -> None:
        """Step 4: back to Jinja, one HTML template per direction, then the text part."""
        main = str(path)
        lowered = lower_links(compiled_html)
        prefix = self._placeholders.prefix
        compiled_html = break_lines(lowered, prefix)
        lang_ph = self._placeholders(len(tags))
        with_lang = [*tags, Tag("{{ lang }}", main, 0, 0, False)]
        restore = Restorer(with_lang, self._placeholders.pattern)
        try:
            ast = self._html_env.parse(restore(compiled_html))
        except TemplateSyntaxError as exc:
            problem(main, 1, 1, f"MJML moved Jinja tags out of order: {exc.message}")
            return
        # Links are tracked in the template itself unless it may write links of its own.
        slotted = None
        if not writes_markup(ast, tags):
            slotted = slot_links(
                compiled_html,
                with_lang,
                placeholders=self._placeholders,
                links=self._links,
                env=self._html_env,
                links_reassigned=reassigns(ast, "links"),
            )
        c.scan = slotted is None
        markup, restore_html = slotted or (compiled_html, restore)
        c.html = self.jinja(
            self._html_env, restore_html(set_root_attrs(markup, lang_ph, "ltr")), path
        )
        c.rtl_source = restore_html(mirror(set_root_attrs(markup, lang_ph, "rtl")))
        if self._text_part(c, path, twin, lowered, tags, restore, problem):
            _lint_names(c, main, path.read_text(encoding="utf-8"), self._html_env)

    def _text_part(
        self,
        c: Compiled,
        path: Path,
        twin: Path,
        lowered: str,
        tags: Sequence[Tag],
        restore: Restorer,
        problem: _Problems,
    ) -> bool:
        """The text part: the ``.txt`` twin, else derived from the HTML. False on a problem."""
        if twin.is_file():
            c.text_name = twin.relative_to(self._root).as_posix()
            try:
                twin_source = twin.read_text(encoding="utf-8")
                c.text = self.jinja(self._text_env, twin_source, twin)
            except OSError as exc:  # removed or unreadable since it was looked at
                problem(str(twin), 1, 1, f"cannot read the text part: {exc}")
                return False
            except TemplateSyntaxError as exc:
                problem(str(twin), exc.lineno, 1, f"Jinja syntax error: {exc.message}")
                return False
            _lint_names(c, str(twin), twin_source, self._text_env)
            return True
        c.text_name = f"{c.name} (text)"
        # From the HTML with a break at every place, as the text has always been derived
        # (a break between two cells is a space in the text).
        prefix = self._placeholders.prefix
        derived = derive_text(break_lines(lowered, prefix, 0), tags, self._placeholders)
        if isinstance(derived, int):
            problem.at(
                derived,
                "the text part derived from the HTML cannot keep this Jinja tag in place; "
                "write a .txt twin",
            )
            return False
        try:
            c.text = self.jinja(self._text_env, restore(derived), path)
        except TemplateSyntaxError as exc:
            problem(str(path), 1, 1, f"the derived text part is not valid Jinja: {exc.message}")
            return False
        return True


def _lint_names(c: Compiled, where: str, source: str, env: Environment) -> None:
    """Warn about variables that are not in the template context (typos), and about code the
    sandbox would refuse when rendering (engine.send.render.unsafe)."""
    ast = env.parse(source)
    for line, col, message in unsafe_code(ast, source):
        c.problems.append(TemplateProblem(where, line, col, message))
    unknown = meta.find_undeclared_variables(ast) - CONTEXT_NAMES - set(env.globals)
    for name in sorted(unknown):
        line = next((n.lineno for n in ast.find_all(nodes.Name) if n.name == name), 1)
        c.problems.append(
            TemplateProblem(
                where,
                line,
                1,
                f"unknown variable {name!r} (the context has: {', '.join(sorted(CONTEXT_NAMES))})",
            )
        )


def _template_location(exc: BaseException, files: Mapping[str, SourceFile]) -> tuple[str, int]:
    """The innermost template file and (original) line of a Jinja traceback, if any."""
    found: tuple[str, int] = ("", 0)
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename in files:
            found = (filename, files[filename].original_line(tb.tb_lineno))
        tb = tb.tb_next
    return found


def reassigns(ast: nodes.Template, name: str) -> bool:
    """Does the template give ``name`` (a context variable) a value of its own (set, for,
    with, macro arguments, import ... as)? Then ``{{ name.x }}`` may be anything."""
    if any(n.name == name and n.ctx != "load" for n in ast.find_all(nodes.Name)):
        return True
    if any(i.target == name for i in ast.find_all(nodes.Import)):
        return True
    return any(
        (alias[1] if isinstance(alias, tuple) else alias) == name
        for i in ast.find_all(nodes.FromImport)
        for alias in i.names
    )


class SenderConstants(NodeTransformer):
    """``sender.<name>`` -> the constant it is for a renderer (see Compiler.jinja)."""

    def __init__(self, sender: Mapping[str, str], env: Environment) -> None:
        self._sender = sender
        self._env = env

    def visit_Getattr(self, node: nodes.Getattr) -> nodes.Node:
        target = node.node
        if (
            isinstance(target, nodes.Name)
            and target.name == "sender"
            and node.ctx == "load"
            and node.attr in self._sender
        ):
            const = nodes.Const(self._sender[node.attr], lineno=node.lineno)
            return const.set_environment(self._env)
        return self.generic_visit(node)
