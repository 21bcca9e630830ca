"""Reading incoming emails without a server: parsing, classification, return dates, phrases.

The IMAP and database side of the same paths is in test_replies.py (real Dovecot).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from engine.base.errors import SettingsError
from engine.demo import samples
from engine.inbound.replies.classify import Rules, Verdict, classify_message, reply_text, severity
from engine.inbound.replies.dates import find_return_date
from engine.inbound.replies.imap import parse_fetch, uid_set
from engine.inbound.replies.parse import decode_bytes, html_to_text, parse_message
from engine.inbound.replies.phrases import load_phrases, normalize
from engine.inbound.replies.record import rules_for
from engine.program.settings import NotifySettings, SenderSettings, Settings, load_settings

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # a Monday
OURS = "<4f1c2a@acme.example>"
PHRASES = load_phrases()
US = "hello@acme.example"


@pytest.fixture(scope="module")
def rules() -> Rules:
    return rules_for(
        Settings(
            sender=SenderSettings(from_email="team@acme.example", reply_to="hello@acme.example"),
            notify=NotifySettings(owner="owner@acme.example"),
        )
    )


def verdict(raw: bytes, rules: Rules) -> Verdict:
    return classify_message(parse_message(raw), rules, NOW)


def email(headers: str, body: str = "Hello", charset: str = "utf-8") -> bytes:
    head = headers.strip().replace("\n", "\r\n")
    return f"{head}\r\n\r\n{body}".encode(charset)


# -- a person's reply ------------------------------------------------------------------------


def test_a_reply_in_the_thread_is_a_reply_with_the_quote_cut_off(rules: Rules) -> None:
    raw = samples.reply(
        "Ana Lima <ana@example.com>", "hello@acme.example", OURS, "Happy to help!", date=NOW
    )
    found = verdict(raw, rules)
    assert found.kind == "reply"
    assert found.reply_text == "Happy to help!"
    assert parse_message(raw).refs == (OURS,)


@pytest.mark.parametrize(
    "text",
    [
        "Sounds good.\n\nOn Mon, Mar 2, 2026 at 10:00 AM Acme <team@acme.example>\nwrote:\n> ask",
        "Sounds good.\n\n-----Original Message-----\nFrom: Acme\nSent: Monday\n\nask",
        "Sounds good.\n\nFrom: Acme Team <team@acme.example>\nSent: Monday, March 2, 2026\nask",
        "Sounds good.\n\nPada tanggal Sen, 2 Mar 2026 pukul 10.00 Acme <team@acme.example>\n"
        "menulis:\n> ask",
        "Sounds good.\n\n-----Pesan Asli-----\nDari: Acme",
        "Sounds good.\n\n-----Mesej Asal-----\nDaripada: Acme",
        "Sounds good.\n\nفي الاثنين، ٢ مارس ٢٠٢٦ Acme <team@acme.example> كتب:\n> ask",
        "Sounds good.\n\n-- \nAna Lima\nCEO",
        "Sounds good.\n\nSent from my iPhone",
        "Sounds good.\n\nDikirim dari iPhone saya",
    ],
)
def test_quoted_history_and_signatures_are_cut_in_every_language(text: str) -> None:
    assert reply_text(text, PHRASES) == "Sounds good."


def test_a_line_that_merely_mentions_writing_is_not_a_quote() -> None:
    text = "On second thought, as my colleague wrote: meet Budi.\nHe is great."
    assert reply_text(text, PHRASES) == text


def test_an_html_only_reply_is_read_without_its_quote(rules: Rules) -> None:
    raw = email(
        "From: ana@example.com\nContent-Type: text/html; charset=utf-8",
        '<div dir="ltr">Yes, <b>count me in</b>!</div><div class="gmail_quote">'
        "<div>On Monday Acme wrote:</div><blockquote>not interested?</blockquote></div>",
    )
    found = verdict(raw, rules)
    assert found.kind == "reply" and found.reply_text == "Yes, count me in!"


# -- "not interested" ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("Thanks, but we're not interested at the moment.", "en"),
        ("Please UNSUBSCRIBE me from these emails.", "en"),
        ("Terima kasih, tapi saya tidak tertarik.", "id"),
        ("Mohon berhenti mengirim email ini.", "id"),
        ("Maaf, kami tak berminat buat masa ini.", "ms"),
        ("Sila keluarkan saya daripada senarai ini.", "ms"),
        ("شكرا، لكنني غير مهتمٍ بهذا العرض.", "ar"),
        ("أرجو إلغاء الاشتراك", "ar"),
        ("شكرا وغير مهتم", "ar"),  # "and not interested": the conjunction is written joined
    ],
)
def test_not_interested_replies_in_four_languages(text: str, language: str, rules: Rules) -> None:
    found = verdict(
        samples.reply("ana@example.com", "hello@acme.example", OURS, text, date=NOW), rules
    )
    assert found.kind == "not_interested", found
    assert found.match is not None and found.match.language == language


@pytest.mark.parametrize("first_line", ["STOP", "Stop.", "berhenti", "توقف", "Unsubscribe!"])
def test_a_one_word_stop_is_a_no(first_line: str, rules: Rules) -> None:
    raw = samples.reply("ana@example.com", "hello@acme.example", OURS, first_line, date=NOW)
    assert verdict(raw, rules).kind == "not_interested"


def test_not_interested_words_in_the_quote_or_inside_a_sentence_do_not_count(
    rules: Rules,
) -> None:
    raw = samples.reply(
        "ana@example.com",
        "hello@acme.example",
        OURS,
        "Can't stop smiling, this is great. Who should I write to?",
        date=NOW,
        quoted="If you are not interested, reply STOP.",
    )
    assert verdict(raw, rules).kind == "reply"


# -- auto-replies ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        "Auto-Submitted: auto-replied",
        "Auto-Submitted: auto-generated",
        "X-Autoreply: yes",
        "X-Autorespond: Out of office",
        "Precedence: auto_reply",
        "Precedence: bulk",
        "Precedence: junk",
    ],
)
def test_auto_reply_headers(header: str, rules: Rules) -> None:
    raw = email(f"From: ana@example.com\nSubject: Re: hi\nIn-Reply-To: {OURS}\n{header}")
    assert verdict(raw, rules).kind == "auto_reply"


def test_auto_submitted_no_is_a_person(rules: Rules) -> None:
    raw = email("From: ana@example.com\nSubject: Re: hi\nAuto-Submitted: no", "Sure!")
    assert verdict(raw, rules).kind == "reply"


@pytest.mark.parametrize(
    "subject",
    [
        "Out of Office: who could you introduce?",
        "Automatic reply: who could you introduce?",
        "Balasan Otomatis: siapa yang bisa kami bantu?",
        "Di Luar Kantor",
        "Balasan automatik: Re: hai",
        "Di luar pejabat",
        "رد تلقائي: من يمكننا مساعدته؟",
        "خارج المكتب",
    ],
)
def test_auto_reply_subjects_in_four_languages(subject: str, rules: Rules) -> None:
    raw = email(f"From: ana@example.com\nSubject: {subject}\nContent-Type: text/plain")
    assert verdict(raw, rules).kind == "auto_reply"


@pytest.mark.parametrize(
    ("text", "back"),
    [
        ("I am out of the office until March 20, 2026 with no access to email.", date(2026, 3, 20)),
        ("I'm on leave and will be back on 16th March.", date(2026, 3, 16)),
        ("Away from 2 March to 10 March. Back on 11/03/2026.", date(2026, 3, 11)),
        ("Back on 3/10.", date(2026, 3, 10)),  # 3 Oct is further away than 10 March
        ("Back 2026-03-18.", date(2026, 3, 18)),
        ("Back on Thursday.", date(2026, 3, 5)),
        ("Saya sedang cuti dan akan kembali pada tanggal 16 Maret 2026.", date(2026, 3, 16)),
        ("Saya cuti sampai dengan 9 Maret.", date(2026, 3, 9)),
        ("Saya sedang bercuti sehingga 9hb Mac 2026.", date(2026, 3, 9)),
        ("Saya akan kembali ke pejabat pada hari Isnin.", date(2026, 3, 9)),
        ("أنا خارج المكتب وسأعود في ١٥ مارس ٢٠٢٦.", date(2026, 3, 15)),
        ("سأكون في إجازة حتى ١٢/٠٣/٢٠٢٦", date(2026, 3, 12)),
        ("سأعود يوم الأحد", date(2026, 3, 8)),
        ("I will be back on 20 March 2025.", None),  # in the past: not a plan
        ("Thanks for your email, I'll read it later.", None),
        ("Meeting at 9.30 on 10-12 floor.", None),
    ],
)
def test_return_dates_in_four_languages(text: str, back: date | None) -> None:
    assert find_return_date(text, NOW.date(), PHRASES) == back


def test_an_auto_reply_carries_its_return_date(rules: Rules) -> None:
    raw = samples.auto_reply(
        "ana@example.com", "hello@acme.example", OURS, "Back on 20 March.", date=NOW
    )
    found = verdict(raw, rules)
    assert found.kind == "auto_reply" and found.return_date == date(2026, 3, 20)


# -- bounces ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "diagnostic", "action", "rated"),
    [
        ("5.1.1", "550 5.1.1 User unknown", "failed", "hard"),
        ("5.1.2", "550 5.1.2 Host unknown", "failed", "hard"),
        ("5.2.2", "552 5.2.2 Mailbox full", "failed", "soft"),
        ("4.2.2", "452 4.2.2 Over quota", "failed", "soft"),
        ("4.4.1", "Connection timed out", "delayed", "soft"),
        ("5.7.1", "554 5.7.1 Client host blocked using zen.spamhaus.org", "failed", "policy"),
        ("5.7.26", "550 5.7.26 Unauthenticated email is not accepted (DMARC)", "failed", "policy"),
    ],
)
def test_dsn_status_is_rated_by_the_smtp_classifier(
    status: str, diagnostic: str, action: str, rated: str, rules: Rules
) -> None:
    raw = samples.dsn(
        "ana@example.com", OURS, date=NOW, status=status, diagnostic=diagnostic, action=action
    )
    found = verdict(raw, rules)
    assert found.kind == "bounce"
    assert [(b.recipient, b.severity, b.status) for b in found.bounces] == [
        ("ana@example.com", rated, status)
    ]
    assert parse_message(raw).original_message_id == OURS


def test_a_success_report_is_not_a_bounce(rules: Rules) -> None:
    raw = samples.dsn("ana@example.com", OURS, date=NOW, status="2.0.0", action="delivered")
    assert verdict(raw, rules).kind == "ignored"


EXIM = """\
From: Mail Delivery System <Mailer-Daemon@mx.example.net>
To: team@acme.example
Subject: Mail delivery failed: returning message to sender
X-Failed-Recipients: gone@example.org
Auto-Submitted: auto-replied

