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
number of copies can run behind a load balancer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import uvicorn
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from engine.base.clock import Clock
from engine.base.errors import EngineError
from engine.inbound.tracking import forms, records
from engine.inbound.tracking.api import ApiError, apply_event, parse_body
from engine.inbound.tracking.bots import classify_request
from engine.inbound.tracking.buffer import Hit, HitBuffer
from engine.inbound.tracking.csrf import FIELD as CSRF_FIELD
from engine.inbound.tracking.csrf import CsrfTokens
from engine.inbound.tracking.i18n import Translator, language, negotiate
from engine.inbound.tracking.pages import Pages
from engine.inbound.tracking.web import (
    GIF,
    SecurityHeaders,
    origin_allowed,
    origin_of,
    pixel_headers,
    safe_location,
    security_headers,
)
from engine.mail.tokens import FORM_KINDS, HONEYPOT_PATH, Links, Signer
from engine.program.settings import SenderSettings, TrackingSettings
from engine.records.referrals import ReferralError, add_referral
from engine.store.db import Database

log = logging.getLogger("engine.tracking")

FORM_BODY_MAX = 64 * 1024  # four 2,000-character answers in any script, URL-encoded
API_BODY_MAX = 16 * 1024
MAX_FORM_FIELDS = 20
REFERRAL_CODE_MAX = 32
SHUTDOWN_SECONDS = 10


class TrackingError(EngineError, OSError):
    """The tracking app cannot start (its address is taken, its start-up failed)."""


@dataclass(frozen=True, kw_only=True)
class TrackingContext:
    """What the tracking app needs: the store, the clock, the links of the emails (their
    signer), ``[tracking]`` and the sender's name on pages."""

    db: Database
    clock: Clock
    links: Links
    tracking: TrackingSettings
    sender: SenderSettings


@dataclass
class _App:
    """What the handlers share: the app's context plus the page renderer and hit buffer."""

    db: Database
    clock: Clock
    tracking: TrackingSettings
    sender_name: str
    signer: Signer
    pages: Pages
    csrf: CsrfTokens
    buffer: HitBuffer
    base_origin: str

    # -- helpers ---------------------------------------------------------------------------

    def now(self) -> datetime:
        return self.clock.now()

    @staticmethod
    def machine(request: Request) -> str | None:
        return _machine(request.scope)

    def verify(self, request: Request, kind: str) -> bytes | None:
        return self.signer.ref(request.path_params["token"], kind)

    async def form(self, request: Request) -> FormData:
        return await request.form(max_files=0, max_fields=MAX_FORM_FIELDS)

    def page(
        self,
        request: Request,
        name: str,
        lang: str,
        title_key: str,
        *,
        status: int = 200,
        **context: Any,
    ) -> Response:
        """A page; forms in it get a fresh CSRF token bound to this URL."""
        context.setdefault("values", {})
        context.setdefault("errors", {})
        context.setdefault("expired", False)
        context.setdefault("done", False)
        csrf = self.csrf.issue(request.url.path, time.time())
        return self.pages.render(name, lang, title_key, status=status, csrf=csrf, **context)

    def guard(self, request: Request, form: Mapping[str, Any]) -> str | None:
        """Why a form post is refused: "origin" (sent from another site) or "csrf" (no valid
        token for this page); None when it may proceed."""
        if not origin_allowed(request, self.base_origin):
            return "origin"
        token = form.get(CSRF_FIELD)
        if not self.csrf.check(
            token if isinstance(token, str) else None, request.url.path, time.time()
        ):
            return "csrf"
        return None

    def refusal(
        self,
        request: Request,
        form: Mapping[str, Any],
        result: forms.Submission,
        again: Callable[..., Response],
    ) -> Response | None:
        """The answer to a post that may not proceed: 403 from another site; the page again
        (``again``) with a fresh token (403) or with the errors next to the fields (400)."""
        refused = self.guard(request, form)
        if refused == "origin":
            return _forbidden()
        if refused or not result.ok:
            return again(
                status=403 if refused else 400,
                values=result.values,
                errors=result.errors,
                expired=bool(refused),
            )
        return None


def _path_param(request: Request, name: str) -> str:
    return str(request.path_params.get(name, ""))


# -- open, click, honeypot -------------------------------------------------------------------


def _machine(scope: Scope) -> str | None:
    """Why a request is machine traffic (None: maybe a person), read straight from the ASGI
    scope: this runs on every pixel request."""
    agent = None
    for name, value in scope["headers"]:
        if name == b"user-agent":
            agent = value.decode("latin-1")
            break
    client = scope.get("client")
    return classify_request(scope["method"], agent, client[0] if client else None)


