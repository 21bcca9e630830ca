"""Stateless CSRF tokens for the landing pages' forms (no session, no cookie, any worker).

A token is bound to the page it was issued on (its path, which carries the page's own tracking
token or referral code) and to the time it was issued, and signed with a key derived from the
tracking secret: ``base64url(issued_at (8 bytes) | HMAC-SHA256(key, path | issued_at)[:16])``.
A form post is accepted with a token for the same path, not older than ``max_age``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct

MAX_AGE_SECONDS = 2 * 86400  # a page left open overnight still posts
FIELD = "csrf"
_MAC_SIZE = 16
_RAW_SIZE = 8 + _MAC_SIZE


class CsrfTokens:
    """Issues and checks form tokens with a key derived from ``secret``."""

    def __init__(self, secret: str, *, max_age: float = MAX_AGE_SECONDS) -> None:
        # A key of its own: a CSRF token can never be replayed as a tracking token.
        self._key = hmac.new(secret.encode("utf-8"), b"engine csrf v1", hashlib.sha256).digest()
        self._max_age = max_age

    def _mac(self, path: str, issued: bytes) -> bytes:
        message = path.encode("utf-8") + b"\0" + issued
        return hmac.new(self._key, message, hashlib.sha256).digest()[:_MAC_SIZE]

    def issue(self, path: str, now: float) -> str:
        """A token for a form on ``path``, issued at ``now`` (Unix seconds)."""
        issued = struct.pack(">d", now)
        return base64.urlsafe_b64encode(issued + self._mac(path, issued)).decode("ascii")

    def check(self, token: str | None, path: str, now: float) -> bool:
        """True when ``token`` was issued by us for ``path`` within ``max_age`` before ``now``."""
        if not token or len(token) > 64:
            return False
        try:
            raw = base64.urlsafe_b64decode(token.encode("ascii"))
        except (binascii.Error, ValueError, UnicodeEncodeError):
            return False
        if len(raw) != _RAW_SIZE:
            return False
        issued, mac = raw[:8], raw[8:]
        if not hmac.compare_digest(self._mac(path, issued), mac):
            return False
        at = float(struct.unpack(">d", issued)[0])
        # A little clock skew between workers is fine; a token from the future is not ours.
        return -60 <= now - at <= self._max_age
