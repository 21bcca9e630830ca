"""A real aiosmtpd server on 127.0.0.1 for tests, running in a background thread.

``SmtpSink`` records every accepted message and can be told to fail in the ways real servers
do: per-recipient or per-sender replies, a one-off DATA reply, a dropped connection, slow
replies, required login, STARTTLS or implicit TLS. Fixtures: ``smtp_sink`` (a started sink),
``smtp_sink_factory`` (sinks with options) and ``tls_certificate`` (a throw-away CA); use
``pytest_plugins = ["tests.support.smtp_server"]`` in the root conftest to offer them everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, cast

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from engine.program.settings import SmtpSettings

START_TIMEOUT = 5.0


@dataclass(frozen=True)
class ReceivedMessage:
    """One message the sink accepted."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    message: EmailMessage  # ``data`` parsed with the stdlib parser, policy=default
    connection: int  # 1 for the first connection the sink accepted, 2 for the next ...
    login: str | None  # the user name the client logged in with, if it did
    received_at: float  # time.monotonic() when DATA completed


class _Session(SMTP):
    """aiosmtpd's protocol, telling the sink about connections opening and closing."""

    def __init__(self, sink: SmtpSink, **kwargs: Any) -> None:
        super().__init__(_Handler(sink), **kwargs)
        self.sink = sink
        self.number = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        after_starttls = self._original_transport is not None  # same connection, now TLS
        super().connection_made(transport)
        if not after_starttls:
            self.number = self.sink._connection_opened(self)

    def connection_lost(self, error: Exception | None) -> None:
        self.sink._connection_closed(self)
        super().connection_lost(error)


class _Handler:
    """aiosmtpd hooks that consult the sink's failure settings and record messages."""

    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_MAIL(
        self,
        server: _Session,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        sink = self.sink
        with sink._lock:
            refusal = sink.mail_responses.get(address.lower())
            login_required = sink.credentials is not None
        if login_required and not session.authenticated:
            return "530 5.7.0 Authentication required"
        if refusal:
            return refusal
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self,
        server: _Session,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        await self.sink._rcpt_gate()
        with self.sink._lock:
            refusal = self.sink.rcpt_responses.get(address.lower())
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: _Session, session: Session, envelope: Envelope) -> str:
        sink = self.sink
        sink._data_started()
        try:
            if sink.delay_seconds:
                await asyncio.sleep(sink.delay_seconds)
            with sink._lock:
                disconnect, sink._disconnect_on_data_once = sink._disconnect_on_data_once, False
                response = None
                if not disconnect:
                    response, sink._data_response_once = sink._data_response_once, None
            if disconnect:
                # A dropped connection: the reply below is never sent.
                cast(asyncio.Transport, server.transport).abort()
                return "421 4.4.2 Connection dropped"
            if response:
                return response
            data = cast(bytes, envelope.original_content)
            login = session.auth_data if session.authenticated else None
            sink._record(
                ReceivedMessage(
                    mail_from=cast(str, envelope.mail_from),
                    rcpt_tos=tuple(envelope.rcpt_tos),
                    data=data,
                    message=email.message_from_bytes(data, policy=email.policy.default),
                    connection=server.number,
                    login=login if isinstance(login, str) else None,
                    received_at=time.monotonic(),
                )
            )
            return "250 2.0.0 OK queued"
        finally:
            sink._data_finished()


