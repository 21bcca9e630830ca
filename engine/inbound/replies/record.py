"""Turning a classified email into what the engine acts on: events, suppressions, alerts,
notes to the owner, postponed steps. One write transaction per batch of emails (or per email).

Idempotent by construction: every email is entered once in a ledger (``meta`` rows keyed by a
digest of its Message-ID) in the same transaction as its effects, and each bounce once per
(our email, recipient, severity), so the same email or the same DSN seen twice (a restart, a
UIDVALIDITY change, a copy in two folders, an MTA that re-sends its DSN) counts once. The
poller's position in the mailbox is saved in that transaction too.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence as Seq
from datetime import datetime

from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session

from engine.inbound.replies.classify import Rules, Verdict, classify_message
from engine.inbound.replies.context import Outcome, ReplyContext
from engine.inbound.replies.ledger import Cursor, first_times
from engine.inbound.replies.lookups import Lookups
from engine.inbound.replies.parse import DEFAULT_TEXT_LIMIT, Incoming, parse_message
from engine.inbound.replies.phrases import load_phrases
from engine.inbound.replies.recorder import Recorder
from engine.program.settings import Settings

# Cursor, Outcome and ReplyContext stay importable from here, as before they had modules.
__all__ = [
    "Cursor",
    "Outcome",
    "ReplyContext",
    "process_message",
    "read_message",
    "record",
    "record_batch",
    "rules_for",
]

log = logging.getLogger("engine.replies")


def rules_for(settings: Settings) -> Rules:
    """Classification rules from the settings: the phrases file and our own addresses."""
    phrases = load_phrases(settings.path(settings.imap.phrases) if settings.imap.phrases else None)
    own = {
        settings.sender.from_email,
        settings.sender.reply_to,
        settings.sender.unsubscribe_mailto.removeprefix("mailto:").partition("?")[0],
        settings.notify.owner,
        settings.notify.sales,
        settings.notify.account_manager,
    }
    if "@" in settings.imap.username:
        own.add(settings.imap.username)
    addresses = frozenset(a.strip().lower() for a in own if "@" in a)
    domains = frozenset(
        a.rpartition("@")[2].lower() for a in (settings.sender.from_email, settings.sender.reply_to)
    )
    return Rules(phrases, addresses, domains)


def read_message(
    raw: bytes, rules: Rules, now: datetime, *, text_limit: int = DEFAULT_TEXT_LIMIT
) -> tuple[Incoming | None, Verdict]:
    """Parse and classify; an email that breaks the parser is "unreadable", never an error."""
    try:
        incoming = parse_message(raw, text_limit=text_limit)
        return incoming, classify_message(incoming, rules, now)
    except Exception as exc:  # one bad email must never stop the mailbox
        log.exception("reply_unreadable error=%s", exc)
        return None, Verdict("unreadable", f"cannot be parsed: {type(exc).__name__}: {exc}")


def process_message(ctx: ReplyContext, raw: bytes, *, now: datetime | None = None) -> Outcome:
    """Classify one raw RFC 5322 email (a reply, an auto-reply, a DSN ...) and record what it
    means, exactly as the IMAP poller does for each email it reads. Safe to call twice with
    the same email: the second call records nothing (``Outcome.duplicate``)."""
    now = now or ctx.clock.now()
    incoming, verdict = read_message(raw, ctx.rules, now)
    return record(ctx, incoming, verdict, now=now)


def record(
    ctx: ReplyContext,
    incoming: Incoming | None,
    verdict: Verdict,
    *,
    now: datetime,
    cursor: Cursor | None = None,
) -> Outcome:
    """Apply ``verdict`` in one write transaction (with ``cursor`` saved in it)."""
    with ctx.db.write() as session:
        (outcome,) = _apply_all(ctx, session, [(incoming, verdict)], now)
        if cursor is not None:
            cursor.save(session)
    _log(outcome)
    return outcome


def record_batch(
    ctx: ReplyContext,
    batch: Seq[tuple[Cursor, Incoming | None, Verdict]],
    *,
    now: datetime,
) -> list[Outcome]:
    """Apply several verdicts in one transaction, the last cursor saved with them (the
    poller's way: a commit and a few lookups per email would cost more than the email).
    When the database refuses one of them, each is applied in a transaction of its own
    instead, and the refused one is reported unreadable: one bad email never holds back the
    others."""
    if not batch:
        return []
    try:
        with ctx.db.write() as session:
            outcomes = _apply_all(ctx, session, [(i, v) for _, i, v in batch], now)
            batch[-1][0].save(session)
    except (DataError, IntegrityError) as exc:
        log.warning("reply_batch_refused error=%s: recording one email at a time", exc)
        outcomes = []
        for cursor, incoming, verdict in batch:
            try:
                outcomes.append(record(ctx, incoming, verdict, now=now, cursor=cursor))
            except (DataError, IntegrityError) as refused:
                log.error("reply_unrecordable uid=%s error=%s", cursor.uid, refused)
                with ctx.db.write() as session:
                    cursor.save(session)
                outcomes.append(Outcome("unreadable", f"the database refused it: {refused}"))
        return outcomes
    for outcome in outcomes:
        _log(outcome)
    return outcomes


def _apply_all(
    ctx: ReplyContext,
    session: Session,
    items: Seq[tuple[Incoming | None, Verdict]],
    now: datetime,
) -> list[Outcome]:
    readable = [
        (incoming, verdict)
        for incoming, verdict in items
        if incoming is not None and verdict.kind != "unreadable"
    ]
    new = first_times(session, [(f"email:{i.identity}", v.kind) for i, v in readable], now)
    lookups = Lookups.load(session, [i for i, _ in readable])
    outcomes = []
    # New rows wait for one flush at the end (a flush before every query would cost more
    # than the rest); what the batch itself must see is kept in ``lookups``.
    with session.no_autoflush:
        for incoming, verdict in items:
            if incoming is None or verdict.kind == "unreadable":
                outcomes.append(Outcome("unreadable", verdict.why))
            elif not new.pop(f"email:{incoming.identity}", False):
                outcomes.append(Outcome(verdict.kind, verdict.why, duplicate=True))
            else:
                recorder = Recorder(ctx, session, lookups, incoming, verdict, now)
                outcomes.append(recorder.apply())
    session.flush()
    for work in lookups.later:
        work()
    return outcomes


def _log(outcome: Outcome) -> None:
    log.info(
        "reply_processed kind=%s contact=%s duplicate=%s why=%s",
        outcome.kind,
        outcome.contact,
        outcome.duplicate,
        outcome.why,
    )
