"""What the engine relies on inside its dependencies, beyond their documented API: one test per
internal, without network or servers (the peer of a protocol is a scripted transport).

Each failure names the dependency, the internal and our file that uses it. When one fails after
an upgrade, adapt that file, then this test, then the dependency's upper bound in
``pyproject.toml`` (which keeps such an upgrade from arriving unnoticed).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import signal
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from unittest import mock

import aiosmtpd.smtp
import aiosmtplib
import httpx
import pytest
import sqlalchemy as sa
import uvicorn
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from engine.inbound.tracking.server import _Server
from engine.mail.smtp import _data, wire_data


@contextlib.contextmanager
def relied_on(dependency: str, internal: str, ours: str) -> Iterator[None]:
    """Turn any failure inside into one sentence naming what changed and who relies on it."""
    try:
        yield
    except Exception as exc:
        raise AssertionError(
            f"{dependency}: {internal} is not what {ours} relies on any more "
            f"({type(exc).__name__}: {exc}). Adapt {ours}, then this test, then the bound "
            "in pyproject.toml."
        ) from exc


Reply = bytes | Callable[[bytes], bytes] | None  # what to answer to a write (of these bytes)


class ScriptedPeer(asyncio.Transport):
    """The far end of a protocol: records what is written, and answers each write with the
    next scripted reply (``None``: no answer), delivered as the event loop would."""

    def __init__(self, protocol: asyncio.Protocol, replies: list[Reply]) -> None:
        super().__init__()
        self.protocol = protocol
        self.replies = replies
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))
        reply = self.replies.pop(0) if self.replies else None
        if callable(reply):
            reply = reply(bytes(data))
        if reply is not None:
            asyncio.get_running_loop().call_soon(self.protocol.data_received, reply)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol  # type: ignore[assignment]

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.protocol


# -- aiosmtplib: engine/mail/smtp.py sends DATA through the connection's protocol -------------

SMTP_PY = "engine/mail/smtp.py (_data, wire_data)"


def smtp_protocol(replies: list[Reply]) -> tuple[Any, ScriptedPeer]:
    """aiosmtplib's protocol on a scripted peer, past the greeting."""
    protocol_module = importlib.import_module("aiosmtplib.protocol")
    protocol = protocol_module.SMTPProtocol()
    peer = ScriptedPeer(protocol, replies)
    protocol.connection_made(peer)
    protocol.data_received(b"220 ready\r\n")
    return protocol, peer


def test_aiosmtplib_client_lends_its_protocol_and_timeout() -> None:
    with relied_on("aiosmtplib", "SMTP.protocol and SMTP.timeout", SMTP_PY):
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=25, timeout=7.5)
        assert client.protocol is None  # until connected: _data checks for it
        assert client.timeout == 7.5
        assert "timeout" in inspect.signature(client.execute_command).parameters
        assert aiosmtplib.SMTPStatus.start_input == 354
        assert aiosmtplib.SMTPStatus.completed == 250


async def test_aiosmtplib_protocol_pairs_a_written_message_with_its_reply() -> None:
    with relied_on(
        "aiosmtplib", "SMTPProtocol.write and SMTPProtocol.read_response(timeout=)", SMTP_PY
    ):
        protocol, peer = smtp_protocol([b"250 2.0.0 queued\r\n"])
        assert (await protocol.read_response(timeout=1)).code == 220
        # Written outside any command, and read right after with no await in between.
        protocol.write(b"message\r\n.\r\n")
        reply = await protocol.read_response(timeout=1)
        assert (reply.code, reply.message) == (250, "2.0.0 queued")
        assert peer.written == [b"message\r\n.\r\n"]
        with pytest.raises(aiosmtplib.SMTPTimeoutError):  # our sender's "timed out" branch
            await protocol.read_response(timeout=0.01)
        protocol.connection_lost(None)
        with pytest.raises(aiosmtplib.SMTPServerDisconnected):  # the "connection lost" one
            protocol.write(b"late\r\n")


@pytest.mark.parametrize(
    "message",
    [b"a\r\nb\r\n", b"a\nb", b"a\rb\r", b".lead\n..two\r\n.\r\nend", b"", b"\n", b"x\r\n\r\n.."],
    ids=["crlf", "lf", "cr", "dots", "empty", "newline", "trailing-dots"],
)
async def test_our_data_phase_sends_what_aiosmtplib_sends(message: bytes) -> None:
    with relied_on("aiosmtplib", "SMTPProtocol.execute_data_command's wire format", SMTP_PY):
        theirs, peer = smtp_protocol([b"354 go\r\n", b"250 ok\r\n"])
        await theirs.read_response(timeout=1)
        await theirs.execute_data_command(message, timeout=1)
        ours, our_peer = smtp_protocol([b"354 go\r\n", b"250 ok\r\n"])
        await ours.read_response(timeout=1)
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=25, timeout=1)
        client.protocol = ours
        await _data(client, message)
        assert our_peer.written == peer.written == [b"DATA\r\n", wire_data(message)]