_PIXEL_METHODS = ("GET", "HEAD")


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
            if path.startswith("/o/") and path.endswith(".gif"):
                ref = self._signer.ref(path[3:-4], "open")
                if ref is not None:
                    self._buffer.add(Hit("opened", ref, self._clock.now(), _machine(scope)))
                    headers = self._pixel_headers
                    await send({"type": "http.response.start", "status": 200, "headers": headers})
                    await send({"type": "http.response.body", "body": GIF})
                    return
        await super().__call__(scope, receive, send)


def _tracking_routes(app: _App) -> list[Route]:
    signer, buffer, clock = app.signer, app.buffer, app.clock
    not_found = app.pages.not_found

    async def click(request: Request) -> Response:
        token = signer.verify(request.path_params["token"], kind="click")
        location = safe_location(token.url) if token is not None and token.url else None
        if token is None or location is None:
            return not_found()
        buffer.add(Hit("clicked", token.ref, clock.now(), app.machine(request), url=token.url))
        return Response(status_code=302, headers={"location": location})

    async def honeypot(request: Request) -> Response:
        token = signer.verify(request.path_params["token"], kind="click")
        if token is None or token.url != "":
            return not_found()
        buffer.add(Hit("clicked", token.ref, clock.now(), "honeypot", honeypot=True))
        return PlainTextResponse("")

    return [
        Route("/c/{token}", click, methods=["GET"]),
        Route(HONEYPOT_PATH + "{token}", honeypot, methods=["GET"]),
    ]


# -- unsubscribe -------------------------------------------------------------------------------


def _masked(email: str) -> str:
    """``"ana.lima@example.com"`` -> ``"a•••@example.com"`` (enough to recognise, not to copy)."""
    local, _, domain = email.partition("@")
    return f"{local[:1]}•••@{domain}"


def _unsubscribe_routes(app: _App) -> list[Route]:
    db = app.db

    def answer(request: Request, target: records.Target | None, done: bool) -> Response:
        if target is None:
            return app.pages.not_found()
        return app.page(
            request,
            "unsubscribe",
            language(target.locale),
            "unsubscribe.title",
            email=_masked(target.email),
            done=done,
        )

    async def show(request: Request) -> Response:
        ref = app.verify(request, "unsubscribe")
        target = None if ref is None else await run_in_threadpool(records.load_target, db, ref)
        return answer(request, target, target is not None and target.unsubscribed)

    async def one_click(request: Request) -> Response:
        # RFC 8058: mailbox providers post this with no cookie, token or Origin, so it needs
        # no CSRF token (the signed URL is the authority); the page's button posts the same.
        ref = app.verify(request, "unsubscribe")
        if ref is None:
            return app.pages.not_found()
        form = await app.form(request)
        if form.get("List-Unsubscribe") != "One-Click":
            return PlainTextResponse("expected List-Unsubscribe=One-Click", status_code=400)
        via = "page" if form.get("via") == "page" else "one-click"
        target = await run_in_threadpool(records.unsubscribe, db, ref, app.now(), via=via)
        return answer(request, target, True)

    return [
        Route("/u/{token}", show, methods=["GET"]),
        Route("/u/{token}", one_click, methods=["POST"], max_body_size=FORM_BODY_MAX),
    ]


# -- NPS ---------------------------------------------------------------------------------------


def _nps_routes(app: _App) -> list[Route]:
    db = app.db

    async def clicked(request: Request) -> Response:
        token = app.signer.verify(request.path_params["token"], kind="nps")
        if token is None or token.value is None or not 0 <= token.value <= 10:
            return app.pages.not_found()
        score = token.value
        target = await run_in_threadpool(
            records.answer_nps, db, token.ref, score, app.now(), app.machine(request)
        )
        if target is None:
            return app.pages.not_found()
        return app.page(
            request,
            "nps",
            language(target.locale),
            "nps.title",
            values={"score": str(score)},
        )

    async def answered(request: Request) -> Response:
        ref = app.verify(request, "nps")
        target = None if ref is None else await run_in_threadpool(records.load_target, db, ref)
        if ref is None or target is None:
            return app.pages.not_found()
        lang = language(target.locale)
        form = await app.form(request)
        result = forms.check(form, forms.NPS, Translator(lang))
        again = functools.partial(app.page, request, "nps", lang, "nps.title")
        if (refused := app.refusal(request, form, result, again)) is not None:
            return refused
        v = result.values
        saved = await run_in_threadpool(
            records.save_nps_page, db, ref, int(v["score"]), v["improve"], v["other"], app.now()
        )
        if saved is None:
            return app.pages.not_found()
        return app.page(request, "nps", lang, "nps.title", done=True)

    return [
        Route("/nps/{token}", clicked, methods=["GET"]),
        Route("/nps/{token}", answered, methods=["POST"], max_body_size=FORM_BODY_MAX),
    ]


def _forbidden() -> Response:
    return PlainTextResponse("This form can only be sent from its own page.", status_code=403)


