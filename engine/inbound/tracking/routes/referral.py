"""A referrer's personal page: visits are counted, a friend leaves name, email and consent.

A visit counts once per visitor, page and UTC day, and each client address gets at most
``VISITS_PER_CLIENT_HOUR`` counted visits an hour (``VisitGate``): reloading a page, or a
script requesting it in a loop, is not a crowd of people.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
from datetime import date, datetime
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
# Counted visits per client address (an IPv6 /64) per hour, any page and agent: more than a
# household or an office clicks through, far fewer than a script.
VISITS_PER_CLIENT_HOUR = 20
# Visitors and clients remembered per window, a bound on memory: past it, new visitors are
# still checked in the database, new clients are not counted until the window turns.
REMEMBERED_MAX = 100_000


class VisitGate:
    """Which loads of referral pages count as visits, decided in memory (no database work
    for a repeat): once per visitor, page and UTC day, at most ``per_client`` an hour per
    client address. The database still has the last word on a repeat (another copy of the
    app, a restart): ``records.visit_referral_page`` looks for the visitor's hash first.

    A visitor is a keyed hash (HMAC-SHA256) of the day, the page's code, the client address
    and the user agent: never an address or agent in clear. Keyed, because an unkeyed hash of
    an IPv4 address and a common agent is undone by trying them all (2^32 addresses); with a
    key derived from ``tracking.secret``, which the database does not hold, a copy of the
    database tells nobody who visited. Derived (HMAC of a fixed label) rather than the secret
    itself, so a visitor hash can never help forge a tracking token; and with the day in it,
    the same visitor cannot be followed from one day to the next.
    """

    def __init__(self, secret: str, *, per_client: int = VISITS_PER_CLIENT_HOUR) -> None:
        label = b"engine referral visitor v1"
        self._key = hmac.new(secret.encode("utf-8"), label, hashlib.sha256).digest()
        self._per_client = per_client
        self._day: date | None = None
        self._seen: set[str] = set()
        self._hour: datetime | None = None
        self._clients: dict[str, int] = {}

    def visitor(self, code: str, address: str, agent: str, now: datetime) -> str:
        """The visitor's hash for this page on ``now``'s day (32 hex digits)."""
        message = f"{now:%Y-%m-%d}\0{code}\0{address}\0{agent}".encode("utf-8", "replace")
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:32]

    def admit(self, visitor: str, address: str, now: datetime) -> bool:
        """Whether this load may count (then it is remembered): a visitor new today and a
        client under its hourly cap."""
        hour = now.replace(minute=0, second=0, microsecond=0)
        if hour.date() != self._day:
            self._day, self._seen = hour.date(), set()
        if hour != self._hour:
            self._hour, self._clients = hour, {}
        if visitor in self._seen:
            return False
        client = _client(address)
        used = self._clients.get(client, 0)
        if used >= self._per_client or (not used and len(self._clients) >= REMEMBERED_MAX):
            return False
        self._clients[client] = used + 1
        if len(self._seen) < REMEMBERED_MAX:
            self._seen.add(visitor)
        return True


def _client(address: str) -> str:
    """The client an address stands for: itself, or its /64 for IPv6 (one subscriber's
    addresses: rotating through them must not buy more visits)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


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
    gate = VisitGate(app.tracking.secret)

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
        now = app.now()
        address = request.client.host if request.client else ""
        visitor = gate.visitor(code, address, request.headers.get("user-agent", ""), now)
        referrer = await run_in_threadpool(
            records.visit_referral_page,
            db,
            code,
            now,
            visitor=visitor if gate.admit(visitor, address, now) else None,
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
                records.visit_referral_page, db, code, app.now(), visitor=None, machine=None
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