class SmtpSink:
    """An aiosmtpd server on ``host``:``port`` (0 picks a free port) in a background thread.

    Usable from sync tests, async tests (its loop is its own) and tests that run the CLI in a
    subprocess. Failure modes may be changed at any time:

    - ``rcpt_responses`` / ``mail_responses``: address (lower case) -> reply, e.g.
      ``{"gone@example.com": "550 5.1.1 User unknown"}``
    - ``data_response_once``: the reply to the next DATA, then back to 250
    - ``disconnect_on_data_once``: drop the connection at the next DATA, without a reply
    - ``delay_seconds``: wait this long before answering each DATA
    - ``credentials``: user -> password; MAIL then requires a successful AUTH
    - ``tls``: "starttls" or "tls" with ``tls_context`` (the server's certificate)
    - ``maildir``: also write each accepted message to ``<maildir>/<n>.eml``
    - ``stall_next_rcpt()``: the next RCPT gets no answer until ``release_rcpt()`` (a server
      that stalls mid-exchange); ``wait_for_rcpt_stall()`` says when it is holding one
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        maildir: Path | None = None,
        rcpt_responses: dict[str, str] | None = None,
        mail_responses: dict[str, str] | None = None,
        data_response_once: str | None = None,
        disconnect_on_data_once: bool = False,
        delay_seconds: float = 0.0,
        credentials: dict[str, str] | None = None,
        tls: Literal["none", "starttls", "tls"] = "none",
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        if (tls == "none") != (tls_context is None):
            raise ValueError("tls and tls_context go together")
        self.host = host
        self.port = port
        self.maildir = maildir
        self.rcpt_responses = {k.lower(): v for k, v in (rcpt_responses or {}).items()}
        self.mail_responses = {k.lower(): v for k, v in (mail_responses or {}).items()}
        self.delay_seconds = delay_seconds
        self.credentials = credentials
        self.tls = tls
        self._tls_context = tls_context
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._data_response_once = data_response_once
        self._disconnect_on_data_once = disconnect_on_data_once
        self._messages: list[ReceivedMessage] = []
        self._sessions: set[_Session] = set()
        self._connections = 0
        self._active_data = 0
        self._peak_data = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stall_rcpt = False
        self._rcpt_held: asyncio.Event | None = None  # set by release_rcpt()
        self._rcpt_stalled = threading.Event()

    # -- configuration that is consumed once, set from any thread --------------------------

    @property
    def data_response_once(self) -> str | None:
        with self._lock:
            return self._data_response_once

    @data_response_once.setter
    def data_response_once(self, response: str | None) -> None:
        with self._lock:
            self._data_response_once = response

    @property
    def disconnect_on_data_once(self) -> bool:
        with self._lock:
            return self._disconnect_on_data_once

    @disconnect_on_data_once.setter
    def disconnect_on_data_once(self, value: bool) -> None:
        with self._lock:
            self._disconnect_on_data_once = value

    def stall_next_rcpt(self) -> None:
        """Hold the next RCPT without an answer until ``release_rcpt()`` (60 s at most)."""
        with self._lock:
            self._stall_rcpt = True
            self._rcpt_stalled.clear()

    def wait_for_rcpt_stall(self, timeout: float = 5.0) -> bool:
        """Block until an RCPT is being held; False on timeout."""
        return self._rcpt_stalled.wait(timeout)

    def release_rcpt(self) -> None:
        """Answer the RCPT being held."""
        held, loop = self._rcpt_held, self._loop
        if held is not None and loop is not None:
            loop.call_soon_threadsafe(held.set)

    async def _rcpt_gate(self) -> None:
        with self._lock:
            stall, self._stall_rcpt = self._stall_rcpt, False
        if not stall:
            return
        self._rcpt_held = asyncio.Event()
        self._rcpt_stalled.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._rcpt_held.wait(), 60)

    # -- what happened ---------------------------------------------------------------------

    @property
    def messages(self) -> list[ReceivedMessage]:
        """A snapshot of the accepted messages, in arrival order."""
        with self._lock:
            return list(self._messages)

    @property
    def connections(self) -> int:
        """How many connections the sink has accepted so far."""
        with self._lock:
            return self._connections

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._sessions)

    @property
    def peak_concurrent_data(self) -> int:
        """The most DATA commands the sink was handling at the same moment."""
        with self._lock:
            return self._peak_data

    def wait_for(self, count: int, timeout: float = 5.0) -> list[ReceivedMessage]:
        """Block until at least ``count`` messages arrived; return them. TimeoutError otherwise."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._messages) >= count, timeout):
                raise TimeoutError(
                    f"SMTP sink got {len(self._messages)} messages, expected {count} "
                    f"within {timeout} s"
                )
            return list(self._messages)

    def wait_for_open_connections(self, count: int, timeout: float = 5.0) -> bool:
        """Block until exactly ``count`` connections are open; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self._sessions) == count, timeout)

    def wait_for_data(self, timeout: float = 5.0) -> None:
        """Block until the sink is handling (or has handled) a DATA. TimeoutError otherwise."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._peak_data > 0, timeout):
                raise TimeoutError(f"SMTP sink saw no DATA within {timeout} s")

    def drop_connections(self) -> None:
        """Close every open connection from the server side, as servers do with idle clients."""
        if self._loop is None:
            raise RuntimeError("SMTP sink is not running")

        async def drop() -> None:
            with self._lock:
                sessions = list(self._sessions)
            for session in sessions:
                if session.transport is not None:
                    session.transport.close()
            while self.open_connections:  # until the sockets are really closed
                await asyncio.sleep(0)

        asyncio.run_coroutine_threadsafe(drop(), self._loop).result(START_TIMEOUT)

    def smtp_settings(self, **overrides: Any) -> SmtpSettings:
        """SmtpSettings pointing at this sink (security matches its TLS mode)."""
        base = SmtpSettings(host=self.host, port=self.port, security=self.tls, timeout=5.0)
        return replace(base, **overrides)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Self:
        """Start serving; returns once the port is known. Re-raises start-up errors here."""
        if self._thread is not None:
            raise RuntimeError("SMTP sink already started")
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                server = loop.run_until_complete(
                    loop.create_server(
                        self._new_session,
                        self.host,
                        self.port,
                        ssl=self._tls_context if self.tls == "tls" else None,
                    )
                )
            except BaseException as exc:
                errors.append(exc)
                ready.set()
                loop.close()
                return
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._shut_down(server))
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name=f"smtp-sink-{id(self):x}", daemon=True)
        self._thread.start()
        if not ready.wait(START_TIMEOUT):
            raise TimeoutError("SMTP sink did not start")
        if errors:
            self._thread.join()
            self._thread = None
            raise errors[0]
        return self

    def stop(self) -> None:
        """Stop serving and close every connection; safe to call twice."""
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(START_TIMEOUT)
        self._thread = None
        self._loop = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def _shut_down(self, server: asyncio.Server) -> None:
        server.close()
        with self._lock:
            sessions = list(self._sessions)
        for session in sessions:
            if session.transport is not None:
                cast(asyncio.Transport, session.transport).abort()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    # -- called from the server thread -----------------------------------------------------

    def _new_session(self) -> _Session:
        login = self.credentials is not None
        return _Session(
            self,
            hostname="smtp-sink.test",  # not the default: that costs a DNS lookup
            loop=self._loop,
            tls_context=self._tls_context if self.tls == "starttls" else None,
            require_starttls=self.tls == "starttls",
            authenticator=self._authenticate if login else None,
            # Optional AUTH, even without TLS (handle_MAIL enforces it): aiosmtpd warns when
            # AUTH is required without TLS, and warnings are errors in this test suite.
            auth_require_tls=False,
        )

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword) or self.credentials is None:
            return AuthResult(success=False, handled=False)
        user = auth_data.login.decode()
        ok = self.credentials.get(user) == auth_data.password.decode()
        return AuthResult(success=ok, handled=False, auth_data=user if ok else None)

    def _connection_opened(self, session: _Session) -> int:
        with self._changed:
            self._connections += 1
            self._sessions.add(session)
            self._changed.notify_all()
            return self._connections

    def _connection_closed(self, session: _Session) -> None:
        with self._changed:
            self._sessions.discard(session)
            self._changed.notify_all()

    def _data_started(self) -> None:
        with self._lock:
            self._active_data += 1
            self._peak_data = max(self._peak_data, self._active_data)
            self._changed.notify_all()

    def _data_finished(self) -> None:
        with self._lock:
            self._active_data -= 1

    def _record(self, received: ReceivedMessage) -> None:
        with self._changed:
            if self.maildir is not None:  # written before anyone waiting hears of it
                self.maildir.mkdir(parents=True, exist_ok=True)
                name = f"{len(self._messages) + 1:06d}.eml"
                (self.maildir / name).write_bytes(received.data)
            self._messages.append(received)
            self._changed.notify_all()


