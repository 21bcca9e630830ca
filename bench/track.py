"""Open-pixel requests/s: the tracking app vs a bare Starlette endpoint, in one run.

App: ``python -m engine serve`` (uvicorn, one process, SQLite), every request a distinct email's
pixel, so each one must become an ``opened`` row (nothing is deduplicated). Bare: a Starlette
app with one route returning the same 43-byte GIF and recording nothing, served by uvicorn the
same way (one process, same event loop and HTTP parser). The load generator is a third process:
asyncio (uvloop when installed) with N keep-alive connections on loopback, one request in flight
per connection. The servers take turns (bare then app, app then bare, ...), so each has one
core while the load generator has the other; the ratio uses the medians, and each round's own
ratio is printed. So is the servers' CPU time per request (all threads: the app's batched
writes included, its event loop's share apart). After each app round the server gets SIGTERM
and the number of rows written is checked against the requests sent.
Prints figures only: nothing here asserts a timing.

Run: .venv/bin/python bench/track.py [REQUESTS] [CONNECTIONS] [ROUNDS]
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.mail.tokens import Signer  # noqa: E402
from engine.store.db import Database  # noqa: E402

SECRET = "bench-secret-0123456789abcdef"
WARMUP = 2000
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the bare endpoint (run as its own process) -----------------------------------------------


def serve_bare(port: int) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from engine.inbound.tracking.web import GIF

    async def pixel(request: Request) -> Response:
        return Response(GIF, media_type="image/gif", headers={"cache-control": "no-store"})

    app = Starlette(routes=[Route("/o/{token}.gif", pixel)])
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    # asyncio.run, as `python -m engine serve` does: the same event loop for both.
    asyncio.run(uvicorn.Server(config).serve())


# -- the load generator (run as its own process) ----------------------------------------------


async def load(port: int, paths: list[str], connections: int) -> float:
    """Send every path once over ``connections`` keep-alive connections; the seconds it took."""
    queue = iter(paths)
    head = f"Host: 127.0.0.1:{port}\r\nUser-Agent: {USER_AGENT}\r\nAccept: image/*\r\n\r\n"

    async def worker() -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        done = 0
        for path in queue:
            writer.write(f"GET {path} HTTP/1.1\r\n{head}".encode())
            status = await reader.readline()
            if b" 200 " not in status:
                raise RuntimeError(f"{path}: {status!r}")
            length = 0
            while (line := await reader.readline()) != b"\r\n":
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            done += 1
        writer.close()
        return done

    start = time.perf_counter()
    counts = await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - start
    assert sum(counts) == len(paths)
    return elapsed


def run_load(port: int, paths_file: str, connections: int) -> None:
    import uvloop  # uvicorn[standard] brings it: the load generator's own overhead stays low

    paths = Path(paths_file).read_text().split()
    uvloop.run(load(port, paths[:WARMUP], connections))
    print("warm", flush=True)
    print(uvloop.run(load(port, paths[WARMUP:], connections)), flush=True)


# -- the orchestra ---------------------------------------------------------------------------


def seed(db_path: Path, count: int) -> list[bytes]:
    """One contact with ``count`` sent emails; their refs."""
    Database(f"sqlite:///{db_path}").dispose()  # creates the schema
    at = NOW.replace(tzinfo=None).isoformat(sep=" ")
    conn = sqlite3.connect(db_path)
    conn.execute(
        "INSERT INTO contacts (id, email, kind, fields, referral_code, created_at, updated_at)"
        " VALUES (1, 'ana@example.com', 'customer', '{}', 'benchcode', ?, ?)",
        (at, at),
    )
    conn.execute(
        "INSERT INTO enrollments (id, contact_id, sequence_id, key, status, position,"
        " started_at) VALUES (1, 1, 'referral-ask', 'cycle-1', 'active', 1, ?)",
        (at,),
    )
    refs = [secrets.token_bytes(12) for _ in range(count)]
    conn.executemany(
        "INSERT INTO messages (enrollment_id, contact_id, sequence_id, step_id, message_id,"
        " ref, status, due_at, attempts, fence, created_at, sent_at)"
        " VALUES (1, 1, 'referral-ask', ?, ?, ?, 'sent', ?, 1, 1, ?, ?)",
        ((f"s{i}", f"<{i}@bench.example>", ref, at, at, at) for i, ref in enumerate(refs)),
    )
    conn.commit()
    conn.close()
    return refs


def wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {port}")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User + system CPU time of process ``pid`` so far (Linux /proc): all its threads, and
    its main thread alone (the event loop's; the others are the app's database writers)."""

    def of(stat: Path) -> float:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    return of(Path(f"/proc/{pid}/stat")), of(Path(f"/proc/{pid}/task/{pid}/stat"))


class Figures(NamedTuple):
    """One server's round: requests/s, and its CPU microseconds per request."""

    rate: float
    cpu_us: float  # all threads
    loop_us: float  # the event loop's thread