# -- aioimaplib: engine/inbound/replies/imap.py drives the client's protocol ------------------

IMAP_PY = "engine/inbound/replies/imap.py"


def imap_module() -> Any:
    return importlib.import_module("aioimaplib.aioimaplib")


def tagged(untagged: str) -> Callable[[bytes], bytes]:
    """An IMAP server's answer to the command written: ``untagged`` lines, then its tag's OK."""
    return lambda command: f"{untagged}{command.split()[0].decode()} OK done\r\n".encode()


async def imap_protocol(replies: list[Reply], lost: Callable[[Any], None] | None = None) -> Any:
    """aioimaplib's protocol on a scripted peer, greeted and not logged in."""
    imap = imap_module()
    protocol = imap.IMAP4ClientProtocol(asyncio.get_running_loop(), lost)
    greeting = tagged("* CAPABILITY IMAP4rev1 STARTTLS IDLE\r\n")  # to its CAPABILITY
    protocol.connection_made(ScriptedPeer(protocol, [greeting, *replies]))
    protocol.data_received(b"* OK ready\r\n")
    await asyncio.wait_for(protocol.wait("AUTH|NONAUTH"), 1)
    return protocol


def test_aioimaplib_module_names_we_import() -> None:
    with relied_on(
        "aioimaplib", "aioimaplib.aioimaplib.{IMAP4, AioImapException, Command}", IMAP_PY
    ):
        imap = imap_module()
        assert inspect.isclass(imap.IMAP4) and inspect.isclass(imap.Command)
        assert issubclass(imap.AioImapException, Exception)
        parameters = inspect.signature(imap.IMAP4).parameters
        assert {"timeout", "conn_lost_cb", "ssl_context"} <= parameters.keys()
        assert (imap.AUTH, imap.SELECTED) == ("AUTH", "SELECTED")  # Mailbox.close's states


async def test_aioimaplib_starttls_goes_through_the_protocol() -> None:
    with relied_on(
        "aioimaplib",
        "IMAP4ClientProtocol.capabilities, new_tag, loop, execute(Command(...)), the "
        "transport attribute and capability()",
        f"{IMAP_PY} (Mailbox._starttls)",
    ):
        protocol = await imap_protocol([tagged("")])
        assert "STARTTLS" in protocol.capabilities
        command = imap_module().Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)
        assert (await asyncio.wait_for(protocol.execute(command), 1)).result == "OK"
        assert protocol.transport.written[-1].split()[1:] == [b"STARTTLS"]
        # What loop.start_tls hands back replaces the transport; the server speaks again.
        protocol.transport = ScriptedPeer(protocol, [tagged("* CAPABILITY IMAP4rev1 IDLE\r\n")])
        await asyncio.wait_for(protocol.capability(), 1)
        assert "STARTTLS" not in protocol.capabilities  # what it says now counts
        assert "IDLE" in protocol.capabilities


async def test_aioimaplib_uid_search_without_a_charset() -> None:
    with relied_on(
        "aioimaplib",
        "IMAP4ClientProtocol.search(*criteria, by_uid=True, charset=None)",
        f"{IMAP_PY} (Mailbox.uids_after)",
    ):
        protocol = await imap_protocol([tagged("* SEARCH 5 7\r\n")])
        protocol.state = imap_module().SELECTED
        search = protocol.search("UID", "5:*", by_uid=True, charset=None)
        response = await asyncio.wait_for(search, 1)
        assert protocol.transport.written[-1].split()[1:] == [b"UID", b"SEARCH", b"UID", b"5:*"]
        found = {int(t) for line in response.lines[:-1] for t in bytes(line).split() if t.isdigit()}
        assert (response.result, found) == ("OK", {5, 7})


async def test_aioimaplib_idle_queue_tasks_and_lost_connection_callback() -> None:
    with relied_on(
        "aioimaplib",
        "IMAP4.protocol, IMAP4.tasks, IMAP4ClientProtocol.{idle_queue, tasks, state, "
        "conn_lost_cb} and IMAP4.wait_server_push reading idle_queue",
        f"{IMAP_PY} (Mailbox.wait_for_news, Mailbox.close)",
    ):
        lost: list[Any] = []
        protocol = await imap_protocol([], lost.append)
        assert isinstance(protocol.idle_queue, asyncio.Queue)
        assert isinstance(protocol.tasks, set)
        imap = imap_module()
        with mock.patch.object(imap.IMAP4, "create_client"):  # no connection attempt
            client = imap.IMAP4("127.0.0.1", 143, timeout=1)
        assert isinstance(client.tasks, set)
        client.protocol = protocol
        assert client.has_pending_idle() is False
        protocol.idle_queue.put_nowait([b"* 3 EXISTS"])
        assert await client.wait_server_push(timeout=1) == [b"* 3 EXISTS"]
        protocol.connection_lost(None)
        assert lost == [None]