# -- the referral page -------------------------------------------------------------------------


def _referral_routes(app: _App) -> list[Route]:
    db = app.db
    sender = app.sender_name

    def valid_code(code: str) -> bool:
        return (
            0 < len(code) <= REFERRAL_CODE_MAX
            and code.isascii()
            and code.replace("-", "").replace("_", "").isalnum()
        )

    def render(request: Request, referrer: records.Referrer, lang: str, **context: Any) -> Response:
        t = Translator(lang)
        title_key = "referral.title" if referrer.first_name else "referral.title_anonymous"
        return app.page(
            request,
            "referral",
            lang,
            title_key,
            title_fields={"referrer": referrer.first_name or ""},
            consent=t("referral.consent", sender=sender),
            **context,
        )

    async def show(request: Request) -> Response:
        code = _path_param(request, "code")
        if not valid_code(code):
            return app.pages.not_found()
        referrer = await run_in_threadpool(
            records.visit_referral_page,
            db,
            code,
            app.now(),
            count=True,
            machine=app.machine(request),
        )
        if referrer is None:
            return app.pages.not_found()
        lang = negotiate(request.headers.get("accept-language"), referrer.locale)
        return render(request, referrer, lang)

    async def submit(request: Request) -> Response:
        code = _path_param(request, "code")
        referrer = None
        if valid_code(code):
            referrer = await run_in_threadpool(
                records.visit_referral_page, db, code, app.now(), count=False, machine=None
            )
        if referrer is None:
            return app.pages.not_found()
        lang = negotiate(request.headers.get("accept-language"), referrer.locale)
        t = Translator(lang)
        form = await app.form(request)
        result = forms.check(form, forms.REFERRAL, t)
        if result.values["email"] == referrer.email and "email" not in result.errors:
            result.errors["email"] = t("self_referral")
        again = functools.partial(render, request, referrer, lang)
        if (refused := app.refusal(request, form, result, again)) is not None:
            return refused
        v = result.values
        consent = t("referral.consent", sender=sender)
        try:
            await run_in_threadpool(
                add_referral,
                db,
                referrer.email,
                v["email"],
                app.now(),
                name=v["name"],
                channel="link",
                consent=consent,
            )
        except ReferralError:
            return app.pages.not_found()  # the referrer was removed meanwhile
        return render(request, referrer, lang, done=True)

    return [
        Route("/r/{code}", show, methods=["GET"]),
        Route("/r/{code}", submit, methods=["POST"], max_body_size=FORM_BODY_MAX),
    ]


# -- the forms linked from emails ----------------------------------------------------------------


_FORM_TITLES = {
    "intro": "intro.title",
    "partner": "partner.title",
    "testimonial": "testimonial.title",
}


def _form_routes(app: _App) -> list[Route]:
    db = app.db
    sender = app.sender_name

    async def target_of(request: Request) -> tuple[str, bytes, records.Target] | None:
        name = _path_param(request, "name")
        kind = FORM_KINDS.get(name)
        ref = None if kind is None else app.verify(request, kind)
        if ref is None:
            return None
        target = await run_in_threadpool(records.load_target, db, ref)
        return None if target is None else (name, ref, target)

    def render(request: Request, name: str, lang: str, **context: Any) -> Response:
        consent = Translator(lang)("intro.consent", sender=sender)
        return app.page(request, name, lang, _FORM_TITLES[name], consent=consent, **context)

    async def show(request: Request) -> Response:
        found = await target_of(request)
        if found is None:
            return app.pages.not_found()
        name, _ref, target = found
        values = {}
        if name == "partner":  # a partner may come back to change their answers
            values = {f.name: str(target.fields.get(f.name, "")) for f in forms.PARTNER}
        return render(request, name, language(target.locale), values=values)

    async def submit(request: Request) -> Response:
        found = await target_of(request)
        if found is None:
            return app.pages.not_found()
        name, ref, target = found
        lang = language(target.locale)
        t = Translator(lang)
        form = await app.form(request)
        if name == "intro":
            result = forms.check_intro(form, target.email, t)
        else:
            result = forms.check(form, forms.PARTNER if name == "partner" else forms.TESTIMONIAL, t)
        again = functools.partial(render, request, name, lang)
        if (refused := app.refusal(request, form, result, again)) is not None:
            return refused
        now = app.now()
        v = result.values
        if name == "intro":
            consent = t("intro.consent", sender=sender)
            for email, friend_name in forms.friends(result):
                try:
                    await run_in_threadpool(
                        add_referral,
                        db,
                        target.email,
                        email,
                        now,
                        name=friend_name,
                        channel="form",
                        consent=consent,
                    )
                except ReferralError:
                    return app.pages.not_found()
        elif name == "partner":
            answers = {f.name: v[f.name] for f in forms.PARTNER}
            if await run_in_threadpool(records.save_partner, db, ref, answers, now) is None:
                return app.pages.not_found()
        else:
            saved = await run_in_threadpool(
                records.save_testimonial, db, ref, v["text"], result.checked("publish"), now
            )
            if saved is None:
                return app.pages.not_found()
        return render(request, name, lang, done=True)

    return [
        Route("/f/{name}/{token}", show, methods=["GET"]),
        Route("/f/{name}/{token}", submit, methods=["POST"], max_body_size=FORM_BODY_MAX),
    ]


