"""Server-rendered landing pages: Jinja2 with autoescaping (contact data is always escaped),
one stylesheet inlined and allowed by its hash in the Content-Security-Policy, no script."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup
from starlette.responses import HTMLResponse

from engine.inbound.tracking.i18n import Translator, direction
from engine.program.settings import SenderSettings

PAGES = Path(__file__).with_name("pages")


class Pages:
    """Renders ``pages/*.html`` in a language, with the sender's name and postal address."""

    def __init__(self, sender: SenderSettings) -> None:
        self._env = Environment(
            loader=FileSystemLoader(PAGES),
            autoescape=select_autoescape(default=True, default_for_string=True),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        css = (PAGES / "page.css").read_text(encoding="utf-8").strip()
        self._css = Markup(css)  # our own file, inlined as it is
        digest = base64.b64encode(hashlib.sha256(css.encode("utf-8")).digest()).decode("ascii")
        self.style_source = f"'sha256-{digest}'"
        self._sender = sender

    def render(
        self, name: str, lang: str, title_key: str, *, status: int = 200, **context: Any
    ) -> HTMLResponse:
        """``pages/<name>.html`` in ``lang``; ``title_key`` is the heading's translation key."""
        t = Translator(lang)
        sender = self._sender.from_name
        html = self._env.get_template(f"{name}.html").render(
            t=t,
            lang=lang,
            dir=direction(lang),
            css=self._css,
            sender=sender,
            postal=self._sender.postal_address,
            title=t(title_key, sender=sender, **context.pop("title_fields", {})),
            **context,
        )
        return HTMLResponse(html, status_code=status)

    def not_found(self, lang: str = "en") -> HTMLResponse:
        """The plain 404 page: it says nothing about why and links nowhere."""
        return self.render(
            "message",
            lang,
            "not_found.title",
            status=404,
            body=Translator(lang)("not_found.body"),
            done=False,
        )
