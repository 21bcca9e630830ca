"""Serving the tracking app: a listening socket, uvicorn on it until a stop event, a graceful
shutdown (requests in flight finish, the hit buffer is flushed)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any

import uvicorn
from starlette.applications import Starlette

from engine.base.errors import EngineError

log = logging.getLogger("engine.tracking")

SHUTDOWN_SECONDS = 10


class TrackingError(EngineError, OSError):
    """The tracking app cannot start (its address is taken, its start-up failed)."""


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the process owner (``serve``, ``run``) turns
    SIGTERM/SIGINT into the stop event, and uvicorn must not re-raise the signal afterwards."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0: any free port); TrackingError if taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it every response waits ~40 ms for a delayed ACK (headers and body are 2 writes).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise TrackingError(f"tracking app: cannot listen on {host}:{port}: {exc}") from exc
    sock.setblocking(False)
    return sock


async def serve_app(app: Starlette, sock: socket.socket, stop: asyncio.Event) -> None:
    """Serve ``app`` with uvicorn on ``sock`` until ``stop`` is set, then shut down gracefully:
    requests in flight finish, the lifespan flushes the hit buffer. Closes ``sock``."""
    config = uvicorn.Config(
        app,
        lifespan="on",
        log_config=None,  # the engine's logging stays as it is
        access_log=False,  # no addresses or tokens in logs
        server_header=False,
        proxy_headers=True,  # X-Forwarded-For from a proxy on 127.0.0.1 (FORWARDED_ALLOW_IPS)
        timeout_graceful_shutdown=SHUTDOWN_SECONDS,
    )
    server = _Server(config)

    async def watch() -> None:
        await stop.wait()
        server.should_exit = True

    watcher = asyncio.create_task(watch())
    host, port = sock.getsockname()[:2]
    log.info("tracking_listening address=%s:%s", host, port)
    try:
        await server.serve(sockets=[sock])
    except SystemExit:  # uvicorn's way of saying the lifespan failed to start
        raise TrackingError("tracking app: failed to start (see the log above)") from None
    finally:
        watcher.cancel()
        sock.close()
    log.info("tracking_stopped")