This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  gone@example.org
    host mx.example.org [192.0.2.1]
    SMTP error from remote mail server after RCPT TO:<gone@example.org>:
    550 5.1.1 <gone@example.org>: Recipient address rejected: User unknown

------ This is a copy of the message, including all the headers. ------

Message-ID: <4f1c2a@acme.example>
From: team@acme.example
"""
QMAIL = """\
From: MAILER-DAEMON@mail.example.org
To: team@acme.example
Subject: failure notice

Hi. This is the qmail-send program at mail.example.org.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<gone@example.org>:
Sorry, no mailbox here by that name. (#5.1.1)

--- Below this line is a copy of the message.

Message-ID: <4f1c2a@acme.example>
"""
GMAIL = """\
From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>
To: team@acme.example
Subject: Delivery Status Notification (Failure)

** Address not found **

Your message wasn't delivered to gone@example.org because the address couldn't be found, or is
unable to receive mail.

The response from the remote server was:
550 5.1.1 The email account that you tried to reach does not exist.
"""
OUTLOOK = """\
From: Microsoft Outlook <MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@acme.example>
To: team@acme.example
Subject: Undeliverable: Who could you introduce?
X-MS-Exchange-Message-Is-Ndr:

Delivery has failed to these recipients or groups:

full@example.org
The recipient's mailbox is full and can't accept messages now. Please try resending your
message later.

Diagnostic information for administrators:
Remote Server returned '552 5.2.2 mailbox full; STOREDRV.Deliver.Exception:QuotaExceeded'
"""
POSTFIX_POLICY = """\
From: MAILER-DAEMON@mx.acme.example (Mail Delivery System)
To: team@acme.example
Subject: Undelivered Mail Returned to Sender

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

<ana@example.com>: host mx.example.com said: 554 5.7.1 Service unavailable;
    Client host [198.51.100.7] blocked using zen.spamhaus.org (in reply to RCPT TO command)
"""
NO_CODE = """\
From: postmaster@example.org
To: team@acme.example
Subject: Returned mail: see transcript for details

The original message was received but could not be delivered:
gone@example.org... User unknown
"""


@pytest.mark.parametrize(
    ("text", "recipient", "rated"),
    [
        (EXIM, "gone@example.org", "hard"),
        (QMAIL, "gone@example.org", "hard"),
        (GMAIL, "gone@example.org", "hard"),
        (OUTLOOK, "full@example.org", "soft"),
        (POSTFIX_POLICY, "ana@example.com", "policy"),
        (NO_CODE, "gone@example.org", "hard"),
    ],
    ids=["exim", "qmail", "gmail", "outlook", "postfix-policy", "no-code"],
)
def test_non_standard_bounces(text: str, recipient: str, rated: str, rules: Rules) -> None:
    found = verdict(text.replace("\n", "\r\n").encode(), rules)
    assert found.kind == "bounce", found
    assert [(b.recipient, b.severity) for b in found.bounces] == [(recipient, rated)]


def test_a_person_writing_about_failed_deliveries_is_not_a_bounce(rules: Rules) -> None:
    raw = email(
        f"From: ana@example.com\nSubject: Re: Delivery failure of our order\nIn-Reply-To: {OURS}",
        "The delivery failed again, the parcel could not be delivered. Can you help?",
    )
    assert verdict(raw, rules).kind == "reply"


def test_severity_of_delays_is_always_soft() -> None:
    assert severity("5.1.1", "550 5.1.1 unknown", delayed=True) == "soft"
    assert severity("", "550 5.1.1 unknown") == "hard"


# -- introductions ---------------------------------------------------------------------------


def test_a_new_address_in_cc_is_an_introduction(rules: Rules) -> None:
    raw = samples.reply(
        "ana@example.com",
        "hello@acme.example",
        OURS,
        "Copying my friend Rina, she runs a bakery.",
        date=NOW,
        cc="Rina Putri <rina@putri.example>, Team <team@acme.example>, ana@example.com",
    )
    found = verdict(raw, rules)
    assert found.kind == "reply"
    assert [(i.email, i.name) for i in found.introductions] == [
        ("rina@putri.example", "Rina Putri")
    ]


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("Sure! Please meet Budi Santoso <budi@santoso.example>, he needs this.", "Budi Santoso"),
        ("Let me introduce you to Rina (rina@santoso.example).", "Rina"),
        ("Silakan hubungi budi@santoso.example untuk info.", None),
        ("Saya kenalkan dengan Pak Budi <budi@santoso.example>.", "Pak Budi"),
        ("أعرفك على بودي <budi@santoso.example>", "بودي"),
    ],
)
def test_an_introduction_in_the_text(text: str, name: str | None, rules: Rules) -> None:
    raw = samples.reply("ana@example.com", "hello@acme.example", OURS, text, date=NOW)
    found = verdict(raw, rules)
    assert [(i.email, i.name) for i in found.introductions] == [
        (found.introductions[0].email, name)
    ]
    assert found.introductions[0].email.endswith("@santoso.example")


def test_an_address_in_a_signature_or_the_quote_is_no_introduction(rules: Rules) -> None:
    raw = samples.reply(
        "ana@example.com",
        "hello@acme.example",
        OURS,
        "Thanks, I will think about it.\n\nAna Lima | ana.lima@lima.example",
        date=NOW,
        quoted="Meet our team: sales@acme.example",
    )
    found = verdict(raw, rules)
    assert found.kind == "reply" and found.introductions == ()


def test_an_introduction_outweighs_a_polite_no(rules: Rules) -> None:
    raw = samples.reply(
        "ana@example.com",
        "hello@acme.example",
        OURS,
        "Not interested myself, but meet Budi <budi@santoso.example>.",
        date=NOW,
    )
    assert verdict(raw, rules).kind == "reply"


# -- spam complaints (feedback loops) ---------------------------------------------------------


def test_a_feedback_loop_report_is_a_spam_complaint_with_its_fields(rules: Rules) -> None:
    raw = samples.arf("Ana@Example.com", OURS, date=NOW)
    parsed = parse_message(raw)
    assert parsed.feedback is not None
    assert (parsed.feedback.type, parsed.feedback.recipients) == ("abuse", ("ana@example.com",))
    assert parsed.feedback.reporter == "ExampleMail-Feedback/2.0"
    assert parsed.original_message_id == OURS  # the copy of our email it reports
    found = verdict(raw, rules)
    assert found.kind == "complaint" and "abuse" in found.why
    # the provider's report is not a person's reply to the thread, nor a bounce
    assert not found.bounces and not found.reply_text


@pytest.mark.parametrize(
    ("feedback_type", "kind"),
    [
        ("abuse", "complaint"),
        ("fraud", "complaint"),
        ("virus", "complaint"),
        ("other", "complaint"),
        ("not-spam", "ignored"),  # a verdict taken back
        ("auth-failure", "ignored"),  # about our signatures, not the recipient's wishes
    ],
)
def test_only_reports_of_unwanted_email_are_complaints(
    feedback_type: str, kind: str, rules: Rules
) -> None:
    raw = samples.arf(None, OURS, date=NOW, feedback_type=feedback_type)
    assert verdict(raw, rules).kind == kind


def test_a_feedback_report_without_readable_fields_is_still_a_complaint(rules: Rules) -> None:
    raw = email(
        "From: fbl@isp.example\nContent-Type: multipart/report; "
        'report-type=feedback-report; boundary="b"',
        "--b\r\nContent-Type: text/plain\r\n\r\nThis is an abuse report.\r\n--b--\r\n",
    )
    found = verdict(raw, rules)
    assert found.kind == "complaint" and "fbl@isp.example" in found.why


# -- what is not ours, and what cannot be read ------------------------------------------------


def test_our_own_mail_and_read_receipts_are_ignored(rules: Rules) -> None:
    assert verdict(email("From: Acme <team@acme.example>\nSubject: x"), rules).kind == "ignored"
    receipt = email(
        "From: ana@example.com\nContent-Type: multipart/report; "
        'report-type=disposition-notification; boundary="b"',
        "--b\r\nContent-Type: text/plain\r\n\r\nRead.\r\n--b--\r\n",
    )
    assert verdict(receipt, rules).kind == "ignored"


@pytest.mark.parametrize(
    "raw",
    [
        b"\x80\xff\xfegarbage\x80\r\n",
        b"just some text, no header at all",
        b"",
    ],
)
def test_something_that_is_not_an_email_is_unreadable(raw: bytes, rules: Rules) -> None:
    assert verdict(raw, rules).kind == "unreadable"


@pytest.mark.parametrize(
    "raw",
    [
        # a multipart without its closing boundary, and base64 cut in the middle
        b'From: ana@example.com\r\nContent-Type: multipart/mixed; boundary="x"\r\n\r\n'
        b"--x\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"U3VyZSwgbGV0J3MgdGFsaw=\r\n--x\r\nContent-Type: application/pdf\r\n\r\nJVBER",
        # a boundary that never appears
        b'From: ana@example.com\r\nContent-Type: multipart/alternative; boundary="nope"\r\n\r\n'
        b"Sure, let's talk",
        # 8-bit garbage in headers, a NUL, an encoded word in an unknown charset
        b"From: =?x-klingon?q?Ana?= <ana@example.com>\r\nSubject: \xff\xfe\x00 caf\xe9\r\n"
        b"Content-Type: text/plain; charset=x-klingon\r\n\r\nSure, let's talk \xe9\xe8",
        # quoted-printable soft line break at the very end, a charset parameter in quotes
        b"From: ana@example.com\r\nContent-Type: text/plain; charset=\"'utf-8'\"\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\nSure, let's talk=",
    ],
    ids=["truncated-base64", "missing-boundary", "eight-bit-headers", "odd-charset-quotes"],
)
def test_malformed_mime_is_still_read(raw: bytes, rules: Rules) -> None:
    assert verdict(raw, rules).kind == "reply"
    assert parse_message(raw).text.startswith("Sure, let's talk")


@pytest.mark.parametrize(
    ("data", "charset", "text"),
    [
        ("مرحبا".encode("cp1256"), "windows-1256", "مرحبا"),
        ("こんにちは".encode("iso-2022-jp"), "iso-2022-jp", "こんにちは"),
        ("café".encode("cp1252"), "x-unknown", "café"),
        ("café".encode(), "latin-1", "cafÃ©"),  # declared wrong: decoded as declared
        ("你好".encode("gb18030"), "GB2312", "你好"),
        ("שלום".encode("iso-8859-8"), "iso-8859-8-i", "שלום"),
        (b"\xff\xfe", "utf-8", "ÿþ"),
    ],
)
def test_odd_charsets_decode(data: bytes, charset: str, text: str) -> None:
    assert decode_bytes(data, charset) == text


def test_encoded_words_in_any_charset_and_raw_utf8_headers() -> None:
    raw = (
        "From: =?windows-1256?b?w83jzw==?= <ana@example.com>\r\n"
        "Subject: =?utf-8?q?Re=3A_caf=C3=A9?= ☕\r\n\r\nhi"
    ).encode()
    parsed = parse_message(raw)
    assert parsed.from_name == "أحمد"
    assert parsed.subject == "Re: café ☕"


def test_html_to_text_skips_styles_and_quotes() -> None:
    html = "<style>p{}</style><p>Hi&nbsp;there</p><blockquote>old</blockquote><br>Bye"
    assert html_to_text(html) == "Hi there\n\nBye"


def test_normalize_folds_arabic_and_digits() -> None:
    assert normalize("غيرُ  مهتمٍ ١٠ إلغاء") == "غير مهتم 10 الغاء"


# -- IMAP response parsing -------------------------------------------------------------------


def test_fetch_responses_with_literals_and_tricky_quoting() -> None:
    lines = [
        b"1 FETCH (UID 7 RFC822.SIZE 40 BODY[HEADER]<0> {3}",
        bytearray(b"a\r\n"),
        b" BODY[TEXT]<0> {0}",
        bytearray(b""),
        b")",
        b'* 2 FETCH (UID 8 BODYSTRUCTURE (("text" "plain" ("name" "a (1.txt") NIL NIL "7bit" 1 1)'
        b' "mixed" ("boundary" "b\\"q") NIL NIL))',
        b"Fetch completed (0.001 + 0.000 secs).",
    ]
    found = parse_fetch(lines)
    assert found[7]["RFC822.SIZE"] == 40 and found[7]["BODY[HEADER]<0>"] == b"a\r\n"
    structure = found[8]["BODYSTRUCTURE"]
    assert structure[0][:2] == [b"text", b"plain"] and structure[2][1] == b'b"q'


def test_uid_sets_are_compact() -> None:
    assert uid_set([9, 1, 2, 3, 7, 10]) == "1:3,7,9:10"
    assert uid_set([5]) == "5"


# -- settings and the phrases file -------------------------------------------------------------


def test_own_phrases_file_adds_a_language(tmp_path: Path) -> None:
    phrases = tmp_path / "phrases.toml"
    phrases.write_text(
        '[de]\nnot_interested = ["kein Interesse"]\nauto_reply_subjects = ["Abwesenheitsnotiz"]\n'
        '[de.months]\n"märz" = 3\n',
        encoding="utf-8",
    )
    settings = write(tmp_path, f'phrases = "{phrases.name}"\n')
    rules = rules_for(settings)
    raw = samples.reply("ana@example.com", US, OURS, "Danke, kein Interesse.", date=NOW)
    assert verdict(raw, rules).kind == "not_interested"
    away = email("From: ana@example.com\nSubject: Abwesenheitsnotiz", "Zurück am 16. März")
    assert verdict(away, rules).kind == "auto_reply"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[de]\nnot_interested = 3\n", "must be a list of strings"),
        ("[de]\nquote_markers = ['(unclosed']\n", "missing ), unterminated subpattern"),
        ('[de]\nmonths = {"märz" = 13}\n', "must map names to 1..12"),
        ("[de]\nsynonyms = []\n", "unknown key"),
        ("not toml at all [", "is not valid TOML"),
    ],
)
def test_a_broken_phrases_file_names_the_setting(tmp_path: Path, text: str, problem: str) -> None:
    (tmp_path / "phrases.toml").write_text(text, encoding="utf-8")
    with pytest.raises(SettingsError) as caught:
        rules_for(write(tmp_path, 'phrases = "phrases.toml"\n'))
    assert "imap.phrases" in str(caught.value) and problem in str(caught.value)


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('security = "ssl"', "imap.security"),
        ('processed = "delete"', "imap.processed"),
        ('processed_flag = "\\\\Deleted"', "imap.processed_flag"),
        ('processed_folder = "a*b"', "imap.processed_folder"),
        ("soft_bounce_limit = 0", "imap.soft_bounce_limit"),
        ("auto_reply_wait_days = -1", "imap.auto_reply_wait_days"),
        ("body_bytes = 10", "imap.body_bytes"),
        ('phrases = "missing.toml"', "imap.phrases"),
        ('ca_file = "missing.pem"', "imap.ca_file"),
    ],
)
def test_imap_settings_are_checked(tmp_path: Path, line: str, key: str) -> None:
    with pytest.raises(SettingsError) as caught:
        write(tmp_path, line + "\n")
    assert caught.value.key == key


def test_imap_settings_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text("[imap]\n", encoding="utf-8")
    env = {"ENGINE_IMAP_IDLE": "false", "ENGINE_IMAP_PROCESSED": "move"}
    imap = load_settings(path, env=env).imap
    assert (imap.idle, imap.processed, imap.auto_reply_wait_days) == (False, "move", 3)


def write(folder: Path, imap: str) -> Settings:
    path = folder / "settings.toml"
    path.write_text("[imap]\n" + imap, encoding="utf-8")
    return load_settings(path, env={})
