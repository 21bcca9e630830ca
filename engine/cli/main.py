"""The command line: parse, configure, run, report errors as sentences (exit 1 or 2)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
from collections.abc import Sequence as Seq
from datetime import date
from pathlib import Path

from rich.console import Console

from engine.base.clock import Clock, FixedClock, SystemClock, parse_instant
from engine.base.errors import EngineError, SettingsError
from engine.cli.init import readable_secrets_warning
from engine.program.settings import DEFAULT_PATH, load_settings

EXIT_OK, EXIT_INVALID, EXIT_ERROR = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--settings",
        default=argparse.SUPPRESS,
        help="settings file (default ./settings.toml or $ENGINE_SETTINGS)",
    )
    common.add_argument(
        "--now",
        default=argparse.SUPPRESS,
        help="the clock for this command, ISO-8601 (or $ENGINE_NOW)",
    )
    common.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS,
        help="log decisions (-vv for debug)",
    )

    p = argparse.ArgumentParser(
        prog="python -m engine", parents=[common], description="Referral email campaign engine."
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    v = sub.add_parser("validate", parents=[common], help="check sequence files and templates")
    v.add_argument("paths", nargs="*", type=Path, help="sequence files or folders")

    c = sub.add_parser("contacts", parents=[common], help="manage contacts")
    csub = c.add_subparsers(dest="action", required=True, metavar="ACTION")
    ci = csub.add_parser("import", parents=[common], help="upsert contacts from a CSV file")
    ci.add_argument("file", type=Path)
    ci.add_argument(
        "--dry-run", action="store_true", help="report what would change, write nothing"
    )
    ce = csub.add_parser(
        "erase", parents=[common], help="erase a person's personal data (GDPR), keep counts"
    )
    ce.add_argument("email")
    cx = csub.add_parser("export", parents=[common], help="a person's data as JSON (GDPR)")
    cx.add_argument("email")
    cx.add_argument("--out", type=Path, help="write to this file instead of the screen")

    pu = sub.add_parser("purchases", parents=[common], help="purchases (the program's numbers)")
    pusub = pu.add_subparsers(dest="action", required=True, metavar="ACTION")
    pi = pusub.add_parser(
        "import", parents=[common], help="record purchases from a CSV file (email, amount, ...)"
    )
    pi.add_argument("file", type=Path)

    sub.add_parser("tick", parents=[common], help="one pass: enroll, plan and send what is due")
    r = sub.add_parser("run", parents=[common], help="scheduler loop until SIGTERM/SIGINT")
    r.add_argument("--interval", type=float, default=None, help="seconds between passes")
    sub.add_parser("serve", parents=[common], help="the tracking HTTP app alone, until SIGTERM")

    e = sub.add_parser("explain", parents=[common], help="why a contact is (not) in each sequence")
    e.add_argument("--contact", required=True, metavar="EMAIL")

    s = sub.add_parser("simulate", parents=[common], help="dry run: what would be sent, when")
    which = s.add_mutually_exclusive_group(required=True)
    which.add_argument("sequence", nargs="?", help="one sequence's timeline")
    which.add_argument("--all", action="store_true", help="the whole program's emails per day")
    s.add_argument("--contact", metavar="EMAIL")
    s.add_argument("--days", type=int, default=60)

    pv = sub.add_parser("preview", parents=[common], help="render one step for one contact")
    pv.add_argument("sequence")
    pv.add_argument("step")
    pv.add_argument("--contact", required=True, metavar="EMAIL")
    pv.add_argument("--out", type=Path, help="write .eml (or .html) here")

    rf = sub.add_parser("referrals", parents=[common], help="record introductions and conversions")
    rsub = rf.add_subparsers(dest="action", required=True, metavar="ACTION")
    ra = rsub.add_parser("add", parents=[common], help="record an introduction")
    ra.add_argument("--referrer", required=True, metavar="EMAIL")
    ra.add_argument("--email", required=True, metavar="FRIEND")
    ra.add_argument("--name")
    ru = rsub.add_parser(
        "update", parents=[common], help="follow-up: the friend was contacted, or is lost"
    )
    ru.add_argument("--email", required=True, metavar="FRIEND")
    ru.add_argument("--status", required=True, choices=("contacted", "lost"))
    ru.add_argument("--note", help="what happened, kept in the follow-up history")
    rc = rsub.add_parser("convert", parents=[common], help="the referred person became a customer")
    rc.add_argument("--email", required=True, metavar="FRIEND")
    rc.add_argument("--value", metavar="AMOUNT")

    ob = sub.add_parser("outbox", parents=[common], help="outbox maintenance")
    osub = ob.add_subparsers(dest="action", required=True, metavar="ACTION")
    orr = osub.add_parser(
        "retry", parents=[common], help="requeue emails held by a template error, once it is fixed"
    )
    orr.add_argument("--sequence", help="only this sequence")

    sd = sub.add_parser("sending", parents=[common], help="sending as a whole: lift its pauses")
    sdsub = sd.add_subparsers(dest="action", required=True, metavar="ACTION")
    sr = sdsub.add_parser(
        "resume", parents=[common], help="lift every pause of sending in force (or one --kind)"
    )
    sr.add_argument("--kind", help="only pauses of this kind (as `status` shows it)")
    sub.add_parser(
        "status", parents=[common], help="health at a glance; exit 1 when something needs a person"
    )

    rq = sub.add_parser("replies", parents=[common], help="the reply mailbox (IMAP)")
    rqsub = rq.add_subparsers(dest="action", required=True, metavar="ACTION")
    rqsub.add_parser("poll", parents=[common], help="one pass: replies, auto-replies, bounces")

    wh = sub.add_parser("webhooks", parents=[common], help="webhook deliveries: list, replay")
    whsub = wh.add_subparsers(dest="action", required=True, metavar="ACTION")
    wl = whsub.add_parser("list", parents=[common], help="deliveries, newest first")
    wl.add_argument("--status", choices=("failed", "pending", "delivered"))
    wl.add_argument("--limit", type=int, default=50, help="rows shown (default 50)")
    wr = whsub.add_parser(
        "replay", parents=[common], help="send failed deliveries again (attempts reset)"
    )
    which = wr.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", dest="ids", type=int, nargs="+", action="extend", metavar="N")
    which.add_argument("--all-failed", action="store_true", help="every failed delivery")

    rp = sub.add_parser("report", parents=[common], help="funnel and referral metrics")
    rp.add_argument("--format", choices=("table", "json", "csv"), default="table")
    rp.add_argument(
        "--period", choices=("week", "month"), help="per ISO week or calendar month (UTC)"
    )
    rp.add_argument(
        "--since", type=date.fromisoformat, metavar="DATE", help="from this day (UTC), inclusive"
    )
    rp.add_argument(
        "--until", type=date.fromisoformat, metavar="DATE", help="to this day (UTC), inclusive"
    )
    rp.add_argument(
        "--table",
        choices=("steps", "funnel", "referrers"),
        default="steps",
        help="which table --format csv prints (default steps)",
    )

    it = sub.add_parser(
        "init", parents=[common], help="create a project folder for a first real program"
    )
    it.add_argument("dir", nargs="?", type=Path, default=Path("."), help="default: here")

    d = sub.add_parser("demo", parents=[common], help="the whole thing on sample data, embedded")
    d.add_argument("--dir", type=Path, default=Path("demo-out"), help="where the demo writes")
    d.add_argument("--weeks", type=int, default=10, help="simulated weeks to play")
    d.add_argument(
        "--speed",
        type=float,
        default=7 * 86400 / 4.0,
        help="simulated seconds per real second (default: a week in 4 s)",
    )
    return p


def make_clock(args: argparse.Namespace) -> Clock:
    text = getattr(args, "now", None) or os.environ.get("ENGINE_NOW")
    if not text:
        return SystemClock()
    try:
        return FixedClock(parse_instant(text))
    except ValueError:
        raise SettingsError("--now", f"{text!r} is not an ISO-8601 date/time") from None


def settings_file(args: argparse.Namespace) -> Path:
    """The settings file this command reads (--settings, $ENGINE_SETTINGS, ./settings.toml)."""
    given = getattr(args, "settings", None) or os.environ.get("ENGINE_SETTINGS")
    return Path(given or DEFAULT_PATH)


def entry() -> int:
    """The process's entry point (``python -m engine``, ``referral-engine``)."""
    return main(freeze_heap=True)