def measure(server: list[str], env: dict[str, str], port: int, paths: Path, conns: int) -> Figures:
    """Start ``server``, run the load generator against it, stop it: the measured requests/s
    and the server's CPU per measured request."""
    proc = subprocess.Popen(server, env=env, stdout=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
        loader = subprocess.Popen(
            [sys.executable, __file__, "--load", str(port), str(paths), str(conns)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert loader.stdout is not None
        assert loader.stdout.readline().strip() == "warm"
        cpu, loop = cpu_seconds(proc.pid)
        elapsed = float(loader.stdout.readline())
        cpu_after, loop_after = cpu_seconds(proc.pid)
        if loader.wait() != 0:
            raise RuntimeError("the load generator failed")
        measured = len(paths.read_text().split()) - WARMUP
    finally:
        proc.send_signal(signal.SIGTERM)
        # uvicorn's own runner re-raises SIGTERM once it has shut down (the bare server).
        if proc.wait(60) not in (0, -signal.SIGTERM):
            raise RuntimeError(f"server exited with {proc.returncode}")
    per_request = 1e6 / measured
    return Figures(
        measured / elapsed, (cpu_after - cpu) * per_request, (loop_after - loop) * per_request
    )


def main(requests: int, connections: int, rounds: int) -> None:
    per_round = requests + WARMUP
    with tempfile.TemporaryDirectory(prefix="bench-track-") as tmp:
        folder = Path(tmp)
        db_path = folder / "engine.db"
        t0 = time.perf_counter()
        refs = seed(db_path, per_round * rounds)
        print(f"seeded {len(refs):,} sent emails in {time.perf_counter() - t0:.1f} s")
        port = free_port()
        settings = folder / "settings.toml"
        settings.write_text(
            textwrap.dedent(f"""
            [database]
            url = "sqlite:///{db_path}"
            [tracking]
            base_url = "http://127.0.0.1:{port}"
            listen = "127.0.0.1:{port}"
            secret = "{SECRET}"
            [paths]
            sequences = "{ROOT / "sequences"}"
            templates = "{ROOT / "templates"}"
            """),
            encoding="utf-8",
        )
        signer = Signer(SECRET)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        app_cmd = [sys.executable, "-m", "engine", "--settings", str(settings), "serve"]
        bare_cmd = [sys.executable, __file__, "--bare", str(port)]
        bare: list[Figures] = []
        app: list[Figures] = []
        recorded_ok = True
        for r in range(rounds):
            chunk = refs[r * per_round : (r + 1) * per_round]
            paths = folder / f"paths{r}.txt"
            paths.write_text("\n".join(f"/o/{signer.sign('open', ref)}.gif" for ref in chunk))
            # Every other round the app goes first, so a drift in the machine's other work
            # (or the last app's data still being written back) favours neither.
            turns = [(bare_cmd, bare), (app_cmd, app)]
            for cmd, figures in turns if r % 2 == 0 else turns[::-1]:
                figures.append(measure(cmd, env, port, paths, connections))
            conn = sqlite3.connect(db_path)
            rows = conn.execute("SELECT count(*) FROM events WHERE type = 'opened'").fetchone()[0]
            conn.close()
            expected = per_round * (r + 1)
            recorded_ok &= rows == expected
            b, a = bare[-1], app[-1]
            print(
                f"round {r + 1}: bare {b.rate:,.0f} req/s ({b.cpu_us:.0f} us CPU each), "
                f"app {a.rate:,.0f} req/s ({a.cpu_us:.0f} us CPU each: {a.loop_us:.0f} event "
                f"loop + {a.cpu_us - a.loop_us:.0f} writer threads), ratio {a.rate / b.rate:.0%}; "
                f"opened rows {rows:,} of {expected:,} requests sent so far"
            )
        bare_rate = statistics.median(f.rate for f in bare)
        app_rate = statistics.median(f.rate for f in app)
        bare_us = statistics.median(f.cpu_us for f in bare)
        app_us = statistics.median(f.cpu_us for f in app)
        loop_us = statistics.median(f.loop_us for f in app)
        ratios = sorted(a.rate / b.rate for a, b in zip(app, bare, strict=True))
        print(
            f"\npixel requests/s over {connections} keep-alive connections on loopback, "
            f"{requests:,} measured requests per round (after {WARMUP:,} warm-up), "
            f"median of {rounds} rounds"
        )
        print(f"  bare Starlette endpoint (records nothing): {bare_rate:,.0f} req/s")
        print(f"  tracking app (python -m engine serve):     {app_rate:,.0f} req/s")
        print(
            f"  ratio: {app_rate / bare_rate:.0%} (target >= 70 %); per round: median "
            f"{statistics.median(ratios):.0%}, lowest {ratios[0]:.0%}, highest {ratios[-1]:.0%}"
        )
        print(
            f"  server CPU per request: bare {bare_us:.0f} us, app {app_us:.0f} us ({loop_us:.0f} "
            f"in its event loop), ratio {bare_us / app_us:.0%} (steadier than the rates when "
            "other work shares the machine)"
        )
        print(f"  every hit recorded: {'yes' if recorded_ok else 'NO'}")
        print(
            f"  machine: {os.cpu_count()} cores; servers: one uvicorn process each (asyncio loop, "
            "httptools), taking turns; load generator: a separate process, asyncio + "
            "uvloop, raw keep-alive sockets, one request in flight per connection"
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--bare"]:
        serve_bare(int(sys.argv[2]))
    elif sys.argv[1:2] == ["--load"]:
        run_load(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
    else:
        args = [int(a) for a in sys.argv[1:]]
        main(*(args + [30_000, 50, 7][len(args) :]))
