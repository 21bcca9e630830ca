"""The Jinja2 internals the renderer relies on (engine/send/render/jinja_internals.py), pinned.

Each test names what changed when a Jinja2 release breaks it. Then: read that release's
changes, adapt jinja_internals.py (or drop the shortcut), and move the ``jinja2<...`` upper bound
in pyproject.toml.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

import pytest
from jinja2 import Environment, StrictUndefined, Template, UndefinedError
from jinja2.compiler import CodeGenerator
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment

from engine.send.render import Sandbox
from engine.send.render.jinja_internals import (
    GUARD_FILTER,
    JINJA_CALL_KWARGS,
    SAFE_GLOBALS,
    NamingUndefined,
    jinja_urlencode,
    render_part,
    template_from_ast,
)
from engine.send.render.template_links import urlencode

JINJA = version("jinja2")
MODULE = "engine/send/render/jinja_internals.py"


def changed(what: str, where: str) -> str:
    return f"jinja2 {JINJA} changed {what}: check {MODULE} ({where})"


def parameters(func: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(func).parameters)


# -- CodeGenerator (GuardedCodeGenerator) ------------------------------------------------------


def test_code_generator_hooks_keep_their_signatures() -> None:
    hooks = {
        "visit_Template": ["self", "node", "frame"],
        "visit_Concat": ["self", "node", "frame"],
        "_output_child_pre": ["self", "node", "frame", "finalize"],
        "_output_child_post": ["self", "node", "frame", "finalize"],
    }
    for name, expected in hooks.items():
        method = getattr(CodeGenerator, name, None)
        assert method is not None, changed(f"CodeGenerator.{name} (gone)", "GuardedCodeGenerator")
        assert parameters(method) == expected, changed(
            f"CodeGenerator.{name}'s signature", "GuardedCodeGenerator"
        )
    frame = inspect.signature(CodeGenerator.visit_Template).parameters["frame"]
    assert frame.default is None, changed("CodeGenerator.visit_Template", "GuardedCodeGenerator")
    assert CodeGenerator._FinalizeInfo._fields == ("const", "src"), changed(
        "CodeGenerator._FinalizeInfo", "GuardedCodeGenerator._output_child_pre"
    )


def test_generated_code_goes_through_the_guards() -> None:
    env = Sandbox(autoescape=True)
    code = env.compile("{% for i in items %}{{ i ~ x }}{% endfor %}", raw=True)
    where = "GuardedCodeGenerator"
    assert "environment.escape_output(" in code, changed("CodeGenerator.visit_Output", where)
    assert "environment.capped(" in code, changed("CodeGenerator.visit_Concat", where)
    assert GUARD_FILTER in code, changed("CodeGenerator.visit_Template / visit_For", where)
    out = env.from_string("{% for i in items %}{{ i ~ x }}|{% endfor %}").render(
        items=["<a>", 2], x="&"
    )
    assert out == "&lt;a&gt;&amp;|2&amp;|", changed("CodeGenerator.visit_Output", where)


def test_output_hooks_close_what_they_open_with_finalize_and_volatile_escaping() -> None:
    where = "GuardedCodeGenerator._output_child_pre / _output_child_post"
    env = Sandbox(autoescape=True, finalize=lambda v: "" if v is None else v)
    assert env.from_string("{{ x }}{{ y }}").render(x="<b>", y=None) == "&lt;b&gt;", changed(
        "CodeGenerator._output_child_post with finalize", where
    )
    volatile = env.from_string("{% autoescape flag %}{{ x }}{% endautoescape %}")
    assert volatile.render(flag=True, x="<b>") == "&lt;b&gt;", changed("Frame.eval_ctx", where)
    assert volatile.render(flag=False, x="<b>") == "<b>", changed("Frame.eval_ctx", where)


# -- Undefined (NamingUndefined) -------------------------------------------------------------


def test_undefined_private_attributes() -> None:
    where = "NamingUndefined"
    for name in ("_undefined_hint", "_undefined_obj", "_undefined_name"):
        assert name in StrictUndefined.__slots__ or hasattr(StrictUndefined(), name), changed(
            f"Undefined.{name}", where
        )
    message = inspect.getattr_static(StrictUndefined, "_undefined_message", None)
    assert isinstance(message, property), changed("Undefined._undefined_message", where)
    with pytest.raises(UndefinedError) as error:
        str(NamingUndefined(obj={}, name="company"))
    assert str(error.value) == "'company' is undefined", changed(
        "how Undefined builds its message", where
    )


# -- rendering a part (render_part) ----------------------------------------------------------


def test_context_construction_and_root_render_func() -> None:
    where = "render_part"
    assert parameters(Context.__init__) == [
        "self",
        "environment",
        "parent",
        "name",
        "blocks",
        "globals",
    ], changed("Context.__init__", where)
    env = Sandbox(autoescape=True)
    assert env.context_class is Context, changed("Environment.context_class", where)
    template = env.from_string("{% block b %}{{ x }}{% endblock %}{{ range(2)|list }}")
    assert callable(template.root_render_func), changed("Template.root_render_func", where)
    assert set(template.blocks) == {"b"}, changed("Template.blocks", where)
    variables = {**env.globals, "x": "<i>"}
    assert "".join(render_part(template, variables)) == template.render(x="<i>"), changed(
        "what Template.render puts in a Context", where
    )


def test_handle_exception_reraises_with_template_lines() -> None:
    where = "render_part"
    assert parameters(Environment.handle_exception) == ["self", "source"], changed(
        "Environment.handle_exception", where
    )
    env = Sandbox()
    template = env.from_string("line one\n{{ 1 // n }}")
    with pytest.raises(ZeroDivisionError) as error:
        render_part(template, {**env.globals, "n": 0})
    lines = []
    tb = error.value.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            lines.append(tb.tb_lineno)
        tb = tb.tb_next
    assert 2 in lines, changed("Environment.handle_exception (template lines)", where)


# -- compiling a rewritten AST (template_from_ast) --------------------------------------------


def test_template_from_code() -> None:
    where = "template_from_ast"
    assert parameters(Template.from_code)[:3] == ["environment", "code", "globals"], changed(
        "Template.from_code", where
    )
    assert parameters(Environment.make_globals) == ["self", "d"], changed(
        "Environment.make_globals", where
    )
    env = Sandbox(autoescape=True)
    source = "{% set n = 2 %}{{ (x ~ '!') * n }}"
    made = template_from_ast(env, env.parse(source), "t.mjml", "/templates/t.mjml")
    assert made.render(x="<a>") == env.from_string(source).render(x="<a>"), changed(
        "Template.from_code / Environment.make_globals", where
    )
    assert made.name == "t.mjml" and made.filename == "/templates/t.mjml", changed(
        "Environment.compile(name, filename)", where
    )


# -- calls inside loops and blocks (JINJA_CALL_KWARGS) ---------------------------------------


class _Recording(SandboxedEnvironment):
    def __init__(self) -> None:
        super().__init__()
        self.extra: set[str] = set()

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        self.extra |= {k for k in kwargs if k.startswith("_")}
        return super().call(context, obj, *args, **kwargs)


def test_extra_keyword_arguments_of_calls() -> None:
    assert parameters(SandboxedEnvironment.call)[3:] == ["args", "kwargs"], changed(
        "SandboxedEnvironment.call", "Sandbox.call"
    )
    env = _Recording()
    source = (
        "{% for i in [1] %}{{ f() }}{% endfor %}{% block b %}{% set y = 1 %}{{ f() }}{% endblock %}"
    )
    env.from_string(source).render(f=lambda **kwargs: "")
    assert env.extra == JINJA_CALL_KWARGS, changed(
        f"the keyword arguments of calls in loops and blocks ({sorted(env.extra)})",
        "JINJA_CALL_KWARGS",
    )


# -- the sandbox's operator interception (Sandbox.call_binop) ---------------------------------


def test_operator_interception() -> None:
    assert parameters(SandboxedEnvironment.call_binop) == [
        "self",
        "context",
        "operator",
        "left",
        "right",
    ], changed("SandboxedEnvironment.call_binop", "Sandbox.call_binop")
    env = Sandbox()
    assert set(env.binop_table) >= set(env.intercepted_binops), changed(
        "SandboxedEnvironment.binop_table", "Sandbox.call_binop"
    )
    with pytest.raises(Exception, match="repetition is over the render budget"):
        env.from_string("{{ 'x' * n }}").render(n=10**9)


# -- jinja2.utils and jinja2.filters ----------------------------------------------------------


def test_default_globals_are_the_classes_the_sandbox_keeps() -> None:
    defaults = Environment().globals
    for name, value in SAFE_GLOBALS.items():
        assert defaults.get(name) is value, changed(f"the default global {name!r}", "SAFE_GLOBALS")


@pytest.mark.parametrize(
    "value", ["plain", "a b/c?d=e&f", "ünïcødé ✓", "~._-", "", "\x00\x7f", "a+b%20"]
)
def test_urlencode_agrees_with_jinja(value: str) -> None:
    assert urlencode(value) == jinja_urlencode(value), changed(
        "jinja2.filters.do_urlencode", "template_links.urlencode must agree with it"
    )
    assert urlencode({"a": "b c"}) == jinja_urlencode({"a": "b c"}) == "a=b+c"