def main(
    argv: Seq[str] | None = None, console: Console | None = None, *, freeze_heap: bool = False
) -> int:
    """Run one command; returns the exit code.

    ``freeze_heap`` (the process's own entry point, not a caller's): once the heavy modules are
    imported, move what they built (~70k objects that live as long as the process) out of the
    garbage collector's way; otherwise every full collection walks them all again, ~60 ms in
    the middle of a batch of sends.
    """
    console = console or Console()
    err = Console(stderr=True) if console.file is sys.stdout else console
    args = build_parser().parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(getattr(args, "verbose", 0), logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s %(message)s")
    try:
        return _dispatch(args, console, freeze_heap)
    except EngineError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        cause = exc.__cause__
        while cause is not None:
            err.print(f"  caused by: {cause}", markup=False, highlight=False)
            cause = cause.__cause__
        return EXIT_ERROR
    except LookupError as exc:
        err.print(f"error: {exc.args[0] if exc.args else exc}", markup=False, highlight=False)
        return EXIT_ERROR
    except OSError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug or an unforeseen failure: one line, exit 2 (-vv: traceback)
        logging.getLogger("engine").debug("unexpected_error", exc_info=True)
        first = (str(exc).splitlines() or [""])[0]
        err.print(
            f"error: unexpected {type(exc).__name__}: {first} (run with -vv for the traceback)",
            markup=False,
            highlight=False,
        )
        return EXIT_ERROR


def _dispatch(args: argparse.Namespace, console: Console, freeze_heap: bool) -> int:
    from engine.cli import commands  # heavy imports only once arguments are known

    if freeze_heap:
        gc.freeze()

    if args.command == "demo":
        from engine.demo.run import run_demo

        return run_demo(args.dir, weeks=args.weeks, speed=args.speed, console=console)
    if args.command == "init":
        from engine.cli.init import init_project

        return init_project(args.dir, console)
    settings = load_settings(getattr(args, "settings", None), missing_ok=False)
    if warning := readable_secrets_warning(settings_file(args)):
        # On stderr through the log, as ssh warns: never mixed into a command's output.
        logging.getLogger("engine.settings").warning(warning)
    clock = make_clock(args)
    if args.command == "validate":
        return commands.validate(settings, args.paths, console)
    engine = commands.open_engine(settings, clock, console)
    try:
        match args.command:
            case "contacts" if args.action == "erase":
                return commands.erase_contact(engine, args.email, console)
            case "contacts" if args.action == "export":
                return commands.export_contact(engine, args.email, args.out, console)
            case "contacts":
                return commands.import_contacts(engine, args.file, console, dry_run=args.dry_run)
            case "purchases":
                return commands.import_purchases(engine, args.file, console)
            case "tick":
                return asyncio.run(commands.tick(engine, console))
            case "run":
                return asyncio.run(commands.run(engine, console, args.interval))
            case "serve":
                return asyncio.run(commands.serve(engine, console))
            case "explain":
                return commands.explain(engine, args.contact, console)
            case "simulate" if args.all:
                return commands.simulate_all(engine, args.contact, args.days, console)
            case "simulate":
                return commands.simulate(engine, args.sequence, args.contact, args.days, console)
            case "preview":
                return commands.preview(
                    engine, args.sequence, args.step, args.contact, args.out, console
                )
            case "referrals":
                return commands.referrals(
                    engine,
                    args.action,
                    console,
                    referrer=getattr(args, "referrer", None),
                    email=args.email,
                    name=getattr(args, "name", None),
                    value=getattr(args, "value", None),
                    status=getattr(args, "status", None),
                    note=getattr(args, "note", None),
                )
            case "outbox":
                return commands.retry_held(engine, args.sequence, console)
            case "replies":
                return asyncio.run(commands.replies_poll(engine, console))
            case "sending":
                return commands.sending_resume(engine, args.kind, console)
            case "status":
                return commands.status(engine, console)
            case "webhooks" if args.action == "list":
                return commands.webhooks_list(engine, args.status, args.limit, console)
            case "webhooks":
                return commands.webhooks_replay(engine, args.ids, args.all_failed, console)
            case "report":
                return commands.report(
                    engine,
                    args.format,
                    console,
                    period=args.period,
                    since=args.since,
                    until=args.until,
                    table=args.table,
                )
    finally:
        engine.close()
    return EXIT_ERROR
