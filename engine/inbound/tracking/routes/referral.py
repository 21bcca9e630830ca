"""A referrer's personal page: visits are counted, a friend leaves name, email and consent."""

from __future__ import annotations

import functools
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine.inbound.tracking import forms, records
from engine.inbound.tracking.i18n import Translator, negotiate
from engine.inbound.tracking.state import FORM_BODY_MAX, AppState, path_param
from engine.mail.tokens import LINK_PATHS
from engine.records.referrals import ReferralError, add_referral

REFERRAL_CODE_MAX = 32


def valid_code(code: str) -> bool:
    """Whether ``code`` can be a referral code: 1 to 32 ASCII letters, digits, ``-`` and ``_``."""
    return (
        0 < len(code) <= REFERRAL_CODE_MAX
        and code.isascii()
        and code.replace("-", "").replace("_", "").isalnum()
    )


def routes(app: AppState) -> list[Route]:
    """GET and POST /r/<code>: the page, and a friend left by a visitor."""
    db = app.db
    sender = app.sender_name

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
        code = path_param(request, "code")
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
        code = path_param(request, "code")
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
        Route(LINK_PATHS["referral"], show, methods=["GET"]),
        Route(LINK_PATHS["referral"], submit, methods=["POST"], max_body_size=FORM_BODY_MAX),
    ]
