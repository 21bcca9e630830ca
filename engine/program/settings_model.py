"""The settings' shape: one frozen dataclass per section of settings.toml, with its defaults
(``engine.program.settings`` reads a file and the environment into them, and checks them)."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, get_type_hints

from engine.program.windows import CONTACT, SendWindow, next_open

DEFAULT_PATH = "settings.toml"

# Keys holding a password or a key: never in a repr, a log line or an error message
# (``field(repr=False)``; SettingsError shows no value of theirs).
SECRET = {"secret": True}


def _secret(default: Any = "") -> Any:
    return field(default=default, repr=False, metadata=SECRET)


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = _secret("sqlite:///var/engine.db")  # a PostgreSQL URL may hold a password


@dataclass(frozen=True)
class SmtpSettings:
    host: str = "127.0.0.1"
    port: int = 1025
    username: str = ""
    password: str = _secret()
    security: str = "none"  # none | starttls | tls
    timeout: float = 30.0
    connections: int = 4  # reused connections, also the send concurrency
    rate_per_second: float = 0.0  # 0 = unlimited
    max_attempts: int = 8
    retry_base_seconds: float = 60.0
    retry_max_seconds: float = 6 * 3600.0
    policy_pause_seconds: float = 3600.0
    hostname: str = ""  # EHLO name; empty = local host name


@dataclass(frozen=True)
class ImapSettings:
    """The reply mailbox: replies, auto-replies and bounces (engine.inbound.replies)."""

    host: str = "127.0.0.1"
    port: int = 1143
    username: str = ""  # empty: no mailbox is read
    password: str = _secret()
    mailbox: str = "INBOX"
    security: str = "none"  # none | starttls | tls
    ca_file: str = ""  # PEM file of a private CA to trust (empty: the system's CAs)
    timeout: float = 30.0  # seconds one IMAP command may take before the connection is dropped
    idle: bool = True  # wait with IMAP IDLE when the server offers it, else poll
    poll_seconds: float = 60.0  # between two looks at the mailbox without IDLE
    idle_timeout_seconds: float = 300.0  # an IDLE is renewed, and the connection proven, this often
    reconnect_max_seconds: float = 300.0  # longest wait between reconnection attempts
    processed: str = "flag"  # flag | move | none: what happens to a message acted on
    processed_flag: str = "$ReferralEngine"  # a keyword, or \Seen \Flagged \Answered
    processed_folder: str = "Processed"  # where processed = "move" puts them (created if missing)
    failed_flag: str = "$ReferralEngineFailed"  # set on messages that cannot be read
    batch_size: int = 100  # messages per FETCH
    body_bytes: int = 65536  # bytes read of a body (of each text part in a larger email)
    auto_reply_wait_days: int = 3  # next email this many days after an auto-reply's return date
    auto_reply_pause_days: int = 7  # pause after an auto-reply without a readable return date
    soft_bounce_limit: int = 3  # soft bounces (on different emails) before suppressing
    phrases: str = ""  # phrases file; empty: the shipped engine/replies/phrases.toml


@dataclass(frozen=True)
class TrackingSettings:
    base_url: str = "http://127.0.0.1:8080"
    listen: str = "127.0.0.1:8080"
    secret: str = _secret("change-me")
    old_secrets: tuple[str, ...] = _secret(())  # still accepted for links in older emails
    api_token: str = _secret()  # bearer token for POST /api/events; empty: the events API is off

    @property
    def listen_address(self) -> tuple[str, int]:
        """``listen`` as (host, port): ``"127.0.0.1:8080"`` -> ``("127.0.0.1", 8080)``,
        ``"[::1]:8080"`` -> ``("::1", 8080)``; ValueError when it is not HOST:PORT."""
        host, sep, port = self.listen.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not (sep and host and port.isascii() and port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(f"{self.listen!r} is not HOST:PORT (port 1-65535)")
        return host, int(port)


@dataclass(frozen=True)
class Warmup:
    """A new sender's ramp: ``start`` emails on the day of its first send, ``step`` more each
    day after, until ``sender.daily_cap``. ``start = 0``: no ramp, the cap from day one."""

    start: int = 50
    step: int = 50


@dataclass(frozen=True)
class SenderSettings:
    from_name: str = "Acme Team"
    from_email: str = "team@example.com"
    reply_to: str = "team@example.com"
    postal_address: str = "Acme Inc., 1 Main St, Springfield"
    feedback_id: str = "referral-engine"  # last field of Feedback-ID (sender id)
    unsubscribe_mailto: str = ""  # optional mailto: for List-Unsubscribe
    # Emails a day at most (the day of [schedule] timezone), reached through ``warmup`` from
    # the first send on: a new domain that mails everyone at once lands in spam. 0: no cap.
    daily_cap: int = 1000
    warmup: Warmup = field(default_factory=Warmup)


@dataclass(frozen=True)
class PathSettings:
    sequences: str = "sequences"
    templates: str = "templates"


@dataclass(frozen=True)
class ScheduleSettings:
    timezone: str = "UTC"  # fallback when a contact has none
    days: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri")
    hours: str = "09:00-17:00"
    batch_size: int = 500
    lease_seconds: float = 300.0
    tick_seconds: float = 5.0
    render_timeout_seconds: float = 2.0
    render_memory_mb: int = 256  # address space of the process that renders emails

    @functools.cached_property
    def window(self) -> SendWindow:
        """The send window of sequences that set none (read in each contact's zone)."""
        return SendWindow.parse(self.days, self.hours, CONTACT)

    def next_open(
        self, instant: datetime, window: SendWindow | None, contact_timezone: str | None
    ) -> datetime:
        """The one rule for when an email may go out: the first moment at or after
        ``instant`` inside ``window`` (the sequence's, else this default), on the contact's
        clock (this ``timezone`` when theirs is unknown)."""
        window = window or self.window
        return next_open(instant, window, window.zone(contact_timezone, self.timezone))


@dataclass(frozen=True)
class ProgramSettings:
    """Rules across every sequence of the referral program."""

    max_asks_per_year: int = 4  # runs that ask a contact for a referral, per 12 months
    # Days between two asks, doubled for each of the contact's latest asks they ignored
    # (no human click, no reply): persistent, never excessive.
    ask_spacing_days: float = 30.0
    # At most one email from the program's sequences per contact within this many hours
    # (sequences with spaced: false, notes to the team and rewards are exempt); 0: off.
    min_hours_between_emails: float = 24.0
    # The thank-you gift per converted referral, for each side: credit | code | none.
    referrer_reward: str = "credit"
    referrer_credit: float = 20.0
    referrer_codes: str = ""  # code: a file with one unused code per line
    friend_reward: str = "credit"
    friend_credit: float = 20.0
    friend_codes: str = ""
    currency: str = "USD"
    # What acquiring customers cost over the period `report` covers (its --since/--until);
    # 0: unknown, CAC is not shown.
    acquisition_spend: float = 0.0


@dataclass(frozen=True)
class NotifySettings:
    """Who on the team is told what (empty: the event is still recorded, no email is sent)."""

    owner: str = ""  # replies, detractors' answers
    sales: str = ""  # promoters, to follow up within 24 h
    account_manager: str = ""  # passives and what they wrote


@dataclass(frozen=True)
class WebhookSettings:
    """Where events are POSTed as HMAC-signed JSON (engine.outbound.webhooks); no urls: webhooks
    off."""

    urls: tuple[str, ...] = ()  # http(s) endpoints; each gets every subscribed event
    secret: str = _secret()  # HMAC-SHA256 key of X-Engine-Signature; required with urls
    events: tuple[str, ...] = (
        "referral.created",
        "referral.converted",
        "replied",
        "nps.answered",
        "unsubscribed",
        "bounced",
    )
    timeout_seconds: float = 10.0  # one attempt, connecting to reading the status, all in
    max_attempts: int = 10  # then the delivery is failed (`webhooks replay` sends it again)
    retry_base_seconds: float = 30.0  # first retry; doubles per attempt, with jitter
    retry_max_seconds: float = 6 * 3600.0  # longest wait between two attempts


@dataclass(frozen=True)
class Settings:
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    imap: ImapSettings = field(default_factory=ImapSettings)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    sender: SenderSettings = field(default_factory=SenderSettings)
    paths: PathSettings = field(default_factory=PathSettings)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    notify: NotifySettings = field(default_factory=NotifySettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    program: ProgramSettings = field(default_factory=ProgramSettings)
    base_dir: Path = Path(".")

    def path(self, relative: str) -> Path:
        """A settings path resolved against the settings file's folder."""
        p = Path(relative)
        return p if p.is_absolute() else self.base_dir / p

    @property
    def sequences_dir(self) -> Path:
        return self.path(self.paths.sequences)

    @property
    def templates_dir(self) -> Path:
        return self.path(self.paths.templates)

    @property
    def database_url(self) -> str:
        """The database URL with a relative SQLite path made relative to the settings file."""
        url = self.database.url
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
            return prefix + str(self.path(url[len(prefix) :]))
        return url


SECTIONS: dict[str, type] = {
    f.name: f.type if isinstance(f.type, type) else get_type_hints(Settings)[f.name]
    for f in dataclasses.fields(Settings)
    if f.name != "base_dir"
}
