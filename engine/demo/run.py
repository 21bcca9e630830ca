"""`python -m engine demo`: the whole pipeline on sample contacts, with nothing outside.

Embedded SQLite, an embedded SMTP sink keeping every email as an .eml file, the shipped
sequences and templates, and a clock that plays weeks in seconds. Scripted moments (a reply,
an introduction, a conversion, a survey answer) happen through the same functions the CLI and
the tracking app use, and a closing summary says who got what, and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email
import email.policy
import inspect
import logging
import secrets
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy import select

from engine.base.clock import AcceleratedClock
from engine.demo import samples
from engine.demo.sink import EmlHandler, bound_port, start_sink
from engine.inbound.replies.record import process_message
from engine.inbound.tracking.app import bind, build_app, serve_app
from engine.inbound.tracking.links import message_links
from engine.mail.smtp import SmtpTransport
from engine.plan.explain import explain_contact
from engine.program.settings import NotifySettings, Settings, load_settings
from engine.records.contacts import import_contacts
from engine.records.referrals import add_referral, convert_referral
from engine.report.figures import build_report
from engine.report.table import print_report
from engine.scheduler import tick
from engine.store.models import Contact, Message
from engine.wiring import Engine

START = datetime(2026, 1, 5, 7, 0, tzinfo=UTC)  # a Monday morning
ROOT = Path(__file__).resolve().parents[2]  # the checkout: samples/, sequences/, templates/
BOUNCING = "old.address@example.com"
MARKER = ".engine-demo"


@dataclass
class Moment:
    at: timedelta
    what: str
    act: Callable[[Engine, datetime], object]


def _latest_sent(engine: Engine, who: str) -> Message | None:
    with engine.db.session() as session:
        return session.scalar(
            select(Message)
            .join(Contact, Contact.id == Message.contact_id)
            .where(Contact.email == who, Message.status == "sent")
            .order_by(Message.sent_at.desc())
            .limit(1)
        )


def _inbound(engine: Engine, now: datetime, who: str, build: Callable[[Message], bytes]) -> str:
    """An email arriving in the reply mailbox, through the IMAP poller's own path."""
    message = _latest_sent(engine, who)
    if message is None:
        return "nothing was sent to them yet"
    outcome = process_message(engine.replies(), build(message), now=now)
    return f"read as {outcome.kind}"


def _reply(engine: Engine, now: datetime, who: str, text: str) -> str:
    reply_to = engine.settings.sender.reply_to
    return _inbound(
        engine, now, who, lambda m: samples.reply(who, reply_to, m.message_id, text, date=now)
    )


def _bounce(engine: Engine, now: datetime, who: str) -> str:
    return _inbound(engine, now, who, lambda m: samples.dsn(who, m.message_id, date=now))


