"""What the tracking app's route handlers share: the state built from its context
(``AppState``: page renderer, CSRF tokens, hit buffer) and the helpers every route group uses
(token checks, pages with a CSRF token, refusing a post)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import Scope

from engine.base.clock import Clock
from engine.inbound.tracking import forms
from engine.inbound.tracking.bots import classify_request
from engine.inbound.tracking.buffer import HitBuffer
from engine.inbound.tracking.csrf import FIELD as CSRF_FIELD
from engine.inbound.tracking.csrf import CsrfTokens
from engine.inbound.tracking.pages import Pages
from engine.inbound.tracking.web import origin_allowed
from engine.mail.tokens import Signer
from engine.program.settings import TrackingSettings
from engine.store.db import Database

FORM_BODY_MAX = 64 * 1024  # four 2,000-character answers in any script, URL-encoded
MAX_FORM_FIELDS = 20


@dataclass
class AppState:
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
        return machine_reason(request.scope)

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
            return forbidden()
        if refused or not result.ok:
            return again(
                status=403 if refused else 400,
                values=result.values,
                errors=result.errors,
                expired=bool(refused),
            )
        return None


def path_param(request: Request, name: str) -> str:
    """The path parameter ``name`` as a string ("" when absent)."""
    return str(request.path_params.get(name, ""))


def machine_reason(scope: Scope) -> str | None:
    """Why a request is machine traffic (None: maybe a person), read straight from the ASGI
    scope: this runs on every pixel request."""
    agent = None
    for name, value in scope["headers"]:
        if name == b"user-agent":
            agent = value.decode("latin-1")
            break
    client = scope.get("client")
    return classify_request(scope["method"], agent, client[0] if client else None)


def forbidden() -> Response:
    """The answer to a form posted from another site."""
    return PlainTextResponse("This form can only be sent from its own page.", status_code=403)
