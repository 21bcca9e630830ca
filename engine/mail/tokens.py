"""HMAC-signed opaque tokens for tracking URLs, and the one place that builds those URLs.

A token is urlsafe base64 (no padding) of a compact binary payload plus a truncated MAC:

    version (1) | key id (4) | kind code + flags (1) | ref length (1) | ref
    | value (zigzag varint, when flagged) | url (UTF-8, rest of the payload, when flagged)
    | HMAC-SHA256(payload)[:16]

The key id (first 4 bytes of sha256(secret)) selects the key on verification, so rotating the
secret keeps older emails' links working as long as the old secret stays in ``old_secrets``.
Nothing in a token is readable as an email address or a sequential id: ``ref`` is a message's
random public id.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import string
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

VERSION = 1
MAC_SIZE = 16
KEY_ID_SIZE = 4
MAX_REF_SIZE = 64
MAX_URL_BYTES = 4096
# Longest possible token: header, longest ref, a 10-byte varint, longest URL, MAC; base64 is 4/3.
MAX_TOKEN_CHARS = (1 + KEY_ID_SIZE + 2 + MAX_REF_SIZE + 10 + MAX_URL_BYTES + MAC_SIZE) * 4 // 3 + 4
_MIN_RAW = 1 + KEY_ID_SIZE + 2 + 1 + MAC_SIZE

KINDS: dict[str, int] = {
    "open": 1,
    "click": 2,
    "unsubscribe": 3,
    "nps": 4,
    "form.intro": 5,
    "form.partner": 6,
    "form.testimonial": 7,
}
# /f/<name>/<token>: the form name in the path must match the token's kind.
FORM_KINDS: dict[str, str] = {
    "intro": "form.intro",
    "partner": "form.partner",
    "testimonial": "form.testimonial",
}
_KIND_NAMES = {code: name for name, code in KINDS.items()}
_NEEDS_URL = frozenset({"click"})
_NEEDS_VALUE = frozenset({"nps"})
_NEEDS = {"click": "a url", "nps": "a value"}
_HAS_VALUE = 0x40
_HAS_URL = 0x80
_FLAGS = {"click": _HAS_URL, "nps": _HAS_VALUE}
_CODE_MASK = 0x3F
_MAX_VALUE = 1 << 63
_BLOCK_SIZE = 64  # SHA-256's, for HMAC's padded key
_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))


@dataclass(frozen=True, slots=True)
class Token:
    """What a verified token says."""

    kind: str
    ref: bytes
    url: str | None
    value: int | None


def key_id(secret: str) -> bytes:
    """The 4-byte key id of a secret: ``sha256(secret)[:4]``."""
    return hashlib.sha256(secret.encode("utf-8")).digest()[:KEY_ID_SIZE]


_URLSAFE = bytes.maketrans(b"+/", b"-_")
# Decoding maps our alphabet back to the standard one; "+", "/" and "=", which no token of ours
# contains, become "*", which strict decoding refuses like every other stray character.
_FROM_URLSAFE = bytes.maketrans(b"-_+/=", b"+/***")
_ALPHABET = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
# Without padding, a length of 2 or 3 (mod 4) leaves 4 or 2 low bits of the last character
# unused; the canonical encoding keeps them zero, so only every 16th or 4th character can end it.
_LAST_CHARS = {2: frozenset(_ALPHABET[::16]), 3: frozenset(_ALPHABET[::4])}
_PADDING = {0: b"", 2: b"==", 3: b"="}


def _b64(raw: bytes) -> str:
    return binascii.b2a_base64(raw, newline=False).translate(_URLSAFE).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes | None:
    """The bytes ``text`` encodes when it is exactly what ``_b64`` makes of them (urlsafe
    alphabet, no padding, zero unused bits), else None: one string per token, never two.

    >>> _unb64("AQI"), _unb64("AQJ"), _unb64("AQI="), _unb64("A+I"), _unb64("AQIDB")
    (b'\\x01\\x02', None, None, None, None)
    """
    rem = len(text) % 4
    if rem == 1 or (rem and text[-1] not in _LAST_CHARS[rem]):
        return None
    try:
        data = text.encode("ascii").translate(_FROM_URLSAFE) + _PADDING[rem]
        return binascii.a2b_base64(data, strict_mode=True)
    except (UnicodeEncodeError, binascii.Error):
        return None


class _Mac:
    """HMAC-SHA256 with one key, its two padded-key states hashed once (RFC 2104).

    Copying hashlib states per token is about twice as fast as copying an ``hmac.HMAC``.
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > _BLOCK_SIZE:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_BLOCK_SIZE, b"\0")
        self._inner = hashlib.sha256(key.translate(_IPAD))
        self._outer = hashlib.sha256(key.translate(_OPAD))

    def digest(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


def _zigzag(value: int) -> bytes:
    n = value * 2 if value >= 0 else -value * 2 - 1
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _unzigzag(raw: bytes, pos: int, end: int) -> tuple[int, int] | None:
    """Decode a varint at ``pos``; None when truncated or longer than 10 bytes."""
    n = shift = 0
    for i in range(pos, min(end, pos + 10)):
        byte = raw[i]
        n |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (n >> 1) ^ -(n & 1), i + 1
        shift += 7
    return None


class Signer:
    """Signs and verifies tokens with ``secret``; ``old_secrets`` still verify (rotation)."""

    def __init__(self, secret: str, old_secrets: Sequence[str] = ()) -> None:
        if not secret:
            raise ValueError("the token secret must not be empty")
        self._key_id = key_id(secret)
        # A keyed MAC state per key: copying it per token skips the key schedule.
        self._macs: dict[bytes, _Mac] = {}
        for s in (*old_secrets, secret):  # the current secret wins a (2^-32) key id clash
            if s:
                self._macs[key_id(s)] = _Mac(s.encode("utf-8"))
        self._mac = self._macs[self._key_id]
        # version | key id | kind byte, per kind: the hot path only appends ref, value and url.
        self._heads = {
            kind: bytes((VERSION,)) + self._key_id + bytes((code | _FLAGS.get(kind, 0),))
            for kind, code in KINDS.items()
        }
        # Kinds whose tokens carry a ref alone: their kind byte, which has no flags.
        self._plain = {kind: code for kind, code in KINDS.items() if kind not in _FLAGS}

    def sign(
        self, kind: str, ref: bytes, *, url: str | None = None, value: int | None = None
    ) -> str:
        """A token for ``kind`` about message ``ref``; ``url`` and ``value`` are covered by the MAC.

        ``click`` needs ``url``, ``nps`` needs ``value``; other kinds take neither.
        """
        head = self._heads.get(kind)
        if head is None:
            raise ValueError(f"unknown token kind {kind!r}")
        if (url is None) == (kind in _NEEDS_URL) or (value is None) == (kind in _NEEDS_VALUE):
            needs = _NEEDS.get(kind, "neither url nor value")
            raise ValueError(f"{kind!r} tokens take {needs}")
        if not 0 < len(ref) <= MAX_REF_SIZE:
            raise ValueError(f"ref must be 1..{MAX_REF_SIZE} bytes")
        payload = head + bytes((len(ref),)) + ref
        if value is not None:
            if not -_MAX_VALUE <= value < _MAX_VALUE:
                raise ValueError("value out of the 64-bit range")
            payload += _zigzag(value)
        if url is not None:
            encoded = url.encode("utf-8")
            if len(encoded) > MAX_URL_BYTES:
                raise ValueError(f"url longer than {MAX_URL_BYTES} bytes")
            payload += encoded
        return _b64(payload + self._mac.digest(payload)[:MAC_SIZE])

    def verify(self, token: str, *, kind: str | None = None) -> Token | None:
        """The token's content, or None when it is not one of ours (never raises).

        With ``kind``, a valid token of another kind is also None.
        """
        raw = self._authentic(token)
        return None if raw is None else _parse(raw, len(raw) - MAC_SIZE, kind)

    def ref(self, token: str, kind: str) -> bytes | None:
        """``verify(token, kind=kind).ref``, or None when that is None; for kinds without a url
        or value (the open pixel's), read without building a ``Token``."""
        raw = self._authentic(token)
        if raw is None:
            return None
        end = len(raw) - MAC_SIZE
        code = self._plain.get(kind)
        if code is None:
            found = _parse(raw, end, kind)
            return None if found is None else found.ref
        # version | key id | kind byte (no flags) | ref length | ref | MAC, nothing else
        ref_len = raw[2 + KEY_ID_SIZE]
        if raw[1 + KEY_ID_SIZE] != code or ref_len == 0 or 3 + KEY_ID_SIZE + ref_len != end:
            return None
        return raw[3 + KEY_ID_SIZE : end]

    def _authentic(self, token: str) -> bytes | None:
        """The decoded token when it is canonical, of this version and its MAC is right."""
        if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_CHARS:
            return None
        raw = _unb64(token)
        if raw is None or len(raw) < _MIN_RAW or raw[0] != VERSION:
            return None
        mac = self._macs.get(raw[1 : 1 + KEY_ID_SIZE])
        if mac is None:
            return None
        end = len(raw) - MAC_SIZE
        if not hmac.compare_digest(mac.digest(raw[:end])[:MAC_SIZE], raw[end:]):
            return None
        return raw


def _parse(raw: bytes, end: int, expected: str | None) -> Token | None:
    flags = raw[1 + KEY_ID_SIZE]
    name = _KIND_NAMES.get(flags & _CODE_MASK)
    if name is None or (expected is not None and name != expected):
        return None
    if bool(flags & _HAS_URL) != (name in _NEEDS_URL):
        return None
    if bool(flags & _HAS_VALUE) != (name in _NEEDS_VALUE):
        return None
    ref_len = raw[2 + KEY_ID_SIZE]
    pos = 3 + KEY_ID_SIZE
    if ref_len == 0 or pos + ref_len > end:
        return None
    ref = raw[pos : pos + ref_len]
    pos += ref_len
    value: int | None = None
    if flags & _HAS_VALUE:
        decoded = _unzigzag(raw, pos, end)
        if decoded is None:
            return None
        value, pos = decoded
    url: str | None = None
    if flags & _HAS_URL:
        try:
            url = raw[pos:end].decode("utf-8")
        except UnicodeDecodeError:
            return None
    elif pos != end:
        return None
    return Token(name, ref, url, value)


# A hidden link in every email that no person sees: whoever follows it is a link scanner.
HONEYPOT_PATH = "/h/"

# The path of each kind of URL ``Links`` builds (keyed by its method), in Starlette's route
# syntax: the tracking app's routes are built from this table, and a test checks that every
# URL ``Links`` makes is routed there.
LINK_PATHS: dict[str, str] = {
    "open": "/o/{token}.gif",
    "click": "/c/{token}",
    "honeypot": HONEYPOT_PATH + "{token}",
    "unsubscribe": "/u/{token}",
    "nps": "/nps/{token}",
    "referral": "/r/{code}",
    "form": "/f/{name}/{token}",
}


class Links:
    """The one place that builds tracking URLs (all under ``base_url``)."""

    def __init__(self, base_url: str, signer: Signer) -> None:
        self.base_url = base_url.rstrip("/")
        self.signer = signer
        self._prefix = self.base_url + "/"

    def is_tracking(self, url: str) -> bool:
        """True for a URL that already points at the tracking base (never click-rewritten)."""
        return url.startswith(self._prefix) or url == self.base_url

    def open(self, ref: bytes) -> str:
        """The open pixel: ``{base}/o/<token>.gif``."""
        return f"{self._prefix}o/{self.signer.sign('open', ref)}.gif"

    def click(self, ref: bytes, url: str) -> str:
        """The click redirect to ``url``: ``{base}/c/<token>`` (the URL is inside the token)."""
        return f"{self._prefix}c/{self.signer.sign('click', ref, url=url)}"

    def honeypot(self, ref: bytes) -> str:
        """The hidden link only machines follow: ``{base}/h/<token>``."""
        return f"{self.base_url}{HONEYPOT_PATH}{self.signer.sign('click', ref, url='')}"

    def unsubscribe(self, ref: bytes) -> str:
        """One-click unsubscribe: ``{base}/u/<token>``."""
        return f"{self._prefix}u/{self.signer.sign('unsubscribe', ref)}"

    def nps(self, ref: bytes, score: int) -> str:
        """Records NPS ``score`` (0-10): ``{base}/nps/<token>``."""
        if isinstance(score, bool) or not isinstance(score, int) or not 0 <= score <= 10:
            raise ValueError(f"an NPS score is an integer 0..10, got {score!r}")
        return f"{self._prefix}nps/{self.signer.sign('nps', ref, value=score)}"

    def referral(self, code: str) -> str:
        """The personal referral page: ``{base}/r/<code>``."""
        if not code:
            raise ValueError("an empty referral code")
        return f"{self._prefix}r/{quote(code, safe='')}"

    def form(self, name: str, ref: bytes) -> str:
        """A form (intro, partner, testimonial): ``{base}/f/<name>/<token>``."""
        kind = FORM_KINDS.get(name)
        if kind is None:
            raise ValueError(f"unknown form {name!r} (one of {', '.join(FORM_KINDS)})")
        return f"{self._prefix}f/{name}/{self.signer.sign(kind, ref)}"
