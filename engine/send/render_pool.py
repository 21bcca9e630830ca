"""Rendering behind hard limits: a hostile template cannot stall or exhaust the engine.

The sandbox's budget (engine.send.render.budget) stops runaway Jinja code between Python
calls, but one built-in call (``str`` of a huge list, ``sum`` of lists, ``tojson``) runs in C
for as long and as big as it likes. So emails are rendered in a worker process of their own,
under limits the kernel enforces:

- memory: ``RLIMIT_AS`` (``schedule.render_memory_mb``) set once when the worker starts: an
  allocation over it is a MemoryError in the worker, never in the engine;
- CPU: ``RLIMIT_CPU`` set before each render to the CPU time used so far plus the render
  timeout (rounded up to a whole second): past it the kernel ends the worker with SIGXCPU,
  even inside a single C call;
- wall clock: the engine waits at most twice the render timeout plus a second for the answer
  (a backstop for a worker that makes no progress), then kills the worker.

A worker that was stopped is replaced on the next render (forked from a forkserver that has
the renderer's modules loaded: milliseconds, not an interpreter start). Each worker builds
one ``Renderer`` and keeps its compiled templates: MJML is compiled once per worker, not per
email. Everything but ``render`` (validation, notes, links) stays in this process.
"""

from __future__ import annotations

import math
import multiprocessing
import resource
import signal
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from engine.base.errors import RenderTimeout, TemplateError
from engine.mail.tokens import Links, Signer
from engine.program.settings import SenderSettings
from engine.send.render import Rendered, Renderer

# The wall-clock backstop, in render timeouts (plus a second): CPU time is what stops a busy
# template; the wall clock stops one that makes no progress, never a render that is merely
# slow on a loaded machine (a template's first render in a worker also compiles it).
WALL_TIMEOUTS = 2
# How long a new worker may take to be ready (imports, building its renderer): not the
# template's time.
START_SECONDS = 30.0
# How long a stopped worker is given to be reaped, for its exit status.
_REAP_SECONDS = 1.0
_MIB = 1024 * 1024


@dataclass(frozen=True)
class RendererSpec:
    """What builds a ``Renderer``: in this process and, sent over a pipe, in each worker
    (a ``Links`` holds HMAC state that cannot travel; its secrets can)."""

    templates_dir: Path
    base_url: str
    secret: str = field(repr=False)
    old_secrets: tuple[str, ...] = field(repr=False)
    sender: SenderSettings
    render_timeout: float = 2.0

    def links(self) -> Links:
        """The tracking URL builder of every email."""
        return Links(self.base_url, Signer(self.secret, self.old_secrets))

    def build(self) -> Renderer:
        """An in-process renderer with these settings."""
        return Renderer(
            self.templates_dir,
            links=self.links(),
            sender=self.sender,
            render_timeout=self.render_timeout,
        )


@dataclass(frozen=True)
class _Job:
    template: str
    subject: str
    context: dict[str, Any]
    locale: str | None
    ref: bytes


def _serve(conn: Connection, spec: RendererSpec, memory_mb: int) -> None:
    """A worker: one renderer, one render at a time, until the engine closes the pipe."""
    limit = memory_mb * _MIB
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    renderer = spec.build()
    conn.send(None)  # ready
    while True:
        try:
            job: _Job = conn.recv()
        except EOFError:
            return
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu_limit = math.ceil(usage.ru_utime + usage.ru_stime + spec.render_timeout)
        # The soft limit only (an unprivileged process cannot raise a lowered hard one back):
        # SIGXCPU's default action ends the worker, whatever it is doing.
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_limit, resource.RLIM_INFINITY))
        try:
            rendered = renderer.render(
                job.template, job.subject, job.context, locale=job.locale, ref=job.ref
            )
        except TemplateError as exc:
            if isinstance(exc.__cause__, MemoryError):
                exc = RenderTimeout(
                    f"{job.template}: the template exceeded {memory_mb} MB of memory"
                )
            conn.send((type(exc) is RenderTimeout, str(exc)))
        except MemoryError:  # outside the template's own code (the result's copy ...)
            conn.send((True, f"{job.template}: the template exceeded {memory_mb} MB of memory"))
        else:
            conn.send(rendered)


