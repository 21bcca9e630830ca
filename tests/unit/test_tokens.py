"""Tracking tokens: opaque, signed, rotation-friendly, and never fooled by tampering."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.mail.tokens import FORM_KINDS, KINDS, MAX_TOKEN_CHARS, Links, Signer, Token, _unb64

REF = bytes.fromhex("0f1e2d3c4b5a69788796a5b4")
BASE = "https://t.example.com"
B64_CHARS = string.ascii_letters + string.digits + "-_"
# The urlsafe alphabet in value order: a character's index is its 6 bits.
ALPHABET = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"


def token_of(url: str) -> str:
    """The token part of a tracking URL (``/o/<token>.gif`` included)."""
    return url.rsplit("/", 1)[1].removesuffix(".gif")


@pytest.fixture
def signer() -> Signer:
    return Signer("current-secret")


def test_round_trip_of_every_kind(signer: Signer) -> None:
    for kind in KINDS:
        url = "https://example.com/a?b=1&c=2" if kind == "click" else None
        value = 9 if kind == "nps" else None
        token = signer.sign(kind, REF, url=url, value=value)
        assert signer.verify(token) == Token(kind, REF, url, value)
        assert signer.verify(token, kind=kind) == Token(kind, REF, url, value)


@given(
    ref=st.binary(min_size=1, max_size=64),
    url=st.text(max_size=300),
    value=st.integers(min_value=-(2**63), max_value=2**63 - 1),
)
def test_round_trip_of_any_ref_url_and_value(ref: bytes, url: str, value: int) -> None:
    signer = Signer("s")
    assert signer.verify(signer.sign("click", ref, url=url)) == Token("click", ref, url, None)
    assert signer.verify(signer.sign("nps", ref, value=value)) == Token("nps", ref, None, value)


@pytest.mark.parametrize(
    "secret", ["s", "a secret of exactly sixty-four bytes, no more and no less!!!!!!!", "ü" * 80]
)
def test_the_mac_is_standard_truncated_hmac_sha256(secret: str) -> None:
    # Short keys, a block-sized key and one longer than SHA-256's block (hashed first).
    token = Signer(secret).sign("click", REF, url="https://example.com/")
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    expected = hmac.new(secret.encode(), raw[:-16], hashlib.sha256).digest()[:16]
    assert raw[-16:] == expected


def test_tokens_are_urlsafe_base64_without_padding(signer: Signer) -> None:
    token = signer.sign("click", REF, url="https://example.com/ü?x=1&y=2")
    assert set(token) <= set(B64_CHARS)
    assert "=" not in token


def test_changing_any_character_of_a_token_breaks_it(signer: Signer) -> None:
    token = signer.sign("click", REF, url="https://example.com/offer?x=1")
    for i, original in enumerate(token):
        for replacement in {B64_CHARS[(B64_CHARS.index(original) + 1) % 64], "=", "."}:
            tampered = token[:i] + replacement + token[i + 1 :]
            assert signer.verify(tampered) is None, (i, replacement)


def test_flipping_any_bit_of_the_payload_breaks_it(signer: Signer) -> None:
    raw = base64.urlsafe_b64decode(signer.sign("nps", REF, value=10) + "==")
    for i in range(len(raw)):
        flipped = raw[:i] + bytes([raw[i] ^ 0x01]) + raw[i + 1 :]
        assert signer.verify(base64.urlsafe_b64encode(flipped).rstrip(b"=").decode()) is None


def test_truncated_and_extended_tokens_are_refused(signer: Signer) -> None:
    token = signer.sign("unsubscribe", REF)
    for n in range(len(token)):
        assert signer.verify(token[:n]) is None
    assert signer.verify(token + "A") is None
    assert signer.verify(token + "AAAA") is None


def lax_decode(text: str) -> bytes:
    """What Python's own urlsafe decoder makes of ``text`` (stray characters skipped, unused
    bits ignored, "+" and "/" taken as "-" and "_")."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def other_spellings(token: str) -> list[str]:
    """Strings other than ``token`` that a lax decoder reads as the same bytes."""
    spellings = [
        token + "=",
        token + "==",
        token[:7] + "\n" + token[7:],
        token[:7] + " " + token[7:],
    ]
    spellings += [token.replace("-", "+"), token.replace("_", "/")]
    unused_bits = {0: 0, 2: 4, 3: 2}[len(token) % 4]
    last = ALPHABET.index(token[-1])
    spellings += [token[:-1] + ALPHABET[last | low] for low in range(1, 1 << unused_bits)]
    return [s for s in spellings if s != token]


@pytest.mark.parametrize("ref_size", [1, 2, 3])  # tokens of 0, 2 and 3 characters mod 4
def test_every_other_spelling_of_a_token_is_refused(signer: Signer, ref_size: int) -> None:
    # Exactly one string per token: a lax decoder would accept all of these as the same one.
    token = next(
        t
        for t in (signer.sign("open", secrets.token_bytes(ref_size)) for _ in range(10_000))
        if "-" in t and "_" in t
    )
    assert {len(token) % 4} == {[0, 2, 3][ref_size - 1]}
    spellings = other_spellings(token)
    assert len(spellings) >= 6
    for spelling in spellings:
        assert lax_decode(spelling.replace("\n", "").replace(" ", "")) == lax_decode(token)
        assert signer.verify(spelling) is None, spelling
        assert signer.ref(spelling, "open") is None, spelling
    assert signer.ref(token, "open") is not None


def canonical_by_re_encoding(text: str) -> bytes | None:
    """The bytes of ``text`` when encoding them again gives ``text`` back (the slow rule)."""
    try:
        raw = lax_decode(text)
    except (binascii.Error, ValueError):
        return None
    return raw if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() == text else None