async def test_asyncio_socket_transport_reads_at_most_max_size() -> None:
    # Not a dependency but the standard library: Mailbox._read_in_small_chunks shrinks the
    # reads of the transport aioimaplib's protocol sits on.
    with relied_on(
        "asyncio (standard library)",
        "the socket transport's max_size",
        f"{IMAP_PY} (Mailbox._read_in_small_chunks)",
    ):
        chunks: list[bytes] = []
        got_all = asyncio.Event()

        class Reader(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                chunks.append(data)
                if sum(map(len, chunks)) == 10:
                    got_all.set()

        ours, theirs = socket.socketpair()
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_connection(Reader, sock=ours)
        try:
            assert isinstance(getattr(transport, "max_size", None), int)
            transport.max_size = 4  # type: ignore[attr-defined]
            theirs.sendall(b"0123456789")
            await asyncio.wait_for(got_all.wait(), 1)
            assert max(map(len, chunks)) <= 4
        finally:
            transport.close()
            theirs.close()


# -- aiosmtpd: tests/support/smtp_server.py tells a new connection from a STARTTLS -----------


async def test_aiosmtpd_keeps_the_plain_transport_once_starttls_begins() -> None:
    with relied_on(
        "aiosmtpd",
        "SMTP._original_transport (None until STARTTLS, then the plain transport)",
        "tests/support/smtp_server.py (_Session.connection_made)",
    ):
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)

        class Handler:
            pass

        server = aiosmtpd.smtp.SMTP(
            Handler(), hostname="sink.test", tls_context=context, loop=asyncio.get_running_loop()
        )
        plain = ScriptedPeer(server, [])
        server.connection_made(plain)
        assert server._original_transport is None  # a new connection
        server.data_received(b"EHLO client.test\r\nSTARTTLS\r\n")
        for _ in range(100):
            if server._original_transport is not None:
                break
            await asyncio.sleep(0.001)
        assert server._original_transport is plain  # the same connection, now under TLS
        assert server.transport is not None
        server.transport.close()  # the TLS layer, whose handshake never comes
        server.connection_lost(None)
        await asyncio.sleep(0)


# -- Starlette and uvicorn: engine/inbound/tracking/server.py ---------------------------------

APP_PY = "engine/inbound/tracking/server.py"


async def test_starlette_route_limits_the_body_size() -> None:
    # The lower bound in pyproject.toml (starlette>=1.6) is the first release with this.
    with relied_on(
        "starlette", "Route(max_body_size=...)", "engine/inbound/tracking/routes/ (the POST routes)"
    ):

        async def echo(request: Request) -> Response:
            return PlainTextResponse(str(len(await request.body())))

        app = Starlette(routes=[Route("/f", echo, methods=["POST"], max_body_size=10)])
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as client:
            assert (await client.post("/f", content=b"x" * 10)).text == "10"
            assert (await client.post("/f", content=b"x" * 11)).status_code == 413


def lifespan_app(
    seen: dict[str, Any], *, fail: bool
) -> Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]:
    """A lifespan that records the signal handlers in force, then fails or runs."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        seen["handlers"] = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
        if fail:
            raise RuntimeError("cannot start")
        yield
        seen["stopped"] = True

    return lifespan


def serving(app: Starlette) -> _Server:
    """The tracking app's uvicorn server, without sockets (nothing listens)."""
    return _Server(uvicorn.Config(app, lifespan="on", log_config=None, access_log=False))


async def serve_briefly() -> dict[str, Any]:
    """Serve an app (no sockets) until it has started, then set ``should_exit`` and wait for
    the end; what its lifespan saw."""
    seen: dict[str, Any] = {}
    server = serving(Starlette(lifespan=lifespan_app(seen, fail=False)))
    serve = asyncio.ensure_future(server.serve(sockets=[]))
    while not server.started and not serve.done():
        await asyncio.sleep(0.01)
    server.should_exit = True
    await asyncio.wait_for(serve, 5)
    return seen


async def test_uvicorn_installs_its_signal_handlers_through_capture_signals() -> None:
    with relied_on(
        "uvicorn",
        "Server.serve entering Server.capture_signals() for its signal handling",
        f"{APP_PY} (_Server.capture_signals)",
    ):
        assert threading.current_thread() is threading.main_thread()  # else uvicorn skips it
        before = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
        seen = await serve_briefly()
        assert seen["handlers"] == before  # the override left the process owner's in place


