"""The unsubscribe page and RFC 8058 one-click unsubscribe."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from engine.inbound.tracking import records
from engine.inbound.tracking.i18n import language
from engine.inbound.tracking.state import FORM_BODY_MAX, AppState
from engine.mail.tokens import LINK_PATHS


def _masked(email: str) -> str:
    """``"ana.lima@example.com"`` -> ``"a•••@example.com"`` (enough to recognise, not to copy)."""
    local, _, domain = email.partition("@")
    return f"{local[:1]}•••@{domain}"


def routes(app: AppState) -> list[Route]:
    """GET /u/<token> (the confirmation page) and POST /u/<token> (one-click)."""
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
        Route(LINK_PATHS["unsubscribe"], show, methods=["GET"]),
        Route(LINK_PATHS["unsubscribe"], one_click, methods=["POST"], max_body_size=FORM_BODY_MAX),
    ]
