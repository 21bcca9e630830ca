"""The engine's exceptions.

EngineError
 +-- SettingsError          a settings key is missing or invalid (names the key)
 +-- SequenceError          a sequence file is invalid (file:line:col: message)
 +-- TemplateError          a template cannot be compiled or rendered
 |    +-- RenderTimeout     a render ran past its time limit
 +-- ImportRowError         one CSV row was rejected (names the row and field)
 +-- TransportError         SMTP failures, classified once
      +-- TemporaryFailure  4xx or dropped connection: retry later   (also ConnectionError)
      +-- PermanentFailure  5xx about the recipient: fail the row, maybe suppress
      +-- PolicyFailure     4.7.x / 5.7.x about the sender: pause sending, alert
"""

from __future__ import annotations


class EngineError(Exception):
    """Root of every error the engine raises on purpose."""


class SettingsError(EngineError, ValueError):
    """A settings key is missing or has an invalid value."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"settings: {key}: {message}")
        self.key = key


class SequenceError(EngineError, ValueError):
    """A problem in a sequence file, located as file:line:col."""

    def __init__(self, path: str, line: int, col: int, message: str) -> None:
        super().__init__(f"{path}:{line}:{col}: {message}")
        self.path = path
        self.line = line
        self.col = col
        self.message = message


class TemplateError(EngineError, ValueError):
    """A template cannot be compiled or rendered for one recipient."""


class RenderTimeout(TemplateError, TimeoutError):
    """A render exceeded its time or output budget (a runaway template)."""


class ImportRowError(EngineError, ValueError):
    """One CSV row was rejected; the message names the row and the field."""


class TransportError(EngineError):
    """An SMTP delivery attempt failed."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class TemporaryFailure(TransportError, ConnectionError):
    """Worth retrying later (4xx reply, dropped connection, timeout)."""

    def __init__(
        self, message: str, *, code: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class PermanentFailure(TransportError):
    """The recipient was refused for good (5xx); ``hard_bounce`` means suppress the address."""

    def __init__(self, message: str, *, code: int | None = None, hard_bounce: bool = False) -> None:
        super().__init__(message, code=code)
        self.hard_bounce = hard_bounce


class PolicyFailure(TransportError):
    """The server refused us, the sender (4.7.x / 5.7.x): pause sending and raise an alert."""
