"""What each CLI command does, given a built Engine and a rich Console to print to."""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from datetime import date
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Column, Table
from sqlalchemy import select

from engine.base.clock import Clock
from engine.base.errors import ImportRowError, SettingsError
from engine.mail.mime import OutgoingEmail, build_message
from engine.plan.explain import explain_contact
from engine.plan.explain import simulate as simulate_timeline
from engine.plan.forecast import forecast
from engine.program.sequences import NotifyStep, SendStep, Sequence, load_files, load_sequences
from engine.program.settings import Settings, require_real_secret
from engine.records.health import notify_warnings, record_tick
from engine.records.money import parse_amount
from engine.records.pauses import pauses_in_force
from engine.records.privacy import PrivacyError
from engine.records.privacy import erase_contact as erase_contact_data
from engine.records.privacy import export_contact as export_contact_data
from engine.records.purchases import import_purchases as import_purchase_rows
from engine.records.referrals import add_referral, convert_referral, update_referral
from engine.report.figures import build_report, to_csv, to_json
from engine.report.table import print_report
from engine.scheduler import TickResult
from engine.scheduler import run as run_loop
from engine.scheduler import tick as one_tick
from engine.send.render import NOTE_CONTEXT_NAMES
from engine.store.models import Contact, Referral, Reward
from engine.wiring import Engine, build_renderer, standard_services, template_exists

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
        for note in (s for s in seq.steps if isinstance(s, NotifyStep)):
            for part, text in (("subject", note.subject), ("body", note.body)):
                if text and (msg := renderer.check_subject(text, NOTE_CONTEXT_NAMES)):
                    problems.append(f"{seq.path}:{note.line}:1: {part} of step {note.id}: {msg}")
    if not paths and settings.templates_dir.is_dir():
        for file in sorted(settings.templates_dir.glob("*.mjml")):
            name = file.name
            base = name.split(".")[0] + ".mjml"
            if not name.startswith("_") and base not in checked:
                checked.add(base)
                problems += [str(p) for p in renderer.check(base)]
    for problem in problems:
        console.print(problem, highlight=False, markup=False)
    _warn_notify(settings, sequences, console)
    if problems:
        console.print(f"{len(problems)} problem(s)", highlight=False)
        return EXIT_INVALID
    console.print(f"ok: {len(sequences)} sequences, {len(checked)} templates", highlight=False)
    return EXIT_OK


# Progress bars show from this much work on: below it the command is over in a moment.
IMPORT_BAR_FROM = 2000  # rows
SEND_BAR_FROM = 200  # emails (an SMTP relay takes tens to hundreds a second)


def _bar(console: Console, label: str, *, disable: bool = False) -> Progress:
    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        transient=True,
        disable=disable,
    )


class SendBar:
    """The ``tick`` command's progress bar over the emails due (a ``SendProgress``); shown
    only when at least ``SEND_BAR_FROM`` are due."""

    def __init__(self, console: Console) -> None:
        self.bar = _bar(console, "sending")
        self.task: TaskID | None = None
        self.due = self.done = 0

    def start(self, due: int) -> None:
        self.due = due
        if due >= SEND_BAR_FROM:
            self.task = self.bar.add_task("send", total=due)
            self.bar.start()

    def advance(self, emails: int) -> None:
        self.done += emails
        if self.task is not None:
            # More can fall due while sending: the total grows rather than overflow.
            self.bar.update(self.task, completed=self.done, total=max(self.due, self.done))

    def close(self) -> None:
        if self.task is not None:  # rich's stop prints a line even for a bar never shown
            self.bar.stop()


def import_contacts(engine: Engine, path: Path, console: Console, *, dry_run: bool = False) -> int:
    """Upsert contacts from a CSV file (with ``dry_run``, report what would change, write
    nothing); rejected rows are listed with the reason."""
    from engine.records.contacts import import_contacts as run_import

    if not path.is_file():
        raise ImportRowError(f"{path}: not a file" if path.exists() else f"{path}: no such file")
    with path.open("rb") as fh:  # counting lines needs no decoding
        total = max(sum(1 for _ in fh) - 1, 0)
    with _bar(console, "importing", disable=total < IMPORT_BAR_FROM) as bar:
        task = bar.add_task("import", total=total)
        report = run_import(
            engine.db,
            path,
            engine.clock.now(),
            progress=lambda n: bar.advance(task, n),
            dry_run=dry_run,
        )
    summary = (
        f"{report.created} created, {report.updated} updated, "
        f"{report.unchanged} unchanged, {len(report.rejected)} rejected"
    )
    if report.erased_before:
        summary += f" ({report.erased_before} erased before at their request: kept unsubscribed)"
    if dry_run:
        summary = f"dry run, nothing written: would be {summary}"
    if report.custom_columns:
        summary += f"; custom fields from columns: {', '.join(report.custom_columns)}"
    return _imported(console, path, summary, report.rejected)


