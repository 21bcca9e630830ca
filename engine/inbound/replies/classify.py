"""What an incoming email is: a reply, a "not interested", an auto-reply, a bounce, a spam
complaint, or none of our business. Pure: an ``Incoming`` and the ``Rules`` in, a ``Verdict``
out.

Order matters: a spam complaint (an ARF report) first, then a bounce (bounces carry
Auto-Submitted too), then an auto-reply, then a person's reply. A delivery failure is rated by
``engine.mail.smtp.classify``, the one place SMTP codes become hard / soft / policy: a DSN's
Status and Diagnostic-Code, or the code a non-standard bounce quotes, are handed to it as the
server's reply would have been.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Literal

from engine.base.errors import PermanentFailure, PolicyFailure
from engine.inbound.replies.dates import find_return_date
from engine.inbound.replies.parse import Incoming
from engine.inbound.replies.phrases import Match, Phrases, normalize
from engine.mail.mime import check_address
from engine.mail.smtp import classify as classify_smtp

Kind = Literal[
    "reply", "not_interested", "auto_reply", "bounce", "complaint", "ignored", "unreadable"
]
Severity = Literal["hard", "soft", "policy"]

# Where a bounce's explanation ends and the returned message begins.
_RETURNED = re.compile(
    r"^\s*-{2,}.*(?:original message|copy of the message|below this line|undelivered message|"
    r"message follows)|^\s*(?:original message headers:|received: from |message-id:)",
    re.IGNORECASE | re.MULTILINE,
)
_DAEMON = re.compile(
    r"^(?:mailer-daemon|postmaster|mail-daemon|mailerdaemon|bounces?|noreply-dmarc)@",
    re.IGNORECASE,
)
_DAEMON_NAMES = re.compile(
    r"mail delivery (?:system|subsystem)|mailer-daemon|postmaster|microsoft outlook",
    re.IGNORECASE,
)
# Wording in a bounce's explanation that says a delivery failed.
_BOUNCE_WORDS = re.compile(
    r"could not be delivered|couldn't be delivered|wasn't delivered|was not delivered|"
    r"delivery (?:has )?failed|permanent(?:ly)? (?:error|failure|fatal)|failed permanently|"
    r"undeliverable|not be delivered|delivery to the following recipients? failed|"
    r"the following addresses? (?:had|failed)|unable to deliver|user unknown|"
    r"address not found|does not exist|no such user|mailbox unavailable|mailbox is full|"
    r"over quota|has not yet been delivered|delivery is delayed|delayed",
    re.IGNORECASE,
)
_NOT_FOUND = re.compile(
    r"address not found|couldn't be found|could not be found|does not exist|doesn't exist|"
    r"no such (?:user|mailbox|recipient)|user unknown|unknown user|invalid recipient|"
    r"recipient (?:address )?rejected: (?:user unknown|unknown)|mailbox not found",
    re.IGNORECASE,
)
_TEMPORARY = re.compile(
    r"temporar(?:y|ily)|will (?:be )?retr|delayed|has not yet been delivered|still trying|"
    r"mailbox (?:is )?full|over quota|quota exceeded",
    re.IGNORECASE,
)
_SMTP_CODE = re.compile(r"(?<![\w.#-])#?([45][0-5]\d)(?=[ -]|$)", re.MULTILINE)
_ENHANCED = re.compile(r"(?<![\d.])([45])\.\d{1,3}\.\d{1,3}(?![\d.])")
_ADDRESS = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)+", re.UNICODE)
_NAMED_ADDRESS = re.compile(
    r"(?P<name>[^\n<>,;:()\"]{0,60}?)\s*[<(\[]\s*(?:mailto:)?(?P<addr>[^<>\s()\[\]]+@[^<>\s()\[\]]+)"
    r"\s*[>)\]]|(?P<bare>[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)+)"
)
_SENTENCE_END = re.compile(r"[.!?](?:\s|$)|\n\s*\n")
_SUBJECT_PREFIX = re.compile(r"^(?:\s*(?:re|fwd?|aw|wg|tr|rv|sv|vs|balas|رد)\s*:\s*)+", re.I)
_PUNCTUATION = re.compile(r"[^\w\s']+")
# How much of a reply's own text is searched for "not interested" phrases and cues.
NEW_TEXT_LIMIT = 4000


@dataclass(frozen=True)
class Rules:
    """Everything classification depends on besides the email itself."""

    phrases: Phrases
    own_addresses: frozenset[str]  # ours: sender, reply-to, the mailbox, the team
    own_domains: frozenset[str]


@dataclass(frozen=True)
class Bounce:
    """One failed (or delayed) recipient of one of our emails."""

    recipient: str  # lower case; "" when the bounce does not say
    severity: Severity
    status: str  # enhanced status code when known ("5.1.1"), else ""
    diagnostic: str  # the server's words, at most 500 characters


@dataclass(frozen=True)
class Introduction:
    """Someone a reply introduces: a new address in Cc, or "meet X <x@...>" in the text."""

    email: str
    name: str | None


@dataclass(frozen=True)
class Verdict:
    """What an email is, why, and what classification found in it."""

    kind: Kind
    why: str
    reply_text: str = ""  # a reply's own text, quoted history and signature cut
    match: Match | None = None  # the "not interested" phrase, or the auto-reply subject
    return_date: date | None = None
    bounces: tuple[Bounce, ...] = ()
    introductions: tuple[Introduction, ...] = ()


def classify_message(msg: Incoming, rules: Rules, now: datetime) -> Verdict:
    """Classify ``msg`` received at ``now`` (see the module docstring for the order of checks)."""
    if not msg.readable:
        return Verdict("unreadable", f"no header fields ({', '.join(msg.defects) or 'empty'})")
    if msg.from_addr and msg.from_addr in rules.own_addresses:
        return Verdict("ignored", f"sent by us ({msg.from_addr})")
    if msg.feedback is not None or msg.report_type == "feedback-report":
        return _complaint(msg)
    if msg.report_type == "disposition-notification":
        return Verdict("ignored", "a read receipt")
    bounce = _bounce(msg, rules)
    if bounce is not None:
        return bounce
    auto = _auto_reply(msg, rules.phrases)
    if auto is not None:
        reason, match = auto
        # Dates without a year count from the day it was written; a Date header far from
        # now (a wrong clock, a spoofed header) is not trusted for that.
        sent = msg.date if msg.date and abs(msg.date - now) < timedelta(days=30) else now
        written = sent.date()
        returns = find_return_date(f"{msg.subject}\n{msg.text}", written, rules.phrases)
        return Verdict("auto_reply", reason, match=match, return_date=returns)
    if not msg.from_addr:
        return Verdict("ignored", "no sender address")
    own_text = reply_text(msg.text, rules.phrases)
    introductions = _introductions(msg, own_text, rules)
    if introductions:
        names = ", ".join(i.email for i in introductions)
        return Verdict("reply", f"introduces {names}", own_text, introductions=introductions)
    said = _not_interested(msg, own_text, rules.phrases)
    if said is not None:
        return Verdict("not_interested", f"said {said.phrase!r}", own_text, match=said)
    return Verdict("reply", "a person's reply", own_text)


# -- spam complaints ---------------------------------------------------------------------------

# Feedback types (RFC 5965, RFC 6650) saying the recipient did not want our email. "not-spam"
# takes a verdict back and "auth-failure" is about our signatures: neither is a complaint.
COMPLAINT_TYPES = frozenset({"abuse", "fraud", "virus", "other"})


def _complaint(msg: Incoming) -> Verdict:
    """A feedback-loop report (ARF): a complaint unless its type says otherwise. A report
    without a readable Feedback-Type is taken as the abuse report feedback loops send."""
    report = msg.feedback
    kind = report.type if report is not None and report.type else "abuse"
    reporter = (report.reporter if report is not None else "") or msg.from_addr or "unknown"
    if kind not in COMPLAINT_TYPES:
        return Verdict("ignored", f"a {kind} feedback report from {reporter}")
    return Verdict("complaint", f"marked as spam ({kind} report from {reporter})")


# -- bounces ---------------------------------------------------------------------------------


def severity(status: str, diagnostic: str, *, delayed: bool = False) -> Severity:
    """Rate a delivery failure the way an SMTP reply with these words would be rated.

    ``severity("5.1.1", "550 5.1.1 User unknown")`` -> ``"hard"``; a delay is always soft.
    """
    if delayed:
        return "soft"
    codes = _SMTP_CODE.findall(diagnostic)
    if codes:
        code = int(codes[0])
    elif status[:1] in ("4", "5"):
        code = 450 if status.startswith("4") else 550
    else:
        code = 550
    error = classify_smtp(code, f"{status} {diagnostic}".strip())
    if isinstance(error, PolicyFailure):
        return "policy"
    if isinstance(error, PermanentFailure) and error.hard_bounce:
        return "hard"
    return "soft"


def _looks_like_bounce(msg: Incoming, phrases: Phrases) -> bool:
    """A bounce in prose: sent by a machine (a daemon address or name, an empty Return-Path,
    X-Failed-Recipients, Exchange's NDR mark, Auto-Submitted) with a bounce subject or bounce
    wording. A person writing "the delivery failed" is not a machine."""
    headers = msg.headers
    submitted = headers.get("auto-submitted", "").strip().lower()
    machine = (
        bool(_DAEMON.match(msg.from_addr))
        or bool(_DAEMON_NAMES.search(msg.from_name))
        or headers.get("return-path", "-").strip() in ("<>", "")
        or "x-failed-recipients" in headers
        or "x-ms-exchange-message-is-ndr" in headers
        or bool(submitted and not submitted.startswith("no"))
    )
    if not machine:
        return False
    if phrases.bounce_subjects.search(normalize(msg.subject)) is not None:
        return True
    return _BOUNCE_WORDS.search(_explanation(msg.text)) is not None


def _explanation(text: str) -> str:
    """A bounce's own words, without the returned message that often follows them."""
    cut = _RETURNED.search(text)
    return text[: cut.start()] if cut else text[:5000]


def _bounce(msg: Incoming, rules: Rules) -> Verdict | None:
    is_dsn = bool(msg.delivery) or msg.report_type == "delivery-status"
    if not is_dsn and not _looks_like_bounce(msg, rules.phrases):
        return None
    if msg.delivery:
        failures = [
            Bounce(
                d.recipient,
                severity(d.status, d.diagnostic, delayed=d.action == "delayed"),
                d.status,
                d.diagnostic[:500],
            )
            for d in msg.delivery
            if d.action in ("failed", "delayed", "")
        ]
        if not failures:
            actions = ", ".join(sorted({d.action for d in msg.delivery}))
            return Verdict("ignored", f"delivery report without a failure ({actions})")
        kinds = ", ".join(f"{b.recipient or '?'} {b.severity} {b.status}" for b in failures)
        return Verdict("bounce", f"DSN: {kinds}", bounces=tuple(failures))
    return _text_bounce(msg, rules)


def _text_bounce(msg: Incoming, rules: Rules) -> Verdict:
    """A bounce in prose (Exim, qmail, Postfix, Gmail and Outlook wording): who failed and
    the first status code it quotes."""
    explanation = _explanation(msg.text)
    recipients = [_address(x) for x in msg.headers.get("x-failed-recipients", "").split(",")]
    if not any(recipients):
        recipients = [_address(m[0]) for m in _ADDRESS.finditer(explanation)]
    skip = rules.own_addresses | {msg.from_addr}
    found = list(
        dict.fromkeys(a for a in recipients if a and a not in skip and not _DAEMON.match(a))
    )
    if not found and msg.original_to:
        found = [a for a in msg.original_to if a not in skip]
    code = _SMTP_CODE.search(explanation)
    enhanced = _ENHANCED.search(explanation)
    start = min((m.start() for m in (code, enhanced) if m is not None), default=0)
    diagnostic = " ".join(explanation[start : start + 500].split())
    status = enhanced[0] if enhanced else ""
    rated: Severity
    if code is None and enhanced is None:
        # No code at all: the wording decides (transport.classify needs a code to work on).
        rated = "hard" if _NOT_FOUND.search(explanation) else "soft"
    else:
        rated = severity(status, diagnostic, delayed=_TEMPORARY.search(explanation) is not None)
    bounces = tuple(Bounce(r, rated, status, diagnostic) for r in found) or (
        Bounce("", rated, status, diagnostic),
    )
    return Verdict("bounce", f"bounce text: {rated} {status}".strip(), bounces=bounces)


# -- auto-replies ----------------------------------------------------------------------------


def _auto_reply(msg: Incoming, phrases: Phrases) -> tuple[str, Match | None] | None:
    """Why ``msg`` is an automatic reply (RFC 3834 and de facto headers, or its subject)."""
    headers = msg.headers
    submitted = headers.get("auto-submitted", "").strip().lower()
    if submitted and not submitted.startswith("no"):
        return f"Auto-Submitted: {submitted}", None
    for name in ("x-autoreply", "x-autorespond", "x-autogenerated"):
        value = headers.get(name)
        if value is not None and value.strip().lower() not in ("no", "false", "0"):
            return f"{name}: {value.strip()}", None
    precedence = headers.get("precedence", "").strip().lower()
    if precedence in ("auto_reply", "bulk", "junk"):
        return f"Precedence: {precedence}", None
    match = phrases.auto_reply_subjects.search(normalize(msg.subject))
    if match is not None:
        return f"subject says {match.phrase!r}", match
    return None


# -- replies ---------------------------------------------------------------------------------


def reply_text(text: str, phrases: Phrases) -> str:
    """The reply's own words: quoted lines, the quoted original ("On ... wrote:", "-----Original
    Message-----" and their translations) and the signature cut off."""
    lines = text[: NEW_TEXT_LIMIT * 4].splitlines()
    kept: list[str] = []
    for index, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith(">"):
            continue
        if stripped:
            rest = "\n".join([stripped, *(s.strip() for s in lines[index + 1 : index + 3])])
            if any(p.match(rest) for p in phrases.quote_markers):
                break
            if any(p.match(stripped) for p in phrases.signature_markers):
                break
        elif line.startswith("-- "):
            break
        kept.append(line.rstrip())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip()[:NEW_TEXT_LIMIT]


def _not_interested(msg: Incoming, own_text: str, phrases: Phrases) -> Match | None:
    normalized = normalize(own_text)
    found = phrases.not_interested.search(normalized)
    if found is not None:
        return found
    first_line = next((line for line in own_text.splitlines() if line.strip()), "")
    for candidate in (first_line, _SUBJECT_PREFIX.sub("", msg.subject)):
        bare = " ".join(_PUNCTUATION.sub(" ", normalize(candidate)).split())
        if bare and (alone := phrases.alone.exactly(bare)) is not None:
            return alone
    return None


def _address(text: str) -> str:
    try:
        return check_address(text.strip().strip("<>")).lower()
    except ValueError:
        return ""


def _introductions(msg: Incoming, own_text: str, rules: Rules) -> tuple[Introduction, ...]:
    """People the replier brings in: new addresses in Cc, and addresses in their own text
    right after an introduction cue ("meet", "kenalkan", "أعرفك على" ...)."""

    def foreign(address: str) -> bool:
        domain = address.rpartition("@")[2]
        return (
            bool(address)
            and address != msg.from_addr
            and address not in rules.own_addresses
            and domain not in rules.own_domains
            and not _DAEMON.match(address)
        )

    found: dict[str, str | None] = {}
    for name, address in msg.cc:
        if foreign(address):
            found.setdefault(address, name or None)
    normalized = normalize(own_text)
    cue_ends = rules.phrases.introduction_cues.ends(normalized)
    for m in _NAMED_ADDRESS.finditer(normalized) if cue_ends else ():
        at = m.start("addr") if m["addr"] else m.start("bare")
        cue = max((c for c in cue_ends if c <= at), default=None)
        # The cue must stand close before the address, in the same sentence.
        if cue is None or at - cue > 80 or _SENTENCE_END.search(normalized, cue, at):
            continue
        address = _address(m["addr"] or m["bare"])
        if not foreign(address):
            continue
        name = normalized[max(cue, m.start("name")) : m.end("name")] if m["addr"] else ""
        found.setdefault(address, _original_case(own_text, name.strip(" ,:-")) or None)
    return tuple(Introduction(a, n) for a, n in found.items())


def _original_case(text: str, normalized_name: str) -> str:
    """``normalized_name`` as the author wrote it (normalization lower-cased it)."""
    if not normalized_name:
        return ""
    pattern = r"\s+".join(re.escape(w) for w in normalized_name.split())
    found = re.search(pattern, text, re.IGNORECASE)
    return " ".join(found[0].split()) if found else normalized_name