def mutated(raw: bytes, where: int, char: str) -> str:
    """The canonical encoding of ``raw`` with ``char`` at ``where`` (-1: unchanged)."""
    token = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    if where < 0:
        return token
    i = where % (len(token) + 1)
    return token[:i] + char + token[i + 1 :]


@given(
    st.one_of(
        st.text(alphabet=B64_CHARS + "+/= .\né", max_size=40),
        st.builds(mutated, st.binary(max_size=40), st.just(-1), st.just("")),  # canonical
        st.builds(mutated, st.binary(max_size=40), st.integers(0, 60), st.sampled_from(ALPHABET)),
    )
)
def test_the_canonical_check_agrees_with_encoding_again(text: str) -> None:
    assert _unb64(text) == canonical_by_re_encoding(text)


@given(kind=st.sampled_from(sorted(KINDS)), ref=st.binary(min_size=1, max_size=64))
def test_ref_is_the_ref_of_a_verified_token_of_that_kind(kind: str, ref: bytes) -> None:
    signer = Signer("s")
    url = "https://example.com/" if kind == "click" else None
    token = signer.sign(kind, ref, url=url, value=7 if kind == "nps" else None)
    for asked in KINDS:
        verified = signer.verify(token, kind=asked)
        assert signer.ref(token, asked) == (None if verified is None else verified.ref)
        assert (verified is not None) == (asked == kind)
    for bad in (token[:-1], token[:20] + ("B" if token[20] == "A" else "A") + token[21:]):
        assert signer.ref(bad, kind) is None


def test_a_token_signed_with_another_secret_is_refused(signer: Signer) -> None:
    foreign = Signer("someone-elses-secret").sign("open", REF)
    assert signer.verify(foreign) is None


def test_rotation_old_secret_verifies_until_it_is_removed() -> None:
    old = Signer("2025-secret").sign("unsubscribe", REF)
    rotated = Signer("2026-secret", old_secrets=["2025-secret"])
    assert rotated.verify(old) == Token("unsubscribe", REF, None, None)
    # new tokens are signed with the new secret, which the old signer does not know
    assert Signer("2025-secret").verify(rotated.sign("open", REF)) is None
    assert Signer("2026-secret").verify(old) is None


def test_kinds_do_not_cross(signer: Signer) -> None:
    open_token = signer.sign("open", REF)
    assert signer.verify(open_token, kind="unsubscribe") is None
    assert signer.verify(open_token, kind="click") is None
    for form, kind in FORM_KINDS.items():
        token = token_of(Links(BASE, signer).form(form, REF))
        assert signer.verify(token, kind=kind) is not None
        others = [k for k in FORM_KINDS.values() if k != kind]
        assert all(signer.verify(token, kind=k) is None for k in others)


def test_oversized_and_garbage_tokens_are_refused_without_raising(signer: Signer) -> None:
    for garbage in ["", "A" * (MAX_TOKEN_CHARS + 4), "%%%", "é" * 40, "A", "AAAA====", None, 42]:
        assert signer.verify(garbage) is None  # type: ignore[arg-type]
        assert signer.ref(garbage, "open") is None  # type: ignore[arg-type]


@given(st.text(max_size=200))
def test_verify_never_raises(text: str) -> None:
    assert Signer("s").verify(text) is None
    assert Signer("s").ref(text, "open") is None


def test_sign_refuses_what_a_kind_does_not_take(signer: Signer) -> None:
    with pytest.raises(ValueError):
        signer.sign("click", REF)
    with pytest.raises(ValueError):
        signer.sign("open", REF, value=3)
    with pytest.raises(ValueError):
        signer.sign("teleport", REF)
    with pytest.raises(ValueError):
        signer.sign("open", b"")
    with pytest.raises(ValueError):
        Signer("")


def test_links_have_the_documented_shapes(signer: Signer) -> None:
    links = Links(BASE + "/", signer)
    assert links.open(REF).startswith(f"{BASE}/o/") and links.open(REF).endswith(".gif")
    assert links.click(REF, "https://example.com/").startswith(f"{BASE}/c/")
    assert links.unsubscribe(REF).startswith(f"{BASE}/u/")
    assert links.nps(REF, 10).startswith(f"{BASE}/nps/")
    assert links.referral("ANA 42") == f"{BASE}/r/ANA%2042"
    for name in FORM_KINDS:
        assert links.form(name, REF).startswith(f"{BASE}/f/{name}/")
    nps = signer.verify(token_of(links.nps(REF, 7)))
    assert nps == Token("nps", REF, None, 7)
    click = signer.verify(token_of(links.click(REF, "https://example.com/p?a=1&b=2")))
    assert click is not None and click.url == "https://example.com/p?a=1&b=2"
    with pytest.raises(ValueError):
        links.nps(REF, 11)
    with pytest.raises(ValueError):
        links.form("survey", REF)
    assert links.is_tracking(links.open(REF))
    assert not links.is_tracking("https://t.example.com.evil.org/x")


def test_urls_carry_no_email_address_or_sequential_id(signer: Signer) -> None:
    links = Links(BASE, signer)
    email = "ana.lima@example.com"
    refs = [secrets.token_bytes(12) for _ in range(5)]  # random public ids, never row ids
    for ref in refs:
        for url in (links.open(ref), links.unsubscribe(ref), links.form("intro", ref)):
            raw = base64.urlsafe_b64decode(token_of(url) + "==")
            assert "@" not in url and email.encode() not in raw
            verified = signer.verify(token_of(url))
            # the only id inside is the random ref: nothing that counts up
            assert verified is not None and verified.ref == ref
