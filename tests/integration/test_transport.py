"""SMTP delivery against a real aiosmtpd server, and the reply classifier."""

from __future__ import annotations

import asyncio
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from engine.base.errors import PermanentFailure, PolicyFailure, TemporaryFailure, TransportError
from engine.mail.mime import OutgoingEmail, build_message
from engine.mail.smtp import SmtpTransport, Transport, classify, wire_data
from engine.program.settings import SmtpSettings
from tests.support.smtp_server import (  # noqa: F401
    SmtpSink,
    TlsCertificate,
    sink_factory_fixture,
    tls_certificate_fixture,
)

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
SENDER = "team@acme.example"


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def message_for(recipient: str, text: str = "Hello\n") -> bytes:
    return build_message(
        OutgoingEmail(
            message_id=f"<{recipient.replace('@', '.')}@acme.example>",
            from_name="Acme Team",
            from_email=SENDER,
            reply_to=SENDER,
            to_name="",
            to_email=recipient,
            subject="Who could we help?",
            html=f"<p>{text}</p>",
            text=text,
            date=datetime(2026, 3, 2, 10, 0, tzinfo=UTC),
            list_unsubscribe_url="https://t.acme.example/u/tok",
        )
    )


async def send_all(transport: Transport, recipients: list[str]) -> None:
    await asyncio.gather(*(transport.send(SENDER, r, message_for(r)) for r in recipients))


async def send_one(settings: SmtpSettings, recipient: str, **options: Any) -> None:
    async with SmtpTransport(settings, **options) as transport:
        await transport.send(SENDER, recipient, message_for(recipient))


def test_delivers_the_message_intact(smtp_sink: SmtpSink) -> None:
    text = "Hello Ann,\n.a line that starts with a dot\n.\nشكرا 🎉\n"
    data = message_for("ann@example.com", text)

    async def scenario() -> None:
        async with SmtpTransport(smtp_sink.smtp_settings()) as transport:
            await transport.send(SENDER, "ann@example.com", data)

    run(scenario())
    (received,) = smtp_sink.wait_for(1)
    assert received.mail_from == SENDER
    assert received.rcpt_tos == ("ann@example.com",)
    assert received.data == data
    body = received.message.get_body(("plain",))
    assert body is not None and body.get_content().replace("\r\n", "\n") == text


@pytest.mark.parametrize(
    ("data", "wire"),
    [
        (b"Hi\r\n", b"Hi\r\n.\r\n"),
        (b"", b"\r\n.\r\n"),
        (b".", b"..\r\n.\r\n"),
        (b".a\r\n.\r\n..b\r\nc.\r\n", b"..a\r\n..\r\n...b\r\nc.\r\n.\r\n"),
        (b"lone LF\nlone CR\rboth\r\n\n.x", b"lone LF\r\nlone CR\r\nboth\r\n\r\n..x\r\n.\r\n"),
        (b"\r\r\n\n\r", b"\r\n\r\n\r\n\r\n.\r\n"),
    ],
)
def test_wire_data_has_crlf_line_ends_stuffed_dots_and_the_end_marker(
    data: bytes, wire: bytes
) -> None:
    assert wire_data(data) == wire


def test_awkward_payloads_arrive_as_sent_with_crlf_line_ends(smtp_sink: SmtpSink) -> None:
    payloads = [b".first\nlone LF\rlone CR\r\n.\r\n..two\r\nno line end", b"", b".", b"x\r\n.\r\n"]

    async def scenario() -> None:
        async with SmtpTransport(smtp_sink.smtp_settings()) as transport:
            for payload in payloads:
                await transport.send(SENDER, "ann@example.com", payload)

    run(scenario())
    received = [m.data for m in smtp_sink.wait_for(len(payloads))]
    assert received == [
        b".first\r\nlone LF\r\nlone CR\r\n.\r\n..two\r\nno line end\r\n",
        b"\r\n",
        b".\r\n",
        b"x\r\n.\r\n",
    ]


