"""The NPS survey: the score clicked in the email, then the follow-up answers."""

from __future__ import annotations

import functools

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine.inbound.tracking import forms, records
from engine.inbound.tracking.i18n import Translator, language
from engine.inbound.tracking.state import FORM_BODY_MAX, AppState
from engine.mail.tokens import LINK_PATHS


def routes(app: AppState) -> list[Route]:
    """GET /nps/<token> (the score clicked) and POST /nps/<token> (the follow-ups)."""
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
        Route(LINK_PATHS["nps"], clicked, methods=["GET"]),
        Route(LINK_PATHS["nps"], answered, methods=["POST"], max_body_size=FORM_BODY_MAX),
    ]