@dataclass
class _Worker:
    process: BaseProcess
    conn: Connection


class RenderPool:
    """One worker process at a time, under the limits above; ``render`` is thread-safe."""

    def __init__(self, spec: RendererSpec, *, memory_mb: int) -> None:
        self._spec = spec
        self._memory_mb = memory_mb
        self._lock = threading.Lock()
        self._worker: _Worker | None = None
        self._context = multiprocessing.get_context("forkserver")
        # New workers are forked from a process that has these imported already.
        self._context.set_forkserver_preload([__name__])

    def render(
        self,
        template: str,
        subject: str,
        context: Mapping[str, Any],
        *,
        locale: str | None,
        ref: bytes,
    ) -> Rendered:
        """What ``Renderer.render`` makes, made in the worker; TemplateError as it raises,
        RenderTimeout naming the limit when the worker had to be stopped."""
        job = _Job(template, subject, dict(context), locale, ref)
        wait = self._spec.render_timeout * WALL_TIMEOUTS + 1
        with self._lock:
            worker = self._worker or self._start()
            worker.conn.send(job)
            if worker.conn.poll(wait):
                try:
                    answer = worker.conn.recv()
                except EOFError:  # the worker died: the kernel stopped it
                    raise RenderTimeout(f"{template}: {self._death(worker)}") from None
            else:
                self._stop(worker)
                raise RenderTimeout(
                    f"{template}: the template did not finish within {wait:g} s"
                    " (its render process was stopped)"
                )
        if isinstance(answer, Rendered):
            return answer
        over_limit, message = answer
        raise (RenderTimeout if over_limit else TemplateError)(message)

    def close(self) -> None:
        """Stop the worker (a new one starts on the next render)."""
        with self._lock:
            if self._worker is not None:
                self._stop(self._worker)

    def _start(self) -> _Worker:
        ours, theirs = self._context.Pipe()
        process = self._context.Process(
            target=_serve, args=(theirs, self._spec, self._memory_mb), daemon=True
        )
        process.start()
        theirs.close()
        worker = _Worker(process, ours)
        try:
            ready = ours.poll(START_SECONDS) and ours.recv() is None
        except EOFError:
            ready = False
        if not ready:
            self._stop(worker)
            raise TemplateError(
                f"the render process did not start (exit {process.exitcode}; memory limit"
                f" {self._memory_mb} MB)"
            )
        self._worker = worker
        return worker

    def _stop(self, worker: _Worker) -> None:
        worker.process.kill()
        worker.process.join(_REAP_SECONDS)
        worker.conn.close()
        self._worker = None

    def _death(self, worker: _Worker) -> str:
        """Why the worker is gone, for the held email's reason."""
        worker.process.join(_REAP_SECONDS)
        code = worker.process.exitcode
        worker.conn.close()
        self._worker = None
        if code == -signal.SIGXCPU:
            seconds = math.ceil(self._spec.render_timeout)
            return f"the template exceeded {seconds} s of CPU time (its render process was stopped)"
        if code == -signal.SIGSEGV or code == -signal.SIGKILL:
            return (
                f"the template exceeded {self._memory_mb} MB of memory"
                f" (its render process was stopped, exit {code})"
            )
        return f"the render process ended unexpectedly (exit {code})"


class PooledRenderer(Renderer):
    """A ``Renderer`` whose emails are rendered by a ``RenderPool``; validation, notes and
    links stay in this process (they run no marketer code per recipient)."""

    def __init__(self, spec: RendererSpec, *, memory_mb: int) -> None:
        super().__init__(
            spec.templates_dir,
            links=spec.links(),
            sender=spec.sender,
            render_timeout=spec.render_timeout,
        )
        self.pool = RenderPool(spec, memory_mb=memory_mb)

    def render(
        self,
        template: str,
        subject: str,
        context: Mapping[str, Any],
        *,
        locale: str | None,
        ref: bytes,
    ) -> Rendered:
        """The email for one recipient, rendered in the pool (see ``Renderer.render``)."""
        return self.pool.render(template, subject, context, locale=locale, ref=ref)

    def close(self) -> None:
        """Stop the render worker."""
        self.pool.close()