def test_connections_are_reused_across_messages(smtp_sink: SmtpSink) -> None:
    async def scenario() -> None:
        async with SmtpTransport(smtp_sink.smtp_settings(connections=4)) as transport:
            for i in range(10):  # one at a time: the warm connection serves them all
                await transport.send(SENDER, f"r{i}@example.com", message_for(f"r{i}@example.com"))

    run(scenario())
    assert len(smtp_sink.wait_for(10)) == 10
    assert smtp_sink.connections == 1


def test_concurrency_is_bounded_by_the_pool(smtp_sink: SmtpSink) -> None:
    smtp_sink.delay_seconds = 0.05  # slow DATA replies, so sends overlap

    async def scenario() -> None:
        async with SmtpTransport(smtp_sink.smtp_settings(connections=3)) as transport:
            await send_all(transport, [f"r{i}@example.com" for i in range(12)])

    run(scenario())
    assert len(smtp_sink.wait_for(12)) == 12
    assert smtp_sink.connections == 3  # 12 messages over 3 connections
    assert smtp_sink.peak_concurrent_data == 3


def test_rate_limit_spaces_sends_across_connections(smtp_sink: SmtpSink) -> None:
    async def scenario() -> None:
        settings = smtp_sink.smtp_settings(connections=4, rate_per_second=10)
        async with SmtpTransport(settings) as transport:
            await send_all(transport, [f"r{i}@example.com" for i in range(4)])

    run(scenario())
    received = smtp_sink.wait_for(4)
    # 4 sends at 10/s start at 0, 0.1, 0.2 and 0.3 s, even with 4 idle connections; only a
    # lower bound is asserted (a slow machine stretches the spread, it cannot shrink it).
    spread = received[-1].received_at - received[0].received_at
    assert spread >= 0.2


def test_unlimited_rate_sends_without_pacing(smtp_sink: SmtpSink) -> None:
    async def scenario() -> None:
        async with SmtpTransport(smtp_sink.smtp_settings(connections=2)) as transport:
            await send_all(transport, [f"r{i}@example.com" for i in range(20)])

    run(scenario())
    assert len(smtp_sink.wait_for(20)) == 20


def test_a_4xx_reply_is_temporary_with_retry_after_and_the_connection_stays_usable(
    smtp_sink: SmtpSink,
) -> None:
    smtp_sink.rcpt_responses["busy@example.com"] = "451 4.3.0 Try again in 60 seconds"

    async def scenario() -> TemporaryFailure:
        async with SmtpTransport(smtp_sink.smtp_settings(connections=1)) as transport:
            with pytest.raises(TemporaryFailure) as caught:
                await transport.send(SENDER, "busy@example.com", message_for("busy@example.com"))
            await transport.send(SENDER, "ann@example.com", message_for("ann@example.com"))
            return caught.value

    error = run(scenario())
    assert error.code == 451
    assert error.retry_after == 60
    assert "Try again in 60 seconds" in str(error)
    (received,) = smtp_sink.wait_for(1)
    assert received.rcpt_tos == ("ann@example.com",)  # RSET: no leftover envelope
    assert smtp_sink.connections == 1


def test_a_dropped_connection_is_temporary_and_the_next_send_reconnects(
    smtp_sink: SmtpSink,
) -> None:
    smtp_sink.disconnect_on_data_once = True

    async def scenario() -> None:
        async with SmtpTransport(smtp_sink.smtp_settings(connections=1)) as transport:
            with pytest.raises(TemporaryFailure, match="connection lost during DATA"):
                await transport.send(SENDER, "ann@example.com", message_for("ann@example.com"))
            await transport.send(SENDER, "bob@example.com", message_for("bob@example.com"))

    run(scenario())
    (received,) = smtp_sink.wait_for(1)
    assert received.rcpt_tos == ("bob@example.com",)
    assert received.connection == 2
    assert smtp_sink.connections == 2


def test_connections_closed_by_the_server_between_sends_are_reopened(smtp_sink: SmtpSink) -> None:
    async def scenario() -> None:
        async with SmtpTransport(smtp_sink.smtp_settings(connections=1)) as transport:
            await transport.send(SENDER, "ann@example.com", message_for("ann@example.com"))
            smtp_sink.drop_connections()  # as a server does with idle clients
            await asyncio.sleep(0.05)  # let the client see the close
            await transport.send(SENDER, "bob@example.com", message_for("bob@example.com"))

    run(scenario())
    assert [m.connection for m in smtp_sink.wait_for(2)] == [1, 2]


