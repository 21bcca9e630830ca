"""What each CLI command does, given a built Engine and a rich Console to print to."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from sqlalchemy import select

from engine.clock import Clock
from engine.errors import ImportRowError
from engine.explain import explain_contact
from engine.explain import simulate as simulate_timeline
from engine.mime import OutgoingEmail, build_message
from engine.referrals import add_referral, convert_referral
from engine.reports import COLUMNS, build_report, to_csv, to_json
from engine.scheduler import Engine, TickResult, build_renderer, template_exists
from engine.scheduler import run as run_loop
from engine.scheduler import tick as one_tick
from engine.sender import contact_context
from engine.sequences import SendStep, load_files, load_sequences
from engine.settings import Settings, require_real_secret
from engine.store.models import Contact

EXIT_OK, EXIT_INVALID, EXIT_ERROR = 0, 1, 2


def open_engine(settings: Settings, clock: Clock, console: Console) -> Engine:
    engine = Engine.build(settings, clock)
    for error in engine.loaded.errors:
        console.print(f"skipped {error}", markup=False, highlight=False)
    return engine


def validate(settings: Settings, paths: list[Path], console: Console) -> int:
    """Check sequence files and every template; print file:line:col: message per problem."""
    renderer = build_renderer(settings)

    def exists(name: str) -> bool:
        return template_exists(renderer, name)

    dirs = [p for p in paths if p.is_dir()] or ([] if paths else [settings.sequences_dir])
    files = [p for p in paths if not p.is_dir()]
    problems: list[str] = []
    sequences = {}
    for loaded in [load_sequences(d, template_exists=exists) for d in dirs] + (
        [load_files(files, template_exists=exists)] if files else []
    ):
        problems += [str(e) for e in loaded.errors]
        sequences.update(loaded.sequences)
    checked: set[str] = set()
    for seq in sequences.values():
        for step_id, template, line, col in seq.template_refs:
            if template not in checked:
                checked.add(template)
                problems += [str(p) for p in renderer.check(template)]
            step = next(s for s in seq.steps if s.id == step_id)
            assert isinstance(step, SendStep)
            subject = step.subject
            subjects = list(subject.values()) if isinstance(subject, Mapping) else [subject]
            for subject in subjects:
                if (msg := renderer.check_subject(subject)) is not None:
                    problems.append(f"{seq.path}:{line}:{col}: subject of step {step_id}: {msg}")
    if not paths and settings.templates_dir.is_dir():
        for file in sorted(settings.templates_dir.glob("*.mjml")):
            name = file.name
            base = name.split(".")[0] + ".mjml"
            if not name.startswith("_") and base not in checked:
                checked.add(base)
                problems += [str(p) for p in renderer.check(base)]
    for problem in problems:
        console.print(problem, highlight=False, markup=False)
    if problems:
        console.print(f"{len(problems)} problem(s)", highlight=False)
        return EXIT_INVALID
    console.print(f"ok: {len(sequences)} sequences, {len(checked)} templates", highlight=False)
    return EXIT_OK


def import_contacts(engine: Engine, path: Path, console: Console) -> int:
    from engine.contacts import import_contacts as run_import

    if not path.is_file():
        raise ImportRowError(f"{path}: not a file" if path.exists() else f"{path}: no such file")
    with path.open("rb") as fh:  # counting lines needs no decoding
        total = max(sum(1 for _ in fh) - 1, 0)
    with Progress(
        TextColumn("importing"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        transient=True,
        disable=total < 2000,
    ) as bar:
        task = bar.add_task("import", total=total)
        report = run_import(
            engine.db, path, engine.clock.now(), progress=lambda n: bar.advance(task, n)
        )
    console.print(
        f"{path}: {report.created} created, {report.updated} updated, "
        f"{report.unchanged} unchanged, {len(report.rejected)} rejected",
        highlight=False,
        markup=False,
    )
    for line in report.rejected:
        console.print(f"  {path}: {line}", highlight=False, markup=False)
    return EXIT_INVALID if report.rejected else EXIT_OK


def print_tick(result: TickResult, console: Console, now: str) -> None:
    p, s = result.plan, result.send
    console.print(
        f"{now}: enrolled {p.enrolled}, planned {p.planned}, sent {s.sent}, "
        f"retrying {s.retried}, failed {s.failed}, held {s.render_failed}, "
        f"stopped {p.stopped}, completed {p.completed}"
        + (f", waiting for the send window {s.deferred}" if s.deferred else "")
        + (f", notes to the team {result.notes}" if result.notes else "")
        + (" [sending paused]" if s.paused else ""),
        highlight=False,
        markup=False,
    )
    for error in s.errors:
        console.print(f"  {error}", highlight=False, markup=False)


async def tick(engine: Engine, console: Console) -> int:
    require_real_secret(engine.settings)
    result = await one_tick(engine)
    print_tick(result, console, f"{engine.clock.now():%Y-%m-%d %H:%M} UTC")
    return EXIT_OK


async def run(engine: Engine, console: Console, interval: float | None) -> int:
    require_real_secret(engine.settings)

    def report(result: TickResult) -> None:
        if result.send.sent or result.plan.enrolled or result.send.errors:
            print_tick(result, console, f"{engine.clock.now():%Y-%m-%d %H:%M:%S} UTC")

    await run_loop(engine, on_tick=report, interval=interval)
    return EXIT_OK


def explain(engine: Engine, email: str, console: Console) -> int:
    table = Table(title=f"{email} at {engine.clock.now():%Y-%m-%d %H:%M} UTC")
    table.add_column("sequence")
    table.add_column("state")
    table.add_column("why")
    for row in explain_contact(engine.planner(), email):
        table.add_row(row.sequence, row.state, row.why)
    console.print(table)
    return EXIT_OK


def simulate(engine: Engine, sequence: str, email: str | None, days: int, console: Console) -> int:
    seq = engine.sequences.get(sequence)
    if seq is None:
        raise LookupError(
            f"no sequence {sequence!r} (known: {', '.join(sorted(engine.sequences))})"
        )
    entries, notes = simulate_timeline(engine.planner(), seq, email=email, days=days)
    table = Table(title=f"simulate {sequence}: next {days} days (nothing is sent)")
    for col in ("when (UTC)", "contact", "step", "what"):
        table.add_column(col)
    for e in entries:
        table.add_row(f"{e.at:%Y-%m-%d %H:%M}", e.contact, e.step, e.what)
    console.print(table)
    for note in notes:
        console.print(f"  {note}", highlight=False, markup=False)
    return EXIT_OK


def preview(
    engine: Engine, sequence: str, step_id: str, email: str, out: Path | None, console: Console
) -> int:
    seq = engine.sequences.get(sequence)
    if seq is None:
        raise LookupError(f"no sequence {sequence!r}")
    step = next((s for s in seq.steps if s.id == step_id and isinstance(s, SendStep)), None)
    if step is None:
        sends = [s.id for s in seq.steps if isinstance(s, SendStep)]
        raise LookupError(f"no send step {step_id!r} in {sequence} (steps: {', '.join(sends)})")
    with engine.db.session() as session:
        contact = session.scalar(select(Contact).where(Contact.email == email.strip().lower()))
    if contact is None:
        raise LookupError(f"no contact {email}")
    ref = secrets.token_bytes(12)
    context = {
        "contact": contact_context(contact),
        "sequence": seq.id,
        "step": step.id,
        "referral": None,
        "reward": None,
    }
    rendered = engine.renderer.render(
        step.template, step.subject_for(contact.locale), context, locale=contact.locale, ref=ref
    )
    settings = engine.settings
    data = build_message(
        OutgoingEmail(
            message_id=f"<preview.{ref.hex()}@{settings.sender.from_email.rpartition('@')[2]}>",
            from_name=settings.sender.from_name,
            from_email=settings.sender.from_email,
            reply_to=settings.sender.reply_to,
            to_name=" ".join(filter(None, [contact.first_name, contact.last_name])),
            to_email=contact.email,
            subject=rendered.subject,
            html=rendered.html,
            text=rendered.text,
            date=engine.clock.now(),
            list_unsubscribe_url=engine.renderer.links.unsubscribe(ref),
            list_unsubscribe_mailto=settings.sender.unsubscribe_mailto,
            feedback_id=f"{step.id}:{seq.id}:{seq.category}:{settings.sender.feedback_id}",
        )
    )
    head = data.split(b"\r\n\r\n", 1)[0].decode("ascii", "replace")
    console.print(head, highlight=False, markup=False)
    console.print(f"\nSubject: {rendered.subject}\n", highlight=False, markup=False)
    console.print(rendered.text, highlight=False, markup=False)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix.lower() in {".html", ".htm"}:
            out.write_text(rendered.html, encoding="utf-8")
        else:
            out.write_bytes(data)
        console.print(f"\nwritten: {out}", highlight=False, markup=False)
    return EXIT_OK


def referrals(
    engine: Engine,
    action: str,
    console: Console,
    *,
    referrer: str | None,
    email: str,
    name: str | None,
    value: Decimal | None,
) -> int:
    now = engine.clock.now()
    if action == "add":
        assert referrer is not None
        outcome = add_referral(engine.db, referrer, email, now, name=name)
    else:
        outcome = convert_referral(engine.db, email, now, value=value)
    console.print(outcome.message, highlight=False, markup=False)
    return EXIT_OK


def retry_held(engine: Engine, sequence: str | None, console: Console) -> int:
    from engine.outbox import retry_held as requeue

    count = requeue(engine.db, engine.clock.now(), sequence=sequence)
    console.print(
        f"requeued {count} held email(s); they go out on the next tick",
        highlight=False,
        markup=False,
    )
    return EXIT_OK


def report(engine: Engine, fmt: str, console: Console) -> int:
    data = build_report(engine.db, engine.sequences, engine.clock.now())
    if fmt == "json":
        console.print_json(to_json(data))
        return EXIT_OK
    if fmt == "csv":
        console.out(to_csv(data), end="", highlight=False)
        return EXIT_OK
    for alert in data.alerts:
        console.print(f"[bold red]ALERT[/bold red] {escape(alert)}", highlight=False)
    table = Table(title="per sequence and step")
    for col in COLUMNS:
        table.add_column(col, justify="left" if col in {"sequence", "step"} else "right")
    for row in data.as_dict()["steps"]:
        ctr = row["ctr"]
        row["ctr"] = "-" if ctr is None else f"{ctr:.0%}"
        table.add_row(*(str(row[c]) for c in COLUMNS))
    console.print(table)
    rate = f"{data.conversion_rate:.0%}" if data.conversion_rate is not None else "-"
    console.print(
        f"referral funnel: asked {data.asked} -> referrals {data.referrals} -> "
        f"converted {data.converted} ({rate}), value {data.referral_value:,.2f}",
        highlight=False,
        markup=False,
    )
    return EXIT_OK