def import_purchases(engine: Engine, path: Path, console: Console) -> int:
    """Record purchases from a CSV file; rejected rows are listed with the reason."""
    report = import_purchase_rows(engine.db, path, engine.clock.now())
    summary = (
        f"{report.recorded} recorded ({report.referred} referred), "
        f"{report.repeated} already recorded, {len(report.rejected)} rejected"
    )
    if report.ignored_columns:
        summary += f"; columns ignored: {', '.join(report.ignored_columns)}"
    return _imported(console, path, summary, report.rejected)


def _imported(console: Console, path: Path, summary: str, rejected: list[str]) -> int:
    """An import's outcome: the summary, each rejected row with its reason, the exit code."""
    console.print(f"{path}: {summary}", highlight=False, markup=False)
    for line in rejected:
        console.print(f"  {path}: {line}", highlight=False, markup=False)
    return EXIT_INVALID if rejected else EXIT_OK


def erase_contact(engine: Engine, email: str, console: Console) -> int:
    """GDPR erasure: personal data goes, anonymous counts and a hashed suppression stay."""
    try:
        summary = erase_contact_data(engine.db, email, engine.clock.now())
    except PrivacyError as exc:
        console.print(str(exc), highlight=False, markup=False)
        return EXIT_ERROR
    console.print(summary, highlight=False, markup=False)
    return EXIT_OK


def export_contact(engine: Engine, email: str, out: Path | None, console: Console) -> int:
    """GDPR access: everything stored about a person, as JSON."""
    try:
        data = export_contact_data(engine.db, email)
    except PrivacyError as exc:
        console.print(str(exc), highlight=False, markup=False)
        return EXIT_ERROR
    text = json.dumps(data, indent=2, ensure_ascii=False, default=str)
    if out is None:
        console.print(text, highlight=False, markup=False, soft_wrap=True)
    else:
        out.write_text(text + "\n", encoding="utf-8")
        console.print(f"wrote {out}", highlight=False, markup=False)
    return EXIT_OK


def say(console: Console, line: str) -> None:
    console.print(line, highlight=False, markup=False, soft_wrap=True)


def _warn_notify(settings: Settings, sequences: dict[str, Sequence], console: Console) -> None:
    """A note a sequence promises but no one would get: one line per role without an address."""
    for line in notify_warnings(settings, sequences):
        say(console, line)


def _after_tick(engine: Engine, result: TickResult) -> list[str]:
    """Record the tick (``status`` shows it); the pauses in force, one line each."""
    now, s = engine.clock.now(), result.send
    summary = {"sent": s.sent, "retrying": s.retried, "failed": s.failed, "held": s.render_failed}
    record_tick(engine.db, now, summary)
    with engine.db.session() as session:
        return [p.describe() for p in pauses_in_force(session, now)]


def print_tick(result: TickResult, console: Console, now: str) -> None:
    p, s = result.plan, result.send
    console.print(
        f"{now}: enrolled {p.enrolled}, planned {p.planned}, sent {s.sent}, "
        f"retrying {s.retried}, failed {s.failed}, held {s.render_failed}, "
        f"stopped {p.stopped}, completed {p.completed}"
        + (f", waiting for the send window {s.deferred}" if s.deferred else "")
        + (f", notes to the team {result.notes}" if result.notes else "")
        + (
            f", due today {s.due_today}, waiting for tomorrow's cap {s.over_cap}"
            if s.due_today is not None
            else ""
        )
        + (" [sending paused]" if s.paused else ""),
        highlight=False,
        markup=False,
    )
    for error in s.errors:
        console.print(f"  {error}", highlight=False, markup=False)
    for reason in s.top_reasons():
        say(console, f"  {reason}")


async def tick(engine: Engine, console: Console) -> int:
    require_real_secret(engine.settings)
    _warn_notify(engine.settings, engine.sequences, console)
    bar = SendBar(console)
    try:
        result = await one_tick(engine, progress=bar)
    finally:
        bar.close()
    print_tick(result, console, f"{engine.clock.now():%Y-%m-%d %H:%M} UTC")
    for pause in _after_tick(engine, result):
        say(console, f"  sending paused: {pause}")
    return EXIT_OK