def test_unknown_mailbox_is_a_hard_bounce(smtp_sink: SmtpSink) -> None:
    smtp_sink.rcpt_responses["gone@example.com"] = "550 5.1.1 User unknown"
    with pytest.raises(PermanentFailure) as caught:
        run(send_one(smtp_sink.smtp_settings(), "gone@example.com"))
    assert caught.value.hard_bounce is True
    assert caught.value.code == 550
    assert smtp_sink.messages == []


def test_full_mailbox_is_permanent_but_not_a_hard_bounce(smtp_sink: SmtpSink) -> None:
    smtp_sink.rcpt_responses["full@example.com"] = "552 5.2.2 Mailbox full"
    with pytest.raises(PermanentFailure) as caught:
        run(send_one(smtp_sink.smtp_settings(), "full@example.com"))
    assert caught.value.hard_bounce is False


def test_spam_rejection_at_data_is_a_policy_failure(smtp_sink: SmtpSink) -> None:
    smtp_sink.data_response_once = "550 5.7.1 Message rejected as spam"
    with pytest.raises(PolicyFailure) as caught:
        run(send_one(smtp_sink.smtp_settings(), "ann@example.com"))
    assert caught.value.code == 550
    assert smtp_sink.messages == []


def test_sender_refused_at_mail_from_is_a_policy_failure(smtp_sink: SmtpSink) -> None:
    smtp_sink.mail_responses[SENDER] = "553 Sender address not allowed"
    with pytest.raises(PolicyFailure, match="553"):
        run(send_one(smtp_sink.smtp_settings(), "ann@example.com"))


def test_invalid_addresses_never_reach_the_server(smtp_sink: SmtpSink) -> None:
    async def scenario() -> None:
        async with SmtpTransport(smtp_sink.smtp_settings()) as transport:
            with pytest.raises(PermanentFailure, match="recipient"):
                await transport.send(SENDER, "ann@example.com>\r\nRCPT TO:<eve@evil.example", b"x")
            with pytest.raises(PolicyFailure, match="sender"):
                await transport.send("team@acme.example\r\nRSET", "ann@example.com", b"x")

    run(scenario())
    assert smtp_sink.connections == 0


def test_a_slow_server_times_out_as_temporary(smtp_sink: SmtpSink) -> None:
    smtp_sink.delay_seconds = 0.5

    async def scenario() -> None:
        settings = smtp_sink.smtp_settings(connections=1, timeout=0.1)
        async with SmtpTransport(settings) as transport:
            with pytest.raises(TemporaryFailure, match="timed out"):
                await transport.send(SENDER, "ann@example.com", message_for("ann@example.com"))
            smtp_sink.delay_seconds = 0.0
            await transport.send(SENDER, "bob@example.com", message_for("bob@example.com"))

    run(scenario())
    # The timed-out message is abandoned with its connection; the next one arrives.
    assert ("bob@example.com",) in [m.rcpt_tos for m in smtp_sink.wait_for(1)]


def test_nothing_listening_is_temporary() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(TemporaryFailure, match="cannot connect"):
        run(send_one(SmtpSettings(host="127.0.0.1", port=port, timeout=2.0), "ann@example.com"))


def test_login_when_a_username_is_set(smtp_sink_factory: Any) -> None:
    sink = smtp_sink_factory(credentials={"mailer": "s3cret"})
    run(send_one(sink.smtp_settings(username="mailer", password="s3cret"), "ann@example.com"))
    (received,) = sink.wait_for(1)
    assert received.login == "mailer"


def test_wrong_password_is_a_policy_failure(smtp_sink_factory: Any) -> None:
    sink = smtp_sink_factory(credentials={"mailer": "s3cret"})
    with pytest.raises(PolicyFailure, match="login"):
        run(send_one(sink.smtp_settings(username="mailer", password="wrong"), "ann@example.com"))