async def _web(engine: Engine, who: str, action: str) -> str:
    """A person (or their mail client) using the links of the latest email they got, over
    HTTP against the running tracking app."""
    message = _latest_sent(engine, who)
    if message is None:
        return "nothing was sent to them yet"
    links = message_links(engine.db, engine.renderer.links, message.message_id)
    assert links is not None
    async with httpx.AsyncClient(timeout=10) as client:
        if action == "open":
            response = await client.get(links.open, headers={"User-Agent": BROWSER})
        elif action == "referral":  # a friend opens the referrer's personal page
            assert links.referral is not None
            response = await client.get(links.referral, headers={"User-Agent": BROWSER})
        elif action.startswith("nps"):
            response = await client.get(links.nps[int(action[3:])], headers={"User-Agent": BROWSER})
        else:  # one-click unsubscribe, as a mail client's button does it (RFC 8058)
            response = await client.post(
                links.unsubscribe,
                content="List-Unsubscribe=One-Click",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
    return f"HTTP {response.status_code}"


BROWSER = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Safari/605.1.15"

MOMENTS = [
    Moment(
        timedelta(days=2, hours=4),
        "Ana opens the referral ask (the open pixel, through the tracking app)",
        lambda e, now: _web(e, "ana.lima@example.com", "open"),
    ),
    Moment(
        timedelta(days=2, hours=5),
        "Layla replies to the referral ask (read from the reply mailbox; the sequence stops)",
        lambda e, now: _reply(e, now, "layla.haddad@example.sa", "Happy to! Let me think who..."),
    ),
    Moment(
        timedelta(days=2, hours=6),
        "Budi presses Unsubscribe in his mail app (RFC 8058 one-click; nothing more is sent)",
        lambda e, now: _web(e, "budi.santoso@example.co.id", "unsubscribe"),
    ),
    Moment(
        timedelta(days=3, hours=1),
        "Mia opens Ana's personal referral page (a visit in the funnel)",
        lambda e, now: _web(e, "ana.lima@example.com", "referral"),
    ),
    Moment(
        timedelta(days=3, hours=2),
        "Ana introduces Mia (thank-you starts, ask stops)",
        lambda e, now: add_referral(
            e.db, "ana.lima@example.com", "mia.wong@example.com", now, name="Mia Wong"
        ),
    ),
    Moment(
        timedelta(days=9),
        "Tom clicks 10 in the NPS survey (routing: thank-you, and a note to sales)",
        lambda e, now: _web(e, "tom.chen@example.com", "nps10"),
    ),
    Moment(
        timedelta(days=23),
        "Mia becomes a customer (reward email to Ana, gifts for both)",
        lambda e, now: convert_referral(e.db, "mia.wong@example.com", now, value=Decimal("1200")),
    ),
    Moment(
        timedelta(days=30, hours=12),
        "A bounce report arrives for Carl's ask (read from the reply mailbox; suppressed)",
        lambda e, now: _bounce(e, now, "carl.meyer@example.com"),
    ),
]


def demo_settings(folder: Path, smtp_port: int, http_port: int) -> Settings:
    base = (
        load_settings(ROOT / "settings.toml") if (ROOT / "settings.toml").exists() else Settings()
    )
    return dataclasses.replace(
        base,
        database=dataclasses.replace(base.database, url=f"sqlite:///{folder / 'demo.db'}"),
        smtp=dataclasses.replace(
            base.smtp,
            host="127.0.0.1",
            port=smtp_port,
            security="none",
            username="",
            password="",
            retry_base_seconds=3600,
        ),
        paths=dataclasses.replace(
            base.paths, sequences=str(ROOT / "sequences"), templates=str(ROOT / "templates")
        ),
        # Simulated seconds fly by: a lease or retry measured in minutes would expire
        # between two real milliseconds, so both are scaled to the accelerated clock.
        tracking=dataclasses.replace(
            base.tracking,
            secret=secrets.token_urlsafe(32),
            base_url=f"http://127.0.0.1:{http_port}",
            listen=f"127.0.0.1:{http_port}",
        ),
        notify=NotifySettings(
            owner="owner@acme.example",
            sales="sales@acme.example",
            account_manager="accounts@acme.example",
        ),
        schedule=dataclasses.replace(base.schedule, tick_seconds=0.0, lease_seconds=7 * 86400),
        base_dir=folder,
    )


def run_demo(folder: Path, *, weeks: int, speed: float, console: Console) -> int:
    return asyncio.run(_demo(folder.resolve(), weeks, speed, console))


def _fresh_folder(folder: Path, console: Console) -> bool:
    """Empty ``folder`` for this run; False when it holds something the demo did not make."""
    marker = folder / MARKER
    if folder.exists() and any(folder.iterdir()):
        if not marker.exists():
            console.print(
                f"[red]error:[/red] {folder} exists and was not made by the demo; "
                "choose another --dir",
                highlight=False,
            )
            return False
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marker.write_text("made by `python -m engine demo`; the next demo run replaces it\n")
    return True


# Said once, under the first email held back: the sample without a first name is on purpose.
HELD_ON_PURPOSE = (
    "(on purpose: sam.kowalski@example.com has no first name in samples/contacts.csv, and the "
    "ask's subject needs one, so the engine holds that email rather than send "
    '", who are ..."; `outbox retry` sends it once the name is fixed)'
)


async def _play(engine: Engine, transport: SmtpTransport, end: datetime, console: Console) -> None:
    """Tick until ``end`` on the accelerated clock, acting out each moment when it comes."""
    pending = list(MOMENTS)
    explained = False
    while (now := engine.clock.now()) < end:
        while pending and START + pending[0].at <= now:
            moment = pending.pop(0)
            done = moment.act(engine, now)
            if inspect.isawaitable(done):
                done = await done
            said = f" [dim]({escape(done)})[/dim]" if isinstance(done, str) else ""
            console.print(f"[dim]{now:%a %m-%d %H:%M}[/dim]  * {moment.what}{said}")
        outcome = await tick(engine, transport)
        for error in outcome.send.errors:
            console.print(f"[dim]{now:%a %m-%d %H:%M}[/dim]  ! {escape(error)}", highlight=False)
            if error.startswith("render_failed") and not explained:
                console.print(f"                 {HELD_ON_PURPOSE}", highlight=False)
                explained = True
        if outcome.send.sent:
            console.print(
                f"[dim]{now:%a %m-%d %H:%M}[/dim]  sent {outcome.send.sent}", highlight=False
            )
        await asyncio.sleep(0.05)  # the accelerated clock moves on meanwhile


async def _demo(folder: Path, weeks: int, speed: float, console: Console) -> int:
    # The demo narrates every decision itself; the engine's warnings would repeat them.
    logging.getLogger("engine").setLevel(logging.ERROR)
    if not _fresh_folder(folder, console):
        return 2
    mail = folder / "mail"
    handler = EmlHandler(
        mail, refuse={BOUNCING: "550 5.1.1 <old.address@example.com>: user unknown"}
    )
    server = await start_sink(handler)
    clock = AcceleratedClock(START, speed)
    web = bind("127.0.0.1", 0)
    settings = demo_settings(folder, bound_port(server), web.getsockname()[1])
    engine = Engine.build(settings, clock)
    # Compile every template first: at thousands of simulated seconds per real one, the first
    # tick's compiling would otherwise let days go by before the first email.
    for template in sorted(
        {t for seq in engine.sequences.values() for _, t, *_ in seq.template_refs}
    ):
        engine.renderer.check(template)
    clock = AcceleratedClock(START, speed)
    engine = dataclasses.replace(engine, clock=clock)
    stop_web = asyncio.Event()
    app = asyncio.create_task(serve_app(build_app(engine.tracking()), web, stop_web))
    console.rule("referral engine demo")
    console.print(
        f"database {folder / 'demo.db'}; SMTP sink 127.0.0.1:{bound_port(server)} "
        f"writing .eml files to {mail}; tracking app {settings.tracking.base_url}",
        highlight=False,
    )
    console.print(
        f"clock starts {START:%a %Y-%m-%d %H:%M} UTC and runs {speed:,.0f}x "
        f"({weeks} weeks in about {weeks * 7 * 86400 / speed:.0f} s)",
        highlight=False,
    )
    result = import_contacts(engine.db, ROOT / "samples" / "contacts.csv", clock.now())
    console.print(f"imported {result.created} sample contacts", highlight=False)
    end = START + timedelta(weeks=weeks)
    transport = SmtpTransport(settings.smtp)
    try:
        await _play(engine, transport, end, console)
        _summary(engine, mail, console)
        _links(engine, console)
        if sys.stdin.isatty():
            console.print(
                "The tracking app keeps serving these links; press Ctrl+C to stop.",
                highlight=False,
            )
            with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
                await asyncio.get_running_loop().create_future()  # until Ctrl+C
    finally:
        stop_web.set()
        await app
        await transport.close()
        server.close()
        await server.wait_closed()
        engine.close()
    return 0


def _links(engine: Engine, console: Console) -> None:
    """Links of a real sent email that a person can open in a browser."""
    message = _latest_sent(engine, "peter.novak@example.com") or _latest_sent(
        engine, "ana.lima@example.com"
    )
    if message is None:
        return
    links = message_links(engine.db, engine.renderer.links, message.message_id)
    assert links is not None
    console.rule("open these in a browser (the tracking app is still running)")
    for label, url in (
        ("unsubscribe page", links.unsubscribe),
        ("NPS answer 9 and its follow-up questions", links.nps[9]),
        ("introduce one or two people", links.intro_form),
        ("testimonial", links.testimonial),
        ("personal referral page (for friends)", links.referral or "-"),
        ("partner intake form", links.partner_form),
    ):
        console.print(f"{label}: {url}", highlight=False, soft_wrap=True)


def _summary(engine: Engine, mail: Path, console: Console) -> None:
    console.rule("who got what")
    table = Table(show_lines=True)
    table.add_column("contact")
    table.add_column("emails received (sequence/step, subject)")
    table.add_column("referral-ask now")
    planner = engine.planner()
    with engine.db.session() as session:
        contacts = session.scalars(select(Contact).order_by(Contact.id)).all()
        for contact in contacts:
            sent = session.execute(
                select(
                    Message.sequence_id,
                    Message.step_id,
                    Message.subject,
                    Message.status,
                    Message.last_error,
                )
                .where(Message.contact_id == contact.id)
                .order_by(Message.id)
            ).all()
            lines = [
                f"{s}/{st}: {subj or ''}"
                if status == "sent"
                else f"{s}/{st}: {status} ({(err or '')[:70]})"
                for s, st, subj, status, err in sent
            ]
            why = next(
                (
                    x
                    for x in explain_contact(planner, contact.email)
                    if x.sequence == "referral-ask"
                ),
                None,
            )
            table.add_row(
                contact.email, "\n".join(lines) or "-", f"{why.state}: {why.why}" if why else "-"
            )
    console.print(table)
    files = sorted(mail.glob("*.eml"))
    console.print(f"{len(files)} emails kept as .eml in {mail}", highlight=False)
    if files:
        first = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
        console.print(f"e.g. {files[0].name}: Subject: {first['Subject']}", highlight=False)
    data = build_report(
        engine.db,
        engine.sequences,
        engine.clock.now(),
        acquisition_spend=engine.settings.program.acquisition_spend,
    )
    print_report(data, engine.settings.program.currency, console)
