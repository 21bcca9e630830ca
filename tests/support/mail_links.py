"""Reading the links of a received email, and destinations a click must never redirect to."""

from __future__ import annotations

import html
import re
from email.message import EmailMessage
from urllib.parse import urlsplit


def links_in(message: EmailMessage) -> list[str]:
    body = message.get_body(("html",))
    assert body is not None
    return [html.unescape(u) for u in re.findall(r'(?:href|src)="([^"]+)"', body.get_content())]


def link(message: EmailMessage, path: str) -> str:
    return next(u for u in links_in(message) if urlsplit(u).path.startswith(path))


# Open-redirect tricks: none of these may ever be a click's destination.
UNSAFE_DESTINATIONS = [
    "//evil.example/",
    "javascript:alert(1)",
    "JaVaScRiPt:alert(1)",
    " javascript:alert(1)",
    "java\tscript:alert(1)",
    "%6a%61vascript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "https:evil.example",
    "https:/evil.example",
    "https:\\\\evil.example",
    "/\\evil.example",
    "http://trusted.example@evil.example/",
    "https://evil.example\r\nSet-Cookie: a=b",
    "\x00https://evil.example",
    "",
]
