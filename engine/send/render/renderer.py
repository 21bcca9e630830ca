"""The renderer: one email per recipient from a template compiled once.

Render (per recipient) is Jinja only: HTML (autoescaped), text and subject (not escaped), bare
URLs of the text part pointed at the click tracker, then the footer (postal address,
unsubscribe link in the contact's language) and the open pixel. A template's files are looked
at again for edits at most once per ``reload_interval``.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jinja2 import FileSystemLoader, Template, TemplateSyntaxError, UndefinedError, meta
from jinja2.exceptions import SecurityError

from engine.base.errors import RenderTimeout, TemplateError
from engine.base.locale import normalize
from engine.mail.tokens import Links
from engine.program.settings import SenderSettings
from engine.send.render.budget import DEADLINE
from engine.send.render.cache import Compiled, CompiledCache
from engine.send.render.compiler import Compiler
from engine.send.render.footer import Footer
from engine.send.render.jinja_internals import render_part
from engine.send.render.locales import TemplateFiles, email_locale, file_key
from engine.send.render.model import CONTEXT_NAMES, Rendered, TemplateProblem
from engine.send.render.protect import Placeholders
from engine.send.render.sandbox import Sandbox
from engine.send.render.template_links import TemplateLinks
from engine.send.render.tracking import CLICKS, Clicks, track_html, track_text
from engine.send.render.unsafe import unsafe_code

_BLANK_LINES = re.compile(r"\n{3,}")
# How many subjects (and note texts) are kept compiled before the table starts again.
_KEPT_SUBJECTS = 1024


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
        self._sender = {
            "from_name": sender.from_name,
            "from_email": sender.from_email,
            "reply_to": sender.reply_to,
            "postal_address": sender.postal_address,
        }
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
        self._files = TemplateFiles(self.templates_dir)
        self._compiler = Compiler(
            self.templates_dir,
            html_env=self._html_env,
            text_env=self._text_env,
            links=links,
            sender=self._sender,
            timeout=render_timeout,
            placeholders=Placeholders(secrets.token_hex(4)),
        )
        self._cache = CompiledCache(
            self._files, self._compiler.compile, reload_interval=reload_interval
        )
        self._footer = Footer(sender.postal_address, links)
        self._subjects: dict[str, Template] = {}

    @property
    def compile_count(self) -> int:
        """MJML compilations so far (compile once, render many)."""
        return self._compiler.count

    def resolve(self, template: str, locale: str | None) -> Path:
        """The file for ``locale``: ``x.pt-BR.mjml``, then ``x.pt.mjml``, then ``x.mjml``."""
        return self._files.locate(template, normalize(locale))[0]

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
        norm, lang, direction = email_locale(locale)
        compiled = self._cache.for_locale(template, norm)
        if compiled.error is not None:
            raise TemplateError(str(compiled.error))
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
        clicks = Clicks(self.links, ref)  # the same URL in HTML and text: one token
        subject_text, html, text = self._render_parts(
            compiled, subject, variables, clicks, rtl=direction == "rtl"
        )
        unsubscribe = links.unsubscribe
        if compiled.scan:
            html = [track_html("".join(html), self.links, clicks)]
        self._footer.add_html(html, lang, unsubscribe, ref)
        text = track_text(text, self.links, clicks)
        if "\n\n\n" in text:  # far faster than letting the regex look everywhere
            text = _BLANK_LINES.sub("\n\n", text)
        text = self._footer.add_text(text.strip(), lang, unsubscribe)
        return Rendered(" ".join(subject_text.split()), "".join(html), text, unsubscribe)

    def _render_parts(
        self,
        compiled: Compiled,
        subject: str,
        variables: dict[str, Any],
        clicks: Clicks,
        *,
        rtl: bool,
    ) -> tuple[str, list[str], str]:
        """Subject, HTML pieces and text, rendered under the deadline; every failure is a
        TemplateError (RenderTimeout for a runaway template) naming the part."""
        html_template = self._compiler.rtl(compiled) if rtl else compiled.html
        assert html_template is not None and compiled.text is not None  # no error: both built
        token = DEADLINE.set(time.perf_counter() + self._timeout)
        clicks_token = CLICKS.set(clicks)
        try:
            label = f"{compiled.name} (subject)"
            # Most subjects are plain text: nothing for Jinja to do.
            subject_text = (
                "".join(render_part(self._subject(subject), variables))
                if "{" in subject
                else subject
            )
            label = compiled.name
            html = render_part(html_template, variables)
            label = compiled.text_name
            text = "".join(render_part(compiled.text, variables))
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
            CLICKS.reset(clicks_token)
            DEADLINE.reset(token)
        return subject_text, html, text

    def _subject(self, subject: str) -> Template:
        found = self._subjects.get(subject)
        if found is None:
            try:
                found = self._text_env.from_string(subject)
            except TemplateSyntaxError as exc:
                raise TemplateError(f"Jinja syntax error: {exc.message}") from exc
            if len(self._subjects) > _KEPT_SUBJECTS:
                self._subjects.clear()
            self._subjects[subject] = found
        return found

    # -- validation

    def check(self, template: str) -> list[TemplateProblem]:
        """Problems in ``template`` and each of its locale variants (nothing is rendered)."""
        try:
            base = self._files.base_path(template)
        except TemplateError as exc:
            return [TemplateProblem(template, 1, 1, str(exc))]
        problems: list[TemplateProblem] = []
        if not base.is_file():
            problems.append(TemplateProblem(str(base), 1, 1, "template not found"))
        for path in self._files.with_variants(base):
            key = file_key(path)
            if key is None:
                continue
            for found in self._cache.get(path, key).problems:
                if found not in problems:
                    problems.append(found)
        return problems

    def check_subject(self, subject: str, names: frozenset[str] = CONTEXT_NAMES) -> str | None:
        """A Jinja syntax error (or a variable outside ``names``, or code the sandbox would
        refuse) in a line of text, else None."""
        try:
            ast = self._text_env.parse(subject)
        except TemplateSyntaxError as exc:
            return f"Jinja syntax error: {exc.message}"
        unknown = meta.find_undeclared_variables(ast) - names - set(self._text_env.globals)
        if unknown:
            return f"unknown variable {sorted(unknown)[0]!r}"
        refused = unsafe_code(ast, subject)
        return refused[0][2] if refused else None

    def render_note(self, source: str, context: Mapping[str, Any]) -> str:
        """Jinja text (a note's subject or body) in the sandbox, under the render deadline;
        TemplateError when it cannot be rendered (a missing value, a typo)."""
        token = DEADLINE.set(time.perf_counter() + self._timeout)
        try:
            variables = {**self._globals, **context, "sender": self._sender}
            return "".join(render_part(self._subject(source), variables))
        except TemplateError:
            raise
        except UndefinedError as exc:
            raise TemplateError(exc.message or str(exc)) from exc
        except Exception as exc:
            raise TemplateError(f"{type(exc).__name__}: {exc}") from exc
        finally:
            DEADLINE.reset(token)
