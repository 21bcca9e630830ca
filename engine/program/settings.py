"""settings.toml -> typed, frozen Settings, with ENGINE_<SECTION>_<KEY> environment overrides.

Every key has a default here, so a settings file only lists what differs; unknown sections or
keys are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_type_hints
from urllib.parse import urlsplit

from engine.base.errors import SettingsError
from engine.program.sequences.model import NOTIFY_ROLES
from engine.program.settings_model import (
    DEFAULT_PATH,
    SECRET,
    SECTIONS,
    DatabaseSettings,
    ImapSettings,
    NotifySettings,
    PathSettings,
    ProgramSettings,
    ScheduleSettings,
    SenderSettings,
    Settings,
    SmtpSettings,
    TrackingSettings,
    Warmup,
    WebhookSettings,
)
from engine.program.windows import parse_days, parse_hours, parse_zone


def _coerce(key: str, value: Any, target: Any, *, secret: bool = False) -> Any:
    """Turn a TOML or environment value into the declared type, or raise naming the key (and
    the value, unless the key holds a secret)."""
    got = "a hidden value" if secret else repr(value)
    if target is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise SettingsError(key, f"expected true or false, got {got}")
    if target in (int, float):
        what = "an integer" if target is int else "a number"
        if isinstance(value, bool):
            raise SettingsError(key, f"expected {what}, got {got}")
        try:
            return target(value)
        except (TypeError, ValueError):
            raise SettingsError(key, f"expected {what}, got {got}") from None
    if target is Warmup:
        return _warmup(key, value)
    if target is str:
        if not isinstance(value, str):
            raise SettingsError(key, f"expected a string, got {got}")
        return value
    # tuple[str, ...]: a TOML array, or from the environment a JSON array or commas
    if isinstance(value, str):
        value = _env_list(key, value, got)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SettingsError(key, f"expected a list of strings, got {got}")
    return tuple(value)


_TRUE, _FALSE = frozenset({"1", "true", "yes", "on"}), frozenset({"0", "false", "no", "off"})


def _env_list(key: str, text: str, got: str) -> Any:
    """A list from an environment variable: a JSON array (``'["a", "b"]'``) when it starts
    with ``[``, else comma-separated (``"a, b"`` -> ``["a", "b"]``)."""
    if not text.lstrip().startswith("["):
        return [v.strip() for v in text.split(",") if v.strip()]
    try:
        return json.loads(text)
    except ValueError:
        raise SettingsError(key, f"not a JSON array of strings: {got}") from None


def _warmup(key: str, value: Any) -> Warmup:
    """``{start = 50, step = 50}`` in TOML, ``"50,50"`` or ``"off"`` from the environment."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
        if value.strip().lower() in {"off", "0", "none"}:
            return Warmup(start=0, step=0)
        if len(parts) != 2:
            raise SettingsError(key, f'expected "START,STEP" or "off", got {value!r}')
        value = dict(zip(("start", "step"), parts, strict=True))
    if not isinstance(value, dict) or set(value) - {"start", "step"}:
        raise SettingsError(key, f"expected {{start = N, step = N}}, got {value!r}")
    numbers = {k: _coerce(f"{key}.{k}", v, int) for k, v in value.items()}
    if any(n < 0 for n in numbers.values()):
        raise SettingsError(key, "start and step must not be negative")
    return Warmup(**numbers)


def _build_section(name: str, cls: type, raw: Mapping[str, Any], env: Mapping[str, str]) -> Any:
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            raise SettingsError(f"{name}.{key}", "unknown key")
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        dotted = f"{name}.{f.name}"
        env_name = env_variable(name, f.name)
        secret = bool(f.metadata.get("secret"))
        if env_name in env:
            values[f.name] = _coerce(env_name, env[env_name], hints[f.name], secret=secret)
        elif f.name in raw:
            values[f.name] = _coerce(dotted, raw[f.name], hints[f.name], secret=secret)
    return cls(**values)


def env_variable(section: str, key: str) -> str:
    """The environment variable that overrides ``section.key``: ``ENGINE_SMTP_PORT``."""
    return f"ENGINE_{section.upper()}_{key.upper()}"


# ENGINE_* variables that are not keys: the settings file, the clock, the tests' switches.
OTHER_VARIABLES = frozenset({"ENGINE_SETTINGS", "ENGINE_NOW", "ENGINE_CHROMIUM"})
OTHER_PREFIXES = ("ENGINE_REQUIRE_",)


def _check_variables(env: Mapping[str, str]) -> None:
    """Refuse an unknown ENGINE_* variable as an unknown key is refused: a typo
    (ENGINE_SMTP_PROT) must not leave the default in place silently."""
    known = {
        env_variable(name, f.name)
        for name, cls in SECTIONS.items()
        for f in dataclasses.fields(cls)
    }
    for variable in sorted(env):
        if (
            variable.startswith("ENGINE_")
            and variable not in known
            and variable not in OTHER_VARIABLES
            and not variable.startswith(OTHER_PREFIXES)
        ):
            close = difflib.get_close_matches(variable, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise SettingsError(variable, f"unknown environment variable{hint}")


# An IMAP keyword (an atom), or one of the system flags it makes sense to set on a read email.
_IMAP_FLAG = re.compile(r"[A-Za-z0-9$_.\-]{1,64}|\\(?:Seen|Flagged|Answered)")
# Printable ASCII mailbox names, without the quoting and wildcard characters.
_MAILBOX_NAME = re.compile(r"[ !#-$&-)+-\[\]-~]+")


def _validate_imap(s: Settings) -> None:
    imap = s.imap
    if imap.security not in {"none", "starttls", "tls"}:
        raise SettingsError("imap.security", "must be none, starttls or tls")
    if not 0 < imap.port < 65536:
        raise SettingsError("imap.port", "must be between 1 and 65535")
    if imap.processed not in {"flag", "move", "none"}:
        raise SettingsError("imap.processed", "must be flag, move or none")
    for key, number in (
        ("imap.timeout", imap.timeout),
        ("imap.poll_seconds", imap.poll_seconds),
        ("imap.idle_timeout_seconds", imap.idle_timeout_seconds),
        ("imap.reconnect_max_seconds", imap.reconnect_max_seconds),
        ("imap.soft_bounce_limit", imap.soft_bounce_limit),
    ):
        if number <= 0:
            raise SettingsError(key, "must be greater than 0")
    if not 1 <= imap.batch_size <= 1000:
        raise SettingsError("imap.batch_size", "must be between 1 and 1000")
    if imap.body_bytes < 1024:
        raise SettingsError("imap.body_bytes", "must be at least 1024")
    for key, days in (
        ("imap.auto_reply_wait_days", imap.auto_reply_wait_days),
        ("imap.auto_reply_pause_days", imap.auto_reply_pause_days),
    ):
        if not 0 <= days <= 366:
            raise SettingsError(key, "must be between 0 and 366")
    for key, flag in (
        ("imap.processed_flag", imap.processed_flag),
        ("imap.failed_flag", imap.failed_flag),
    ):
        if not _IMAP_FLAG.fullmatch(flag):
            raise SettingsError(key, "must be a keyword (A-Z a-z 0-9 $ _ . -), \\Seen or \\Flagged")
    for key, name in (
        ("imap.mailbox", imap.mailbox),
        ("imap.processed_folder", imap.processed_folder),
    ):
        if not _MAILBOX_NAME.fullmatch(name):
            raise SettingsError(key, 'must be a non-empty ASCII mailbox name without " \\ * %')
    for key, path in (("imap.phrases", imap.phrases), ("imap.ca_file", imap.ca_file)):
        if path and not s.path(path).is_file():
            raise SettingsError(key, f"no such file: {s.path(path)}")


# An event type as the engine names them: "replied", "referral.created", "form.submitted".
_EVENT_TYPE = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)*")


def _validate_webhooks(s: Settings) -> None:
    hooks = s.webhooks
    for url in hooks.urls:
        try:
            parts = urlsplit(url)
            _ = parts.port  # parsing it is the check
        except ValueError as exc:
            raise SettingsError("webhooks.urls", f"{url!r}: {exc}") from None
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise SettingsError("webhooks.urls", f"{url!r} is not an http:// or https:// URL")
        if parts.username is not None or parts.fragment or len(url) > 2000:
            # Credentials in a URL would show in `webhooks list` and in logs; the signature
            # is how a receiver knows the engine.
            shown = f"{parts.scheme}://{parts.hostname}{parts.path}"  # never the password
            raise SettingsError(
                "webhooks.urls",
                f"{shown!r}: no user:password@, no #fragment, 2000 characters at most",
            )
        if any(not c.isprintable() or c.isspace() for c in url):
            raise SettingsError("webhooks.urls", f"{url!r} contains spaces or control characters")
    if len(set(hooks.urls)) != len(hooks.urls):
        raise SettingsError("webhooks.urls", "lists the same URL twice")
    if hooks.urls and (
        hooks.secret in PLACEHOLDER_SECRETS or len(hooks.secret) < MIN_SECRET_LENGTH
    ):
        raise SettingsError(
            "webhooks.secret",
            f"needs a private random value of at least {MIN_SECRET_LENGTH} characters when "
            "webhooks.urls is set (receivers check signatures with it); set "
            "ENGINE_WEBHOOKS_SECRET, e.g. to the output of "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'",
        )
    for name in hooks.events:
        if len(name) > 40 or not _EVENT_TYPE.fullmatch(name):
            raise SettingsError("webhooks.events", f"{name!r} is not an event type")
    for key, number in (
        ("webhooks.timeout_seconds", hooks.timeout_seconds),
        ("webhooks.max_attempts", hooks.max_attempts),
        ("webhooks.retry_base_seconds", hooks.retry_base_seconds),
    ):
        if number <= 0:
            raise SettingsError(key, "must be greater than 0")
    if hooks.retry_max_seconds < hooks.retry_base_seconds:
        raise SettingsError("webhooks.retry_max_seconds", "must be at least retry_base_seconds")


def _validate(s: Settings) -> None:
    _validate_imap(s)
    _validate_webhooks(s)
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
        ("schedule.render_timeout_seconds", s.schedule.render_timeout_seconds),
        ("schedule.render_memory_mb", s.schedule.render_memory_mb),
    ):
        if value <= 0:
            raise SettingsError(key, "must be greater than 0")
    if s.smtp.rate_per_second < 0:
        raise SettingsError("smtp.rate_per_second", "must not be negative")
    if s.smtp.rate_per_second and s.smtp.connections / s.smtp.rate_per_second > (
        s.schedule.lease_seconds
    ):
        # Each connection gets a slot every connections / rate seconds: a claimed batch
        # would wait longer than its lease, and others would take it over meanwhile.
        raise SettingsError(
            "smtp.rate_per_second",
            f"{s.smtp.connections} connections at {s.smtp.rate_per_second:g} emails/s wait "
            f"{s.smtp.connections / s.smtp.rate_per_second:g} s for a turn, longer than "
            f"schedule.lease_seconds ({s.schedule.lease_seconds:g}); lower smtp.connections "
            "or raise schedule.lease_seconds",
        )
    if s.sender.daily_cap < 0:
        raise SettingsError("sender.daily_cap", "must not be negative (0: no cap)")
    if not s.tracking.secret:
        raise SettingsError("tracking.secret", "must not be empty")
    if not s.tracking.base_url.startswith(("http://", "https://")):
        raise SettingsError("tracking.base_url", "must start with http:// or https://")
    try:
        _ = s.tracking.listen_address  # parsing it is the check
    except ValueError as exc:
        raise SettingsError("tracking.listen", str(exc)) from None
    token = s.tracking.api_token
    if token and (
        len(token) < MIN_SECRET_LENGTH
        or not (token.isascii() and token.isprintable())
        or any(c.isspace() for c in token)
    ):
        raise SettingsError(
            "tracking.api_token",
            f"must be empty (events API off) or at least {MIN_SECRET_LENGTH} printable ASCII "
            "characters without spaces; set ENGINE_TRACKING_API_TOKEN",
        )
    if "@" not in s.sender.from_email:
        raise SettingsError("sender.from_email", "must be an email address")
    if not s.sender.postal_address.strip():
        raise SettingsError("sender.postal_address", "required: every email's footer shows it")
    _validate_program(s)
    for key, text in (
        ("sender.from_name", s.sender.from_name),
        ("sender.from_email", s.sender.from_email),
        ("sender.reply_to", s.sender.reply_to),
    ):
        if any(c in text for c in "\r\n\0\u2028\u2029"):
            raise SettingsError(key, "must not contain line breaks")
    _validate_schedule(s.schedule)


