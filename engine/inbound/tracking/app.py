"""The tracking and landing app (Starlette on uvicorn): what mail clients and browsers hit.

    GET  /o/<token>.gif        open pixel (buffered, written in batches; answered before routing)
    GET  /c/<token>            click: 302 to the URL signed into the token, nowhere else
    GET  /h/<token>            the hidden honeypot link: machine traffic by definition
    GET  /u/<token>            unsubscribe confirmation page (never unsubscribes by itself)
    POST /u/<token>            RFC 8058 one-click unsubscribe (List-Unsubscribe=One-Click)
    GET  /nps/<token>          records the score clicked in the survey, asks the follow-ups
    POST /nps/<token>          the follow-up answers
    GET|POST /r/<code>         a referrer's personal page: a friend leaves name and email
    GET|POST /f/intro/<token>  the referrer introduces one or two people
    GET|POST /f/partner/<token>      a partner's ideal client, problem, wording, example
    GET|POST /f/testimonial/<token>  a testimonial
    GET  /healthz              200 when the database answers
    POST /api/events           purchases, conversions, NPS answers (bearer token)

The app keeps no state between requests but the hit buffer (flushed on shutdown), so any
number of copies can run behind a load balancer. The routes are in ``routes`` (one module per
group), what their handlers share in ``context``, the server's lifecycle in ``server``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from engine.base.clock import Clock
from engine.inbound.tracking import records
from engine.inbound.tracking.buffer import Hit, HitBuffer
from engine.inbound.tracking.context import TrackingContext
from engine.inbound.tracking.csrf import CsrfTokens
from engine.inbound.tracking.pages import Pages
from engine.inbound.tracking.routes import clicks, email_forms, nps, referral, service, unsubscribe
from engine.inbound.tracking.server import TrackingError, bind, serve_app
from engine.inbound.tracking.state import AppState, machine_reason
from engine.inbound.tracking.web import (
    GIF,
    SecurityHeaders,
    origin_of,
    pixel_headers,
    security_headers,
)
from engine.mail.tokens import LINK_PATHS, Signer

# Importable from here as before the routes and the server had modules of their own.
__all__ = [
    "TrackingContext",
    "TrackingError",
    "bind",
    "build_app",
    "serve_app",
    "serve_tracking",
]

_PIXEL_METHODS = ("GET", "HEAD")
# /o/<token>.gif: the pixel's path around its token, matched ahead of the router.
_PIXEL_PREFIX, _PIXEL_SUFFIX = LINK_PATHS["open"].split("{token}")
_TOKEN_START, _SUFFIX_LEN = len(_PIXEL_PREFIX), len(_PIXEL_SUFFIX)


class _TrackingApp(Starlette):
    """Starlette, with ``GET|HEAD /o/<token>.gif`` answered before any of its machinery.

    The pixel is most of the app's traffic and its whole answer is known in advance, so it
    skips Starlette's middleware, router, request and response objects: with the token checked
    and the hit buffered, it runs about 60% of the Python instructions of a bare Starlette
    endpoint. A token that does not verify goes on to Starlette, whose answer is the 404 page
    (with the security headers) as for any unknown path.
    """

    def __init__(
        self,
        *,
        signer: Signer,
        buffer: HitBuffer,
        clock: Clock,
        pixel_headers: list[tuple[bytes, bytes]],
        **starlette: Any,
    ) -> None:
        super().__init__(**starlette)
        self._signer = signer
        self._buffer = buffer
        self._clock = clock
        self._pixel_headers = pixel_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in _PIXEL_METHODS:
            path: str = scope["path"]
            if path.startswith(_PIXEL_PREFIX) and path.endswith(_PIXEL_SUFFIX):
                ref = self._signer.ref(path[_TOKEN_START : len(path) - _SUFFIX_LEN], "open")
                if ref is not None:
                    self._buffer.add(Hit("opened", ref, self._clock.now(), machine_reason(scope)))
                    headers = self._pixel_headers
                    await send({"type": "http.response.start", "status": 200, "headers": headers})
                    await send({"type": "http.response.body", "body": GIF})
                    return
        await super().__call__(scope, receive, send)


def build_app(ctx: TrackingContext, *, buffer: HitBuffer | None = None) -> Starlette:
    """The tracking app. Opens and clicks go through ``buffer`` (default: one writing to
    ``ctx.db``), flushed in the background and on shutdown."""
    tracking = ctx.tracking
    signer = ctx.links.signer
    pages = Pages(ctx.sender)
    hits = buffer or HitBuffer(records.HitWriter(ctx.db))
    app = AppState(
        db=ctx.db,
        clock=ctx.clock,
        tracking=tracking,
        sender_name=ctx.sender.from_name,
        signer=signer,
        pages=pages,
        csrf=CsrfTokens(tracking.secret),
        buffer=hits,
        base_origin=origin_of(tracking.base_url),
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        stop = asyncio.Event()
        flusher = asyncio.create_task(hits.run(stop))
        try:
            yield
        finally:
            stop.set()
            await flusher  # the last flush: nothing buffered is lost on shutdown

    async def not_found(request: Request, exc: Exception) -> Response:
        return pages.not_found()

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return PlainTextResponse(str(exc.detail), status_code=exc.status_code)

    https = tracking.base_url.startswith("https:")
    headers = security_headers(pages.style_source, https=https)
    starlette = _TrackingApp(
        signer=signer,
        buffer=hits,
        clock=ctx.clock,
        pixel_headers=pixel_headers(https=https),
        routes=[
            *clicks.routes(app),
            *unsubscribe.routes(app),
            *nps.routes(app),
            *referral.routes(app),
            *email_forms.routes(app),
            *service.routes(app),
        ],
        middleware=[Middleware(SecurityHeaders, headers=headers)],
        exception_handlers={404: not_found, HTTPException: http_error},
        lifespan=lifespan,
    )
    starlette.state.buffer = hits
    return starlette


async def serve_tracking(ctx: TrackingContext, stop: asyncio.Event) -> None:
    """Serve the tracking app on ``tracking.listen`` until ``stop`` is set; returns after a
    graceful shutdown with every buffered hit written."""
    host, port = ctx.tracking.listen_address
    await serve_app(build_app(ctx), bind(host, port), stop)
