"""The MIME builder: headers, encodings, and header injection, judged by the stdlib parser."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import re
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from engine.mail.mime import (
    OutgoingEmail,
    build_message,
    check_address,
    clean_header_text,
    make_message_id,
)

SENT_AT = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
BASE_HEADERS = [
    "From",
    "To",
    "Reply-To",
    "Subject",
    "Date",
    "Message-ID",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Feedback-ID",
    "MIME-Version",
    "Content-Type",
]
LINE_BREAKS = ["\r\n", "\n", "\r", "\0", "\u2028", "\u2029", "\x85", "\x0b", "\x0c"]


def outgoing(**changes: Any) -> OutgoingEmail:
    base = OutgoingEmail(
        message_id="<abc123@acme.example>",
        from_name="Acme Team",
        from_email="team@acme.example",
        reply_to="hello@acme.example",
        to_name="Ann Lee",
        to_email="ann@example.com",
        subject="Ann, who are one or two people we could help?",
        html="<p>Hello Ann</p>\n",
        text="Hello Ann\n",
        date=SENT_AT,
        list_unsubscribe_url="https://t.acme.example/u/tok123",
        feedback_id="ask:referral-ask:referral:acme",
    )
    return dataclasses.replace(base, **changes)


def parse(data: bytes) -> EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)


def assert_clean(message: EmailMessage) -> None:
    """No parse defects anywhere, in the message or any header."""
    assert message.defects == []
    for name, value in message.items():
        assert value.defects == (), (name, value.defects)
    for part in message.walk():
        assert part.defects == []


def assert_wire_format(data: bytes) -> None:
    """CRLF line endings only, every line within 998 octets, nothing but ASCII."""
    assert data.isascii()
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert b"\r" not in data.replace(b"\r\n", b"")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998


def header_lines(data: bytes) -> list[str]:
    head = data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    return head.split("\r\n")


def test_headers_are_present_and_correct() -> None:
    data = build_message(outgoing())
    assert_wire_format(data)
    message = parse(data)
    assert_clean(message)
    assert list(message.keys()) == BASE_HEADERS
    assert message["From"] == "Acme Team <team@acme.example>"
    assert message["To"] == "Ann Lee <ann@example.com>"
    assert message["Reply-To"] == "hello@acme.example"
    assert message["Subject"] == "Ann, who are one or two people we could help?"
    assert message["Date"].datetime == SENT_AT
    assert message["Message-ID"] == "<abc123@acme.example>"
    assert message["MIME-Version"] == "1.0"
    assert message["Feedback-ID"] == "ask:referral-ask:referral:acme"
    assert message.get_content_type() == "multipart/alternative"
    parts = list(message.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert all(p.get_content_charset() == "utf-8" for p in parts)


def test_one_click_unsubscribe_pair_follows_rfc_8058() -> None:
    message = parse(build_message(outgoing()))
    assert message["List-Unsubscribe"] == "<https://t.acme.example/u/tok123>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_unsubscribe_mailto_follows_the_url() -> None:
    data = build_message(outgoing(list_unsubscribe_mailto="mailto:unsubscribe@acme.example"))
    assert parse(data)["List-Unsubscribe"] == (
        "<https://t.acme.example/u/tok123>, <mailto:unsubscribe@acme.example>"
    )


def test_reminder_continues_the_thread() -> None:
    message = parse(build_message(outgoing(in_reply_to="<first@acme.example>")))
    assert message["In-Reply-To"] == "<first@acme.example>"
    assert "References" not in message

    refs = tuple(f"<step{i}.{'x' * 20}@acme.example>" for i in range(4))
    message = parse(build_message(outgoing(in_reply_to=refs[-1], references=refs)))
    assert_clean(message)
    assert message["In-Reply-To"] == refs[-1]
    assert message["References"].split() == list(refs)


def test_optional_headers_are_left_out_when_empty() -> None:
    message = parse(build_message(outgoing(reply_to="", feedback_id="", to_name="")))
    assert "Reply-To" not in message
    assert "Feedback-ID" not in message
    assert message["To"] == "ann@example.com"


@pytest.mark.parametrize(
    ("name", "subject"),
    [
        ("أحمد الفارسي", "أحمد، من هم شخص أو شخصان يمكننا مساعدتهم؟"),
        ("Siti Nurhaliza", "Siti, siapa satu atau dua orang yang bisa kami bantu?"),
        ("Zoë 🚀 Ünal", "🎉 Thank you, Zoë! 👩‍👩‍👧‍👦 Your gift is on its way 🎁"),
        ("José María Núñez-Ortega de la Concepción y Bartolomé", "Olá — " + "ção " * 60),
        ("Ann", "A long subject " * 20),
        ("Ann", "x" * 300),
        ("=?utf-8?q?not_an_encoded_word?=", "=?utf-8?b?SGVsbG8=?= stays literal"),
        ("Zhang Wei 张伟", "我们能帮助的一两个人是谁？" * 6),
    ],
)
def test_names_and_subjects_round_trip_through_the_stdlib_parser(name: str, subject: str) -> None:
    data = build_message(outgoing(to_name=name, from_name=name, subject=subject))
    assert_wire_format(data)
    message = parse(data)
    assert_clean(message)
    assert message["Subject"] == subject.strip()
    for header in ("From", "To"):
        (address,) = message[header].addresses
        assert address.display_name == name


def test_subject_encoded_words_respect_the_rfc_2047_line_limit() -> None:
    data = build_message(outgoing(subject="مرحبا بك " * 40))
    lines = header_lines(data)
    start = next(i for i, line in enumerate(lines) if line.startswith("Subject: "))
    subject_lines = [lines[start]]
    subject_lines += [line for line in lines[start + 1 :] if line.startswith(" ")]
    assert len(subject_lines) > 5
    assert all(len(line) <= 76 for line in subject_lines)


def test_a_long_non_ascii_name_is_one_encoded_word_on_its_own_line() -> None:
    # Split encoded-words would lose the space for RFC 2047 decoders or add one for the
    # stdlib parser, so the name stays whole, on its own line.
    name = "عبد الرحمن بن محمد بن عبد الله الفارسي"
    data = build_message(outgoing(to_name=name))
    lines = header_lines(data)
    start = lines.index("To:")
    assert lines[start + 1].startswith(" =?UTF-8?B?") and lines[start + 1].count("=?") == 1
    assert lines[start + 2] == " <ann@example.com>"
    assert parse(data)["To"].addresses[0].display_name == name


def test_other_header_lines_stay_within_78_characters() -> None:
    refs = tuple(f"<step{i}.{'x' * 30}@acme.example>" for i in range(6))
    email_ = outgoing(
        subject="A long plain subject " * 12,
        to_name="Ann Lee",
        references=refs,
        list_unsubscribe_url="https://t.acme.example/u/" + "t" * 40,
        list_unsubscribe_mailto="mailto:unsubscribe@acme.example?subject=unsubscribe",
    )
    assert all(len(line) <= 78 for line in header_lines(build_message(email_)))


@pytest.mark.parametrize(
    "name",
    [
        'Doe, John "JD"',
        "Doe, John <john@evil.example>",
        '"x@evil.example" <x@evil.example>, y@evil.example',
        "Ann; Bcc: y@evil.example",
        "back\\slash (comment) [box]: semi;",
        "Q. Public",
    ],
)
def test_commas_and_quotes_in_names_never_add_a_recipient(name: str) -> None:
    message = parse(build_message(outgoing(to_name=name)))
    assert_clean(message)
    (address,) = message["To"].addresses
    assert address.display_name == name
    assert address.addr_spec == "ann@example.com"


@pytest.mark.parametrize("brk", LINE_BREAKS)
@pytest.mark.parametrize("field", ["to_name", "from_name", "subject"])
def test_line_breaks_in_names_and_subjects_never_add_headers(field: str, brk: str) -> None:
    evil = f"Ann{brk}Bcc: victim@evil.example{brk}{brk}Injected body"
    data = build_message(outgoing(**{field: evil}))
    assert_wire_format(data)
    message = parse(data)
    assert_clean(message)
    assert list(message.keys()) == BASE_HEADERS
    assert [a.addr_spec for a in message["To"].addresses] == ["ann@example.com"]
    assert "Bcc" not in message
    value = message["Subject"] if field == "subject" else message[field[:-5].title()]
    assert "victim@evil.example" in str(value)  # kept as text, on the same header


@pytest.mark.parametrize("brk", LINE_BREAKS)
@pytest.mark.parametrize("field", ["to_email", "from_email", "reply_to"])
def test_line_breaks_in_addresses_are_refused(field: str, brk: str) -> None:
    with pytest.raises(ValueError, match="address"):
        build_message(outgoing(**{field: f"ann@example.com{brk}Bcc: victim@evil.example"}))


@pytest.mark.parametrize(
    "field",
    ["message_id", "in_reply_to", "list_unsubscribe_url", "list_unsubscribe_mailto", "feedback_id"],
)
@pytest.mark.parametrize("brk", ["\r\n", "\n", "\0", "\u2028"])
def test_line_breaks_in_other_header_values_are_refused(field: str, brk: str) -> None:
    current = getattr(outgoing(), field) or "mailto:u@acme.example"
    value = f"{current}{brk}Bcc: victim@evil.example"
    with pytest.raises(ValueError):
        build_message(outgoing(**{field: value}))


def test_feedback_id_line_break_cannot_add_a_header() -> None:
    # Feedback-ID is cleaned like other text first: one line, or refused when it has spaces.
    with pytest.raises(ValueError, match="Feedback-ID"):
        build_message(outgoing(feedback_id="a:b:c:d\r\nBcc: victim@evil.example"))


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("date", datetime(2026, 3, 2, 10, 0), "timezone-aware"),
        ("message_id", "no-brackets@acme.example", "Message-ID"),
        ("message_id", "<no-at-sign>", "Message-ID"),
        ("in_reply_to", "<a b@acme.example>", "Message-ID"),
        ("list_unsubscribe_url", "", "List-Unsubscribe URL"),
        ("list_unsubscribe_url", "javascript:alert(1)", "List-Unsubscribe URL"),
        ("list_unsubscribe_url", "https://t.example/u/a>, <https://evil", "List-Unsubscribe URL"),
        ("list_unsubscribe_mailto", "https://not-a-mailto.example", "mailto"),
        ("feedback_id", "a:b:c:ünicode", "Feedback-ID"),
    ],
)
def test_invalid_values_are_refused_with_a_reason(field: str, value: Any, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        build_message(outgoing(**{field: value}))


def test_date_keeps_its_offset() -> None:
    jakarta = datetime(2026, 3, 2, 17, 0, tzinfo=timezone(timedelta(hours=7)))
    message = parse(build_message(outgoing(date=jakarta)))
    assert message["Date"].endswith("+0700")
    assert message["Date"].datetime == SENT_AT


@given(st.datetimes(timezones=st.timezones()))
def test_date_is_the_wall_clock_of_any_zone_to_the_second(date: datetime) -> None:
    # Equal instants in two zones, or two times in one second, must not share a cached text.
    lines = header_lines(build_message(outgoing(date=date)))
    assert f"Date: {format_datetime(date.replace(microsecond=0))}" in lines


def test_each_sender_gets_its_own_from_line() -> None:
    lines = header_lines(build_message(outgoing()))
    assert {"From: Acme Team <team@acme.example>", "Reply-To: hello@acme.example"} <= set(lines)
    lines = header_lines(build_message(outgoing(from_name="Bo", reply_to="")))
    assert "From: Bo <team@acme.example>" in lines
    assert not any(line.startswith("Reply-To:") for line in lines)


@pytest.mark.parametrize(
    "body",
    [
        "Hello Ann,\n\nThanks for being with us.\n\n-- \nAcme\n",
        "line with trailing spaces   \n.leading dot\nFrom the start\n=equals= and\ttab\n",
        "x" * 5000,
        "<table>" + '<td style="padding:0">cell</td>' * 400 + "</table>",
        "مرحبا أحمد،\nشكرا لك على ثقتك بنا.\n" * 20,
        "Halo Siti, terima kasih! 🎉\r\nWindows line\rold Mac line\n",
        "",
    ],
)
def test_bodies_round_trip_with_short_lines(body: str) -> None:
    data = build_message(outgoing(text=body, html=f"<html><body>{body}</body></html>"))
    assert_wire_format(data)
    assert max(len(line) for line in data.split(b"\r\n")) <= 78
    message = parse(data)
    assert_clean(message)
    plain = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert plain is not None and html is not None
    expected = body.replace("\r\n", "\n").replace("\r", "\n")
    # The parser keeps the wire's CRLF line endings in decoded content.
    assert plain.get_content().replace("\r\n", "\n") == expected
    assert html.get_content().replace("\r\n", "\n") == f"<html><body>{expected}</body></html>"


def body_lines(data: bytes, content_type: str) -> list[bytes]:
    """The encoded lines of the one body part of ``content_type`` (``b"text/html"``)."""
    part = next(p for p in data.split(b"\r\n--=_") if b"Content-Type: " + content_type in p)
    return part.split(b"\r\n\r\n", 1)[1].split(b"\r\n")


def test_long_html_lines_are_cut_between_escapes() -> None:
    # MJML writes lines of thousands of characters, full of "=" in attributes.
    html = "<td " + 'a="1" b="22" c=3 ' * 700 + "x=</td>\n"
    data = build_message(outgoing(html=html))
    assert_wire_format(data)
    lines = body_lines(data, b"text/html")
    assert all(len(line) <= 76 for line in lines)
    # A soft break never splits an "=XX" escape: each line's escapes are whole.
    assert all(re.fullmatch(rb"(?:[^=]|=[0-9A-F]{2})*=?", line) for line in lines)
    html_part = parse(data).get_body(("html",))
    assert html_part is not None and html_part.get_content().replace("\r\n", "\n") == html


def test_blanks_ending_a_line_and_lone_dots_are_escaped() -> None:
    text = "ends with a space \nends with a tab\t\n.\n.not alone\nlast blank, café "
    data = build_message(outgoing(text=text))
    lines = body_lines(data, b"text/plain")
    assert lines[:4] == [b"ends with a space=20", b"ends with a tab=09", b"=2E", b".not alone"]
    assert lines[4] == b"last blank, caf=C3=A9=20"
    plain = parse(data).get_body(("plain",))
    assert plain is not None and plain.get_content().replace("\r\n", "\n") == text


@settings(max_examples=300, deadline=None)
@example(body="x" * 75 + " \né")  # binascii.b2a_qp alone makes that first line 77 long
@given(
    body=st.lists(
        st.sampled_from(["a", "=", " ", "\t", "\n", ".", "3D", "x" * 70, "é", "\x7f"]),
        max_size=120,
    ).map("".join)
)
def test_any_body_round_trips_in_lines_of_76_characters(body: str) -> None:
    # Mostly "=", blanks, dots and line ends: the quoted-printable corner cases.
    data = build_message(outgoing(text=body, html=body))
    assert_wire_format(data)
    message = parse(data)
    for content_type, part in zip((b"text/plain", b"text/html"), message.iter_parts(), strict=True):
        # Encoded lines are at most 76 long; a body sent as it is (7bit) keeps its own lines.
        limit = 998 if part["Content-Transfer-Encoding"] == "7bit" else 76
        assert all(len(line) <= limit for line in body_lines(data, content_type))
    message = parse(data)
    for kind in ("plain", "html"):
        part = message.get_body((kind,))
        assert part is not None
        assert part.get_content().replace("\r\n", "\n") == body


def test_arabic_is_base64_english_is_sent_as_it_is_and_long_lines_are_quoted_printable() -> None:
    arabic = "شكرا لك على ثقتك بنا. " * 40
    message = parse(build_message(outgoing(text=arabic, html="<p>Thank you, Ann.</p>\n")))
    plain, html = message.iter_parts()
    assert plain["Content-Transfer-Encoding"] == "base64"
    assert html["Content-Transfer-Encoding"] == "7bit"
    long_line = "<p>" + "Thank you, Ann. " * 62 + "</p>"  # 998 octets is the limit
    assert len(long_line) > 998
    message = parse(build_message(outgoing(text="Thank you.\n.\n", html=long_line)))
    plain, html = message.iter_parts()
    assert html["Content-Transfer-Encoding"] == "quoted-printable"
    assert html.get_content() == long_line
    # 7bit keeps what quoted-printable escapes: a lone dot is the SMTP layer's to stuff
    assert plain["Content-Transfer-Encoding"] == "7bit"
    assert plain.get_content().replace("\r\n", "\n") == "Thank you.\n.\n"


def test_each_message_has_its_own_boundary() -> None:
    first, second = build_message(outgoing()), build_message(outgoing())
    assert parse(first).get_boundary() != parse(second).get_boundary()


tricky = ["a", "é", " ", '"', "\\", ",", "<", ">", "@", "\r", "\n", "\u2028", "=?", "?=", "\0"]
header_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=200) | st.lists(
    st.sampled_from(tricky), max_size=60
).map("".join)


@settings(max_examples=300, deadline=None)
@given(name=header_text, subject=header_text)
def test_any_name_and_subject_round_trip_and_stay_in_their_header(name: str, subject: str) -> None:
    data = build_message(outgoing(to_name=name, subject=subject))
    assert_wire_format(data)
    message = parse(data)
    assert list(message.keys()) == BASE_HEADERS
    (address,) = message["To"].addresses
    assert address.addr_spec == "ann@example.com"
    assert address.display_name == " ".join(clean_header_text(name).split())
    assert message["Subject"] == clean_header_text(subject)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Plain text", "Plain text"),
        ("  padded  ", "padded"),
        ("Ann\r\nBcc: x@evil.example", "Ann Bcc: x@evil.example"),
        ("a\nb\rc\0d\u2028e\u2029f\x85g\th\x7fi", "a b c d e f g h i"),
        ("many\r\n\r\n\r\nbreaks", "many breaks"),
        ("\r\n", ""),
        ("أحمد\u200f", "أحمد\u200f"),  # a right-to-left mark is text, not a control
    ],
)
def test_clean_header_text(value: str, expected: str) -> None:
    assert clean_header_text(value) == expected


@pytest.mark.parametrize(
    ("address", "normalized"),
    [
        ("ann@example.com", "ann@example.com"),
        ("  Ann.Lee+ref@Example.COM ", "Ann.Lee+ref@example.com"),
        ("o'brien@mail.example.co.uk", "o'brien@mail.example.co.uk"),
        ("user@bücher.example", "user@xn--bcher-kva.example"),
    ],
)
def test_check_address_normalizes(address: str, normalized: str) -> None:
    assert check_address(address) == normalized


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("", "empty"),
        ("ann@example.com\r\nBcc: x@evil.example", "line break"),
        ("ann@example.com\nx", "line break"),
        ("ann@exa\0mple.com", "NUL"),
        ("ann@example.com\u2028", "line separator"),
        ("ann\x7f@example.com", "control character"),
        ("ann lee@example.com", "whitespace"),
        ("Ann <ann@example.com>", "angle brackets"),
        ("<ann@example.com>", "angle brackets"),
        ("ann@example.com, eve@evil.example", "comma"),
        ("ann@example.com,eve@evil.example", "comma"),
        ("ann@example.com;eve@evil.example", "comma"),
        ("ann.example.com", "exactly one @"),
        ("ann@lee@example.com", "exactly one @"),
        ("@example.com", "empty local part"),
        ("ann@", "empty domain"),
        ('"ann lee"@example.com', "whitespace"),
        ('"ann"@example.com', "not allowed"),
        ("ann(comment)@example.com", "not allowed"),
        (".ann@example.com", "misplaced dot"),
        ("ann..lee@example.com", "misplaced dot"),
        ("anné@example.com", "non-ASCII local part"),
        ("ann@localhost", "without a dot"),
        ("ann@-example.com", "invalid domain"),
        ("ann@example..com", "invalid domain"),
        ("ann@example.com.", "invalid domain"),
        ("ann@exa_mple.com", "invalid domain"),
        ("a" * 65 + "@example.com", "longer than 64"),
        ("ann@" + "a" * 64 + ".com", "invalid domain"),
        ("ann@" + ".".join(["a" * 60] * 5) + ".com", "invalid domain"),
    ],
)
def test_check_address_rejects_with_the_problem_named(address: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        check_address(address)


def test_message_ids_are_unique_and_well_formed() -> None:
    ids = {make_message_id("Acme.Example") for _ in range(1000)}
    assert len(ids) == 1000
    for message_id in list(ids)[:5]:
        assert re.fullmatch(r"<[0-9a-f]{32}@acme\.example>", message_id)
        assert parse(build_message(outgoing(message_id=message_id)))["Message-ID"] == message_id
    with pytest.raises(ValueError):
        make_message_id("bad domain\r\nBcc: x")


def test_a_note_to_the_team_is_plain_text_without_list_headers() -> None:
    raw = build_message(outgoing(note=True, list_unsubscribe_url="", text="Ann replied:\n> yes"))
    parsed = parse(raw)
    assert_clean(parsed)
    assert parsed.get_content_type() == "text/plain"
    assert parsed.get_content().replace("\r\n", "\n") == "Ann replied:\n> yes"
    assert "List-Unsubscribe" not in parsed
