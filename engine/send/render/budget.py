"""The render budget: runaway templates are stopped without threads.

Every call, ``for`` loop and ``range`` checks a per-render deadline (``DEADLINE``, set by the
caller around its Jinja calls); operators, string methods and filters that could build huge
values are size-checked before and after, and every value a template builds is capped.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from contextvars import ContextVar
from functools import wraps
from typing import Any, TypeVar, cast

from jinja2.environment import Environment
from jinja2.nodes import EvalContext
from jinja2.runtime import Context

from engine.base.errors import RenderTimeout

MAX_OUTPUT_CHARS = 2_000_000  # per rendered part and per value built by a template
MAX_ITEMS = 100_000  # per range() / list repetition
MAX_INT_BITS = 65_536

# The render in progress's deadline (time.perf_counter()); none outside a render.
DEADLINE: ContextVar[float] = ContextVar("render_deadline", default=math.inf)

T = TypeVar("T")


def tick() -> None:
    """RenderTimeout once the render in progress is past its deadline."""
    if time.perf_counter() > DEADLINE.get():
        raise RenderTimeout("render time budget exceeded")


def too_big(what: str) -> RenderTimeout:
    """The error for ``what`` (a value, a width, the output) over the budget."""
    return RenderTimeout(f"{what} is over the render budget")


def capped(value: T) -> T:
    """``value`` unless it is a string or sequence over the size budget."""
    if isinstance(value, str):
        if len(value) > MAX_OUTPUT_CHARS:
            raise too_big(f"a string of {len(value)} characters")
    elif isinstance(value, list | tuple):
        if len(value) > MAX_ITEMS:
            raise too_big(f"a list of {len(value)} items")
    elif isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise too_big("an integer")
    return value


def template_range(*args: int) -> range:
    """``range`` for templates: at most MAX_ITEMS numbers."""
    rng = range(*args)
    try:
        size = len(rng)
    except OverflowError:
        size = MAX_ITEMS + 1
    if size > MAX_ITEMS:
        raise too_big(f"range() of {size} items")
    return rng


_SIZED = frozenset({list, tuple, range})


def guard(iterable: Iterable[Any]) -> Iterable[Any]:
    """Wraps every ``{% for %}`` iterable: nested or long loops run into the deadline.

    A list, tuple or range shorter than the check interval is looped over as it is: its start is
    checked, as every 256th item of a longer one is, and a generator per loop costs as much as
    the loop body (the lines of a ready-made introduction, the 11 NPS scores).
    """
    tick()
    if type(iterable) in _SIZED and len(cast(Sized, iterable)) <= 0xFF:
        return iterable
    return _guarded(iterable)


def _guarded(iterable: Iterable[Any]) -> Iterator[Any]:
    for n, item in enumerate(iterable, 1):
        if not n & 0xFF:
            tick()
        yield item


_PERCENT_WIDTH = re.compile(r"%(?:\([^)]*\))?[-+ #0]*(\d{7,}|\*)")
FORMAT_WIDTH = re.compile(r"\{[^{}]*:[^{}]*(?:\d{7,}|\{)")


def check_percent(fmt: str, args: Any) -> None:
    """Refuses a ``%`` format whose width is huge or taken from a huge argument (``*``)."""
    m = _PERCENT_WIDTH.search(fmt)
    if m is None:
        return
    values = args if isinstance(args, tuple) else (args,)
    if m.group(1) != "*" or any(isinstance(v, int) and v > MAX_OUTPUT_CHARS for v in values):
        raise too_big("a format width")


def check_width(*values: Any) -> None:
    """Refuses a width (center, ljust ...) over the output budget."""
    if any(isinstance(v, int) and v > MAX_OUTPUT_CHARS for v in values):
        raise too_big("a width")


def join_size(sep: str, items: Sequence[Any]) -> int:
    """About how long ``sep.join(items)`` would be, before building it."""
    return len(sep) * len(items) + sum(len(x) if isinstance(x, str) else 32 for x in items)


def check_replace(s: Any, old: Any, new: Any) -> None:
    """Refuses a ``replace`` whose result would be over the output budget."""
    if isinstance(s, str) and isinstance(old, str) and isinstance(new, str):
        count = s.count(old) if old else len(s) + 1
        if len(s) + count * max(len(new) - len(old), 0) > MAX_OUTPUT_CHARS:
            raise too_big("a replace() result")


_PASSED = (Environment, EvalContext, Context)  # what pass_context & co. put first


def safe_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """Size checks before and after the filters that can amplify their input."""

    @wraps(func)
    def checked(*args: Any, **kwargs: Any) -> Any:
        # Context / environment arguments come first for some filters: look at the tail.
        values = [a for a in args if not isinstance(a, _PASSED)] + list(kwargs.values())
        if name == "format" and values and isinstance(values[0], str):
            check_percent(values[0], tuple(values[1:]))
        elif name == "replace" and len(values) >= 3:
            check_replace(str(values[0]), values[1], values[2])
        elif name == "join" and values and not isinstance(values[0], str):
            items = list(values[0])
            sep = values[1] if len(values) > 1 and isinstance(values[1], str) else ""
            if join_size(sep, items) > MAX_OUTPUT_CHARS:
                raise too_big("a join() result")
            args = tuple(items if a is values[0] else a for a in args)
        elif name in {"batch", "slice"}:
            if any(isinstance(v, int) and v > MAX_ITEMS for v in values[1:2]):
                raise too_big(f"{name}() size")
        else:
            check_width(*values[1:])
        return capped(func(*args, **kwargs))

    return checked


# Jinja filters that can build a value much larger than their input (safe_filter wraps them).
AMPLIFYING_FILTERS = (
    "center",
    "indent",
    "format",
    "replace",
    "join",
    "batch",
    "slice",
    "wordwrap",
)
# str methods whose width argument could build a huge string (Sandbox.call checks it).
WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})
