"""The composition root and the scheduler lifecycle: ``tick`` (one pass) and ``run`` (loop).

One place builds the real pieces (database, sequences, renderer, SMTP transport) from the
settings; the planner and sender only see what they are handed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from engine.clock import Clock
from engine.errors import TemplateError
from engine.notify import Notifier
from engine.planner import Planner, PlanStats
from engine.rendering import Renderer
from engine.sender import Sender, SendProgress, SendStats
from engine.sequences import LoadResult, Sequence, load_sequences
from engine.settings import Settings
from engine.store.db import Database
from engine.tokens import Links, Signer
from engine.transport import SmtpTransport, Transport

log = logging.getLogger("engine.scheduler")


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class Engine:
    """Everything a command needs, built once from the settings."""

    settings: Settings
    clock: Clock
    db: Database
    loaded: LoadResult
    renderer: Renderer

    @classmethod
    def build(cls, settings: Settings, clock: Clock) -> Engine:
        renderer = build_renderer(settings)
        loaded = load_sequences(
            settings.sequences_dir, template_exists=lambda name: template_exists(renderer, name)
        )
        for error in loaded.errors:
            # A broken file stops only itself; the others keep running.
            log.error("sequence_invalid %s", error)
        return cls(settings, clock, Database(settings.database_url), loaded, renderer)

    @property
    def sequences(self) -> dict[str, Sequence]:
        return self.loaded.sequences

    def planner(self) -> Planner:
        return Planner(self.db, self.loaded.sequences, self.settings, self.clock, self.renderer)

    def sender(self, transport: Transport, *, worker_id: str | None = None) -> Sender:
        return Sender(
            self.db,
            self.loaded.sequences,
            self.renderer,
            transport,
            self.settings,
            self.clock,
            worker_id=worker_id or worker_name(),
        )

    def close(self) -> None:
        self.db.dispose()


def build_renderer(settings: Settings) -> Renderer:
    links = Links(
        settings.tracking.base_url, Signer(settings.tracking.secret, settings.tracking.old_secrets)
    )
    return Renderer(
        settings.templates_dir,
        links=links,
        sender=settings.sender,
        render_timeout=settings.schedule.render_timeout_seconds,
    )


def template_exists(renderer: Renderer, name: str) -> bool:
    """True when the base (locale-less) template file exists."""
    try:
        renderer.resolve(name, None)
    except TemplateError:
        return False
    return True


@dataclass
class TickResult:
    plan: PlanStats
    send: SendStats
    notes: int = 0  # notes to the team sent (engine.notify)


async def tick(
    engine: Engine,
    transport: Transport | None = None,
    stop: asyncio.Event | None = None,
    *,
    webhooks: bool = True,
    progress: SendProgress | None = None,
) -> TickResult:
    """One pass at the clock's now: plan, send what is due, then react to what sending caused.

    ``webhooks``: then queue new webhook deliveries and make one bounded delivery pass (off in
    ``run``, whose webhooks service delivers without holding up the next tick). ``progress``
    follows the sending (the ``tick`` command's progress bar).
    """
    planner = engine.planner()
    plan = planner.plan()
    own = transport is None
    transport = transport or SmtpTransport(engine.settings.smtp)
    try:
        sent = await engine.sender(transport).send_due(stop, progress)
        notes = await Notifier(engine.db, engine.settings, engine.clock, transport).send_due()
    finally:
        if own:
            await transport.close()
    # Bounces recorded while sending stop their sequences now, not on the next tick.
    plan += planner.plan()
    if webhooks and engine.settings.webhooks.urls:
        from engine.webhooks import webhooks_pass  # httpx is imported only when it is used

        await webhooks_pass(engine)  # after the emails; within webhooks.timeout_seconds
    await asyncio.to_thread(engine.db.checkpoint)
    return TickResult(plan, sent, notes)


async def run(
    engine: Engine,
    *,
    transport: Transport | None = None,
    stop: asyncio.Event | None = None,
    on_tick: Callable[[TickResult], None] | None = None,
    interval: float | None = None,
    services: Iterable[Service] = (),
) -> None:
    """Tick until SIGTERM/SIGINT (or ``stop``); in-flight sends finish, the rest is released.

    ``services`` (the tracking app, the IMAP poller: see ``standard_services``) run alongside
    the ticks and are handed the same stop event: each returns once it is set, after a clean
    shutdown of its own. Webhooks, when configured, are delivered by a service of their own
    here, so a slow receiver never holds up a tick.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
            loop.add_signal_handler(sig, stop.set)
    own = transport is None
    transport = transport or SmtpTransport(engine.settings.smtp)
    wait = engine.settings.schedule.tick_seconds if interval is None else interval
    services = list(services)
    if engine.settings.webhooks.urls:
        from engine.webhooks import webhooks_forever  # httpx is imported only when it is used

        services.append(functools.partial(webhooks_forever, engine))
    tasks = [asyncio.create_task(_supervised(service, stop)) for service in services]
    try:
        while not stop.is_set():
            result = await tick(engine, transport, stop, webhooks=False)
            if on_tick:
                on_tick(result)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=wait)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        if own:
            await transport.close()
        log.info("scheduler_stopped")


Service = Callable[[asyncio.Event], Awaitable[None]]


def standard_services(engine: Engine) -> list[Service]:
    """What `run` serves besides the scheduler: the tracking app, and the IMAP poller when a
    mailbox is configured ([imap] username)."""
    from engine.replies import poll_forever
    from engine.tracking import serve_tracking

    services: list[Service] = [functools.partial(serve_tracking, engine)]
    if engine.settings.imap.username:
        services.append(functools.partial(poll_forever, engine))
    return services


async def _supervised(service: Service, stop: asyncio.Event) -> None:
    """Run ``service``; its crash is logged and never takes the scheduler down."""
    try:
        await service(stop)
    except Exception:
        log.exception("service_crashed service=%s", getattr(service, "__name__", service))
