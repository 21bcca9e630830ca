"""Templates -> one email per recipient: sandboxed Jinja2 inside MJML, compiled once per file.

The package, by seam:

- ``renderer``: the ``Renderer`` facade (render, check, render_note) and the per-recipient
  render: HTML, text and subject, click tracking, footer and open pixel;
- ``compiler``: MJML + Jinja -> Jinja templates of the final HTML and text (once per file),
  with ``protect`` (Jinja tags kept out of MJML's way), ``mjml_scan`` (where they sit, MJML
  errors located as written), ``link_slots`` (links tracked by the template itself),
  ``layout`` (line breaks, ``lang`` / ``dir``, the right-to-left mirror) and ``html_text``
  (the text part derived from the HTML);
- ``cache``: compiled templates by file, reloaded when a file changes; ``locales``: which file
  and which language for a contact's locale;
- ``sandbox`` and ``budget``: the Jinja environment and its limits (runaway templates are
  stopped without threads); ``jinja_internals``: what is taken from Jinja2 beyond its API;
- ``template_links``: ``links`` in templates; ``tracking``: click tracking; ``footer``: the
  end of every email.
"""

from engine.send.render.budget import MAX_INT_BITS, MAX_ITEMS, MAX_OUTPUT_CHARS
from engine.send.render.footer import FOOTER_TEXT
from engine.send.render.html_text import html_to_text
from engine.send.render.model import (
    CONTEXT_NAMES,
    DEFAULT_LANG,
    NOTE_CONTEXT_NAMES,
    Rendered,
    TemplateProblem,
)
from engine.send.render.renderer import Renderer
from engine.send.render.sandbox import Sandbox
from engine.send.render.template_links import TemplateLinks

__all__ = [
    "CONTEXT_NAMES",
    "DEFAULT_LANG",
    "FOOTER_TEXT",
    "MAX_INT_BITS",
    "MAX_ITEMS",
    "MAX_OUTPUT_CHARS",
    "NOTE_CONTEXT_NAMES",
    "Rendered",
    "Renderer",
    "Sandbox",
    "TemplateLinks",
    "TemplateProblem",
    "html_to_text",
]
