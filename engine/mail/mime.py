"""The one MIME builder: an OutgoingEmail -> the exact bytes handed to SMTP.

Bytes are assembled directly (no email.message objects: they cost ~1-3 ms per message), using
binascii's C encoders (bytes methods and one regex for quoted-printable ASCII). Every header
value passes through ``clean_header_text`` or ``check_address`` first, so no input can add a
header line or a recipient.

Output: multipart/alternative (text/plain, then text/html), UTF-8 bodies as they are (7bit)
when ASCII in lines of at most 998 octets, else quoted-printable (base64 when the text is
mostly non-ASCII), CRLF line endings, header lines folded to <= 78 characters where the
content allows (never above 998), RFC 2047 encoded-words for non-ASCII display names and
subjects (a display name stays one token: see ``_address_header``).
"""

from __future__ import annotations

import binascii
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from functools import lru_cache

# RFC 5322 recommends 78 characters per header line; RFC 2047 limits lines that carry
# encoded-words to 76, so encoded-words are laid out against the stricter limit.
HEADER_LINE = 78
ENCODED_LINE = 76
QP_LINE = 76  # RFC 2045: encoded lines of at most 76 characters, a soft break's "=" included
MAX_LINE = 998
MAX_LOCAL_PART = 64
MAX_ADDRESS = 254

_ATEXT = r"\-A-Za-z0-9!#$%&'*+/=?^_`{|}~"
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN_RE = re.compile(rf"(?=.{{1,253}}$)(?:{_LABEL}\.)+{_LABEL}")
_ADDRESS_RE = re.compile(rf"([{_ATEXT}]+(?:\.[{_ATEXT}]+)*)@([A-Za-z0-9.-]+)")
_LOCAL_RE = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*")
_ATOMS_RE = re.compile(rf"[{_ATEXT}]+(?: [{_ATEXT}]+)*")
_MSG_ID_RE = re.compile(rf"<[{_ATEXT}.]+@[{_ATEXT}.\[\]]+>")
# Printable ASCII without space, '<', '>', '"' or ',' (they would end the <...> list item).
_URI_RE = re.compile(r"[!#-+\--;=?-~]+")
_CONTROL_RUN = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_HIGH_BYTES = bytes(range(128, 256))
# Bytes quoted-printable writes as they are, "=" aside; LF is the line end.
_QP_PLAIN = bytes([9, 10, *range(32, 127)])
_QP_BLANKS = {ord(" "): b"=20", ord("\t"): b"=09"}
# The longest piece of an escaped line that fits before a soft break ("=") and does not end
# inside an "=XX" escape: its last two characters are not "=".
_QP_PIECE = re.compile(rb".{1,%d}[^=]{2}|.+" % (QP_LINE - 3))


@dataclass(frozen=True, slots=True)
class OutgoingEmail:
    """Everything one email needs; fixed when the outbox row is written."""

    message_id: str  # "<...@domain>" fixed at planning time
    from_name: str
    from_email: str
    reply_to: str
    to_name: str
    to_email: str
    subject: str
    html: str
    text: str
    date: datetime  # timezone-aware
    list_unsubscribe_url: str  # one-click URL (RFC 8058); ignored for a note
    list_unsubscribe_mailto: str = ""  # optional extra mailto:
    feedback_id: str = ""  # "<step>:<sequence>:<category>:<sender>"
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    # A note to the team (engine.outbound.notes): text/plain only, no List-Unsubscribe (not
    # bulk mail).
    note: bool = False


def clean_header_text(value: str) -> str:
    """Make text safe for one header line: each run of control characters becomes one space.

    CR, LF, NUL, U+2028/U+2029 and every other C0/C1 control (tab included) count, then the
    result is stripped. ``clean_header_text("Hi\\r\\nBcc: x")`` -> ``"Hi Bcc: x"``.
    """
    if value.isprintable():
        return value.strip()
    return _CONTROL_RUN.sub(" ", value).strip()


