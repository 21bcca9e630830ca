"""Reading the reply mailbox: one pass (``poll_once``, `replies poll`) or for as long as the
engine runs (``poll_forever``, a service of `run`).

The mailbox's UIDVALIDITY and the last UID done are kept in ``meta`` (key
``imap:<user>@<host>/<mailbox>``) and saved in the same transaction as each email's effects,
so a restart continues right after the last email done: nothing missed, nothing twice. When
UIDVALIDITY changes (the mailbox was rebuilt), every email is read again and the ledger of
emails already seen (engine.inbound.replies.record) keeps each one counted once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import timedelta

from engine.base.errors import SettingsError
from engine.base.retry import retry_delay
from engine.inbound.replies.classify import Rules, Verdict
from engine.inbound.replies.imap import Mailbox, MailboxError
from engine.inbound.replies.parse import Incoming
from engine.inbound.replies.record import (
    Cursor,
    Outcome,
    ReplyContext,
    read_message,
    record_batch,
)
from engine.program.settings import ImapSettings
from engine.store.models import Meta

log = logging.getLogger("engine.replies")

RECONNECT_FIRST_SECONDS = 1.0  # the first wait to reconnect; doubled per failure in a row
# A wait is shortened by up to this much of it: engines that lost the server together do not
# all knock again at the same moment.
RECONNECT_JITTER = 0.2
FIRST_LOOK = timedelta(days=30)


@dataclass
class PollStats:
    """What one pass over the mailbox found."""

    read: int = 0
    replies: int = 0
    not_interested: int = 0
    auto_replies: int = 0
    hard_bounces: int = 0
    soft_bounces: int = 0
    policy_bounces: int = 0
    complaints: int = 0  # spam complaints from feedback loops (ARF)
    introductions: int = 0
    ignored: int = 0
    duplicates: int = 0
    unreadable: int = 0
    uidvalidity_changed: bool = False

    def add(self, outcome: Outcome) -> None:
        """Count one processed email."""
        self.read += 1
        if outcome.duplicate:
            self.duplicates += 1
            return
        match outcome.kind:
            case "reply":
                self.replies += 1
            case "not_interested":
                self.not_interested += 1
            case "auto_reply":
                self.auto_replies += 1
            case "complaint":
                self.complaints += 1
            case "unreadable":
                self.unreadable += 1
            case "bounce":
                self.hard_bounces += outcome.bounces.count("hard")
                self.soft_bounces += outcome.bounces.count("soft")
                self.policy_bounces += outcome.bounces.count("policy")
            case _:
                self.ignored += 1
        self.introductions += outcome.introductions

    def summary(self) -> str:
        """One line for people: ``read 12: 3 replies, 1 not interested, ...``."""
        return (
            f"read {self.read}: {self.replies} replies, {self.not_interested} not interested, "
            f"{self.auto_replies} auto-replies, bounces {self.hard_bounces} hard / "
            f"{self.soft_bounces} soft / {self.policy_bounces} policy, "
            f"{self.complaints} spam complaints, "
            f"{self.introductions} introductions, {self.ignored} not ours, "
            f"{self.duplicates} seen before, {self.unreadable} unreadable"
            + (" (UIDVALIDITY changed: mailbox read again)" if self.uidvalidity_changed else "")
        )


def state_key(imap: ImapSettings) -> str:
    """The ``meta`` key of a mailbox's position (hashed when too long for the column)."""
    key = f"imap:{imap.username}@{imap.host}/{imap.mailbox}"
    if len(key) <= 64:
        return key
    return "imap:" + hashlib.sha256(key.encode()).hexdigest()[:40]


def _require(imap: ImapSettings) -> None:
    if not imap.username:
        raise SettingsError("imap.username", "is empty: set [imap] to read a mailbox")


async def poll_once(ctx: ReplyContext) -> PollStats:
    """Connect, read every email not done yet, flag or move them, disconnect."""
    imap = ctx.imap
    _require(imap)
    rules = ctx.rules
    box = await Mailbox.open(imap, base_dir=ctx.base_dir)
    try:
        return await drain(ctx, box, rules)
    finally:
        await box.close()


