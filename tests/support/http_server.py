"""The tracking app under real uvicorn on 127.0.0.1 (a free port) in a background thread.

``TrackingServer(settings, clock)`` binds the port first, points ``tracking.base_url`` at it
(so the emails the engine sends link to this very server), builds the engine and serves
``build_app`` with ``serve_app``, the same code ``serve_tracking`` runs. Buffered opens and
clicks are written when the test calls ``flush()`` (or at shutdown), never on a timer, so what
a test sees is certain.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from types import TracebackType
from typing import Self

from starlette.applications import Starlette

from engine.base.clock import Clock
from engine.inbound.tracking.app import bind, build_app, serve_app
from engine.inbound.tracking.buffer import HitBuffer
from engine.inbound.tracking.records import HitWriter
from engine.program.settings import Settings
from engine.wiring import Engine

START_TIMEOUT = 10.0
# A desktop browser's user agent: httpx's own ("python-httpx/...") is a machine's.
BROWSER_UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36"
)


class TrackingServer:
    """``build_app`` for an engine built from ``settings``, served until ``stop()``."""

    def __init__(self, settings: Settings, clock: Clock, *, api_token: str = "") -> None:
        self._sock = bind("127.0.0.1", 0)
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        tracking = dataclasses.replace(
            settings.tracking,
            base_url=self.url,
            listen=f"127.0.0.1:{self.port}",
            api_token=api_token,
        )
        self.settings = dataclasses.replace(settings, tracking=tracking)
        self.engine = Engine.build(self.settings, clock)
        # Written when a test calls flush() (or on shutdown), never behind its back.
        self.buffer = HitBuffer(HitWriter(self.engine.db), interval=3600)
        self.app: Starlette = build_app(self.engine.tracking(), buffer=self.buffer)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._errors: list[BaseException] = []

    def start(self) -> Self:
        ready = threading.Event()

        def run() -> None:
            async def main() -> None:
                self._loop = asyncio.get_running_loop()
                self._stop = asyncio.Event()
                ready.set()
                await serve_app(self.app, self._sock, self._stop)

            try:
                asyncio.run(main())
            except BaseException as exc:  # re-raised in the test by stop()
                self._errors.append(exc)
                ready.set()

        self._thread = threading.Thread(target=run, name="tracking-server", daemon=True)
        self._thread.start()
        if not ready.wait(START_TIMEOUT):
            raise TimeoutError("tracking server did not start")
        return self

    def flush(self) -> int:
        """Write the buffered hits now (in the server's loop); returns how many."""
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(self.buffer.flush(), self._loop)
        return future.result(START_TIMEOUT)

    def stop(self) -> None:
        """Graceful shutdown (the buffer's last flush included); safe to call twice."""
        if self._thread is None:
            return
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(START_TIMEOUT * 2)
        self._thread = None
        self.engine.close()
        if self._errors:
            raise self._errors[0]

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
