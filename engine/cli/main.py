"""The command line: parse, configure, run, report errors as sentences (exit 1 or 2)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
from collections.abc import Sequence as Seq
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from engine.base.clock import Clock, FixedClock, SystemClock, parse_instant
from engine.base.errors import EngineError, SettingsError
from engine.cli.init import readable_secrets_warning
from engine.cli.parser import build_parser
from engine.program.settings import DEFAULT_PATH, load_settings

if TYPE_CHECKING:  # built in _dispatch, after the heavy imports
    from engine.wiring import Engine

EXIT_OK, EXIT_INVALID, EXIT_ERROR = 0, 1, 2


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
        return _on_engine(args, engine, console)
    finally:
        engine.close()


def _on_engine(args: argparse.Namespace, engine: Engine, console: Console) -> int:
    """The commands that work on the built engine."""
    from engine.cli import commands, maintain

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
            return maintain.retry_held(engine, args.sequence, console)
        case "replies":
            return asyncio.run(maintain.replies_poll(engine, console))
        case "sending":
            return maintain.sending_resume(engine, args.kind, console)
        case "status":
            return maintain.status(engine, console)
        case "webhooks" if args.action == "list":
            return maintain.webhooks_list(engine, args.status, args.limit, console)
        case "webhooks":
            return maintain.webhooks_replay(engine, args.ids, args.all_failed, console)
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
    return EXIT_ERROR
