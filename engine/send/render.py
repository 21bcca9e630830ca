"""Templates -> one email per recipient: sandboxed Jinja2 inside MJML, compiled once per file.

Compile (once per template file, cached by path + mtime + size, and the files it depends on):

1. every Jinja tag of the template and of the partials it includes is replaced by a unique
   placeholder, except ``extends`` / ``include`` / ``block`` / ``super()``, which a compile-time
   Jinja pass resolves, so inheritance and partials become one flat MJML document;
2. placeholders that sit between MJML components (``{% if %}`` around an ``mj-section``) are
   wrapped in ``mj-raw`` so MJML keeps them where they were;
3. MJML -> HTML (mjml-python), then the placeholders are put back: the result is a Jinja
   template of the final HTML. A placeholder MJML dropped or duplicated is a problem located at
   the original tag (``check`` lists them, fatal ones also stop ``render``). Its ``<a href>``
   links are tracked by the template itself: a static http(s) URL becomes a filter call that
   writes this email's click-tracking URL, an href built per recipient is wrapped in a filter
   block that decides on the rendered value; a template that may write links of its own
   (``|safe``, ``{% autoescape false %}`` ...) has its output scanned instead. The HTML gets
   line breaks where they render as nothing, as few as keep it in SMTP's lines;
4. the plain-text part is the ``.txt`` twin when there is one, else text derived from that HTML
   (paragraphs, "text (url)" links) that keeps every Jinja statement in the HTML's order, also
   a Jinja template. In both parts ``sender.<name>`` is written in as the constant it is for
   the renderer, and Jinja folds what is built from it.

Render (per recipient) is Jinja only: HTML (autoescaped), text and subject (not escaped), bare
URLs of the text part pointed at the click tracker, then the footer (postal address,
unsubscribe link in the contact's language) and the open pixel. A template's files are looked
at again for edits at most once per ``reload_interval``.

Runaway templates are stopped without threads: the sandbox refuses private attributes, every
call, ``for`` loop and ``range`` checks a per-render deadline, operators and string methods
that could build huge values are size-checked, and the output has a size cap.
"""

from __future__ import annotations

import bisect
import contextlib
import html as htmllib
import itertools
import math
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import lru_cache, wraps
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from types import MethodType
from typing import Any, NamedTuple, cast

import mjml
from jinja2 import (
    BaseLoader,
    FileSystemLoader,
    StrictUndefined,
    Template,
    TemplateNotFound,
    TemplateSyntaxError,
    UndefinedError,
    meta,
    nodes,
)
from jinja2.compiler import CodeGenerator, Frame
from jinja2.environment import Environment
from jinja2.exceptions import SecurityError
from jinja2.filters import do_urlencode
from jinja2.nodes import EvalContext
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Cycler, Joiner, Namespace, missing
from jinja2.visitor import NodeTransformer
from markupsafe import escape

from engine.base.errors import RenderTimeout, TemplateError
from engine.mail.tokens import Links
from engine.program.settings import SenderSettings

DEFAULT_LANG = "en"
RTL_LANGS = frozenset({"ar", "he", "fa", "ur", "ps", "sd", "ug", "yi"})
# What the engine puts in every template's context (the contract); anything else is a typo.
CONTEXT_NAMES = frozenset(
    {"contact", "sender", "sequence", "step", "lang", "dir", "links", "referral", "reward"}
)
# What the text of a note to the team (a notify step) may use.
NOTE_CONTEXT_NAMES = frozenset({"contact", "sender", "sequence", "step", "nps", "event"})
MAX_OUTPUT_CHARS = 2_000_000  # per rendered part and per value built by a template
MAX_ITEMS = 100_000  # per range() / list repetition
MAX_INT_BITS = 65_536
# The hidden link every email carries (before the open pixel): invisible, out of the keyboard
# order and hidden from screen readers, so only link scanners follow it. Its click token has no
# destination; the tracking app records the request as machine traffic.

# Footer lines per language: (question, link label). Fallback: English.
FOOTER_TEXT: dict[str, tuple[str, str]] = {
    "en": ("Don't want these emails?", "Unsubscribe"),
    "id": ("Tidak ingin menerima email ini?", "Berhenti berlangganan"),
    "ar": ("لا ترغب في تلقي هذه الرسائل؟", "إلغاء الاشتراك"),
    "es": ("¿No quieres recibir estos correos?", "Cancelar la suscripción"),
    "fr": ("Vous ne souhaitez plus recevoir ces e-mails ?", "Se désabonner"),
    "de": ("Sie möchten diese E-Mails nicht mehr erhalten?", "Abmelden"),
    "pt": ("Não quer receber estes e-mails?", "Cancelar inscrição"),
}


@dataclass(frozen=True, slots=True)
class Rendered:
    """One recipient's email content, and its one-click unsubscribe URL (List-Unsubscribe)."""

    subject: str
    html: str
    text: str
    unsubscribe_url: str


@dataclass(frozen=True, slots=True)
class TemplateProblem:
    """A template problem located in a file; ``str()`` is ``path:line:col: message``."""

    path: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}: {self.message}"


# --- the sandbox and its budget -------------------------------------------------------------

_DEADLINE: ContextVar[float] = ContextVar("render_deadline", default=math.inf)


def _tick() -> None:
    if time.perf_counter() > _DEADLINE.get():
        raise RenderTimeout("render time budget exceeded")


def _too_big(what: str) -> RenderTimeout:
    return RenderTimeout(f"{what} is over the render budget")


def _capped(value: Any) -> Any:
    """``value`` unless it is a string or sequence over the size budget."""
    if isinstance(value, str):
        if len(value) > MAX_OUTPUT_CHARS:
            raise _too_big(f"a string of {len(value)} characters")
    elif isinstance(value, list | tuple):
        if len(value) > MAX_ITEMS:
            raise _too_big(f"a list of {len(value)} items")
    elif isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise _too_big("an integer")
    return value


def _range(*args: int) -> range:
    """``range`` for templates: at most MAX_ITEMS numbers."""
    rng = range(*args)
    try:
        size = len(rng)
    except OverflowError:
        size = MAX_ITEMS + 1
    if size > MAX_ITEMS:
        raise _too_big(f"range() of {size} items")
    return rng


_SIZED = frozenset({list, tuple, range})


def _guard(iterable: Iterable[Any]) -> Iterable[Any]:
    """Wraps every ``{% for %}`` iterable: nested or long loops run into the deadline.

    A list, tuple or range shorter than the check interval is looped over as it is: its start is
    checked, as every 256th item of a longer one is, and a generator per loop costs as much as
    the loop body (the lines of a ready-made introduction, the 11 NPS scores).
    """
    _tick()
    if type(iterable) in _SIZED and len(cast(Sized, iterable)) <= 0xFF:
        return iterable
    return _guarded(iterable)


def _guarded(iterable: Iterable[Any]) -> Iterator[Any]:
    for n, item in enumerate(iterable, 1):
        if not n & 0xFF:
            _tick()
        yield item


_PERCENT_WIDTH = re.compile(r"%(?:\([^)]*\))?[-+ #0]*(\d{7,}|\*)")
_FORMAT_WIDTH = re.compile(r"\{[^{}]*:[^{}]*(?:\d{7,}|\{)")


def _check_percent(fmt: str, args: Any) -> None:
    m = _PERCENT_WIDTH.search(fmt)
    if m is None:
        return
    values = args if isinstance(args, tuple) else (args,)
    if m.group(1) != "*" or any(isinstance(v, int) and v > MAX_OUTPUT_CHARS for v in values):
        raise _too_big("a format width")


def _check_width(*values: Any) -> None:
    if any(isinstance(v, int) and v > MAX_OUTPUT_CHARS for v in values):
        raise _too_big("a width")


def _join_size(sep: str, items: Sequence[Any]) -> int:
    return len(sep) * len(items) + sum(len(x) if isinstance(x, str) else 32 for x in items)


def _check_replace(s: Any, old: Any, new: Any) -> None:
    if isinstance(s, str) and isinstance(old, str) and isinstance(new, str):
        count = s.count(old) if old else len(s) + 1
        if len(s) + count * max(len(new) - len(old), 0) > MAX_OUTPUT_CHARS:
            raise _too_big("a replace() result")


_PASSED = (Environment, EvalContext, Context)  # what pass_context & co. put first


