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

from engine.base.retry import retry_delay
from engine.mail.smtp import SmtpTransport, Transport
from engine.outbound.webhooks import webhooks_forever, webhooks_pass
from engine.plan.planner import PlanStats
from engine.send.sender import SendProgress, SendStats
from engine.store.db import OUTAGE_ERRORS, outage_reason
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

    A database outage does not end it: the ticks back off and resume when it answers again.
    A service that crashes is restarted with backoff (``_supervised``).

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
    outages = 0  # ticks in a row that found the database down
    try:
        while not stop.is_set():
            try:
                result = await tick(engine, transport, stop, webhooks=False)
            except OUTAGE_ERRORS as exc:
                # Down, restarting or locked: wait it out (leases of emails in flight expire
                # and are claimed again), the tracking app keeps answering meanwhile.
                outages += 1
                pause = retry_delay(outages, OUTAGE_BASE_SECONDS, OUTAGE_MAX_SECONDS, jitter=0.2)
                log.warning(
                    "database_unavailable failures=%s retry_in=%.1fs reason=%s",
                    outages,
                    pause,
                    outage_reason(exc),
                )
            else:
                if outages:
                    log.warning("database_back failures=%s", outages)
                    outages = 0
                if on_tick:
                    on_tick(result)
                pause = wait
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=pause)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        if own:
            await transport.close()
        log.info("scheduler_stopped")


# A database outage: the first retry after 1 s, doubling up to a minute.
OUTAGE_BASE_SECONDS = 1.0
OUTAGE_MAX_SECONDS = 60.0
# A service that crashed is started again after 1 s, doubling up to a minute; one that ran
# this long before crashing starts again from 1 s.
RESTART_BASE_SECONDS = 1.0
RESTART_MAX_SECONDS = 60.0
HEALTHY_SECONDS = 300.0


def service_name(service: Service) -> str:
    """A service's name for the log: its function's, never its arguments' repr."""
    func = getattr(service, "func", service)  # functools.partial
    return str(getattr(func, "__name__", type(func).__name__))


async def _supervised(service: Service, stop: asyncio.Event) -> None:
    """Run ``service`` until ``stop``; a crash (or a return before ``stop``) is reported in one
    line and the service started again with backoff. It never takes the scheduler down."""
    loop = asyncio.get_running_loop()
    name = service_name(service)
    crashes = 0
    while not stop.is_set():
        started = loop.time()
        try:
            await service(stop)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.debug("service_crash_traceback service=%s", name, exc_info=True)
        else:
            if stop.is_set():
                return
            error = "stopped by itself"
        crashes = 1 if loop.time() - started > HEALTHY_SECONDS else crashes + 1
        pause = retry_delay(crashes, RESTART_BASE_SECONDS, RESTART_MAX_SECONDS, jitter=0.2)
        log.error(
            "service_crashed service=%s crashes=%s restart_in=%.1fs error=%s",
            name,
            crashes,
            pause,
            error[:500],
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=pause)
