"""Link rewriting at compile time: a template's ``<a href>`` links tracked by the template.

A static http(s) href becomes a filter call that writes this email's click-tracking URL; an
href built per recipient is wrapped in a filter block that decides on the rendered value (see
``tracking``). A template that may write links of its own is left to the output scan.
"""

from __future__ import annotations

import html as htmllib
import re
from collections.abc import Sequence

from jinja2 import nodes
from jinja2.environment import Environment

from engine.mail.tokens import Links
from engine.send.render.protect import RAW_TAG, Placeholders, Restorer, Tag
from engine.send.render.tracking import CLICK_FILTER, HREF_FILTER, HTTP

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


def _jinja_string(text: str) -> str:
    """``text`` as a Jinja string literal (Jinja decodes literals with unicode-escape)."""
    for char, escaped in (("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r")):
        text = text.replace(char, escaped)
    return f'"{text}"'


def writes_markup(ast: nodes.Template, tags: Sequence[Tag]) -> bool:
    """Can this template write ``<a href>`` that is not in its text (data made markup,
    escaping off, filter blocks that rewrite text, imported macros, raw blocks)?"""
    return (
        next(ast.find_all(_OPAQUE_NODES), None) is not None
        or any(f.name in _MARKUP_FILTERS for f in ast.find_all(nodes.Filter))
        or any(RAW_TAG.match(t.text) and "<a" in t.text.lower() for t in tags)
    )


def slot_links(
    markup: str,
    tags: Sequence[Tag],
    *,
    placeholders: Placeholders,
    links: Links,
    env: Environment,
    links_reassigned: bool,
) -> tuple[str, Restorer] | None:
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
        tags.append(Tag(text, "", 0, 0, text.startswith("{%")))
        return placeholders(len(tags) - 1)

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
        first = placeholders.pattern.search(core)
        if first is None:
            if not core.startswith(HTTP):
                continue
            url = htmllib.unescape(core)
            if links.is_tracking(url):
                continue
            out += (markup[pos:start], tag(f"{{{{ {_jinja_string(url)} | {CLICK_FILTER} }}}}"))
        else:
            prefix = core[: first.start()]
            if not (prefix.startswith(HTTP) or any(h.startswith(prefix) for h in HTTP)):
                continue
            whole = first.span() == (0, len(core))
            if whole and not links_reassigned and _is_links_value(tags[int(first[1])], env):
                continue
            if any(tags[int(m.group(1))].block for m in placeholders.pattern.finditer(core)):
                return None  # a block tag inside an href: leave it to the output scan
            out += (
                markup[pos:start],
                tag(f"{{% filter {HREF_FILTER} %}}"),
                core,
                tag("{% endfilter %}"),
            )
        pos = end
    out.append(markup[pos:])
    return "".join(out), Restorer(tags, placeholders.pattern)


def _is_links_value(tag: Tag, env: Environment) -> bool:
    """Is ``tag`` one ``{{ links.name }}`` or ``{{ links.name(...) }}``? Those URLs are ours
    or mailto: links (TemplateLinks), never click-tracked: no filter block is needed."""
    if not tag.text.startswith("{{"):
        return False
    body = env.parse(tag.text).body
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