def _safe_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """Size checks before and after the filters that can amplify their input."""

    @wraps(func)
    def checked(*args: Any, **kwargs: Any) -> Any:
        # Context / environment arguments come first for some filters: look at the tail.
        values = [a for a in args if not isinstance(a, _PASSED)] + list(kwargs.values())
        if name == "format" and values and isinstance(values[0], str):
            _check_percent(values[0], tuple(values[1:]))
        elif name == "replace" and len(values) >= 3:
            _check_replace(str(values[0]), values[1], values[2])
        elif name == "join" and values and not isinstance(values[0], str):
            items = list(values[0])
            sep = values[1] if len(values) > 1 and isinstance(values[1], str) else ""
            if _join_size(sep, items) > MAX_OUTPUT_CHARS:
                raise _too_big("a join() result")
            args = tuple(items if a is values[0] else a for a in args)
        elif name in {"batch", "slice"}:
            if any(isinstance(v, int) and v > MAX_ITEMS for v in values[1:2]):
                raise _too_big(f"{name}() size")
        else:
            _check_width(*values[1:])
        return _capped(func(*args, **kwargs))

    return checked


_AMPLIFYING_FILTERS = (
    "center",
    "indent",
    "format",
    "replace",
    "join",
    "batch",
    "slice",
    "wordwrap",
)
_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})
_GUARD_FILTER = "_engine_guard"
_CLICK_FILTER = "_engine_click"  # {{ "https://..." | _engine_click }}: a static link, tracked
_HREF_FILTER = "_engine_href"  # {% filter _engine_href %}: an href computed per recipient
_JINJA_KWARGS = frozenset({"_loop_vars", "_block_vars"})


class _GuardedCodeGenerator(CodeGenerator):
    """Compiles every ``for`` loop over a deadline-checking iterator, and ``~`` with a size cap."""

    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        for loop in node.find_all(nodes.For):
            loop.iter = nodes.Filter(
                loop.iter, _GUARD_FILTER, [], [], None, None, lineno=loop.lineno
            )
        super().visit_Template(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.capped(")
        super().visit_Concat(node, frame)
        self.write(")")

    def _output_child_pre(
        self, node: nodes.Expr, frame: Frame, finalize: CodeGenerator._FinalizeInfo
    ) -> None:
        if frame.eval_ctx.autoescape and not frame.eval_ctx.volatile:
            self.write("environment.escape_output(")
            if finalize.src is not None:
                self.write(finalize.src)
        else:
            super()._output_child_pre(node, frame, finalize)


def _escape_output(value: Any) -> Any:
    """What ``{{ value }}`` writes in HTML: markupsafe's escape, except that a str is escaped
    by str.replace, as plain text: one with nothing to escape (names, URLs: most values) is
    written as it is, and a long one with a few characters to escape (a mailto: link's "&")
    takes half the time, without a copy into a Markup."""
    if value.__class__ is not str:
        return escape(value)
    if "&" in value:
        value = value.replace("&", "&amp;")
    if "<" in value:
        value = value.replace("<", "&lt;")
    if ">" in value:
        value = value.replace(">", "&gt;")
    if '"' in value:
        value = value.replace('"', "&#34;")
    if "'" in value:
        value = value.replace("'", "&#39;")
    return value


class _Undefined(StrictUndefined):
    """StrictUndefined naming the missing key (``'company' is undefined``), not ``dict object``."""

    __slots__ = ()

    @property
    def _undefined_message(self) -> str:
        if self._undefined_hint is None and isinstance(self._undefined_obj, Mapping):
            return f"{self._undefined_name!r} is undefined"
        return super()._undefined_message


# urlencode as Jinja does it (UTF-8, "/" kept), by table: about twice as fast as urllib's quote.
_URL_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~/")
_URL_QUOTED = [chr(b) if b in _URL_SAFE else f"%{b:02X}" for b in range(256)]


# The same for ASCII text in one str.translate (C), from a table indexed by code point: about
# twice as fast as from a dict, which translate looks up with a new int per character.
_URL_ASCII = tuple(_URL_QUOTED[:128])


def _urlencode(value: Any) -> str:
    if type(value) is str:
        if value.isascii():
            return value.translate(_URL_ASCII)
        return "".join(map(_URL_QUOTED.__getitem__, value.encode("utf-8")))
    return do_urlencode(value)  # dicts, pairs and other types: Jinja's own rules


# links.mailto encodes a ready-made email (~1 kB) for every recipient, yet most of its lines are
# the same for all of them: each line's encoding is kept (least recently used out), so only the
# lines holding contact data are encoded again. Longer lines are not kept (memory).
_MAILTO_KEPT_LINE = 1_000  # characters


@lru_cache(maxsize=512)
def _urlencode_kept(line: str) -> str:
    return _urlencode(line)


def _mailto_value(value: Any) -> str:
    """One value of a mailto: link, percent-encoded (UTF-8, "/" kept)."""
    text = str(value)  # as Jinja's filters do; an undefined value raises
    return _urlencode_kept(text) if len(text) <= _MAILTO_KEPT_LINE else _urlencode(text)


def _mailto_body(body: Any) -> str:
    """A mailto: body, percent-encoded: the lines of a list (or of a text) joined with CRLF,
    the line break RFC 6068 asks for. ``["Hi,", "", "Ana"]`` -> ``"Hi%2C%0D%0A%0D%0AAna"``"""
    text = body.replace("\r\n", "\n").split("\n") if isinstance(body, str) else body
    lines = list(map(str, text))  # as Jinja's join does; an undefined value raises
    # Checked before encoding (which only makes it longer), as join() is, and after.
    if sum(map(len, lines)) + len(lines) > MAX_OUTPUT_CHARS:
        raise _too_big("a mailto: body")
    if max(map(len, lines), default=0) <= _MAILTO_KEPT_LINE:
        encoded = "%0D%0A".join(map(_urlencode_kept, lines))
    else:
        encoded = "%0D%0A".join(map(_mailto_value, lines))
    return _capped(encoded)


_DICT_ATTRIBUTES = frozenset(dir(dict))


class Sandbox(ImmutableSandboxedEnvironment):
    """The Jinja environment of every template: sandbox + budget (see the module docstring).

    Public so that tools and benchmarks render with exactly the engine's rules.
    """

    code_generator_class = _GuardedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})
    capped = staticmethod(_capped)
    escape_output = staticmethod(_escape_output)

    def __init__(self, **options: Any) -> None:
        super().__init__(undefined=_Undefined, **options)
        self.globals.clear()  # no lipsum() (unbounded); the rest are harmless
        self.globals.update(
            range=_range, dict=dict, cycler=Cycler, joiner=Joiner, namespace=Namespace
        )
        for name in _AMPLIFYING_FILTERS:
            self.filters[name] = _safe_filter(name, self.filters[name])
        self.filters[_GUARD_FILTER] = _guard
        self.filters["urlencode"] = _urlencode
        self.filters[_CLICK_FILTER] = _click_filter
        self.filters[_HREF_FILTER] = _href_filter

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(n, int):
                    limit = MAX_OUTPUT_CHARS if isinstance(seq, str) else MAX_ITEMS
                    if len(seq) * n > limit:
                        raise _too_big("a repetition")
        elif (
            operator == "**"
            and isinstance(left, int)
            and isinstance(right, int)
            and right > 0
            and abs(left) > 1
            and left.bit_length() * right > MAX_INT_BITS
        ):
            raise _too_big("a power")
        elif operator == "%" and isinstance(left, str):
            _check_percent(left, right)
        return _capped(self.binop_table[operator](left, right))

    def getattr(self, obj: Any, attribute: str) -> Any:
        # Fast paths for what templates read most: contact data (a dict key is data, never a
        # method) and ``links``; everything else takes the sandbox's checks.
        if type(obj) is dict:
            value = obj.get(attribute, missing)
            if value is not missing:
                return value
            if attribute not in _DICT_ATTRIBUTES:  # what the sandbox finds, minus two raises
                return self.undefined(obj=obj, name=attribute)
        elif type(obj) is TemplateLinks and not attribute.startswith("_"):
            return getattr(obj, attribute)
        return super().getattr(obj, attribute)

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _tick()
        if type(obj) is MethodType and type(obj.__self__) is TemplateLinks:
            # Jinja adds _loop_vars / _block_vars for its own callables: not for ours.
            return obj(*args, **{k: v for k, v in kwargs.items() if k not in _JINJA_KWARGS})
        target = getattr(obj, "__wrapped__", obj)  # str.format comes wrapped by the sandbox
        owner = getattr(target, "__self__", None)
        if isinstance(owner, str):
            method = getattr(target, "__name__", "")
            if method in _WIDTH_METHODS:
                _check_width(*args, *kwargs.values())
            elif method in {"format", "format_map"} and _FORMAT_WIDTH.search(owner):
                raise _too_big("a format width")
            elif method == "replace" and len(args) >= 2:
                _check_replace(owner, args[0], args[1])
            elif method == "join" and args:
                items = list(args[0])
                if _join_size(owner, items) > MAX_OUTPUT_CHARS:
                    raise _too_big("a join() result")
                args = (items, *args[1:])
        return _capped(super().call(context, obj, *args, **kwargs))