async def poll_forever(ctx: ReplyContext, stop: asyncio.Event) -> None:
    """Read the mailbox until ``stop`` is set: IDLE where the server offers it (else a pass
    every ``poll_seconds``), reconnecting with backoff (up to ``reconnect_max_seconds``) when
    the server goes away or stops answering. Never raises: a service of `run`."""
    imap = ctx.imap
    if not imap.username:
        log.info("imap_disabled reason=no imap.username")
        return
    rules = ctx.rules
    failures = 0  # in a row, since a connection last opened
    while not stop.is_set():
        box: Mailbox | None = None
        try:
            box = await Mailbox.open(imap, base_dir=ctx.base_dir)
            failures = 0
            while not stop.is_set():
                # Again until a pass finds nothing: news announced while a pass ran is not
                # announced again once the IDLE starts.
                while (stats := await drain(ctx, box, rules, stop)).read:
                    log.info("replies_polled %s", stats.summary())
                await box.wait_for_news(stop)
        except Exception as exc:
            failures += 1
            delay = retry_delay(
                failures,
                RECONNECT_FIRST_SECONDS,
                imap.reconnect_max_seconds,
                jitter=RECONNECT_JITTER,
            )
            if isinstance(exc, MailboxError):
                log.warning("imap_reconnect in=%.1fs reason=%s", delay, exc)
            else:  # a database outage, a bug: keep the engine running, try again
                log.exception("replies_poll_failed retry_in=%.1fs", delay)
        finally:
            if box is not None:
                await box.close()
        if not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
    log.info("imap_stopped")


def _load(ctx: ReplyContext, key: str) -> tuple[int, int] | None:
    with ctx.db.session() as session:
        row = session.get(Meta, key)
    if row is None:
        return None
    try:
        value = json.loads(row.value)
        return int(value["uidvalidity"]), int(value["last_uid"])
    except (ValueError, KeyError, TypeError):
        log.error(
            "imap_state_unreadable key=%s value=%r: reading the mailbox again", key, row.value
        )
        return None


async def drain(
    ctx: ReplyContext, box: Mailbox, rules: Rules, stop: asyncio.Event | None = None
) -> PollStats:
    """Process every email after the saved position, a batch at a time, in UID order."""
    imap = ctx.imap
    key = state_key(imap)
    stats = PollStats()
    saved = _load(ctx, key)
    last = 0
    if saved is not None:
        if saved[0] == box.uidvalidity:
            last = saved[1]
        else:
            stats.uidvalidity_changed = True
            log.warning(
                "imap_uidvalidity_changed key=%s was=%s now=%s: reading every email again",
                key,
                saved[0],
                box.uidvalidity,
            )
    if saved != (box.uidvalidity, last):
        with ctx.db.write() as session:  # a new or rebuilt mailbox: start over at UID 0
            Cursor(key, box.uidvalidity, last).save(session)
    # A first look (or a rebuilt mailbox) reads the last FIRST_LOOK only: a reply mailbox's
    # history must not replay years of old answers as if they had just come in.
    since = None if last else (ctx.clock.now() - FIRST_LOOK).date()
    uids = await box.uids_after(last, since=since)
    for start in range(0, len(uids), imap.batch_size):
        if stop is not None and stop.is_set():
            break
        now = ctx.clock.now()
        batch: list[tuple[Cursor, Incoming | None, Verdict]] = []
        for fetched in await box.fetch(uids[start : start + imap.batch_size]):
            raw = fetched.header + fetched.body
            if not fetched.complete and fetched.multipart:
                raw = await box.read_large(fetched)
            incoming, verdict = read_message(raw, rules, now, text_limit=imap.body_bytes)
            batch.append((Cursor(key, box.uidvalidity, fetched.uid), incoming, verdict))
        done: list[int] = []
        failed: list[int] = []
        for (cursor, _, _), outcome in zip(batch, record_batch(ctx, batch, now=now), strict=True):
            stats.add(outcome)
            if outcome.kind == "unreadable":
                log.warning("reply_unreadable uid=%s why=%s", cursor.uid, outcome.why)
                failed.append(cursor.uid)
            elif outcome.kind != "ignored":
                done.append(cursor.uid)
        await box.flag(failed, imap.failed_flag)
        if imap.processed == "flag":
            await box.flag(done, imap.processed_flag)
        elif imap.processed == "move":
            await box.move(done, imap.processed_folder)
    return stats
