"""The Jinja environment of every template: Jinja's immutable sandbox with the render budget.

The sandbox refuses private attributes and mutation; on top of it every call checks the
deadline, operators and string methods that could build huge values are size-checked, and
the engine's own filters are registered (the loop guard, ``urlencode`` by table, click
tracking). ``{{ value }}`` in HTML is escaped by ``escape_output``.
"""

from __future__ import annotations

from types import MethodType
from typing import Any

from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import escape

from engine.send.render.budget import (
    AMPLIFYING_FILTERS,
    FORMAT_WIDTH,
    MAX_INT_BITS,
    MAX_ITEMS,
    MAX_OUTPUT_CHARS,
    WIDTH_METHODS,
    capped,
    check_percent,
    check_replace,
    check_width,
    guard,
    join_size,
    safe_filter,
    template_range,
    tick,
    too_big,
)
from engine.send.render.jinja_internals import (
    GUARD_FILTER,
    JINJA_CALL_KWARGS,
    SAFE_GLOBALS,
    GuardedCodeGenerator,
    NamingUndefined,
)
from engine.send.render.template_links import TemplateLinks, urlencode
from engine.send.render.tracking import CLICK_FILTER, HREF_FILTER, click_filter, href_filter

# Sandbox.getattr's "not found" (None is a value).
_ABSENT = object()


def escape_output(value: Any) -> Any:
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


_DICT_ATTRIBUTES = frozenset(dir(dict))


class Sandbox(ImmutableSandboxedEnvironment):
    """The Jinja environment of every template: sandbox + budget (see the module docstring).

    Public so that tools and benchmarks render with exactly the engine's rules.
    """

    code_generator_class = GuardedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})
    capped = staticmethod(capped)
    escape_output = staticmethod(escape_output)

    def __init__(self, **options: Any) -> None:
        super().__init__(undefined=NamingUndefined, **options)
        self.globals.clear()  # only what is known to be safe
        self.globals.update(range=template_range, **SAFE_GLOBALS)
        for name in AMPLIFYING_FILTERS:
            self.filters[name] = safe_filter(name, self.filters[name])
        self.filters[GUARD_FILTER] = guard
        self.filters["urlencode"] = urlencode
        self.filters[CLICK_FILTER] = click_filter
        self.filters[HREF_FILTER] = href_filter

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(n, int):
                    limit = MAX_OUTPUT_CHARS if isinstance(seq, str) else MAX_ITEMS
                    if len(seq) * n > limit:
                        raise too_big("a repetition")
        elif (
            operator == "**"
            and isinstance(left, int)
            and isinstance(right, int)
            and right > 0
            and abs(left) > 1
            and left.bit_length() * right > MAX_INT_BITS
        ):
            raise too_big("a power")
        elif operator == "%" and isinstance(left, str):
            check_percent(left, right)
        return capped(self.binop_table[operator](left, right))

    def getattr(self, obj: Any, attribute: str) -> Any:
        # Fast paths for what templates read most: contact data (a dict key is data, never a
        # method) and ``links``; everything else takes the sandbox's checks.
        if type(obj) is dict:
            value = obj.get(attribute, _ABSENT)
            if value is not _ABSENT:
                return value
            if attribute not in _DICT_ATTRIBUTES:  # what the sandbox finds, minus two raises
                return self.undefined(obj=obj, name=attribute)
        elif type(obj) is TemplateLinks and not attribute.startswith("_"):
            return getattr(obj, attribute)
        return super().getattr(obj, attribute)

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        tick()
        if type(obj) is MethodType and type(obj.__self__) is TemplateLinks:
            # Jinja adds _loop_vars / _block_vars for its own callables: not for ours.
            return obj(*args, **{k: v for k, v in kwargs.items() if k not in JINJA_CALL_KWARGS})
        target = getattr(obj, "__wrapped__", obj)  # str.format comes wrapped by the sandbox
        owner = getattr(target, "__self__", None)
        if isinstance(owner, str):
            method = getattr(target, "__name__", "")
            if method in WIDTH_METHODS:
                check_width(*args, *kwargs.values())
            elif method in {"format", "format_map"} and FORMAT_WIDTH.search(owner):
                raise too_big("a format width")
            elif method == "replace" and len(args) >= 2:
                check_replace(owner, args[0], args[1])
            elif method == "join" and args:
                items = list(args[0])
                if join_size(owner, items) > MAX_OUTPUT_CHARS:
                    raise too_big("a join() result")
                args = (items, *args[1:])
        return capped(super().call(context, obj, *args, **kwargs))
