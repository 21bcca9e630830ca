"""The click redirect and the hidden honeypot link (the open pixel is answered ahead of the
router, in ``engine.inbound.tracking.app``)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from engine.inbound.tracking.buffer import Hit
from engine.inbound.tracking.state import AppState
from engine.inbound.tracking.web import safe_location
from engine.mail.tokens import LINK_PATHS


def routes(app: AppState) -> list[Route]:
    """GET /c/<token> (302 to the URL signed into it) and GET /h/<token> (the honeypot)."""
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
        Route(LINK_PATHS["click"], click, methods=["GET"]),
        Route(LINK_PATHS["honeypot"], honeypot, methods=["GET"]),
    ]