def _validate_program(s: Settings) -> None:
    """[program] (asks, rewards) and [notify] (one address per role)."""
    if s.program.max_asks_per_year < 0:
        raise SettingsError("program.max_asks_per_year", "must not be negative")
    if s.program.ask_spacing_days < 0:
        raise SettingsError("program.ask_spacing_days", "must not be negative")
    if not 0 <= s.program.min_hours_between_emails < float("inf"):
        raise SettingsError("program.min_hours_between_emails", "must be a number, 0 or more")
    if not 0 <= s.program.acquisition_spend < float("inf"):
        raise SettingsError("program.acquisition_spend", "must be a number, 0 or more")
    for side in ("referrer", "friend"):
        kind = getattr(s.program, f"{side}_reward")
        if kind not in {"credit", "code", "none"}:
            raise SettingsError(f"program.{side}_reward", "must be credit, code or none")
        if kind == "credit" and getattr(s.program, f"{side}_credit") <= 0:
            raise SettingsError(f"program.{side}_credit", "must be greater than 0")
        codes = getattr(s.program, f"{side}_codes")
        if kind == "code" and not (codes and s.path(codes).is_file()):
            raise SettingsError(f"program.{side}_codes", "must name a file of codes, one per line")
    for role in NOTIFY_ROLES:
        address = getattr(s.notify, role)
        if address and ("@" not in address or any(c.isspace() for c in address)):
            raise SettingsError(f"notify.{role}", "must be one email address")