def _render_part(template: Template, variables: dict[str, Any]) -> list[str]:
    """Render with the output cap (the deadline is set by the caller): the output's pieces.

    ``variables`` already holds the environment's globals: Jinja uses it as it is (shared),
    without copying it for every part.
    """
    parts: list[str] = []
    append = parts.append
    size = 0
    env = template.environment
    try:
        # What template.new_context(variables, shared=True) makes, without going through
        # the template's ChainMap of globals (a third of the cost of a short part).
        context = env.context_class(env, variables, template.name, template.blocks, env.globals)
        for chunk in template.root_render_func(context):
            size += len(chunk)
            if size > MAX_OUTPUT_CHARS:
                raise _too_big("the rendered output")
            append(chunk)
    except Exception:
        env.handle_exception()  # re-raises, traceback in template lines
    return parts


# --- locales --------------------------------------------------------------------------------

_LOCALE = re.compile(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*$")


def normalize_locale(locale: str | None) -> str | None:
    """``"pt_br"`` -> ``"pt-BR"``; None for nothing usable."""
    if not locale or not _LOCALE.match(locale.strip()):
        return None
    parts = locale.strip().replace("_", "-").split("-")
    out = [parts[0].lower()]
    for p in parts[1:]:
        if len(p) == 2 and p.isalpha():
            out.append(p.upper())
        elif len(p) == 4 and p.isalpha():
            out.append(p.title())
        else:
            out.append(p)
    return "-".join(out)


def text_direction(lang: str) -> str:
    """``"rtl"`` for right-to-left languages, else ``"ltr"``."""
    return "rtl" if lang in RTL_LANGS else "ltr"


# --- protecting Jinja through the MJML compile ----------------------------------------------

_JINJA_TAG = re.compile(
    r"""
    \{%[-+]?\s*raw\s*[-+]?%\}.*?\{%[-+]?\s*endraw\s*[-+]?%\}
  | \{\{(?:[^}'"]|'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|\}(?!\}))*\}\}
  | \{%(?:[^%'"]|'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|%(?!\}))*%\}
  | \{\#.*?\#\}
    """,
    re.S | re.X,
)
_RAW_TAG = re.compile(r"\{%[-+]?\s*raw\b")
# Resolved by the compile-time Jinja pass; everything else waits for the recipient.
_STRUCTURAL = re.compile(
    r"\{%[-+]?\s*(?:extends|include|block|endblock)\b|\{\{[-+]?\s*super\(\s*\)\s*[-+]?\}\}\Z"
)


class _Tag(NamedTuple):
    """An original Jinja tag behind a placeholder, and where it was written."""

    text: str
    path: str
    line: int
    col: int
    block: bool  # a statement: must come out of MJML exactly once


def _line_col(text: str, pos: int) -> tuple[int, int]:
    return text.count("\n", 0, pos) + 1, pos - text.rfind("\n", 0, pos)


@dataclass
class _SourceFile:
    """A template file as read, with the line shifts its placeholders introduced."""

    path: str
    source: str
    # (line in the protected text, newlines removed there): to map errors back
    shifts: list[tuple[int, int]] = field(default_factory=list)

    def original_line(self, protected_line: int) -> int:
        return protected_line + sum(k for line, k in self.shifts if line < protected_line)


class _ProtectingLoader(BaseLoader):
    """Loads templates with their Jinja tags swapped for placeholders (compile time only)."""

    def __init__(self, root: Path, syntax_env: Environment, placeholder: str) -> None:
        self._files = FileSystemLoader(str(root))
        self._syntax_env = syntax_env
        self._placeholder = placeholder
        self.tags: list[_Tag] = []
        self.files: dict[str, _SourceFile] = {}

    def get_source(
        self, environment: Environment, template: str
    ) -> tuple[str, str | None, Callable[[], bool] | None]:
        source, filename, uptodate = self._files.get_source(environment, template)
        path = filename or template
        # Syntax errors are reported against the file as written, before any protection.
        self._syntax_env.parse(source, template, path)
        record = _SourceFile(path, source)
        self.files[path] = record
        return self._protect(record), filename, uptodate

    def _protect(self, record: _SourceFile) -> str:
        source = record.source
        out: list[str] = []
        pos = 0
        protected_line = 1
        for m in _JINJA_TAG.finditer(source):
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
                line, col = _line_col(source, m.start())
                block = text.startswith("{%")
                self.tags.append(_Tag(text, record.path, line, col, block))
                replacement = self._placeholder.format(len(self.tags) - 1)
            out.append(replacement)
            if "\n" in text:
                record.shifts.append((protected_line, text.count("\n")))
        out.append(source[pos:])
        return "".join(out)


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
_LAYOUT_ATTRS = frozenset(
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


class _Spot(NamedTuple):
    """Where a placeholder sits in the MJML document."""

    start: int
    end: int
    tag: int  # index of the _Tag behind the placeholder
    where: str  # wrap | bare | content | attribute | markup
    element: str
    attribute: str


def _placeholder_spots(text: str, pattern: re.Pattern[str]) -> list[_Spot]:
    found = [(m.start(), m.end(), int(m.group(1))) for m in pattern.finditer(text)]
    starts = [f[0] for f in found]
    spots: list[_Spot] = []

    def within(a: int, b: int) -> list[tuple[int, int, int]]:
        return found[bisect.bisect_left(starts, a) : bisect.bisect_left(starts, b)]

    stack: list[str] = []
    pos = 0

    def gap(a: int, b: int) -> None:
        parent = stack[-1] if stack else ""
        where = "wrap" if parent in _WRAP_PARENTS else "bare"
        spots.extend(_Spot(s, e, i, where, parent, "") for s, e, i in within(a, b))

    for tok in _mjml_tokens(text):
        gap(pos, tok.start)
        pos = tok.end
        if tok.kind in {"content", "comment"}:
            spots.extend(
                _Spot(s, e, i, "content", tok.name, "") for s, e, i in within(tok.start, tok.end)
            )
        elif tok.kind == "open":
            attrs = [
                (tok.attrs_start + a.start(), tok.attrs_start + a.end(), a.group(1).lower())
                for a in _MJ_ATTR.finditer(tok.attrs)
            ]
            for s, e, i in within(tok.start, tok.end):
                owner = next((name for a, b, name in attrs if a <= s and e <= b), None)
                where = "markup" if owner is None else "attribute"
                spots.append(_Spot(s, e, i, where, tok.name, owner or ""))
            if not tok.self_closing:
                stack.append(tok.name)
        elif tok.name in stack:
            del stack[len(stack) - 1 - stack[::-1].index(tok.name) :]
    gap(pos, len(text))
    return spots


def _blank_tags(source: str) -> str:
    """The source with Jinja tags blanked out, keeping every position (for diagnostics)."""
    return _JINJA_TAG.sub(lambda m: re.sub(r"[^\n]", " ", m.group()), source)


def _balance_problems(record: _SourceFile) -> list[TemplateProblem]:
    """Unclosed / stray MJML tags in one file, located as written."""
    text = _blank_tags(record.source)
    problems: list[TemplateProblem] = []
    stack: list[tuple[str, int]] = []

    def report(pos: int, message: str) -> None:
        problems.append(TemplateProblem(record.path, *_line_col(text, pos), message))

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


# --- HTML -> plain text (compile time) ------------------------------------------------------

_BLOCK_TAGS = frozenset(
    {"p", "div", "table", "tr", "ul", "ol", "blockquote", "section", "article", "header",
     "footer", "center", "h1", "h2", "h3", "h4", "h5", "h6", "hr"}
)  # fmt: skip
_SKIP_TAGS = frozenset({"head", "style", "script", "title"})
_VOID_TAGS = frozenset(
    {"br", "img", "hr", "meta", "link", "input", "col", "area", "base", "wbr", "source"}
)
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|mso-hide\s*:\s*all", re.I)


class _TextExtractor(HTMLParser):
    """Readable text from email HTML: paragraphs, "- " list items, links as "text (url)".

    Markers matched by ``keep`` survive wherever they sit, in document order: in hidden
    content, comments (MJML puts ``mj-raw`` between sections inside Outlook conditional
    comments) and attributes too.
    """

    def __init__(self, keep: re.Pattern[str] | None = None) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._keep = keep
        self._stack: list[tuple[str, bool]] = []  # (tag, hides its content)
        self._hidden = 0
        self._links: list[tuple[str, int]] = []  # (href, index in parts where its text starts)

    def _kept(self, text: str) -> str:
        if self._keep is None:
            return ""
        return "".join(m.group() for m in self._keep.finditer(text))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag not in _VOID_TAGS:
            hides = tag in _SKIP_TAGS or bool(_HIDDEN_STYLE.search(a.get("style", "")))
            self._stack.append((tag, hides))
            self._hidden += hides
        # Attributes that do not reach the text still hold their markers.
        shown = ""
        if not self._hidden:
            if tag == "a":
                shown = "href"
            elif tag == "img" and self._links and a.get("alt"):
                shown = "alt"
        if self._keep is not None:
            self.parts += [self._kept(v) for k, v in attrs if k != shown and v]
        if self._hidden:
            return
        if tag == "br":
            self.parts.append("\n")
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n\n")
        elif tag == "li":
            self.parts.append("\n- ")
        elif tag in {"td", "th"}:
            self.parts.append(" ")
        elif tag == "a":
            self._links.append((a.get("href", "").strip(), len(self.parts)))
        elif shown:
            self.parts.append(a["alt"])

    def handle_endtag(self, tag: str) -> None:
        if not any(t == tag for t, _ in self._stack):
            return
        while self._stack:
            name, hides = self._stack.pop()
            self._hidden -= hides
            if name == tag:
                break
        if self._hidden:
            return
        if tag in _BLOCK_TAGS:
            self.parts.append("\n\n")
        elif tag == "a" and self._links:
            href, start = self._links.pop()
            label = re.sub(r"\s+", " ", "".join(self.parts[start:])).strip()
            del self.parts[start:]
            link = _link_text(label, href)
            # Markers of an href the text leaves out (mailto: queries, tel:) go before the label,
            # where the href stood.
            if self._keep is not None:
                gone = [m.group() for m in self._keep.finditer(href) if m.group() not in link]
                link = "".join(gone) + link
            self.parts.append(link)

    def handle_data(self, data: str) -> None:
        if self._hidden:
            self.parts.append(self._kept(data))
        else:
            self.parts.append(re.sub(r"\s+", " ", data))

    def handle_comment(self, data: str) -> None:
        self.parts.append(self._kept(data))

    def unknown_decl(self, data: str) -> None:  # <![if !mso]>, <![CDATA[...]]>
        self.parts.append(self._kept(data))

    def text(self) -> str:
        for href, start in reversed(self._links):  # never closed: keep the href's markers
            self.parts.insert(start, self._kept(href))
        lines = [line.strip() for line in "".join(self.parts).split("\n")]
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


def _link_text(label: str, href: str) -> str:
    scheme = href.split(":", 1)[0].lower() if ":" in href else ""
    if scheme == "mailto":
        target = href[7:].split("?", 1)[0]
    elif scheme in {"http", "https"} or (href and not scheme and not href.startswith("#")):
        target = href
    else:  # tel:, #anchors, javascript: ... the label says enough
        return label
    if not label or label == target:
        return target
    return f"{label} ({target})"


def html_to_text(markup: str, keep: re.Pattern[str] | None = None) -> str:
    """Readable plain text for ``markup`` (paragraphs, links as "text (url)", no CSS).

    Whatever ``keep`` matches is kept in place even where the text drops the HTML around it
    (hidden content, comments, attributes); the compile step passes the Jinja block tags.
    """
    parser = _TextExtractor(keep)
    parser.feed(markup)
    parser.close()
    return parser.text()


# --- click tracking -------------------------------------------------------------------------

# An http(s) href inside one <a ...> tag (never <link> stylesheets); the URL is group 1 or 2.
_HREF = re.compile(r"""href\s*=\s*(?:"\s*(https?://[^"]*?)\s*"|'\s*(https?://[^']*?)\s*')""")
_SPACES = frozenset(" \t\r\n\f")
_LINK_TAG_ANY_CASE = re.compile(r"<(a)(?=[\s>])[^>]*>", re.I)
# Tags between which a line break renders as nothing (table structure, blocks, conditional
# comments). mjml-python writes the body as one line of ~15k characters; broken here, once,
# at compile time, an English email fits SMTP's 998-octet lines and goes out unencoded (7bit,
# engine.mail.mime) instead of paying quoted-printable per recipient. The JavaScript mjml writes
# line breaks at the same places, and columns sit in font-size:0 cells for that reason.
_BREAK_AFTER = re.compile(
    r"(</?(?:table|tbody|thead|tfoot|tr|td|th|div|head|body|html|meta|title|style|link|center)"
    r"\b[^<>]*>|<!\[endif\]-->|<!--\[if [^\]<>]*\]>)(?=<)",
    re.I,
)
# The HTML part uses only as many of those breaks as keep lines of fixed HTML within this many
# characters (each line break costs the MIME builder a CR per email); a stretch with a value
# written per recipient, of a length unknown here (a link, tracked per recipient, is one), is a
# line of its own.
_LINE_BUDGET = 800
# A long tag, or one with a value written per recipient (a mailto: link holding a whole
# ready-made introduction), also gets a line break between its attributes, where HTML allows
# any whitespace.
_START_TAG = re.compile(r"<[a-zA-Z][^<>]*>")
_LONG_TAG_CHARS = 400
_ATTRIBUTE_GAP = re.compile(r'"[ \t]+(?=[\w:-]+=")')


def _break_lines(html: str, per_recipient: str, budget: int = _LINE_BUDGET) -> str:
    """``html`` with line breaks where they render as nothing (see _BREAK_AFTER): lines of
    fixed HTML up to ``budget`` characters (0: a break at every place); ``per_recipient`` is
    the placeholders' prefix."""

    def attributes(m: re.Match[str]) -> str:
        tag = m[0]
        if len(tag) < _LONG_TAG_CHARS and per_recipient not in tag:
            return tag
        return _ATTRIBUTE_GAP.sub('"\n', tag)

    html = _START_TAG.sub(attributes, html)
    pieces: list[str] = []
    width = 0  # characters on the line being written
    after_value = False
    pos = 0
    for cut in [*(m.end() for m in _BREAK_AFTER.finditer(html)), len(html)]:
        piece = html[pos:cut]
        value = per_recipient in piece or "<a" in piece
        first_line = piece.find("\n")
        if pieces and (
            value or after_value or width + (len(piece) if first_line < 0 else first_line) > budget
        ):
            pieces.append("\n")
            width = 0
        pieces.append(piece)
        last_break = piece.rfind("\n")
        width = width + len(piece) if last_break < 0 else len(piece) - last_break - 1
        after_value = value
        pos = cut
    return "".join(pieces)


_HREF_ANY_CASE = re.compile(r"(?<![\w-])href(?=\s*=)", re.I)
_TEXT_URL = re.compile(r"""https?://[^\s<>"'()\[\]{}]+""")
_TRAILING_PUNCT = ".,;:!?"
_BLANK_LINES = re.compile(r"\n{3,}")
# Compile time: the first attribute named href of an <a> tag, and its value (groups 2, 3, 4).
_LINK_TAG = re.compile(r"<a[ \t\r\n\f][^>]*>")
_TAG_ATTR = re.compile(r"""([^\s=/>"']+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+)))?""")
# Filters that turn data into markup (and the tags that switch escaping off): a template using
# them may write <a href> tags no compile-time analysis can see, so its output is scanned.
_MARKUP_FILTERS = frozenset({"safe", "urlize", "xmlattr"})
_OPAQUE_NODES = (
    nodes.FilterBlock,
    nodes.EvalContextModifier,
    nodes.Import,
    nodes.FromImport,
)
_HTTP = ("http://", "https://")


class _Clicks:
    """One email's click tracking: one token per destination, shared by its HTML and text."""

    __slots__ = ("_links", "_ref", "_tracked")

    def __init__(self, links: Links, ref: bytes) -> None:
        self._links = links
        self._ref = ref
        self._tracked: dict[str, str] = {}

    def url(self, destination: str) -> str:
        """The click-tracking URL that redirects to ``destination``."""
        tracked = self._tracked.get(destination)
        if tracked is None:
            tracked = self._tracked[destination] = self._links.click(self._ref, destination)
        return tracked

    def is_ours(self, url: str) -> bool:
        return self._links.is_tracking(url)


# The render in progress's clicks (set by Renderer.render around its Jinja calls).
_CLICKS: ContextVar[_Clicks] = ContextVar("render_clicks")


def _click_filter(url: str) -> str:
    """A static link's destination (decoded at compile time) -> this email's tracking URL."""
    return _CLICKS.get().url(url)


def _href_filter(value: str) -> str:
    """A per-recipient ``<a href>`` value, as rendered (escaped): the tracking URL instead when
    it is an http(s) URL that is not ours. Filter blocks are not escaped again: escape here."""
    core = str(value).strip()
    if not core.startswith(_HTTP):
        return value
    url = htmllib.unescape(core) if "&" in core else core
    clicks = _CLICKS.get()
    if clicks.is_ours(url):
        return value
    return escape(clicks.url(url))


def _jinja_string(text: str) -> str:
    """``text`` as a Jinja string literal (Jinja decodes literals with unicode-escape)."""
    for char, escaped in (("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r")):
        text = text.replace(char, escaped)
    return f'"{text}"'


# --- what templates see as ``links`` --------------------------------------------------------


class TemplateLinks:
    """``links`` in a template: this recipient's tracking URLs (never click-rewritten).

    Each URL is signed once per recipient, however often the HTML and text parts use it.
    """

    __slots__ = ("_code", "_links", "_memo", "_ref")

    def __init__(self, links: Links, ref: bytes, referral_code: str | None) -> None:
        self._links = links
        self._ref = ref
        self._code = referral_code
        self._memo: dict[str, str] = {}

    def _form(self, name: str) -> str:
        url = self._memo.get(name)
        if url is None:
            url = self._memo[name] = self._links.form(name, self._ref)
        return url

    @property
    def referral(self) -> str:
        """The personal referral page (needs ``contact.referral_code``)."""
        url = self._memo.get("referral")
        if url is None:
            if not self._code:
                raise UndefinedError("'referral_code' is undefined (links.referral needs it)")
            url = self._memo["referral"] = self._links.referral(self._code)
        return url

    @property
    def intro_form(self) -> str:
        """The "introduce one or two people" form."""
        return self._form("intro")

    @property
    def testimonial(self) -> str:
        """The testimonial form."""
        return self._form("testimonial")

    @property
    def partner_form(self) -> str:
        """The partner intake form."""
        return self._form("partner")

    @property
    def unsubscribe(self) -> str:
        """One-click unsubscribe."""
        url = self._memo.get("unsubscribe")
        if url is None:
            url = self._memo["unsubscribe"] = self._links.unsubscribe(self._ref)
        return url

    def nps(self, score: int) -> str:
        """A URL that records NPS ``score`` (0-10)."""
        key = f"nps{score}"
        url = self._memo.get(key)
        if url is None:
            url = self._memo[key] = self._links.nps(self._ref, score)
        return url

    def mailto(self, *, cc: Any = None, subject: Any = None, body: Any = None) -> str:
        """A ``mailto:`` link that opens a ready-made email; the reader adds the recipient.

        Each field is percent-encoded (UTF-8), so no value can add a field or leave the link;
        ``body`` may be a list of lines (joined with CRLF). Empty fields are left out.
        ``mailto(cc="team@acme.example", subject="Meet Acme", body=["Hi,", "", "Ana"])`` ->
        ``"mailto:?cc=team%40acme.example&subject=Meet%20Acme&body=Hi%2C%0D%0A%0D%0AAna"``
        """
        fields = []
        if _given(cc):
            fields.append("cc=" + _mailto_value(cc))
        if _given(subject):
            fields.append("subject=" + _mailto_value(subject))
        if _given(body):
            fields.append("body=" + _mailto_body(body))
        return "mailto:?" + "&".join(fields) if fields else "mailto:"


def _given(value: Any) -> bool:
    """A mailto: field to write: not None, not an empty text or list (an undefined value is
    given: writing it raises)."""
    return value is not None and not (isinstance(value, str | list | tuple) and not value)


# --- compiled templates ---------------------------------------------------------------------


@dataclass
class _Compiled:
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


def _file_key(path: str | Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _template_location(exc: BaseException, files: Mapping[str, _SourceFile]) -> tuple[str, int]:
    """The innermost template file and (original) line of a Jinja traceback, if any."""
    found: tuple[str, int] = ("", 0)
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename in files:
            found = (filename, files[filename].original_line(tb.tb_lineno))
        tb = tb.tb_next
    return found


def _reassigns(ast: nodes.Template, name: str) -> bool:
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


class _SenderConstants(NodeTransformer):
    """``sender.<name>`` -> the constant it is for a renderer (see Renderer._compile_jinja)."""

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


class _Restorer:
    """Puts the original Jinja tags back in place of their placeholders."""

    def __init__(self, tags: Sequence[_Tag], pattern: re.Pattern[str]) -> None:
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


_HTML_ROOT = re.compile(r"<html\b[^>]*>", re.I)
_EMAIL_DIV = re.compile(r"<div\b[^>]*\baria-roledescription=\"email\"[^>]*>", re.I)
_LANG_ATTR = re.compile(r"""\s(lang|dir)=("[^"]*"|'[^']*')""", re.I)


def _set_root_attrs(markup: str, lang: str, direction: str) -> str:
    """``lang`` / ``dir`` on the html element and MJML's wrapper div."""

    def fix(m: re.Match[str]) -> str:
        tag = _LANG_ATTR.sub("", m.group())
        return f'{tag[:-1].rstrip("/").rstrip()} lang="{lang}" dir="{direction}">'

    markup = _HTML_ROOT.sub(fix, markup, count=1)
    return _EMAIL_DIV.sub(fix, markup, count=1)


def _lower_link_tag(m: re.Match[str]) -> str:
    """``<A HREF=...>`` -> ``<a href=...>``, so the per-recipient pass can be case-sensitive."""
    tag = m.group()
    return "<" + m.group(1).lower() + _HREF_ANY_CASE.sub("href", tag[1 + len(m.group(1)) :])


def _mirror(markup: str) -> str:
    """The right-to-left version of MJML's output: columns and text start on the right."""
    markup = markup.replace("direction:ltr", "direction:rtl")
    markup = markup.replace("text-align:left", "text-align:right")
    return markup.replace('align="left"', 'align="right"')


class Renderer:
    """Renders MJML + Jinja templates from ``templates_dir`` for one recipient at a time.

    ``links`` builds every tracking URL (also exposed as ``renderer.links``); ``sender`` fills
    ``sender`` in templates and the footer's postal address; ``render_timeout`` is the time
    budget in seconds of one ``render`` call (a runaway template raises RenderTimeout);
    ``reload_interval`` is how long (seconds) ``render`` trusts a template it has checked before
    checking its files for edits again (0: on every render; ``check`` always looks).
    Thread-safe: compiles are serialised, renders share nothing mutable.
    """

    def __init__(
        self,
        templates_dir: Path,
        *,
        links: Links,
        sender: SenderSettings,
        render_timeout: float = 2.0,
        reload_interval: float = 1.0,
    ) -> None:
        self.templates_dir = Path(templates_dir).resolve()
        self.links = links
        self._timeout = render_timeout
        self._reload_interval = reload_interval
        self._sender = {
            "from_name": sender.from_name,
            "from_email": sender.from_email,
            "reply_to": sender.reply_to,
            "postal_address": sender.postal_address,
        }
        self._postal = sender.postal_address
        loader = FileSystemLoader(str(self.templates_dir))
        self._html_env = Sandbox(loader=loader, autoescape=True, auto_reload=True)
        self._text_env = Sandbox(
            loader=loader,
            autoescape=False,
            auto_reload=True,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
        # Every part's variables start from these (the same in both environments).
        self._globals = dict(self._html_env.globals)
        self._nonce = secrets.token_hex(4)
        self._placeholder = "jjph" + self._nonce + "x{}x"
        self._placeholder_re = re.compile("jjph" + self._nonce + r"x(\d+)x")
        self._cache: dict[Path, _Compiled] = {}
        self._candidates: dict[tuple[str, str | None], tuple[Path, ...]] = {}
        # (template, locale) -> (when its files were last checked, what they compiled to)
        self._checked: dict[tuple[str, str | None], tuple[float, _Compiled]] = {}
        self._subjects: dict[str, Template] = {}
        self._locales: dict[str | None, str | None] = {}  # as given -> normalized
        self._footers: dict[str, tuple[str, str, str]] = {}
        self._lock = threading.Lock()
        self.compile_count = 0  # MJML compilations so far (compile once, render many)

    # -- locating files

    def _base_path(self, template: str) -> Path:
        rel = PurePosixPath(template)
        if rel.is_absolute() or ".." in rel.parts or "\\" in template or not template:
            raise TemplateError(f"{template}: template names are relative to the templates folder")
        if rel.suffix != ".mjml":
            raise TemplateError(f"{template}: templates are .mjml files")
        return self.templates_dir.joinpath(*rel.parts)

    def _lookup(self, template: str, locale: str | None) -> tuple[Path, ...]:
        key = (template, locale)
        found = self._candidates.get(key)
        if found is None:
            base = self._base_path(template)
            paths: list[Path] = []
            if locale:
                parts = locale.split("-")
                for n in range(len(parts), 0, -1):
                    paths.append(base.with_name(f"{base.stem}.{'-'.join(parts[:n])}.mjml"))
            paths.append(base)
            found = tuple(paths)
            if len(self._candidates) > 4096:
                self._candidates.clear()
            self._candidates[key] = found
        return found

    def _locate(self, template: str, locale: str | None) -> tuple[Path, tuple[int, int]]:
        """The file (and its cache key) for an already normalized ``locale``."""
        candidates = self._lookup(template, locale)
        for path in candidates:
            key = _file_key(path)
            if key is not None:
                return path, key
        tried = ", ".join(p.name for p in candidates)
        raise TemplateError(f"{template}: template not found (looked for {tried})")

    def _compiled(self, template: str, locale: str | None) -> _Compiled:
        """The compiled template for an already normalized ``locale``; its files are looked at
        (a few stat calls, ~4 us each) once per reload_interval, not for every email."""
        key = (template, locale)
        now = time.monotonic()
        found = self._checked.get(key)
        if found is not None and now - found[0] < self._reload_interval:
            return found[1]
        compiled = self._get(*self._locate(template, locale))
        if len(self._checked) > 4096:
            self._checked.clear()
        self._checked[key] = (now, compiled)
        return compiled

    def resolve(self, template: str, locale: str | None) -> Path:
        """The file for ``locale``: ``x.pt-BR.mjml``, then ``x.pt.mjml``, then ``x.mjml``."""
        return self._locate(template, normalize_locale(locale))[0]

    # -- compiling

    def _get(self, path: Path, key: tuple[int, int]) -> _Compiled:
        compiled = self._cache.get(path)
        if compiled is not None and compiled.key == key and self._fresh(compiled):
            return compiled
        with self._lock:
            compiled = self._cache.get(path)
            if compiled is None or compiled.key != key or not self._fresh(compiled):
                compiled = self._compile(path, key)
                self._cache[path] = compiled
        return compiled

    @staticmethod
    def _fresh(compiled: _Compiled) -> bool:
        return all(_file_key(dep) == key for dep, key in compiled.deps)

    def _compile(self, path: Path, key: tuple[int, int]) -> _Compiled:
        name = path.relative_to(self.templates_dir).as_posix()
        compiled = _Compiled(name=name, key=key, deps=(), problems=[])
        loader = _ProtectingLoader(self.templates_dir, self._html_env, self._placeholder)
        twin = path.with_suffix(".txt")
        try:
            self._build(compiled, path, loader, twin)
        finally:
            files = [f for f in loader.files if Path(f) != path]
            compiled.deps = tuple((f, _file_key(f)) for f in [*files, str(twin)])
        return compiled

    def _build(self, c: _Compiled, path: Path, loader: _ProtectingLoader, twin: Path) -> None:
        """Fills ``c`` (templates and problems); returns early at the first fatal problem."""
        main = str(path)

        def problem(where: str, line: int, col: int, message: str, fatal: bool = True) -> None:
            found = TemplateProblem(where or main, max(line, 1), max(col, 1), message)
            c.problems.append(found)
            if fatal and c.error is None:
                c.error = found

        # 1. flatten includes / inheritance with every other tag protected
        flattener = Sandbox(loader=loader, autoescape=False, keep_trailing_newline=True)
        token = _DEADLINE.set(time.perf_counter() + self._timeout)
        try:
            flat = flattener.get_template(c.name).render()
        except TemplateSyntaxError as exc:
            problem(exc.filename or main, exc.lineno, 1, f"Jinja syntax error: {exc.message}")
            return
        except TemplateNotFound as exc:
            where, line = _template_location(exc, loader.files)
            if not loader.files:
                problem(main, 1, 1, "template not found")
            else:
                problem(where, line, 1, f"included template {exc.name!r} not found")
            return
        except Exception as exc:  # a dynamic include name, an include loop, bad encoding ...
            where, line = _template_location(exc, loader.files)
            problem(where, line, 1, f"include / extends failed (names must be fixed): {exc}")
            return
        finally:
            _DEADLINE.reset(token)
        tags = loader.tags

        def at(index: int, message: str, fatal: bool = True) -> None:
            tag = tags[index]
            problem(tag.path, tag.line, tag.col, message, fatal)

        # 2. where do the placeholders sit? wrap the ones between components in mj-raw
        spots = _placeholder_spots(flat, self._placeholder_re)
        pieces: list[str] = []
        pos = 0
        explained: set[int] = set()  # tags already reported for where they sit
        for spot in spots:
            if spot.where == "wrap":
                pieces += [
                    flat[pos : spot.start],
                    "<mj-raw>",
                    flat[spot.start : spot.end],
                    "</mj-raw>",
                ]
                pos = spot.end
            elif spot.where == "markup":
                at(
                    spot.tag,
                    f"a Jinja tag inside the <{spot.element}> tag must be an attribute value",
                )
            elif spot.where == "attribute" and (
                spot.attribute in _LAYOUT_ATTRS or spot.attribute.startswith("padding")
            ):
                at(
                    spot.tag,
                    f'Jinja in the layout attribute {spot.attribute}="..." of <{spot.element}>: '
                    "MJML computes the layout once, so a per-recipient value is dropped or "
                    "ignored; use a fixed value",
                    fatal=False,
                )
                explained.add(spot.tag)
        pieces.append(flat[pos:])
        if c.error:
            return
        source = "".join(pieces)

        # 3. MJML -> HTML, then check every placeholder came through
        self.compile_count += 1
        try:
            compiled_html = mjml.mjml2html(source)
        except ValueError as exc:
            found = [p for f in loader.files.values() for p in _balance_problems(f)]
            for p in found:
                problem(p.path, p.line, p.col, f"MJML: {p.message}")
            if not found:
                self._mjml_error(str(exc), source, tags, problem)
            return
        for unknown in sorted(set(re.findall(r"<(mj-[a-z-]+)", compiled_html))):
            where, line, col = self._find(loader, re.compile(f"<{unknown}(?![\\w-])"))
            problem(where, line, col, f"unknown MJML element <{unknown}>")
        emitted = {int(m.group(1)) for m in self._placeholder_re.finditer(flat)}
        counts: dict[int, int] = {}
        for m in self._placeholder_re.finditer(compiled_html):
            counts[int(m.group(1))] = counts.get(int(m.group(1)), 0) + 1
        for index in sorted(emitted):
            n = counts.get(index, 0)
            if n == 0 and tags[index].block:
                at(
                    index,
                    "MJML dropped this Jinja tag (it must sit in content or between components)",
                )
            elif n == 0 and index not in explained:
                at(
                    index,
                    "MJML dropped this Jinja expression (unsupported attribute or place)",
                    False,
                )
            elif n > 1 and tags[index].block:
                at(index, f"MJML copied this Jinja tag {n} times; move it out of this attribute")
        if c.error:
            return

        # 4. back to Jinja: one template per direction, plus the text part
        lowered = _LINK_TAG_ANY_CASE.sub(_lower_link_tag, compiled_html)
        per_recipient = self._placeholder.partition("{")[0]
        compiled_html = _break_lines(lowered, per_recipient)
        lang_ph = self._placeholder.format(len(tags))
        with_lang = [*tags, _Tag("{{ lang }}", main, 0, 0, False)]
        restore = _Restorer(with_lang, self._placeholder_re)
        try:
            ast = self._html_env.parse(restore(compiled_html))
        except TemplateSyntaxError as exc:
            problem(main, 1, 1, f"MJML moved Jinja tags out of order: {exc.message}")
            return
        # Links are tracked in the template itself unless it may write links of its own.
        slotted = None
        if not self._writes_markup(ast, tags):
            slotted = self._slot_links(compiled_html, with_lang, _reassigns(ast, "links"))
        c.scan = slotted is None
        markup, restore_html = slotted or (compiled_html, restore)
        c.html = self._compile_jinja(
            self._html_env, restore_html(_set_root_attrs(markup, lang_ph, "ltr")), path
        )
        c.rtl_source = restore_html(_mirror(_set_root_attrs(markup, lang_ph, "rtl")))
        if twin.is_file():
            c.text_name = twin.relative_to(self.templates_dir).as_posix()
            try:
                twin_source = twin.read_text(encoding="utf-8")
                c.text = self._compile_jinja(self._text_env, twin_source, twin)
            except OSError as exc:  # removed or unreadable since it was looked at
                problem(str(twin), 1, 1, f"cannot read the text part: {exc}")
                return
            except TemplateSyntaxError as exc:
                problem(str(twin), exc.lineno, 1, f"Jinja syntax error: {exc.message}")
                return
            self._lint_names(c, str(twin), twin_source, self._text_env)
        else:
            c.text_name = f"{c.name} (text)"
            # From the HTML with a break at every place, as the text has always been derived
            # (a break between two cells is a space in the text).
            derived = self._derive_text(_break_lines(lowered, per_recipient, 0), tags)
            if isinstance(derived, int):
                at(
                    derived,
                    "the text part derived from the HTML cannot keep this Jinja tag in place; "
                    "write a .txt twin",
                )
                return
            try:
                c.text = self._compile_jinja(self._text_env, restore(derived), path)
            except TemplateSyntaxError as exc:
                problem(main, 1, 1, f"the derived text part is not valid Jinja: {exc.message}")
                return
        self._lint_names(c, main, path.read_text(encoding="utf-8"), self._html_env)

    @staticmethod
    def _writes_markup(ast: nodes.Template, tags: Sequence[_Tag]) -> bool:
        """Can this template write ``<a href>`` that is not in its text (data made markup,
        escaping off, filter blocks that rewrite text, imported macros, raw blocks)?"""
        return (
            next(ast.find_all(_OPAQUE_NODES), None) is not None
            or any(f.name in _MARKUP_FILTERS for f in ast.find_all(nodes.Filter))
            or any(_RAW_TAG.match(t.text) and "<a" in t.text.lower() for t in tags)
        )

    def _slot_links(
        self, markup: str, tags: Sequence[_Tag], links_reassigned: bool
    ) -> tuple[str, _Restorer] | None:
        """``markup`` (compiled HTML with placeholders) with its links tracked by Jinja itself,
        and the restorer that knows the tags this adds; None when a link is out of reach.

        A static http(s) href becomes ``{{ "<url>" | _engine_click }}`` (decoded once, here);
        one built per recipient is wrapped in ``{% filter _engine_href %}``, which decides on
        the rendered value. Others (mailto:, tel:, #, ours, and an href that is one
        ``{{ links.* }}`` value unless the template assigns ``links``) stay as they are.
        """
        tags = list(tags)
        out: list[str] = []
        pos = 0

        def tag(text: str) -> str:
            tags.append(_Tag(text, "", 0, 0, text.startswith("{%")))
            return self._placeholder.format(len(tags) - 1)

        for link in _LINK_TAG.finditer(markup):
            attrs = _TAG_ATTR.finditer(link.group(), 2)
            href = next((a for a in attrs if a.group(1).lower() == "href"), None)
            group = next((g for g in (2, 3, 4) if href and href.group(g) is not None), None)
            if href is None or group is None:
                continue
            value = href.group(group)
            core = value.strip()
            start = link.start() + href.start(group) + len(value) - len(value.lstrip())
            end = start + len(core)
            first = self._placeholder_re.search(core)
            if first is None:
                if not core.startswith(_HTTP):
                    continue
                url = htmllib.unescape(core)
                if self.links.is_tracking(url):
                    continue
                out += (markup[pos:start], tag(f"{{{{ {_jinja_string(url)} | {_CLICK_FILTER} }}}}"))
            else:
                prefix = core[: first.start()]
                if not (prefix.startswith(_HTTP) or any(h.startswith(prefix) for h in _HTTP)):
                    continue
                whole = first.span() == (0, len(core))
                if whole and not links_reassigned and self._is_links_value(tags[int(first[1])]):
                    continue
                if any(tags[int(m.group(1))].block for m in self._placeholder_re.finditer(core)):
                    return None  # a block tag inside an href: leave it to the output scan
                out += (
                    markup[pos:start],
                    tag(f"{{% filter {_HREF_FILTER} %}}"),
                    core,
                    tag("{% endfilter %}"),
                )
            pos = end
        out.append(markup[pos:])
        return "".join(out), _Restorer(tags, self._placeholder_re)

    def _is_links_value(self, tag: _Tag) -> bool:
        """Is ``tag`` one ``{{ links.name }}`` or ``{{ links.name(...) }}``? Those URLs are ours
        or mailto: links (TemplateLinks), never click-tracked: no filter block is needed."""
        if not tag.text.startswith("{{"):
            return False
        body = self._html_env.parse(tag.text).body
        if len(body) != 1 or not isinstance(body[0], nodes.Output) or len(body[0].nodes) != 1:
            return False
        expr = body[0].nodes[0]
        if isinstance(expr, nodes.Call):
            expr = expr.node
        return (
            isinstance(expr, nodes.Getattr)
            and isinstance(expr.node, nodes.Name)
            and expr.node.name == "links"
        )

    def _derive_text(self, compiled_html: str, tags: Sequence[_Tag]) -> str | int:
        """The text part (with placeholders) derived from ``compiled_html``, or the index of the
        first Jinja block tag it could not keep in the HTML's order.

        Block tags (if, for, set ...) must survive even where the text drops the HTML around
        them, or the text part would render what the HTML guards (``reward.description``
        under ``{% if reward %}`` with reward None).
        """
        structural = [str(i) for i, t in enumerate(tags) if t.block and not _RAW_TAG.match(t.text)]
        if not structural:
            return html_to_text(compiled_html)
        keep = re.compile(self._placeholder.format(f"({'|'.join(structural)})"))
        text = html_to_text(compiled_html, keep)
        in_html = [int(m.group(1)) for m in keep.finditer(compiled_html)]
        in_text = [int(m.group(1)) for m in keep.finditer(text)]
        if in_html == in_text:
            return text
        pairs = enumerate(itertools.zip_longest(in_html, in_text))
        first = next(i for i, (h, t) in pairs if h != t)
        return in_html[first] if first < len(in_html) else in_text[first]

    def _mjml_error(
        self,
        message: str,
        source: str,
        tags: Sequence[_Tag],
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
        snippet = " ".join(_Restorer(tags, self._placeholder_re)(snippet).split())
        tag = self._placeholder_re.search(near)
        if tag is None:
            problem("", 1, 1, f"MJML: {message} (near {snippet!r})")
            return
        t = tags[int(tag.group(1))]
        problem(t.path, t.line, t.col, f"MJML cannot place this Jinja tag here: {message}")

    def _compile_jinja(self, env: Environment, source: str, path: Path) -> Template:
        """``source`` compiled, ``sender.<name>`` written in as the constant it is for this
        renderer (unless the template names something else ``sender``): Jinja then folds what
        is built from it (``"You should meet " ~ sender.from_name``) once, here."""
        ast = env.parse(source, path.name, str(path))
        if not _reassigns(ast, "sender"):
            ast = _SenderConstants(self._sender, env).visit(ast)
        code = env.compile(ast, path.name, str(path))
        return env.template_class.from_code(env, code, env.make_globals(None))

    @staticmethod
    def _find(loader: _ProtectingLoader, needle: re.Pattern[str]) -> tuple[str, int, int]:
        """The first place ``needle`` is written in the template or its partials."""
        for record in loader.files.values():
            m = needle.search(record.source)
            if m is not None:
                return (record.path, *_line_col(record.source, m.start()))
        return next(iter(loader.files)), 1, 1

    @staticmethod
    def _lint_names(c: _Compiled, where: str, source: str, env: Environment) -> None:
        """Warn about variables that are not in the template context (typos)."""
        ast = env.parse(source)
        unknown = meta.find_undeclared_variables(ast) - CONTEXT_NAMES - set(env.globals)
        for name in sorted(unknown):
            line = next((n.lineno for n in ast.find_all(nodes.Name) if n.name == name), 1)
            c.problems.append(
                TemplateProblem(
                    where,
                    line,
                    1,
                    f"unknown variable {name!r} (the context has: "
                    f"{', '.join(sorted(CONTEXT_NAMES))})",
                )
            )

    # -- rendering

    def render(
        self,
        template: str,
        subject: str,
        context: Mapping[str, Any],
        *,
        locale: str | None,
        ref: bytes,
    ) -> Rendered:
        """The email for one recipient; TemplateError (or RenderTimeout) when it cannot be made.

        ``context`` holds contact, sequence, step, referral, reward; the renderer adds sender,
        links, lang and dir. ``ref`` is the message's random public id (tracking tokens).
        """
        norm = self._locales.get(locale, missing)
        if norm is missing:
            norm = normalize_locale(locale)
            if len(self._locales) > 4096:
                self._locales.clear()
            self._locales[locale] = norm
        compiled = self._compiled(template, norm)
        if compiled.error is not None:
            raise TemplateError(str(compiled.error))
        lang = norm.split("-", 1)[0] if norm else DEFAULT_LANG
        direction = text_direction(lang)
        contact = context.get("contact")
        code = contact.get("referral_code") if isinstance(contact, Mapping) else None
        links = TemplateLinks(self.links, ref, code)
        variables = {
            **self._globals,
            **context,
            "sender": self._sender,
            "links": links,
            "lang": lang,
            "dir": direction,
        }
        html_template = self._rtl(compiled) if direction == "rtl" else compiled.html
        assert html_template is not None and compiled.text is not None  # no error: both built
        clicks = _Clicks(self.links, ref)  # the same URL in HTML and text: one token
        token = _DEADLINE.set(time.perf_counter() + self._timeout)
        clicks_token = _CLICKS.set(clicks)
        try:
            label = f"{compiled.name} (subject)"
            # Most subjects are plain text: nothing for Jinja to do.
            subject_text = (
                "".join(_render_part(self._subject(subject), variables))
                if "{" in subject
                else subject
            )
            label = compiled.name
            html = _render_part(html_template, variables)
            label = compiled.text_name
            text = "".join(_render_part(compiled.text, variables))
        except TemplateError as exc:
            raise type(exc)(f"{label}: {exc}") from exc
        except (RecursionError, MemoryError) as exc:
            raise RenderTimeout(f"{label}: runaway template ({type(exc).__name__})") from exc
        except SecurityError as exc:
            raise TemplateError(f"{label}: unsafe template code: {exc}") from exc
        except UndefinedError as exc:
            raise TemplateError(f"{label}: {exc.message}") from exc
        except Exception as exc:
            raise TemplateError(f"{label}: {type(exc).__name__}: {exc}") from exc
        finally:
            _CLICKS.reset(clicks_token)
            _DEADLINE.reset(token)
        unsubscribe = links.unsubscribe
        before_link, after_link, text_footer = self._footer(lang)
        if compiled.scan:
            html = [self._track_html("".join(html), clicks)]
        honeypot = self.links.honeypot(ref)
        tail = (
            f"{before_link}{_escape_output(unsubscribe)}{after_link}\n"
            f'<a href="{honeypot}" style="display:none" aria-hidden="true" tabindex="-1"></a>'
            f'<img src="{_escape_output(self.links.open(ref))}" width="1" height="1" alt="" '
            'style="display:block;border:0">'
        )
        # Before the last </body>, which is in one of the last (static) pieces.
        for i in range(len(html) - 1, -1, -1):
            cut = html[i].rfind("</body>")
            if cut >= 0:
                html[i : i + 1] = (html[i][:cut], tail, html[i][cut:])
                break
        else:
            html.append(tail)
        text = self._track_text(text, clicks)
        if "\n\n\n" in text:  # far faster than letting the regex look everywhere
            text = _BLANK_LINES.sub("\n\n", text)
        text = text.strip()
        text += f"{text_footer}{unsubscribe}\n"
        return Rendered(" ".join(subject_text.split()), "".join(html), text, unsubscribe)

    def _rtl(self, compiled: _Compiled) -> Template:
        if compiled.rtl is None:
            path = self.templates_dir / compiled.name
            compiled.rtl = self._compile_jinja(self._html_env, compiled.rtl_source, path)
        return compiled.rtl

    def _subject(self, subject: str) -> Template:
        found = self._subjects.get(subject)
        if found is None:
            try:
                found = self._text_env.from_string(subject)
            except TemplateSyntaxError as exc:
                raise TemplateError(f"Jinja syntax error: {exc.message}") from exc
            if len(self._subjects) > 1024:
                self._subjects.clear()
            self._subjects[subject] = found
        return found

    def _footer(self, lang: str) -> tuple[str, str, str]:
        """The footer in ``lang`` (else English): HTML before and after the unsubscribe URL,
        and the text footer up to that URL."""
        found = self._footers.get(lang)
        if found is None:
            code = lang if lang in FOOTER_TEXT else DEFAULT_LANG
            question, label = FOOTER_TEXT[code]
            e = htmllib.escape
            before = (
                f'<div lang="{code}" dir="{text_direction(code)}" style="margin:0 auto;'
                "max-width:600px;padding:16px 25px 24px;font-family:Arial,Helvetica,sans-serif;"
                'font-size:12px;line-height:18px;color:#6b7280;text-align:center;">'
                f'<p style="margin:0 0 6px;">{e(self._postal)}</p>'
                f'<p style="margin:0;">{e(question)} <a href="'
            )
            after = f'" style="color:#6b7280;text-decoration:underline;">{e(label)}</a></p></div>'
            found = (before, after, f"\n\n-- \n{self._postal}\n{question} {label}: ")
            self._footers[lang] = found
        return found

    def _track_html(self, markup: str, clicks: _Clicks) -> str:
        """Every http(s) ``<a href>`` not already ours goes through the click tracker (the
        output of templates that may write links of their own).

        One pass with str.find from one ``<a`` to the next (much faster than a regex over the
        whole document); templates' ``<A HREF`` are lower-cased at compile time.
        """
        out: list[str] = []
        pos = 0
        find = markup.find
        while (start := find("<a", pos)) >= 0:
            end = find(">", start)
            if end < 0:
                break
            m = (
                _HREF.search(markup, start, end)
                if markup[start + 2 : start + 3] in _SPACES
                else None
            )
            while m is not None and markup[m.start() - 1] not in _SPACES:  # data-href= ...
                m = _HREF.search(markup, m.end(), end)
            if m is not None:
                value = m.group(1) if m.group(1) is not None else m.group(2)
                url = htmllib.unescape(value) if "&" in value else value
                if not self.links.is_tracking(url):
                    group = 1 if m.group(1) is not None else 2
                    tracked = htmllib.escape(clicks.url(url))
                    out += (markup[pos : m.start(group)], tracked)
                    pos = m.end(group)
            out.append(markup[pos : end + 1])
            pos = end + 1
        out.append(markup[pos:])
        return "".join(out)

    def _track_text(self, text: str, clicks: _Clicks) -> str:
        """Bare http(s) URLs in the text part go through the click tracker too."""
        links = self.links
        ours = links.base_url + "/"
        # Most text parts only hold our own URLs (links.*), which stay as they are: when every
        # "http" starts one of them (C counts, a few times faster than the scan), nothing
        # changes. Our prefix must then be one URL to the scan, with a single "http".
        if (
            text.count("http") == text.count(ours)
            and ours.count("http") == 1
            and _TEXT_URL.fullmatch(ours)
        ):
            return text

        def swap(m: re.Match[str]) -> str:
            before = text[m.start() - 1] if m.start() else " "
            if before.isalnum() or before in "@/_":
                return m.group()
            url = m.group()
            trailing = ""
            while url and url[-1] in _TRAILING_PUNCT:
                url, trailing = url[:-1], url[-1] + trailing
            if links.is_tracking(url):
                return m.group()
            return clicks.url(url) + trailing

        return _TEXT_URL.sub(swap, text)

    # -- validation

    def check(self, template: str) -> list[TemplateProblem]:
        """Problems in ``template`` and each of its locale variants (nothing is rendered)."""
        try:
            base = self._base_path(template)
        except TemplateError as exc:
            return [TemplateProblem(template, 1, 1, str(exc))]
        variant = re.compile(re.escape(base.stem) + r"\.([A-Za-z0-9_-]+)\.mjml\Z")
        paths = [base] if base.is_file() else []
        problems: list[TemplateProblem] = []
        if not paths:
            problems.append(TemplateProblem(str(base), 1, 1, "template not found"))
        with contextlib.suppress(OSError):
            paths += sorted(
                p
                for p in base.parent.iterdir()
                if (m := variant.match(p.name)) and normalize_locale(m.group(1)) and p.is_file()
            )
        for path in paths:
            key = _file_key(path)
            if key is None:
                continue
            for found in self._get(path, key).problems:
                if found not in problems:
                    problems.append(found)
        return problems

    def check_subject(self, subject: str, names: frozenset[str] = CONTEXT_NAMES) -> str | None:
        """A Jinja syntax error (or a variable outside ``names``) in a line of text, else None."""
        try:
            ast = self._text_env.parse(subject)
        except TemplateSyntaxError as exc:
            return f"Jinja syntax error: {exc.message}"
        unknown = meta.find_undeclared_variables(ast) - names - set(self._text_env.globals)
        if unknown:
            return f"unknown variable {sorted(unknown)[0]!r}"
        return None

    def render_note(self, source: str, context: Mapping[str, Any]) -> str:
        """Jinja text (a note's subject or body) in the sandbox, under the render deadline;
        TemplateError when it cannot be rendered (a missing value, a typo)."""
        token = _DEADLINE.set(time.perf_counter() + self._timeout)
        try:
            variables = {**self._globals, **context, "sender": self._sender}
            return "".join(_render_part(self._subject(source), variables))
        except TemplateError:
            raise
        except UndefinedError as exc:
            raise TemplateError(exc.message or str(exc)) from exc
        except Exception as exc:
            raise TemplateError(f"{type(exc).__name__}: {exc}") from exc
        finally:
            _DEADLINE.reset(token)
