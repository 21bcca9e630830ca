"""HTTP pieces with no knowledge of the engine: security headers, the pixel, redirect
targets that can never leave for somewhere unsafe, and where a form post came from."""

from __future__ import annotations

import re
from urllib.parse import quote, urlsplit, urlunsplit

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The smallest transparent GIF: 1x1, one transparent palette entry (43 bytes).
GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)


def security_headers(style_source: str, *, https: bool) -> list[tuple[bytes, bytes]]:
    """Headers every response carries. Pages run no script, take their one stylesheet by hash
    (``style_source``), post forms only to themselves and are never framed; tokens in page
    URLs never leak through Referer; nothing personal is cached."""
    csp = (
        f"default-src 'none'; style-src {style_source}; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )
    headers = [
        (b"content-security-policy", csp.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"no-referrer"),
        (b"cross-origin-opener-policy", b"same-origin"),
        (b"cache-control", b"no-store"),
    ]
    if https:
        headers.append((b"strict-transport-security", b"max-age=31536000"))
    return headers


def pixel_headers(*, https: bool) -> list[tuple[bytes, bytes]]:
    """The open pixel's headers: an image needs none of a document's policies (scripts,
    framing, referrers), only its type kept as declared and no caching."""
    headers = [
        (b"content-type", b"image/gif"),
        (b"content-length", str(len(GIF)).encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"cache-control", b"no-store"),
    ]
    if https:
        headers.append((b"strict-transport-security", b"max-age=31536000"))
    return headers


class SecurityHeaders:
    """ASGI middleware adding ``headers`` to every HTTP response."""

    def __init__(self, app: ASGIApp, headers: list[tuple[bytes, bytes]]) -> None:
        self.app = app
        self.headers = headers
        self._names = {name for name, _ in headers}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra, names = self.headers, self._names

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                own = [h for h in message.get("headers", ()) if h[0] not in names]
                message["headers"] = own + extra
            await send(message)

        await self.app(scope, receive, send_with_headers)


_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")


def safe_location(url: str) -> str | None:
    """The Location header for a click's destination, or None when it is not a plain absolute
    http(s) URL with a host (``javascript:``, ``//evil.example``, backslashes, control or space
    characters, user names in the host: refused, whatever their encoding in the email).

    >>> safe_location("https://example.com/a b?q=é")
    'https://example.com/a%20b?q=%C3%A9'
    >>> safe_location("//evil.example") is None
    True
    """
    if not url or len(url) > 4096 or _UNSAFE.search(url.strip(" ")):
        return None
    url = url.strip(" ")
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError for a malformed port
    except ValueError:
        return None
    host = parts.hostname
    if parts.scheme.lower() not in ("http", "https") or not host or "@" in parts.netloc:
        return None
    if not url.lower().startswith(("http://", "https://")):
        return None
    try:
        ascii_host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        return None
    if parts.netloc.startswith("[") or ":" in host:
        ascii_host = f"[{host}]"
    netloc = ascii_host if port is None else f"{ascii_host}:{port}"
    safe = "/:@!$&'()*+,;=%-._~"
    return urlunsplit(
        (
            parts.scheme.lower(),
            netloc,
            quote(parts.path, safe=safe),
            quote(parts.query, safe=safe + "?"),
            quote(parts.fragment, safe=safe + "?#"),
        )
    )


def origin_allowed(request: Request, base_origin: str) -> bool:
    """False for a form post a browser sent from another site.

    Browsers that send Sec-Fetch-Site are believed ("same-origin", or "none" for a user's own
    action). Others are judged by Origin, except "null", which is what a browser sends from
    our own pages: they carry ``Referrer-Policy: no-referrer``. Clients that send neither (not
    browsers) pass; the CSRF token decides for them.
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return True
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    return origin in (base_origin, own)


def origin_of(url: str) -> str:
    """``"https://t.example.com/x"`` -> ``"https://t.example.com"``."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