def test_no_login_without_a_username(smtp_sink_factory: Any) -> None:
    sink = smtp_sink_factory(credentials={"mailer": "s3cret"})
    with pytest.raises(PolicyFailure, match="530"):  # the server wants a login we never try
        run(send_one(sink.smtp_settings(password="s3cret"), "ann@example.com"))


def test_a_pooled_connection_that_went_stale_is_replaced_without_failing(
    smtp_sink: SmtpSink, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with SmtpTransport(smtp_sink.smtp_settings(connections=1)) as transport:
            await transport.send(SENDER, "ann@example.com", message_for("ann@example.com"))
            # Closed while this loop is blocked: the client only finds out at MAIL FROM.
            smtp_sink.drop_connections()
            await transport.send(SENDER, "bob@example.com", message_for("bob@example.com"))

    with caplog.at_level("INFO", logger="engine.mail.smtp"):
        run(scenario())
    assert [m.connection for m in smtp_sink.wait_for(2)] == [1, 2]
    assert "smtp_stale_connection_replaced" in caplog.text


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_tls_modes_deliver(
    smtp_sink_factory: Any, tls_certificate: TlsCertificate, security: str
) -> None:
    sink = smtp_sink_factory(
        tls=security, tls_context=tls_certificate.server_context, credentials={"u": "p"}
    )
    settings = sink.smtp_settings(username="u", password="p")
    assert settings.security == security
    run(send_one(settings, "ann@example.com", tls_context=tls_certificate.client_context))
    (received,) = sink.wait_for(1)
    assert received.login == "u"


def test_an_untrusted_certificate_is_a_policy_failure(
    smtp_sink_factory: Any, tls_certificate: TlsCertificate
) -> None:
    sink = smtp_sink_factory(tls="tls", tls_context=tls_certificate.server_context)
    strict = ssl.create_default_context()  # the system CAs do not know our test certificate
    with pytest.raises(PolicyFailure, match="certificate"):
        run(send_one(sink.smtp_settings(), "ann@example.com", tls_context=strict))


def test_starttls_required_by_settings_but_not_offered_is_a_policy_failure(
    smtp_sink: SmtpSink,
) -> None:
    with pytest.raises(PolicyFailure, match="STARTTLS"):
        run(send_one(smtp_sink.smtp_settings(security="starttls"), "ann@example.com"))


def test_close_quits_and_a_later_send_reconnects(smtp_sink: SmtpSink) -> None:
    async def scenario() -> None:
        transport = SmtpTransport(smtp_sink.smtp_settings(connections=2))
        await send_all(transport, ["a@example.com", "b@example.com"])
        await transport.close()
        await transport.send(SENDER, "c@example.com", message_for("c@example.com"))
        await transport.close()

    run(scenario())
    assert len(smtp_sink.wait_for(3)) == 3
    assert smtp_sink.connections == 3
    assert smtp_sink.wait_for_open_connections(0)


def test_the_sink_can_keep_messages_as_eml_files(smtp_sink_factory: Any, tmp_path: Path) -> None:
    sink = smtp_sink_factory(maildir=tmp_path / "mail")
    run(send_one(sink.smtp_settings(), "ann@example.com"))
    (received,) = sink.wait_for(1)
    assert [p.name for p in (tmp_path / "mail").iterdir()] == ["000001.eml"]
    assert (tmp_path / "mail" / "000001.eml").read_bytes() == received.data
    with pytest.raises(TimeoutError, match="got 1 messages, expected 2"):
        sink.wait_for(2, timeout=0.01)


@pytest.mark.slow
def test_the_benchmark_sink_counts_what_the_transport_sends() -> None:
    sink = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "smtp_sink.py"), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sink.stdout is not None
        port = int(sink.stdout.readline().split()[-1])
        settings = SmtpSettings(host="127.0.0.1", port=port, connections=3, timeout=5.0)

        async def scenario() -> None:
            async with SmtpTransport(settings) as transport:
                await send_all(transport, [f"r{i}@example.com" for i in range(30)])
                await transport.send(SENDER, "empty@example.com", b"")

        run(scenario())
    finally:
        sink.send_signal(signal.SIGTERM)
        out, _ = sink.communicate(timeout=10)
    assert sink.returncode == 0
    assert out.strip() == "smtp_sink received 31"


