"""The composition root: builds every stage from the settings, and only here.

``Engine`` holds the few long-lived pieces (settings, clock, database, loaded sequences,
renderer) and hands each stage exactly what it uses: the planner, the sender, the notes, the
webhooks, the reply mailbox and the tracking app take narrow, keyword-only dependencies, never
the ``Engine`` itself. Entry points (the CLI, the demo, ``run``) and tests build it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from engine.base.clock import Clock
from engine.base.errors import TemplateError
from engine.inbound.replies.record import ReplyContext, rules_for
from engine.inbound.tracking.context import TrackingContext
from engine.mail.smtp import Transport
from engine.outbound.notes import Notifier
from engine.outbound.webhooks import WebhookContext
from engine.plan.planner import Planner
from engine.program.sequences import LoadResult, Sequence, load_sequences
from engine.program.settings import Settings
from engine.send.render import Renderer
from engine.send.render_pool import PooledRenderer, RendererSpec
from engine.send.sender import Sender
from engine.store.db import Database

log = logging.getLogger("engine.scheduler")

# A long-running part of `run` (the tracking app, the IMAP poller, webhooks): it returns once
# the stop event is set, after a clean shutdown of its own.
Service = Callable[[asyncio.Event], Awaitable[None]]


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class Engine:
    """Everything a command needs, built once from the settings."""

    settings: Settings
    clock: Clock
    db: Database
    loaded: LoadResult
    renderer: PooledRenderer

    @classmethod
    def build(cls, settings: Settings, clock: Clock) -> Engine:
        renderer = PooledRenderer(
            renderer_spec(settings), memory_mb=settings.schedule.render_memory_mb
        )
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
        return Planner(
            db=self.db,
            sequences=self.loaded.sequences,
            settings=self.settings,
            clock=self.clock,
            render_note=self.renderer.render_note,
        )

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

    def notifier(self, transport: Transport, *, worker_id: str | None = None) -> Notifier:
        return Notifier(
            db=self.db,
            sender=self.settings.sender,
            clock=self.clock,
            transport=transport,
            worker_id=worker_id or worker_name(),
        )

    def webhooks(self, *, worker_id: str | None = None) -> WebhookContext:
        return WebhookContext(
            db=self.db,
            clock=self.clock,
            hooks=self.settings.webhooks,
            worker_id=worker_id or worker_name(),
        )

    def replies(self) -> ReplyContext:
        """The reply mailbox's context; SettingsError when its phrases file is unreadable."""
        settings = self.settings
        return ReplyContext(
            db=self.db,
            clock=self.clock,
            sequences=self.loaded.sequences,
            rules=rules_for(settings),
            imap=settings.imap,
            notify=settings.notify,
            schedule=settings.schedule,
            policy_pause_seconds=settings.smtp.policy_pause_seconds,
            base_dir=settings.base_dir,
        )

    def tracking(self) -> TrackingContext:
        return TrackingContext(
            db=self.db,
            clock=self.clock,
            links=self.renderer.links,
            tracking=self.settings.tracking,
            sender=self.settings.sender,
        )

    def close(self) -> None:
        self.db.dispose()
        self.renderer.close()


def renderer_spec(settings: Settings) -> RendererSpec:
    """What builds the renderer (here and in the render worker) from the settings."""
    tracking = settings.tracking
    return RendererSpec(
        templates_dir=settings.templates_dir,
        base_url=tracking.base_url,
        secret=tracking.secret,
        old_secrets=tuple(tracking.old_secrets),
        sender=settings.sender,
        render_timeout=settings.schedule.render_timeout_seconds,
    )


def build_renderer(settings: Settings) -> Renderer:
    """The in-process renderer (tools, benchmarks); the engine's emails go through
    ``PooledRenderer``, whose worker process has hard CPU and memory limits."""
    return renderer_spec(settings).build()


def template_exists(renderer: Renderer, name: str) -> bool:
    """True when the base (locale-less) template file exists."""
    try:
        renderer.resolve(name, None)
    except TemplateError:
        return False
    return True


def standard_services(engine: Engine) -> list[Service]:
    """What `run` serves besides the scheduler: the tracking app, and the IMAP poller when a
    mailbox is configured ([imap] username)."""
    # Imported here, for `run` alone: Starlette, uvicorn and aioimaplib cost about 0.3 s at
    # the start of every other command (python -X importtime).
    from engine.inbound.replies.poller import poll_forever

    services: list[Service] = [tracking_service(engine.tracking())]
    if engine.settings.imap.username:
        services.append(functools.partial(poll_forever, engine.replies()))
    return services


def tracking_service(ctx: TrackingContext) -> Service:
    """The tracking app as a service of `run`. Its address is taken now, so a busy port stops
    `run` before it starts (TrackingError, one line); a restart after a crash binds again."""
    from engine.inbound.tracking.app import TrackingError, bind, build_app, serve_app

    host, port = ctx.tracking.listen_address
    try:
        first: socket.socket | None = bind(host, port)
    except TrackingError as exc:
        raise TrackingError(str(exc)) from None  # the OSError's text is in it already

    async def tracking_app(stop: asyncio.Event) -> None:
        nonlocal first
        sock, first = first or bind(host, port), None
        await serve_app(build_app(ctx), sock, stop)

    return tracking_app