def check_address(address: str) -> str:
    """Return ``address`` as a normalized bare addr-spec, or raise ValueError naming the problem.

    Accepts only ``local@domain``: no display name, angle brackets, comments, quoted local
    parts, commas, whitespace or control characters; an ASCII local part of at most 64
    characters; a domain of at least two labels, lower-cased, IDNA (punycode) when non-ASCII.
    ``check_address(" Ann@Example.COM ")`` -> ``"Ann@example.com"``.
    """
    value = address.strip(" \t")  # only blanks: a trailing line break is an error, not padding
    match = _ADDRESS_RE.fullmatch(value)
    if match is not None and len(value) <= MAX_ADDRESS and len(match[1]) <= MAX_LOCAL_PART:
        domain = match[2].lower()
        if _DOMAIN_RE.fullmatch(domain):
            return f"{match[1]}@{domain}"
    return _address_problem(value)


def _address_problem(value: str) -> str:
    """The slow path of check_address: normalize an IDN domain or name what is wrong."""
    if not value:
        raise ValueError("address is empty")
    if "\r" in value or "\n" in value:
        raise ValueError(f"address {value!r} contains a line break")
    if "\0" in value:
        raise ValueError(f"address {value!r} contains a NUL character")
    if "\u2028" in value or "\u2029" in value or "\x85" in value:
        raise ValueError(f"address {value!r} contains a Unicode line separator")
    if not value.isprintable() and _CONTROL_RUN.search(value):
        raise ValueError(f"address {value!r} contains a control character")
    if "<" in value or ">" in value:
        raise ValueError(
            f"address {value!r} has angle brackets: give a bare address, without a display name"
        )
    if "," in value or ";" in value:
        raise ValueError(f"address {value!r} contains a comma or semicolon: one address only")
    if any(c.isspace() for c in value):
        raise ValueError(f"address {value!r} contains whitespace")
    if value.count("@") != 1:
        raise ValueError(f"address {value!r} must contain exactly one @")
    local, domain = value.split("@")
    if not local:
        raise ValueError(f"address {value!r} has an empty local part")
    if not local.isascii():
        raise ValueError(f"address {value!r} has a non-ASCII local part (SMTPUTF8 unsupported)")
    if not _LOCAL_RE.fullmatch(local):
        if local.startswith(".") or local.endswith(".") or ".." in local:
            raise ValueError(f"address {value!r} has a misplaced dot in its local part")
        bad = sorted({c for c in local if not re.match(rf"[{_ATEXT}.]", c)})
        raise ValueError(f"address {value!r} has characters not allowed in a local part: {bad}")
    if len(local) > MAX_LOCAL_PART:
        raise ValueError(f"address {value!r} has a local part longer than {MAX_LOCAL_PART}")
    if not domain:
        raise ValueError(f"address {value!r} has an empty domain")
    try:
        ascii_domain = domain.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise ValueError(f"address {value!r} has an invalid domain {domain!r}") from None
    if "." not in ascii_domain:
        raise ValueError(f"address {value!r} has a domain without a dot")
    if not _DOMAIN_RE.fullmatch(ascii_domain):
        raise ValueError(f"address {value!r} has an invalid domain {domain!r}")
    normalized = f"{local}@{ascii_domain}"
    if len(normalized) > MAX_ADDRESS:
        raise ValueError(f"address {value!r} is longer than {MAX_ADDRESS} characters")
    return normalized


def make_message_id(domain: str) -> str:
    """A new random, globally unique Message-ID for ``domain``: ``"<32 hex digits@domain>"``."""
    host = check_address(f"id@{domain}").partition("@")[2]
    return f"<{secrets.token_hex(16)}@{host}>"


