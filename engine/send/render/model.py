"""What the renderer promises: the template context's names, and what comes out of it."""

from __future__ import annotations

from dataclasses import dataclass

# The language of an email whose contact has no usable locale (and of the fallback footer).
DEFAULT_LANG = "en"
# What the engine puts in every template's context (the contract); anything else is a typo.
CONTEXT_NAMES = frozenset(
    {"contact", "sender", "sequence", "step", "lang", "dir", "links", "referral", "reward"}
)
# What the text of a note to the team (a notify step) may use.
NOTE_CONTEXT_NAMES = frozenset({"contact", "sender", "sequence", "step", "nps", "event"})


@dataclass(frozen=True, slots=True)
class Rendered:
    """One recipient's email content, and its one-click unsubscribe URL (List-Unsubscribe)."""

    subject: str
    html: str
    text: str
    unsubscribe_url: str


@dataclass(frozen=True, slots=True)
class TemplateProblem:
    """A template problem located in a file; ``str()`` is ``path:line:col: message``."""

    path: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}: {self.message}"