def _validate_schedule(schedule: ScheduleSettings) -> None:
    try:
        parse_zone(schedule.timezone)
    except ValueError:
        raise SettingsError(
            "schedule.timezone", f"unknown time zone {schedule.timezone!r}"
        ) from None
    try:
        parse_days(schedule.days)
    except ValueError as exc:
        raise SettingsError("schedule.days", str(exc)) from None
    try:
        parse_hours(schedule.hours)
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
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    missing_ok: bool = True,
) -> Settings:
    """Read settings from ``path`` (or ENGINE_SETTINGS, or ./settings.toml) plus the environment.

    A missing file is fine only when no path was asked for explicitly and ``missing_ok`` (the
    CLI says False: a command run from the wrong folder must not work on an empty database),
    or when ENGINE_DATABASE_URL says where the data is (settings from the environment alone).
    Unknown ENGINE_* variables are refused.
    """
    env = os.environ if env is None else env
    _check_variables(env)
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
    elif not missing_ok and env_variable("database", "url") not in env:
        raise SettingsError(
            str(file.resolve()),
            "no settings file here: run the command from your project's folder, pass "
            "--settings PATH (or set ENGINE_SETTINGS), or create a project with "
            "`python -m engine init DIR`",
        )
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


__all__ = [
    "DEFAULT_PATH",
    "SECRET",
    "SECTIONS",
    "DatabaseSettings",
    "ImapSettings",
    "NotifySettings",
    "PathSettings",
    "ProgramSettings",
    "ScheduleSettings",
    "SenderSettings",
    "Settings",
    "SmtpSettings",
    "TrackingSettings",
    "Warmup",
    "WebhookSettings",
    "load_settings",
    "require_real_secret",
]