def build_message(email: OutgoingEmail) -> bytes:
    """Serialize ``email`` to RFC 5322 / MIME bytes with CRLF line endings, ready for DATA.

    Names and the subject go through ``clean_header_text`` (display names also get runs of
    whitespace collapsed). Raises ValueError for an invalid address, Message-ID, unsubscribe URI,
    Feedback-ID or a naive date; never emits an extra header or recipient whatever the names
    and subject hold.
    """
    sender, reply_to = _sender_headers(email.from_name, email.from_email, email.reply_to)
    to_email = check_address(email.to_email)
    boundary = f"=_{secrets.token_hex(12)}"  # "=_" cannot occur in QP or base64 output
    lines = [sender, _address_header("To", _display_name(email.to_name), to_email)]
    if reply_to:
        lines.append(reply_to)
    lines.append(_subject_header(clean_header_text(email.subject)))
    lines.append(f"Date: {_format_date(email.date)}")
    lines.append(f"Message-ID: {_check_message_id(email.message_id)}")
    if email.in_reply_to:
        lines.append(f"In-Reply-To: {_check_message_id(email.in_reply_to)}")
    if email.references:
        lines.append(_fold_list("References: ", [_check_message_id(r) for r in email.references]))
    if not email.note:
        lines.append(_unsubscribe_header(email.list_unsubscribe_url, email.list_unsubscribe_mailto))
        lines.append("List-Unsubscribe-Post: List-Unsubscribe=One-Click")
    if email.feedback_id:
        lines.append(f"Feedback-ID: {_check_feedback_id(email.feedback_id)}")
    lines.append("MIME-Version: 1.0")
    if email.note:
        return b"\r\n".join(
            ("\r\n".join(lines).encode("ascii"), b"".join(_text_part("text/plain", email.text)))
        )
    lines.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
    head = "\r\n".join(lines).encode("ascii")
    delimiter = b"\r\n--" + boundary.encode("ascii")
    return b"".join(
        (
            head,
            b"\r\n\r\nThis is a multi-part message in MIME format.",
            delimiter,
            b"\r\n",
            *_text_part("text/plain", email.text),
            delimiter,
            b"\r\n",
            *_text_part("text/html", email.html),
            delimiter,
            b"--\r\n",
        )
    )


@lru_cache(maxsize=64)
def _sender_headers(from_name: str, from_email: str, reply_to: str) -> tuple[str, str]:
    """The From line and the Reply-To line ("" without one): the same for every email a sender
    sends, so built once (ValueError, never cached, for an invalid address)."""
    sender = _address_header("From", _display_name(from_name), check_address(from_email))
    if not reply_to.strip():
        return sender, ""
    return sender, f"Reply-To: {check_address(reply_to)}"