@dataclass(frozen=True)
class TlsCertificate:
    """A self-signed certificate for 127.0.0.1 and contexts for both ends."""

    cert_file: Path
    server_context: ssl.SSLContext
    client_context: ssl.SSLContext  # trusts exactly this certificate


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    """A started SmtpSink with no failure modes; stopped after the test."""
    with SmtpSink() as sink:
        yield sink


# The fixtures below are named apart from their functions: a test module can import
# sink_factory_fixture (unused-import warning silenced) and still take a parameter named
# smtp_sink_factory without shadowing that import.
@pytest.fixture(name="smtp_sink_factory")
def sink_factory_fixture() -> Iterator[Callable[..., SmtpSink]]:
    """Start SmtpSinks with options: ``smtp_sink_factory(credentials={"u": "p"})``."""
    sinks: list[SmtpSink] = []

    def start(**options: Any) -> SmtpSink:
        sink = SmtpSink(**options).start()
        sinks.append(sink)
        return sink

    yield start
    for sink in sinks:
        sink.stop()


@pytest.fixture(name="tls_certificate", scope="session")
def tls_certificate_fixture(tmp_path_factory: pytest.TempPathFactory) -> TlsCertificate:
    """A throw-away self-signed certificate for 127.0.0.1 (made with the openssl CLI)."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"),
            *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    return TlsCertificate(cert_file=cert, server_context=server, client_context=client)
