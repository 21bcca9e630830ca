"""`python -m engine demo`: the whole pipeline on sample contacts, with nothing outside.

Embedded SQLite, an embedded SMTP sink keeping every email as an .eml file, the shipped
sequences and templates, and a clock that plays weeks in seconds. Scripted moments (a reply,
an introduction, a conversion, a survey answer) happen through the same functions the CLI and
the tracking app use, and a closing summary says who got what, and why.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email
import email.policy
import logging
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy import select

from engine.clock import AcceleratedClock
from engine.commands import report as print_report
from engine.contacts import import_contacts, record_nps_answer
from engine.explain import explain_contact
from engine.planner import record_event
from engine.referrals import add_referral, convert_referral
from engine.scheduler import Engine, tick
from engine.settings import Settings, load_settings
from engine.sink import EmlHandler, bound_port, start_sink
from engine.store.models import Contact, Message
from engine.transport import SmtpTransport

START = datetime(2026, 1, 5, 7, 0, tzinfo=UTC)  # a Monday morning
ROOT = Path(__file__).resolve().parent.parent
BOUNCING = "old.address@example.com"
MARKER = ".engine-demo"


@dataclass
class Moment:
    at: timedelta
    what: str
    act: Callable[[Engine, datetime], object]


def _reply(engine: Engine, now: datetime, who: str) -> None:
    with engine.db.write() as session:
        contact = session.scalar(select(Contact).where(Contact.email == who))
        message = (
            session.scalar(
                select(Message)
                .where(Message.contact_id == contact.id, Message.status == "sent")
                .order_by(Message.sent_at.desc())
                .limit(1)
            )
            if contact
            else None
        )
        if contact is not None and message is not None:
            record_event(
                session,
                "replied",
                now,
                contact_id=contact.id,
                message=message,
                data={"source": "demo", "snippet": "Happy to! Let me think who..."},
            )


MOMENTS = [
    Moment(
        timedelta(days=2, hours=5),
        "Layla replies to the referral ask (the sequence stops)",
        lambda e, now: _reply(e, now, "layla.haddad@example.sa"),
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
        "Tom answers the NPS survey with a 10",
        lambda e, now: record_nps_answer(e.db, "tom.chen@example.com", 10, now, source="demo"),
    ),
    Moment(
        timedelta(days=23),
        "Mia becomes a customer (reward email to Ana)",
        lambda e, now: convert_referral(e.db, "mia.wong@example.com", now, value=Decimal("1200")),
    ),
]


def demo_settings(folder: Path, smtp_port: int) -> Settings:
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
        tracking=dataclasses.replace(base.tracking, secret=secrets.token_urlsafe(32)),
        schedule=dataclasses.replace(base.schedule, tick_seconds=0.0, lease_seconds=7 * 86400),
        base_dir=folder,
    )


def run_demo(folder: Path, *, weeks: int, speed: float, console: Console) -> int:
    return asyncio.run(_demo(folder.resolve(), weeks, speed, console))


async def _demo(folder: Path, weeks: int, speed: float, console: Console) -> int:
    # The demo narrates every decision itself; the engine's warnings would repeat them.
    logging.getLogger("engine").setLevel(logging.ERROR)
    marker = folder / MARKER
    if folder.exists() and any(folder.iterdir()):
        if not marker.exists():
            console.print(
                f"[red]error:[/red] {folder} exists and was not made by the demo; "
                "choose another --dir",
                highlight=False,
            )
            return 2
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marker.write_text("made by `python -m engine demo`; the next demo run replaces it\n")
    mail = folder / "mail"
    handler = EmlHandler(
        mail, refuse={BOUNCING: "550 5.1.1 <old.address@example.com>: user unknown"}
    )
    server = await start_sink(handler)
    clock = AcceleratedClock(START, speed)
    settings = demo_settings(folder, bound_port(server))
    engine = Engine.build(settings, clock)
    console.rule("referral engine demo")
    console.print(
        f"database {folder / 'demo.db'}; SMTP sink 127.0.0.1:{bound_port(server)} "
        f"writing .eml files to {mail}",
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
    pending = list(MOMENTS)
    transport = SmtpTransport(settings.smtp)
    try:
        while (now := clock.now()) < end:
            while pending and START + pending[0].at <= now:
                moment = pending.pop(0)
                console.print(f"[dim]{now:%a %m-%d %H:%M}[/dim]  * {moment.what}")
                moment.act(engine, now)
            outcome = await tick(engine, transport)
            for error in outcome.send.errors:
                console.print(
                    f"[dim]{now:%a %m-%d %H:%M}[/dim]  ! {escape(error)}", highlight=False
                )
            if outcome.send.sent:
                console.print(
                    f"[dim]{now:%a %m-%d %H:%M}[/dim]  sent {outcome.send.sent}", highlight=False
                )
            await asyncio.sleep(0.05)  # the accelerated clock moves on meanwhile
    finally:
        await transport.close()
        server.close()
        await server.wait_closed()
    _summary(engine, mail, console)
    engine.close()
    return 0


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
    print_report(engine, "table", console)