def _text_part(content_type: str, text: str) -> tuple[bytes, bytes]:
    """One UTF-8 body part: its headers and its body (joined by the caller, one copy of the
    body less): 7bit (as it is) when it is ASCII in lines of at most 998 octets, else QP, or
    base64 when that is shorter (mostly non-ASCII)."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    data = text.encode("utf-8")
    # str.isascii reads a flag of the string; bytes.isascii reads every byte.
    if text.isascii() and "\0" not in text and _short_lines(data):
        # Most English emails: nothing to encode, and every relay passes 7bit unchanged
        # (a line starting with "." is the SMTP layer's to stuff, see transport.wire_data).
        body = data.replace(b"\n", b"\r\n")
        encoding = b"7bit"
    # Quoted-printable spends 3 octets per non-ASCII byte, base64 4/3 per byte: past roughly
    # one non-ASCII byte in six base64 is smaller (Arabic text, for one).
    elif (len(data) - len(data.translate(None, _HIGH_BYTES))) * 6 > len(data):
        encoded = binascii.b2a_base64(data.replace(b"\n", b"\r\n"), newline=False)
        body = b"\r\n".join([encoded[i : i + 76] for i in range(0, len(encoded), 76)])
        encoding = b"base64"
    else:
        body = _quoted_printable(data)
        encoding = b"quoted-printable"
    head = b"".join(
        (
            b"Content-Type: ",
            content_type.encode("ascii"),
            b'; charset="utf-8"\r\nContent-Transfer-Encoding: ',
            encoding,
            b"\r\n\r\n",
        )
    )
    return head, body


def _short_lines(data: bytes) -> bool:
    """True when no line of ``data`` (LF line ends) is longer than MAX_LINE octets.

    Jumps from the last line end in each MAX_LINE + 1 window to the next: a few steps for a
    20 kB email, where splitting it into lines costs ten times more.
    """
    pos = 0
    last = len(data) - MAX_LINE  # a line starting before this may be too long
    rfind = data.rfind
    while pos < last:
        end = rfind(b"\n", pos, pos + MAX_LINE + 1)
        if end < 0:
            return False
        pos = end + 1
    return True


def _quoted_printable(data: bytes) -> bytes:
    """``data`` (LF line ends) as quoted-printable with CRLF line ends and lines <= 76.

    Printable ASCII, the common case (English HTML), takes a fast path: "=" escaped in one
    replace and each long line cut by one regex, never inside an "=XX". binascii.b2a_qp (C, yet
    byte by byte: twice as slow on MJML's long lines) encodes anything else. Both escape a
    blank ending a line and a line holding a lone dot.
    """
    if data.translate(None, _QP_PLAIN):
        # Encoded with LF line ends, then split: b2a_qp picks the style of its soft line
        # breaks from the input's first line end, so text without any would get bare LFs.
        lines = binascii.b2a_qp(data, quotetabs=False, istext=True, header=False).split(b"\n")
    else:
        lines = data.replace(b"=", b"=3D").split(b"\n")
        for i, line in enumerate(lines):
            if line and line[-1] in _QP_BLANKS:  # a decoder would drop a blank ending a line
                lines[i] = line[:-1] + _QP_BLANKS[line[-1]]
            elif line == b".":
                lines[i] = b"=2E"
    # Cut here, for both: b2a_qp lets an escaped blank take a full line to 77 characters.
    return b"\r\n".join(
        [line if len(line) <= QP_LINE else b"=\r\n".join(_QP_PIECE.findall(line)) for line in lines]
    )


def _encoded_words(text: str, first_room: int, room: int = ENCODED_LINE - 1) -> str:
    """``text`` as folded RFC 2047 B encoded-words, the first within ``first_room`` characters
    and the others within ``room`` (continuation lines start with one space).

    Each word carries whole UTF-8 characters (a multi-byte character is never split);
    decoders drop the folding whitespace between adjacent words.
    """
    data = text.encode("utf-8")
    words: list[str] = []
    start = 0
    limit = first_room
    while start < len(data):
        # 12 characters of "=?UTF-8?B?" + "?=" overhead; 4 base64 characters per 3 bytes
        end = min(len(data), start + max(4, (limit - 12) // 4 * 3))
        while end < len(data) and data[end] & 0xC0 == 0x80:  # inside a UTF-8 sequence
            end -= 1
        words.append(f"=?UTF-8?B?{binascii.b2a_base64(data[start:end], newline=False).decode()}?=")
        start = end
        limit = room
    return "\r\n ".join(words)


def _needs_encoding(text: str) -> bool:
    """True when ``text`` cannot appear literally: non-ASCII, or it looks like an encoded-word."""
    return not text.isascii() or "=?" in text


def _display_name(value: str) -> str:
    """A cleaned display name with each run of whitespace made one space: parsers reading an
    encoded-word in a phrase (the stdlib's, for one) collapse them anyway."""
    return " ".join(clean_header_text(value).split())


def _address_header(name: str, display: str, address: str) -> str:
    """``Name: display <address>``, quoting or encoding the display name as it requires.

    A display name is one token (atoms, a quoted-string or a single encoded-word) on one line,
    even past 78 characters: between adjacent encoded-words RFC 2047 decoders drop the space
    while the stdlib address parser keeps one, so any split would change the name for one of
    them. Only a name too long for a 998-octet line is split into several encoded-words.
    """
    prefix = f"{name}: "
    if not display:
        return prefix + address
    if _needs_encoding(display):
        phrase = _encoded_words(display, MAX_LINE - 1, MAX_LINE - 1)
    elif _ATOMS_RE.fullmatch(display):
        phrase = display
    else:
        phrase = _quote(display)
    if len(phrase) > MAX_LINE - 1:  # a quoted-string too long even for a line of its own
        phrase = _encoded_words(display, MAX_LINE - 1, MAX_LINE - 1)
    if len(prefix) + len(phrase) > HEADER_LINE:
        prefix = f"{name}:\r\n "
    head = prefix + phrase
    last_line = len(head) - head.rfind("\n") - 1
    separator = "\r\n " if last_line + len(address) + 3 > HEADER_LINE else " "
    return f"{head}{separator}<{address}>"


def _quote(text: str) -> str:
    """An RFC 5322 quoted-string: ``Doe, John "JD"`` -> ``"Doe, John \\"JD\\""``."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _subject_header(subject: str) -> str:
    """The Subject line: folded at spaces when ASCII, encoded-words otherwise."""
    prefix = "Subject: "
    if len(prefix) + len(subject) <= HEADER_LINE and not _needs_encoding(subject):
        return prefix + subject
    words = subject.split(" ")
    if _needs_encoding(subject) or max(map(len, words)) > HEADER_LINE - len(prefix):
        return prefix + _encoded_words(subject, ENCODED_LINE - len(prefix))
    out = [prefix + words[0]]
    width = len(out[0])
    for word in words[1:]:
        # Fold only before a non-empty word: a continuation line must not be blank.
        if word and width + 1 + len(word) > HEADER_LINE:
            out.append("\r\n " + word)
            width = 1 + len(word)
        else:
            out.append(" " + word)
            width += 1 + len(word)
    return "".join(out)


def _fold_list(prefix: str, items: list[str], separator: str = "") -> str:
    """Join header items with ``separator`` + space, folding between items past HEADER_LINE."""
    out = prefix + items[0]
    if len(out) > HEADER_LINE:  # a long first item (a URL) goes on a line of its own
        out = f"{prefix.rstrip()}\r\n {items[0]}"
    width = len(out) - out.rfind("\n") - 1
    for item in items[1:]:
        if width + len(separator) + 1 + len(item) > HEADER_LINE:
            out += f"{separator}\r\n {item}"
            width = 1 + len(item)
        else:
            out += f"{separator} {item}"
            width += len(separator) + 1 + len(item)
    return out


def _format_date(date: datetime) -> str:
    offset = date.utcoffset()  # None for a naive datetime
    if offset is None:
        raise ValueError("email date must be timezone-aware")
    return _date_header(
        date.year, date.month, date.day, date.hour, date.minute, date.second, offset
    )


@lru_cache(maxsize=8)
def _date_header(
    year: int, month: int, day: int, hour: int, minute: int, second: int, offset: timedelta
) -> str:
    # Emails sent in the same second share the text (format_datetime costs ~5 us). The key is
    # the wall clock and its offset, which is all the header shows (hashing an aware datetime
    # costs as much as formatting it; and two of one instant are equal whatever their zone).
    return format_datetime(
        datetime(year, month, day, hour, minute, second, tzinfo=timezone(offset))
    )


def _check_message_id(value: str) -> str:
    value = value.strip()
    if not _MSG_ID_RE.fullmatch(value):
        raise ValueError(f"invalid Message-ID {value!r}: expected <left@right> in plain ASCII")
    return value


def _unsubscribe_header(url: str, mailto: str) -> str:
    """List-Unsubscribe with the one-click URL first, then an optional mailto: (RFC 2369/8058)."""
    url = url.strip()
    if not url.startswith(("https://", "http://")) or not _URI_RE.fullmatch(url):
        raise ValueError(f"invalid List-Unsubscribe URL {url!r}: expected an http(s) URL")
    items = [f"<{url}>"]
    mailto = mailto.strip()
    if mailto:
        if not mailto.startswith("mailto:") or not _URI_RE.fullmatch(mailto):
            raise ValueError(f"invalid List-Unsubscribe mailto {mailto!r}")
        items.append(f"<{mailto}>")
    return _fold_list("List-Unsubscribe: ", items, ",")


def _check_feedback_id(value: str) -> str:
    value = clean_header_text(value)
    if not value.isascii() or " " in value:
        raise ValueError(f"invalid Feedback-ID {value!r}: expected ASCII fields without spaces")
    return value
