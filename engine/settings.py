"""settings.toml -> typed, frozen Settings, with ENGINE_<SECTION>_<KEY> environment overrides.

Every key has a default here, so a settings file only lists what differs; unknown sections or
keys are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from engine.errors import SettingsError
from engine.windows import parse_days, parse_hours, parse_zone

DEFAULT_PATH = "settings.toml"


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = "sqlite:///var/engine.db"


@dataclass(frozen=True)
class SmtpSettings:
    host: str = "127.0.0.1"
    port: int = 1025
    username: str = ""
    password: str = ""
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
    host: str = "127.0.0.1"
    port: int = 1143
    username: str = ""
    password: str = ""
    mailbox: str = "INBOX"


@dataclass(frozen=True)
class TrackingSettings:
    base_url: str = "http://127.0.0.1:8080"
    listen: str = "127.0.0.1:8080"
    secret: str = "change-me"
    old_secrets: tuple[str, ...] = ()  # still accepted for links in older emails


@dataclass(frozen=True)
class SenderSettings:
    from_name: str = "Acme Team"
    from_email: str = "team@example.com"
    reply_to: str = "team@example.com"
    postal_address: str = "Acme Inc., 1 Main St, Springfield"
    feedback_id: str = "referral-engine"  # last field of Feedback-ID (sender id)
    unsubscribe_mailto: str = ""  # optional mailto: for List-Unsubscribe


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


@dataclass(frozen=True)
class NotifySettings:
    """Who on the team is told what (empty: the event is still recorded, no email is sent)."""

    owner: str = ""  # replies, detractors' answers
    sales: str = ""  # promoters, to follow up within 24 h
    account_manager: str = ""  # passives and what they wrote


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


def _coerce(key: str, value: Any, target: Any) -> Any:
    """Turn a TOML or environment value into the declared type, or raise naming the key."""
    if target is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {
            "1",
            "true",
            "yes",
            "on",
            "0",
            "false",
            "no",
            "off",
        }:
            return value.lower() in {"1", "true", "yes", "on"}
        raise SettingsError(key, f"expected true or false, got {value!r}")
    if target is int:
        if isinstance(value, bool):
            raise SettingsError(key, f"expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise SettingsError(key, f"expected an integer, got {value!r}") from None
    if target is float:
        if isinstance(value, bool):
            raise SettingsError(key, f"expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise SettingsError(key, f"expected a number, got {value!r}") from None
    if target is str:
        if not isinstance(value, str):
            raise SettingsError(key, f"expected a string, got {value!r}")
        return value
    # tuple[str, ...]: a TOML array, or a comma-separated environment value
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SettingsError(key, f"expected a list of strings, got {value!r}")
    return tuple(value)


def _build_section(name: str, cls: type, raw: Mapping[str, Any], env: Mapping[str, str]) -> Any:
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            raise SettingsError(f"{name}.{key}", "unknown key")
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        dotted = f"{name}.{f.name}"
        env_name = f"ENGINE_{name.upper()}_{f.name.upper()}"
        if env_name in env:
            values[f.name] = _coerce(env_name, env[env_name], hints[f.name])
        elif f.name in raw:
            values[f.name] = _coerce(dotted, raw[f.name], hints[f.name])
    return cls(**values)


def _validate(s: Settings) -> None:
    if s.smtp.security not in {"none", "starttls", "tls"}:
        raise SettingsError("smtp.security", "must be none, starttls or tls")
    if not 0 < s.smtp.port < 65536:
        raise SettingsError("smtp.port", "must be between 1 and 65535")
    if s.smtp.connections < 1:
        raise SettingsError("smtp.connections", "must be at least 1")
    for key, value in (
        ("smtp.max_attempts", s.smtp.max_attempts),
        ("schedule.batch_size", s.schedule.batch_size),
        ("schedule.lease_seconds", s.schedule.lease_seconds),
        ("smtp.timeout", s.smtp.timeout),
    ):
        if value <= 0:
            raise SettingsError(key, "must be greater than 0")
    if s.smtp.rate_per_second < 0:
        raise SettingsError("smtp.rate_per_second", "must not be negative")
    if not s.tracking.secret:
        raise SettingsError("tracking.secret", "must not be empty")
    if not s.tracking.base_url.startswith(("http://", "https://")):
        raise SettingsError("tracking.base_url", "must start with http:// or https://")
    if "@" not in s.sender.from_email:
        raise SettingsError("sender.from_email", "must be an email address")
    if not s.sender.postal_address.strip():
        raise SettingsError("sender.postal_address", "required: every email's footer shows it")
    for role in ("owner", "sales", "account_manager"):
        address = getattr(s.notify, role)
        if address and ("@" not in address or any(c.isspace() for c in address)):
            raise SettingsError(f"notify.{role}", "must be one email address")
    for key, text in (
        ("sender.from_name", s.sender.from_name),
        ("sender.from_email", s.sender.from_email),
        ("sender.reply_to", s.sender.reply_to),
    ):
        if any(c in text for c in "\r\n\0\u2028\u2029"):
            raise SettingsError(key, "must not contain line breaks")
    try:
        parse_zone(s.schedule.timezone)
    except ValueError:
        raise SettingsError(
            "schedule.timezone", f"unknown time zone {s.schedule.timezone!r}"
        ) from None

    try:
        parse_days(s.schedule.days)
    except ValueError as exc:
        raise SettingsError("schedule.days", str(exc)) from None
    try:
        parse_hours(s.schedule.hours)
    except ValueError as exc:
        raise SettingsError("schedule.hours", str(exc)) from None


PLACEHOLDER_SECRETS = frozenset({"change-me", "test", "secret"})
MIN_SECRET_LENGTH = 16


def require_real_secret(settings: Settings) -> None:
    """Refuse to send emails whose links anyone could forge: the HMAC key must be a real one.

    Checked by the commands that send (tick, run), not at load, so `validate`, `preview` and
    friends work with the shipped placeholder.
    """
    for key, value in [("tracking.secret", settings.tracking.secret)] + [
        ("tracking.old_secrets", old) for old in settings.tracking.old_secrets
    ]:
        if value in PLACEHOLDER_SECRETS or len(value) < MIN_SECRET_LENGTH:
            raise SettingsError(
                key,
                f"needs a private random value of at least {MIN_SECRET_LENGTH} characters "
                "before emails go out (anyone knowing it can forge tracking links); set "
                "ENGINE_TRACKING_SECRET, e.g. to the output of "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'",
            )


def load_settings(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Read settings from ``path`` (or ENGINE_SETTINGS, or ./settings.toml) plus the environment.

    A missing file is fine only when no path was asked for explicitly: defaults apply.
    """
    env = os.environ if env is None else env
    explicit = path is not None or "ENGINE_SETTINGS" in env
    file = Path(path if path is not None else env.get("ENGINE_SETTINGS", DEFAULT_PATH))
    raw: dict[str, Any] = {}
    if file.exists():
        try:
            raw = tomllib.loads(file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(str(file), f"not valid TOML: {exc}") from None
    elif explicit:
        raise SettingsError(str(file), "settings file not found")
    for name, value in raw.items():
        if name not in SECTIONS:
            raise SettingsError(name, "unknown section")
        if not isinstance(value, dict):
            raise SettingsError(name, "must be a [section]")
    sections = {
        name: _build_section(name, cls, raw.get(name, {}), env) for name, cls in SECTIONS.items()
    }
    settings = Settings(**sections, base_dir=file.resolve().parent)
    _validate(settings)
    return settings
