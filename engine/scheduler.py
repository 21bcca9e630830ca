"""The scheduler lifecycle: ``tick`` (one pass) and ``run`` (the loop, with its services).

``engine.wiring`` builds the pieces; this module only runs them: plan, send, notes, then
webhooks, and in ``run`` the long-running services beside the ticks.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from engine.mail.smtp import SmtpTransport, Transport
from engine.outbound.webhooks import webhooks_forever, webhooks_pass
from engine.plan.planner import PlanStats
from engine.send.sender import SendProgress, SendStats
from engine.wiring import Engine, Service

log = logging.getLogger("engine.scheduler")


@dataclass
class TickResult:
    plan: PlanStats
    send: SendStats
    notes: int = 0  # notes to the team sent (engine.outbound.notes)


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
        notes = await engine.notifier(transport).send_due()
    finally:
        if own:
            await transport.close()
    # Bounces recorded while sending stop their sequences now, not on the next tick.
    plan += planner.plan()
    if webhooks and engine.settings.webhooks.urls:
        await webhooks_pass(engine.webhooks())  # after the emails; within webhooks.timeout_seconds
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
        services.append(functools.partial(webhooks_forever, engine.webhooks()))
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


async def _supervised(service: Service, stop: asyncio.Event) -> None:
    """Run ``service``; its crash is logged and never takes the scheduler down."""
    try:
        await service(stop)
    except Exception:
        log.exception("service_crashed service=%s", getattr(service, "__name__", service))