@pytest.mark.parametrize(
    ("code", "message", "kind", "hard_bounce", "retry_after"),
    [
        # temporary
        (None, "Connection lost", TemporaryFailure, None, None),
        (None, "Timed out waiting for server response", TemporaryFailure, None, None),
        (
            421,
            "4.3.2 Service not available, closing transmission channel",
            TemporaryFailure,
            None,
            None,
        ),
        (451, "4.3.0 Try again in 120 seconds", TemporaryFailure, None, 120),
        (450, "4.2.1 Mailbox busy, retry in 5 minutes", TemporaryFailure, None, 300),
        (452, "4.2.2 Mailbox full. Retry after 30s", TemporaryFailure, None, 30),
        (
            451,
            "Temporary local problem, please try again after 2 hours",
            TemporaryFailure,
            None,
            7200,
        ),
        (
            450,
            "4.2.0 Recipient address rejected: Greylisted, retry in 300 seconds",
            TemporaryFailure,
            None,
            300,
        ),
        (451, "4.7.1 Greylisting in action, please come back later", TemporaryFailure, None, None),
        (452, "4.5.3 Too many recipients", TemporaryFailure, None, None),
        (-1, "Malformed SMTP response", TemporaryFailure, None, None),
        # policy: about us, the sender
        (
            421,
            "4.7.0 Try again later, closing connection. (unusual rate of unsolicited mail)",
            PolicyFailure,
            None,
            None,
        ),
        (450, "4.7.1 Client host rejected: cannot find your hostname", PolicyFailure, None, None),
        (550, "5.7.1 Message rejected as spam", PolicyFailure, None, None),
        (
            550,
            "5.7.26 Unauthenticated email from acme.example is not accepted due to domain's "
            "DMARC policy",
            PolicyFailure,
            None,
            None,
        ),
        (
            554,
            "5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org",
            PolicyFailure,
            None,
            None,
        ),
        (550, "SPF check failed", PolicyFailure, None, None),
        (554, "Your IP has a poor reputation", PolicyFailure, None, None),
        (451, "Sender blocked temporarily", PolicyFailure, None, None),
        (553, "5.1.7 Invalid sender address syntax", PolicyFailure, None, None),
        (550, "5.1.8 Bad sender's system address", PolicyFailure, None, None),
        (535, "5.7.8 Authentication credentials invalid", PolicyFailure, None, None),
        # permanent, about the recipient
        (550, "5.1.1 User unknown", PermanentFailure, True, None),
        (
            550,
            "5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
            PermanentFailure,
            True,
            None,
        ),
        (553, "5.1.3 Bad recipient address syntax", PermanentFailure, True, None),
        (550, "5.1.2 Domain not found", PermanentFailure, True, None),
        (550, "No such user here", PermanentFailure, True, None),
        (552, "5.2.2 Mailbox full", PermanentFailure, False, None),
        (550, "5.2.1 Mailbox disabled", PermanentFailure, False, None),
        (552, "5.3.4 Message too big for system", PermanentFailure, False, None),
        (554, "Transaction failed", PermanentFailure, False, None),
        (550, "Requested action not taken: mailbox unavailable", PermanentFailure, False, None),
        (550, "5.1.1 unknown user at 10.0.5.7.1", PermanentFailure, True, None),  # not 5.7.1
    ],
)
def test_classify(
    code: int | None,
    message: str,
    kind: type[TransportError],
    hard_bounce: bool | None,
    retry_after: float | None,
) -> None:
    error = classify(code, message)
    assert type(error) is kind
    assert error.code == code
    assert message.split()[-1] in str(error)
    if isinstance(error, PermanentFailure):
        assert error.hard_bounce is hard_bounce
    if isinstance(error, TemporaryFailure):
        assert error.retry_after == retry_after


def test_classify_joins_multi_line_replies() -> None:
    error = classify(
        550,
        "5.1.1 The email account that you tried to reach does not exist.\n"
        "5.1.1 Please try double-checking the recipient's email address",
    )
    assert isinstance(error, PermanentFailure) and error.hard_bounce
    assert "\n" not in str(error)
