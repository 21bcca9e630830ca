"""Everything the renderer takes from Jinja2 beyond its documented API, in one place.

Rendering an email is a few dozen microseconds of Jinja; these internals keep it that fast and
the sandbox's checks out of the common path. Each one is pinned by a test that names this module
when a Jinja2 release changes it (tests/unit/test_dependency_internals_jinja.py); pyproject pins
``jinja2<3.2`` (written and tested against 3.1).

- ``jinja2.compiler.CodeGenerator`` (subclassed as ``GuardedCodeGenerator``):
  ``visit_Template(node, frame=None)`` (every ``for`` iterable wrapped in the deadline filter
  before code generation), ``visit_Concat(node, frame)`` (``~`` wrapped in
  ``environment.capped``) and ``_output_child_pre(node, frame, finalize)`` with
  ``CodeGenerator._FinalizeInfo.src`` and ``Frame.eval_ctx.autoescape / volatile``, whose
  parentheses ``_output_child_post`` closes (``{{ value }}`` escaped by
  ``environment.escape_output``: plain strings by str.replace, without a Markup copy).
- ``Undefined._undefined_hint / _undefined_obj / _undefined_name / _undefined_message``
  (``NamingUndefined``: the missing key named in the error, not ``dict object``).
- ``Context(environment, parent, name, blocks, globals)``, ``Template.root_render_func``,
  ``Template.blocks`` and ``Environment.handle_exception()`` re-raising the active exception
  (``render_part``: a context made without the template's ChainMap of globals, the output
  capped chunk by chunk).
- ``Template.from_code(environment, code, globals)`` and ``Environment.make_globals(None)``
  (``template_from_ast``: a template compiled from an AST the renderer has rewritten).
- The ``_loop_vars`` / ``_block_vars`` keyword arguments the code generator adds to calls made
  inside loops and blocks (``JINJA_CALL_KWARGS``: the sandbox drops them for its own methods).
- ``jinja2.utils.Cycler / Joiner / Namespace`` (the default globals the sandbox keeps) and
  ``jinja2.filters.do_urlencode`` (what the table-driven ``urlencode`` filter falls back to and
  must agree with).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jinja2 import StrictUndefined, Template, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.environment import Environment
from jinja2.filters import do_urlencode
from jinja2.utils import Cycler, Joiner, Namespace

from engine.send.render.budget import MAX_OUTPUT_CHARS, too_big

# The filter every ``{% for %}`` iterable goes through (the sandbox registers it: guard()).
GUARD_FILTER = "_engine_guard"
# Keyword arguments Jinja adds to calls inside loops and blocks, for its own callables.
JINJA_CALL_KWARGS = frozenset({"_loop_vars", "_block_vars"})


class GuardedCodeGenerator(CodeGenerator):
    """Compiles every ``for`` loop over a deadline-checking iterator, and ``~`` with a size cap."""

    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        for loop in node.find_all(nodes.For):
            loop.iter = nodes.Filter(
                loop.iter, GUARD_FILTER, [], [], None, None, lineno=loop.lineno
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


class NamingUndefined(StrictUndefined):
    """StrictUndefined naming the missing key (``'company' is undefined``), not ``dict object``."""

    __slots__ = ()

    @property
    def _undefined_message(self) -> str:
        if self._undefined_hint is None and isinstance(self._undefined_obj, Mapping):
            return f"{self._undefined_name!r} is undefined"
        return super()._undefined_message


def render_part(template: Template, variables: dict[str, Any]) -> list[str]:
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
                raise too_big("the rendered output")
            append(chunk)
    except Exception:
        env.handle_exception()  # re-raises, traceback in template lines
    return parts


# Jinja's default globals that are harmless in a sandbox (lipsum() is not: unbounded).
SAFE_GLOBALS: dict[str, Any] = {
    "dict": dict,
    "cycler": Cycler,
    "joiner": Joiner,
    "namespace": Namespace,
}
jinja_urlencode = do_urlencode


def template_from_ast(env: Environment, ast: nodes.Template, name: str, filename: str) -> Template:
    """The template compiled from ``ast`` (which may have been rewritten), as
    ``env.from_string`` would make it from source."""
    code = env.compile(ast, name, filename)
    return env.template_class.from_code(env, code, env.make_globals(None))
