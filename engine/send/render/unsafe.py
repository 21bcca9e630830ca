"""What the sandbox would refuse at render time, found in a template's source before sending.

``validate`` runs this over every template, twin and subject: an attribute walk
(``''.__class__.__mro__``, ``x['__globals__']``, ``x|attr('_y')``), a call of a method that
changes a value (``list.append``), a ``format`` string that reaches into attributes or asks for
a huge width, and a ``range`` of constants over the budget. The render-time checks stay the
guard (templates build values at render time); this only says so early, with a line and column.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from string import Formatter

from jinja2 import nodes
from jinja2.sandbox import (
    UNSAFE_ASYNC_GENERATOR_ATTRIBUTES,
    UNSAFE_COROUTINE_ATTRIBUTES,
    UNSAFE_GENERATOR_ATTRIBUTES,
    modifies_known_mutable,
)

from engine.base.errors import RenderTimeout
from engine.send.render.budget import FORMAT_WIDTH, check_percent, template_range

# Attributes the sandbox never gives out, whatever the object (Jinja's own lists, and ``mro``
# of a type): with ``_``-prefixed names, the steps of every known sandbox escape.
_INTERNAL = frozenset(
    {"mro", "func_globals", "func_code", "f_globals", "f_builtins", "tb_frame", "im_func"}
    | UNSAFE_GENERATOR_ATTRIBUTES
    | UNSAFE_COROUTINE_ATTRIBUTES
    | UNSAFE_ASYNC_GENERATOR_ATTRIBUTES
)
# Samples of the mutable types the immutable sandbox guards: a call of one of their changing
# methods (append, update, pop ...) is refused at render time.
_MUTABLE_SAMPLES: tuple[object, ...] = ([], {}, set(), deque())
_FORMAT_METHODS = frozenset({"format", "format_map"})


def _unsafe_name(owner: nodes.Node | None, name: str) -> bool:
    """Would the sandbox refuse ``owner.name``? ``contact``'s own fields are data (a custom
    field may start with ``_``); anything else's private and internal attributes are not."""
    if isinstance(owner, nodes.Name) and owner.name == "contact" and not name.startswith("__"):
        return False
    return name.startswith("_") or name in _INTERNAL


def _format_problem(fmt: str) -> str | None:
    """What a constant ``str.format`` string would be refused for, if anything."""
    if FORMAT_WIDTH.search(fmt):
        return "a format width over the render budget"
    try:
        fields = [f for _, f, _, _ in Formatter().parse(fmt) if f]
    except ValueError:
        return None  # not a format string: the render says so
    for field in fields:
        parts = field.replace("[", ".").split(".")[1:]
        if any(p.startswith("_") for p in parts):
            return f"the format field {{{field}}} reaches into a private attribute"
    return None


def _problems(ast: nodes.Template) -> Iterator[tuple[int, str, str]]:
    """(line, the text to point at, message) for each refused construct."""
    for node in ast.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter, nodes.Call)):
        line = node.lineno
        if isinstance(node, nodes.Getattr) and _unsafe_name(node.node, node.attr):
            yield line, node.attr, f"unsafe attribute {node.attr!r}: templates cannot reach it"
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            key = node.arg.value
            if isinstance(key, str) and _unsafe_name(node.node, key):
                yield line, key, f"unsafe attribute {key!r}: templates cannot reach it"
        elif isinstance(node, nodes.Filter):
            arg = node.args[0] if node.args else None
            if node.name == "attr" and isinstance(arg, nodes.Const) and isinstance(arg.value, str):
                if _unsafe_name(None, arg.value):
                    yield (
                        line,
                        arg.value,
                        f"unsafe attribute {arg.value!r}: templates cannot reach it",
                    )
            elif node.name == "format" and isinstance(node.node, nodes.Const):
                try:
                    check_percent(str(node.node.value), ())
                except RenderTimeout:
                    yield line, "format", "a format width over the render budget"
        elif isinstance(node, nodes.Call):
            yield from _call_problems(node)


def _call_problems(node: nodes.Call) -> Iterator[tuple[int, str, str]]:
    target = node.node
    if isinstance(target, nodes.Getattr):
        method = target.attr
        if any(modifies_known_mutable(sample, method) for sample in _MUTABLE_SAMPLES):
            yield node.lineno, method, f"unsafe call .{method}(): templates cannot change values"
        elif method in _FORMAT_METHODS and isinstance(target.node, nodes.Const):
            found = _format_problem(str(target.node.value))
            if found is not None:
                yield node.lineno, method, found
    elif isinstance(target, nodes.Name) and target.name == "range":
        values = [a.value for a in node.args if isinstance(a, nodes.Const)]
        if values and len(values) == len(node.args) and all(type(v) is int for v in values):
            try:
                template_range(*values)
            except (RenderTimeout, ValueError) as exc:
                yield node.lineno, "range", str(exc)


def unsafe_code(ast: nodes.Template, source: str) -> list[tuple[int, int, str]]:
    """(line, column, message) of each construct in ``ast`` (parsed from ``source``) that the
    sandbox or the render budget would refuse; the column is where its name is written."""
    lines = source.splitlines()
    found: list[tuple[int, int, str]] = []
    for line, text, message in _problems(ast):
        written = lines[line - 1] if 0 < line <= len(lines) else ""
        col = written.find(text) + 1 or 1
        if (line, col, message) not in found:
            found.append((line, col, message))
    return sorted(found)
