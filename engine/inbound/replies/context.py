"""What reading the reply mailbox needs (``ReplyContext``) and what processing one email did
(``Outcome``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from engine.base.clock import Clock
from engine.inbound.replies.classify import Rules
from engine.program.sequences import Sequence
from engine.program.settings import ImapSettings, NotifySettings, ScheduleSettings
from engine.store.db import Database


@dataclass(frozen=True)
class Outcome:
    """What processing one email did."""

    kind: str  # the verdict's kind: reply, not_interested, auto_reply, bounce, ignored ...
    why: str
    contact: str | None = None  # the contact it was about
    duplicate: bool = False  # seen before: nothing was recorded again
    bounces: tuple[str, ...] = ()  # severity of each bounce recorded: hard, soft, policy
    introductions: int = 0
    suppressed: bool = False
    postponed: int = 0  # enrollments and queued emails moved later (auto-replies)


@dataclass(frozen=True, kw_only=True)
class ReplyContext:
    """What reading the reply mailbox needs: the store, the clock, the sequences (their send
    windows), the classification rules and the settings sections it follows."""

    db: Database
    clock: Clock
    sequences: Mapping[str, Sequence]
    rules: Rules
    imap: ImapSettings
    notify: NotifySettings
    schedule: ScheduleSettings
    policy_pause_seconds: float
    base_dir: Path
