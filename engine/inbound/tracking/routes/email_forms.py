"""The forms linked from emails: the referrer's introductions, a partner's answers, a
testimonial (``/f/<name>/<token>``, the name matching the token's kind)."""

from __future__ import annotations

import functools
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine.inbound.tracking import forms, records
from engine.inbound.tracking.i18n import Translator, language
from engine.inbound.tracking.state import FORM_BODY_MAX, AppState, path_param
from engine.mail.tokens import FORM_KINDS, LINK_PATHS
from engine.records.referrals import ReferralError, add_referrals

_FORM_TITLES = {
    "intro": "intro.title",
    "partner": "partner.title",
    "testimonial": "testimonial.title",
}


def routes(app: AppState) -> list[Route]:
    """GET and POST /f/<name>/<token>: the form, and its answers."""
    db = app.db
    sender = app.sender_name

    async def target_of(request: Request) -> tuple[str, bytes, records.Target] | None:
        name = path_param(request, "name")
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
        if not await _save(app, name, ref, target, result, t):
            return app.pages.not_found()
        return render(request, name, lang, done=True)

    return [
        Route(LINK_PATHS["form"], show, methods=["GET"]),
        Route(LINK_PATHS["form"], submit, methods=["POST"], max_body_size=FORM_BODY_MAX),
    ]


async def _save(
    app: AppState,
    name: str,
    ref: bytes,
    target: records.Target,
    result: forms.Submission,
    t: Translator,
) -> bool:
    """Record a checked form of kind ``name``; False when whom it is about is gone."""
    now = app.now()
    v = result.values
    if name == "intro":
        consent = t("intro.consent", sender=app.sender_name)
        try:
            # One form, one transaction: the referrer is thanked once, for everyone in it.
            await run_in_threadpool(
                functools.partial(
                    add_referrals,
                    app.db,
                    target.email,
                    forms.friends(result),
                    now,
                    channel="form",
                    consent=consent,
                )
            )
        except ReferralError:
            return False
        return True
    if name == "partner":
        answers = {f.name: v[f.name] for f in forms.PARTNER}
        return await run_in_threadpool(records.save_partner, app.db, ref, answers, now) is not None
    saved = await run_in_threadpool(
        records.save_testimonial, app.db, ref, v["text"], result.checked("publish"), now
    )
    return saved is not None