async def run(engine: Engine, console: Console, interval: float | None) -> int:
    require_real_secret(engine.settings)
    _warn_notify(engine.settings, engine.sequences, console)
    failing: list[str] = []  # why sending fails, while it does

    def report(result: TickResult) -> None:
        at = f"{engine.clock.now():%Y-%m-%d %H:%M:%S} UTC"
        if result.send.sent or result.plan.enrolled or result.send.errors:
            print_tick(result, console, at)
        # One line when sending starts failing (a pause, or every attempt refused), one when
        # an email goes out again: nothing in between, however long it lasts.
        pauses, s = _after_tick(engine, result), result.send
        refused = s.retried and not s.sent
        reason = pauses[0] if pauses else s.retry_reasons.most_common(1)[0][0] if refused else ""
        if reason and not failing:
            failing.append(reason)
            say(console, f"{at}: sending is failing: {reason}")
        elif failing and not reason and s.sent:
            failing.clear()
            say(console, f"{at}: sending works again ({s.sent} sent)")

    services = standard_services(engine)
    tracking = engine.settings.tracking
    console.print(
        f"scheduler running; tracking app on {tracking.listen} (links point at "
        f"{tracking.base_url}); IMAP poller "
        + (f"on {engine.settings.imap.host}" if engine.settings.imap.username else "off ([imap])")
        + (
            f"; webhooks to {len(engine.settings.webhooks.urls)} URL(s)"
            if engine.settings.webhooks.urls
            else ""
        ),
        highlight=False,
        markup=False,
    )
    await run_loop(engine, on_tick=report, interval=interval, services=services)
    return EXIT_OK


async def serve(engine: Engine, console: Console) -> int:
    """The tracking HTTP app alone, until SIGTERM/SIGINT (buffered opens and clicks are written
    before it exits). Several copies can share one database behind a load balancer."""
    import asyncio
    import signal

    from engine.inbound.tracking.app import serve_tracking

    require_real_secret(engine.settings)  # its CSRF and tracking tokens rest on the secret
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tracking = engine.settings.tracking
    console.print(
        f"tracking app listening on {tracking.listen} (links point at {tracking.base_url})",
        highlight=False,
        markup=False,
    )
    await serve_tracking(engine.tracking(), stop)
    return EXIT_OK


def explain(engine: Engine, email: str, console: Console) -> int:
    table = Table(title=f"{email} at {engine.clock.now():%Y-%m-%d %H:%M} UTC")
    table.add_column("sequence")
    table.add_column("state")
    table.add_column("why")
    for row in explain_contact(engine.planner(), email):
        table.add_row(row.sequence, row.state, row.why)
    console.print(table)
    with engine.db.session() as session:
        gifts = session.execute(
            select(Reward.role, Reward.description, Reward.issued_at, Referral.friend_email)
            .join(Referral, Referral.id == Reward.referral_id)
            .join(Contact, Contact.id == Reward.contact_id)
            .where(Contact.email == email.strip().lower())
            .order_by(Reward.issued_at)
        ).all()
    for role, gift, at, friend in gifts:
        why = f"for introducing {friend}" if role == "referrer" else "as a referred friend"
        console.print(f"reward {at:%Y-%m-%d}: {gift} ({why})", highlight=False, markup=False)
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


def simulate_all(engine: Engine, email: str | None, days: int, console: Console) -> int:
    """`simulate --all`: the whole program's emails per day and per sequence; writes nothing."""
    if email is not None:
        raise LookupError("simulate --all counts every contact: leave out --contact")
    header, rows = (ahead := forecast(engine.planner(), days)).table()
    title = f"simulate --all: next {days} days, emails per day (nothing is sent)"
    table = Table(header[0], *(Column(name, justify="right") for name in header[1:]), title=title)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for note in ahead.notes:
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
        "contact": contact.template_context(),
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
            list_unsubscribe_url=rendered.unsubscribe_url,
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
    value: str | None,
    status: str | None = None,
    note: str | None = None,
) -> int:
    now = engine.clock.now()
    amount = None
    if value:  # the same rule as purchases: at most 2 decimals, never rounded
        try:
            amount = parse_amount(value)
        except ValueError as exc:
            raise SettingsError("--value", f"{value!r}: {exc}") from None
    if action == "add":
        assert referrer is not None
        outcome = add_referral(engine.db, referrer, email, now, name=name)
    elif action == "update":
        assert status is not None
        outcome = update_referral(engine.db, email, status, now, note=note)
    else:
        outcome = convert_referral(engine.db, email, now, value=amount)
    console.print(outcome.message, highlight=False, markup=False)
    return EXIT_OK


def report(
    engine: Engine,
    fmt: str,
    console: Console,
    *,
    period: str | None = None,
    since: date | None = None,
    until: date | None = None,
    table: str = "steps",
) -> int:
    """The program's numbers (README "Metrics") as a table, JSON or CSV (one ``table``)."""
    try:
        data = build_report(
            engine.db,
            engine.sequences,
            engine.clock.now(),
            period=period,
            since=since,
            until=until,
            acquisition_spend=engine.settings.program.acquisition_spend,
        )
    except ValueError as exc:  # --since after --until
        console.print(f"error: {exc}", markup=False, highlight=False)
        return EXIT_ERROR
    if fmt == "json":
        console.print_json(to_json(data))
        return EXIT_OK
    if fmt == "csv":
        console.out(to_csv(data, table), end="", highlight=False)
        return EXIT_OK
    print_report(data, engine.settings.program.currency, console)
    return EXIT_OK
