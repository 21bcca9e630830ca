"""A stand-alone SMTP sink for benchmarks: accepts every message, counts it, keeps nothing.

Run: python bench/smtp_sink.py --port N [--aiosmtpd]   (0 = any free port)
The first stdout line ends with the port ("smtp_sink listening on 127.0.0.1 port 41234");
SIGTERM or SIGINT stops it, after a last line "smtp_sink received <count>".

Two servers: aiosmtpd (what the tests and the demo run), or by default a bare asyncio
protocol that answers EHLO/HELO/MAIL/RCPT/DATA/RSET/NOOP/QUIT with PIPELINING and costs a
fraction of aiosmtpd's CPU, so the sink is never the bottleneck of the benchmark it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable
from typing import Any, cast

MAX_COMMAND_LINE = 4096
EHLO_REPLY = b"250-smtp-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 104857600\r\n"
REPLIES = {
    b"HELO": b"250 smtp-sink\r\n",
    b"MAIL": b"250 2.1.0 OK\r\n",
    b"RCPT": b"250 2.1.5 OK\r\n",
    b"RSET": b"250 2.0.0 OK\r\n",
    b"NOOP": b"250 2.0.0 OK\r\n",
}


class Counter:
    messages = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        """aiosmtpd's hook: count the message, keep nothing."""
        self.messages += 1
        return "250 2.0.0 OK queued"


class SinkProtocol(asyncio.Protocol):
    """One SMTP session; data arrives in arbitrary chunks, commands may be pipelined."""

    def __init__(self, counter: Counter) -> None:
        self.counter = counter
        self.buffer = bytearray()
        self.in_data = False
        self.scan_from = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(b"220 smtp-sink ESMTP ready\r\n")

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        replies: list[bytes] = []
        quit_ = False
        while self.buffer and not quit_:
            if self.in_data:
                # The buffer starts with a CRLF put there at DATA, so an empty message's
                # lone "." line is found like any other end of data.
                end = self.buffer.find(b"\r\n.\r\n", self.scan_from)
                if end == -1:
                    self.scan_from = max(0, len(self.buffer) - 4)
                    break
                del self.buffer[: end + 5]
                self.in_data = False
                self.counter.messages += 1
                replies.append(b"250 2.0.0 OK queued\r\n")
                continue
            eol = self.buffer.find(b"\r\n")
            if eol == -1:
                if len(self.buffer) > MAX_COMMAND_LINE:
                    replies.append(b"500 5.5.6 Line too long\r\n")
                    quit_ = True
                break
            verb = bytes(self.buffer[:4]).upper()
            del self.buffer[: eol + 2]
            if verb == b"EHLO":
                replies.append(EHLO_REPLY)
            elif verb == b"DATA":
                replies.append(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                self.in_data = True
                self.buffer[:0] = b"\r\n"
                self.scan_from = 0
            elif verb == b"QUIT":
                replies.append(b"221 2.0.0 Bye\r\n")
                quit_ = True
            else:
                replies.append(REPLIES.get(verb, b"502 5.5.2 Command not implemented\r\n"))
        if replies:
            self.transport.write(b"".join(replies))
        if quit_:
            self.transport.close()


def _aiosmtpd(counter: Counter, host: str) -> asyncio.Protocol:
    from aiosmtpd.smtp import SMTP

    return SMTP(counter, hostname=host, data_size_limit=25 * 1024 * 1024)


async def serve(host: str, port: int, aiosmtpd: bool = False) -> int:
    """Serve until SIGTERM/SIGINT; return how many messages were accepted."""
    loop = asyncio.get_running_loop()
    counter = Counter()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    factory: Callable[[], asyncio.Protocol] = (
        (lambda: _aiosmtpd(counter, host)) if aiosmtpd else (lambda: SinkProtocol(counter))
    )
    server = await loop.create_server(factory, host, port, backlog=1024)
    chosen = server.sockets[0].getsockname()[1]
    print(f"smtp_sink listening on {host} port {chosen}", flush=True)
    await stop.wait()
    server.close()  # open client connections die with the process
    return counter.messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    parser.add_argument("--aiosmtpd", action="store_true", help="serve with aiosmtpd")
    args = parser.parse_args()
    received = asyncio.run(serve(args.host, args.port, args.aiosmtpd))
    print(f"smtp_sink received {received}", flush=True)


if __name__ == "__main__":
    main()