# -- health and the events API -----------------------------------------------------------------


def _service_routes(app: _App) -> list[Route]:
    db = app.db
    api_token = app.tracking.api_token.encode("ascii")

    def ping() -> None:
        with db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    async def healthz(request: Request) -> Response:
        try:
            await run_in_threadpool(ping)
        except Exception:
            log.exception("healthz_database_unreachable")
            return JSONResponse({"status": "database unreachable"}, status_code=503)
        return JSONResponse({"status": "ok", "pending_hits": app.buffer.pending})

    async def events(request: Request) -> Response:
        if not api_token:
            return JSONResponse({"error": "the events API is off"}, status_code=404)
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode("utf-8", "replace"), api_token
        ):
            return JSONResponse(
                {"error": "a valid bearer token is required"},
                status_code=401,
                headers={"www-authenticate": "Bearer"},
            )
        media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media != "application/json":
            return JSONResponse({"error": "send application/json"}, status_code=415)
        try:
            ev = parse_body(await request.body(), app.now())
            result = await run_in_threadpool(apply_event, db, ev)
        except ApiError as exc:
            return JSONResponse(exc.body(), status_code=exc.status)
        return JSONResponse(result, status_code=201 if result["recorded"] else 200)

    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/api/events", events, methods=["POST"], max_body_size=API_BODY_MAX),
    ]


# -- the app and its server ----------------------------------------------------------------------


def build_app(ctx: TrackingContext, *, buffer: HitBuffer | None = None) -> Starlette:
    """The tracking app. Opens and clicks go through ``buffer`` (default: one writing to
    ``ctx.db``), flushed in the background and on shutdown."""
    tracking = ctx.tracking
    signer = ctx.links.signer
    pages = Pages(ctx.sender)
    hits = buffer or HitBuffer(records.HitWriter(ctx.db))
    app = _App(
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
            *_tracking_routes(app),
            *_unsubscribe_routes(app),
            *_nps_routes(app),
            *_referral_routes(app),
            *_form_routes(app),
            *_service_routes(app),
        ],
        middleware=[Middleware(SecurityHeaders, headers=headers)],
        exception_handlers={404: not_found, HTTPException: http_error},
        lifespan=lifespan,
    )
    starlette.state.buffer = hits
    return starlette


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the process owner (``serve``, ``run``) turns
    SIGTERM/SIGINT into the stop event, and uvicorn must not re-raise the signal afterwards."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0: any free port); TrackingError if taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it every response waits ~40 ms for a delayed ACK (headers and body are 2 writes).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise TrackingError(f"tracking app: cannot listen on {host}:{port}: {exc}") from exc
    sock.setblocking(False)
    return sock


async def serve_app(app: Starlette, sock: socket.socket, stop: asyncio.Event) -> None:
    """Serve ``app`` with uvicorn on ``sock`` until ``stop`` is set, then shut down gracefully:
    requests in flight finish, the lifespan flushes the hit buffer. Closes ``sock``."""
    config = uvicorn.Config(
        app,
        lifespan="on",
        log_config=None,  # the engine's logging stays as it is
        access_log=False,  # no addresses or tokens in logs
        server_header=False,
        proxy_headers=True,  # X-Forwarded-For from a proxy on 127.0.0.1 (FORWARDED_ALLOW_IPS)
        timeout_graceful_shutdown=SHUTDOWN_SECONDS,
    )
    server = _Server(config)

    async def watch() -> None:
        await stop.wait()
        server.should_exit = True

    watcher = asyncio.create_task(watch())
    host, port = sock.getsockname()[:2]
    log.info("tracking_listening address=%s:%s", host, port)
    try:
        await server.serve(sockets=[sock])
    except SystemExit:  # uvicorn's way of saying the lifespan failed to start
        raise TrackingError("tracking app: failed to start (see the log above)") from None
    finally:
        watcher.cancel()
        sock.close()
    log.info("tracking_stopped")


async def serve_tracking(ctx: TrackingContext, stop: asyncio.Event) -> None:
    """Serve the tracking app on ``tracking.listen`` until ``stop`` is set; returns after a
    graceful shutdown with every buffered hit written."""
    host, port = ctx.tracking.listen_address
    await serve_app(build_app(ctx), bind(host, port), stop)
