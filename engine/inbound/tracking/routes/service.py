"""``GET /healthz`` and ``POST /api/events`` (bearer token; see ``engine.inbound.tracking.api``)."""

from __future__ import annotations

import hmac
import logging

from sqlalchemy import text
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from engine.inbound.tracking.api import ApiError, apply_event, parse_body
from engine.inbound.tracking.state import AppState

log = logging.getLogger("engine.tracking")

API_BODY_MAX = 16 * 1024


def routes(app: AppState) -> list[Route]:
    """GET /healthz and POST /api/events."""
    db = app.db
    api_token = app.tracking.api_token.encode("ascii")

    def ping() -> None:
        with db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    async def healthz(request: Request) -> Response:
        hits = {"pending_hits": app.buffer.pending, "dropped_hits": app.buffer.dropped}
        try:
            await run_in_threadpool(ping)
        except Exception as exc:  # the pixel and clicks still answer; hits wait in memory
            log.warning("healthz_database_unreachable error=%s", type(exc).__name__)
            return JSONResponse({"status": "database unreachable", **hits}, status_code=503)
        return JSONResponse({"status": "ok", **hits})

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
