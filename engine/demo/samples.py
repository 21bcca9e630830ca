"""Realistic incoming emails as raw bytes: a person's reply, an out-of-office, a DSN bounce,
a feedback-loop spam complaint (ARF).

The demo feeds them to ``process_message`` (the poller's own path) where no IMAP server runs,
the benchmark fills a mailbox with them, and the tests start from them.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime


def _base(
    sender: str, to: str, subject: str, date: datetime, message_id: str | None
) -> EmailMessage:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = message_id or f"<{secrets.token_hex(12)}@mail.example.net>"
    return msg


def reply(
    sender: str,
    to: str,
    in_reply_to: str | None,
    text: str,
    *,
    date: datetime,
    subject: str = "Re: who are one or two people we could help?",
    quoted: str = "Who are one or two people we could help?",
    cc: str | None = None,
    message_id: str | None = None,
) -> bytes:
    """A person's answer to ``in_reply_to``, with the usual quoted original under it."""
    msg = _base(sender, to, subject, date, message_id)
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
        msg["References"] = in_reply_to
    if cc:
        msg["Cc"] = cc
    when = date.strftime("%a, %b %d, %Y at %I:%M %p")
    quote = "\n".join(f"> {line}" for line in quoted.splitlines())
    msg.set_content(f"{text}\n\nOn {when} {to} wrote:\n{quote}\n")
    return msg.as_bytes()


def auto_reply(
    sender: str,
    to: str,
    in_reply_to: str | None,
    text: str,
    *,
    date: datetime,
    subject: str = "Automatic reply: who are one or two people we could help?",
    message_id: str | None = None,
) -> bytes:
    """An out-of-office answer (RFC 3834 ``Auto-Submitted: auto-replied``)."""
    msg = _base(sender, to, subject, date, message_id)
    msg["Auto-Submitted"] = "auto-replied"
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    msg.set_content(text)
    return msg.as_bytes()


def dsn(
    recipient: str,
    original_id: str,
    *,
    date: datetime,
    status: str = "5.1.1",
    diagnostic: str = "550 5.1.1 <{recipient}>: Recipient address rejected: User unknown",
    action: str = "failed",
    sender: str = "team@acme.example",
    reporting_mta: str = "mx.example.net",
    message_id: str | None = None,
) -> bytes:
    """A delivery status notification (RFC 3464, as Postfix writes it) about our email
    ``original_id`` to ``recipient``."""
    diagnostic = diagnostic.format(recipient=recipient)
    boundary = secrets.token_hex(8)
    text = f"""\
From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>
To: {sender}
Subject: Undelivered Mail Returned to Sender
Date: {format_datetime(date)}
Message-ID: {message_id or f"<{secrets.token_hex(12)}@{reporting_mta}>"}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"

--{boundary}
Content-Type: text/plain; charset=us-ascii

This is the mail system at host {reporting_mta}.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

<{recipient}>: {diagnostic}

--{boundary}
Content-Type: message/delivery-status

Reporting-MTA: dns; {reporting_mta}
Arrival-Date: {format_datetime(date)}

Final-Recipient: rfc822; {recipient}
Original-Recipient: rfc822;{recipient}
Action: {action}
Status: {status}
Diagnostic-Code: smtp; {diagnostic}

--{boundary}
Content-Type: text/rfc822-headers

From: Acme Team <{sender}>
To: {recipient}
Subject: Who could you introduce?
Message-ID: {original_id}

--{boundary}--
"""
    return text.replace("\n", "\r\n").encode()


def arf(
    recipient: str | None,
    original_id: str,
    *,
    date: datetime,
    feedback_type: str = "abuse",
    sender: str = "team@acme.example",
    reporter: str = "feedback@arf.mail.example.net",
    message_id: str | None = None,
) -> bytes:
    """A feedback-loop abuse report (ARF, RFC 5965, as large mailbox providers send them)
    saying that ``recipient`` marked our email ``original_id`` as spam. ``recipient`` None:
    the provider redacted the address, as many do; only the Message-ID is left to match."""
    boundary = secrets.token_hex(8)
    rcpt = f"Original-Rcpt-To: <{recipient}>\n" if recipient else ""
    to = recipient or "redacted@mail.example.net"
    text = f"""\
From: Mail Feedback Loop <{reporter}>
To: fbl@acme.example
Subject: FW: Who could you introduce?
Date: {format_datetime(date)}
Message-ID: {message_id or f"<{secrets.token_hex(12)}@arf.mail.example.net>"}
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="{boundary}"

--{boundary}
Content-Type: text/plain; charset="US-ASCII"

This is an email abuse report for an email message received from IP 203.0.113.7 on
{format_datetime(date)}. For more information about this format please see
https://www.rfc-editor.org/rfc/rfc5965.

--{boundary}
Content-Type: message/feedback-report

Feedback-Type: {feedback_type}
User-Agent: ExampleMail-Feedback/2.0
Version: 1
Original-Mail-From: <{sender}>
{rcpt}Arrival-Date: {format_datetime(date)}
Source-IP: 203.0.113.7
Reported-Domain: acme.example

--{boundary}
Content-Type: message/rfc822
Content-Disposition: inline

From: Acme Team <{sender}>
To: {to}
Subject: Who could you introduce?
Message-ID: {original_id}
Feedback-ID: ask:referral-ask:referral:acme

Who are one or two people we could help?

--{boundary}--
"""
    return text.replace("\n", "\r\n").encode()
