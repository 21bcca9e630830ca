"""The command line's grammar: every command, its options and their help."""

from __future__ import annotations

import argparse
from datetime import date
from pathlib import Path
from typing import Any

Subparsers = Any  # argparse's _SubParsersAction (private)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: every command and its options."""
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
    _validate_parser(sub, common)
    _contacts_parser(sub, common)
    _purchases_parser(sub, common)
    _scheduler_parser(sub, common)
    _explain_parser(sub, common)
    _simulate_parser(sub, common)
    _preview_parser(sub, common)
    _referrals_parser(sub, common)
    _outbox_parser(sub, common)
    _sending_parser(sub, common)
    _replies_parser(sub, common)
    _webhooks_parser(sub, common)
    _report_parser(sub, common)
    _init_parser(sub, common)
    _demo_parser(sub, common)
    return p


def _validate_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    v = sub.add_parser("validate", parents=[common], help="check sequence files and templates")
    v.add_argument("paths", nargs="*", type=Path, help="sequence files or folders")


def _contacts_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
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


def _purchases_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    pu = sub.add_parser("purchases", parents=[common], help="purchases (the program's numbers)")
    pusub = pu.add_subparsers(dest="action", required=True, metavar="ACTION")
    pi = pusub.add_parser(
        "import", parents=[common], help="record purchases from a CSV file (email, amount, ...)"
    )
    pi.add_argument("file", type=Path)


def _scheduler_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    sub.add_parser("tick", parents=[common], help="one pass: enroll, plan and send what is due")
    r = sub.add_parser("run", parents=[common], help="scheduler loop until SIGTERM/SIGINT")
    r.add_argument("--interval", type=float, default=None, help="seconds between passes")
    sub.add_parser("serve", parents=[common], help="the tracking HTTP app alone, until SIGTERM")


def _explain_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    e = sub.add_parser("explain", parents=[common], help="why a contact is (not) in each sequence")
    e.add_argument("--contact", required=True, metavar="EMAIL")


def _simulate_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("simulate", parents=[common], help="dry run: what would be sent, when")
    which = s.add_mutually_exclusive_group(required=True)
    which.add_argument("sequence", nargs="?", help="one sequence's timeline")
    which.add_argument("--all", action="store_true", help="the whole program's emails per day")
    s.add_argument("--contact", metavar="EMAIL")
    s.add_argument("--days", type=int, default=60)


def _preview_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    pv = sub.add_parser("preview", parents=[common], help="render one step for one contact")
    pv.add_argument("sequence")
    pv.add_argument("step")
    pv.add_argument("--contact", required=True, metavar="EMAIL")
    pv.add_argument("--out", type=Path, help="write .eml (or .html) here")


def _referrals_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
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


def _outbox_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    ob = sub.add_parser("outbox", parents=[common], help="outbox maintenance")
    osub = ob.add_subparsers(dest="action", required=True, metavar="ACTION")
    orr = osub.add_parser(
        "retry", parents=[common], help="requeue emails held by a template error, once it is fixed"
    )
    orr.add_argument("--sequence", help="only this sequence")


def _sending_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    sd = sub.add_parser("sending", parents=[common], help="sending as a whole: lift its pauses")
    sdsub = sd.add_subparsers(dest="action", required=True, metavar="ACTION")
    sr = sdsub.add_parser(
        "resume", parents=[common], help="lift every pause of sending in force (or one --kind)"
    )
    sr.add_argument("--kind", help="only pauses of this kind (as `status` shows it)")
    sub.add_parser(
        "status", parents=[common], help="health at a glance; exit 1 when something needs a person"
    )


def _replies_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    rq = sub.add_parser("replies", parents=[common], help="the reply mailbox (IMAP)")
    rqsub = rq.add_subparsers(dest="action", required=True, metavar="ACTION")
    rqsub.add_parser("poll", parents=[common], help="one pass: replies, auto-replies, bounces")


def _webhooks_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
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


def _report_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
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


def _init_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    it = sub.add_parser(
        "init", parents=[common], help="create a project folder for a first real program"
    )
    it.add_argument("dir", nargs="?", type=Path, default=Path("."), help="default: here")


def _demo_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    d = sub.add_parser("demo", parents=[common], help="the whole thing on sample data, embedded")
    d.add_argument("--dir", type=Path, default=Path("demo-out"), help="where the demo writes")
    d.add_argument("--weeks", type=int, default=10, help="simulated weeks to play")
    d.add_argument(
        "--speed",
        type=float,
        default=7 * 86400 / 4.0,
        help="simulated seconds per real second (default: a week in 4 s)",
    )