async def test_uvicorn_stops_gracefully_on_should_exit() -> None:
    with relied_on(
        "uvicorn", "Server.should_exit ending serve() after the lifespan shutdown", APP_PY
    ):
        seen = await serve_briefly()
        assert seen["stopped"] is True  # the hit buffer's last flush runs there


async def test_uvicorn_raises_system_exit_when_the_lifespan_fails() -> None:
    with relied_on(
        "uvicorn", "SystemExit from serve() on a failed lifespan", f"{APP_PY} (serve_app)"
    ):
        server = serving(Starlette(lifespan=lifespan_app({}, fail=True)))
        with pytest.raises(SystemExit):  # awaited, not a task: asyncio re-raises it from one
            await server.serve(sockets=[])


# -- SQLAlchemy: engine/store/prepared.py compiles once and runs on the driver ----------------

PREPARED_PY = "engine/store/prepared.py (_Compiled, _execute)"
_metadata = sa.MetaData()
_rows = sa.Table(
    "rows",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("n", sa.Integer, default=5),
    sa.Column("label", sa.String, default=lambda: "made"),
)
_touched = sa.Table(
    "touched", _metadata, sa.Column("n", sa.Integer), sa.Column("seen", sa.Integer, onupdate=1)
)


def test_sqlalchemy_compiled_bind_names_and_bind_parameters() -> None:
    with relied_on(
        "SQLAlchemy",
        "SQLCompiler.bind_names (BindParameter -> name) with required / effective_value / type",
        PREPARED_PY,
    ):
        stmt = sa.update(_rows).where(_rows.c.id == sa.bindparam("b_id")).values(n=7)
        compiled = stmt.compile(
            dialect=sqlite.dialect(), compile_kwargs={"render_postcompile": True}
        )
        binds = {name: bind for bind, name in compiled.bind_names.items()}
        assert isinstance(binds["b_id"], sa.BindParameter)
        assert binds["b_id"].required is True
        (fixed,) = [name for name in binds if name != "b_id"]
        assert (binds[fixed].required, binds[fixed].effective_value) == (False, 7)
        assert isinstance(binds[fixed].type, sa.Integer)
        # sqlite: positional, in the order of the placeholders
        assert compiled.positional is True
        assert list(compiled.positiontup or ()) == [fixed, "b_id"]
        assert compiled.string.count("?") == 2


def test_sqlalchemy_compiled_prefetch_lists_python_side_defaults() -> None:
    with relied_on(
        "SQLAlchemy",
        "SQLCompiler.insert_prefetch / update_prefetch and ColumnDefault.is_scalar / arg "
        "(a callable default takes the execution context)",
        PREPARED_PY,
    ):
        insert = sa.insert(_rows).values(id=sa.bindparam("b_id"))
        compiled = insert.compile(dialect=postgresql.dialect())
        prefetch: dict[str, Any] = {c.key: c.default for c in compiled.insert_prefetch}
        assert prefetch.keys() == {"n", "label"}
        assert (prefetch["n"].is_scalar, prefetch["n"].arg) == (True, 5)
        assert prefetch["label"].is_scalar is False
        assert prefetch["label"].arg(None) == "made"
        update = sa.update(_touched).values(n=sa.bindparam("b_n"))
        assert [c.key for c in update.compile(dialect=postgresql.dialect()).update_prefetch] == [
            "seen"
        ]


def test_sqlalchemy_wraps_a_driver_error_with_dbapierror_instance() -> None:
    with relied_on(
        "SQLAlchemy",
        "DBAPIError.instance(sql, params, orig, dbapi_base_err, dialect=)",
        PREPARED_PY,
    ):
        import sqlite3

        dialect = sa.create_engine("sqlite://").dialect
        assert dialect.loaded_dbapi.Error is sqlite3.Error
        orig = sqlite3.IntegrityError("UNIQUE constraint failed")
        error = DBAPIError.instance(
            "INSERT ...", (1,), orig, dialect.loaded_dbapi.Error, dialect=dialect
        )
        assert isinstance(error, IntegrityError)
        assert error.orig is orig
        assert (error.statement, error.params) == ("INSERT ...", (1,))


def test_sqlalchemy_bind_parameter_lives_where_we_import_it() -> None:
    with relied_on("SQLAlchemy", "sqlalchemy.sql.elements.BindParameter", PREPARED_PY):
        elements = importlib.import_module("sqlalchemy.sql.elements")
        assert elements.BindParameter is sa.BindParameter
