"""`run` rides out a database outage: a real PostgreSQL is stopped and started again under a
real `run` process. Meanwhile the tracking app answers the pixel and clicks from the token
alone (the hits wait in memory) and /healthz says 503; afterwards everything resumes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import MONDAY, ROOT, Project, write_settings
from tests.support.mail_links import link
from tests.support.pg import PostgresServer, find_bin_dir, free_port
from tests.support.scenario import ASK, HEADER, REWARD, TEMPLATES, THANKS
from tests.support.smtp_server import SmtpSink

# Sent a week before the real now: a click then is no "click within 10 s of delivery".
ROWS = "{email},Ana,Lima,Lima Co,UTC,10,2026-01-01,2025-01-01,,en,customer\n"


class StoppablePostgres(PostgresServer):
    """A cluster of its own (the session's is shared by other tests), stopped and started
    again on the same port and data."""

    def pg_ctl(self, *args: str) -> None:
        subprocess.run(
            self._as_owner(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), *args),
            check=True,
            capture_output=True,
        )

    def halt(self) -> None:
        self.pg_ctl("-m", "immediate", "-w", "stop")

    def resume(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.sock} -c fsync=off "
            "-c synchronous_commit=off"
        )
        self.pg_ctl("-o", options, "-l", str(self.dir / "log"), "-w", "-t", "60", "start")


def engine_argv(settings: Path) -> list[str]:
    return [sys.executable, "-m", "engine", "--settings", str(settings)]


@pytest.fixture
def pg() -> Iterator[StoppablePostgres]:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL not installed (make test installs it)")
    server = StoppablePostgres(bin_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def wait(condition: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = condition()
        except httpx.TransportError:
            result = None
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def cli(settings: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", "--settings", str(settings), "--now", when(), *args],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def when() -> str:
    return MONDAY.isoformat()


def test_run_rides_out_a_database_outage(
    pg: StoppablePostgres, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    for folder in ("sequences", "templates"):
        (tmp_path / folder).mkdir()
    for name, body in {"ask": ASK, "thanks": THANKS, "reward": REWARD}.items():
        (tmp_path / "sequences" / f"{name}.yaml").write_text(body)
    for name, body in TEMPLATES.items():
        (tmp_path / "templates" / name).write_text(body)
    url = pg.url()
    settings = write_settings(
        tmp_path, url, smtp_sink.port, sequences="sequences", templates="templates"
    )
    (tmp_path / "a.csv").write_text(HEADER + ROWS.format(email="ana@example.com"))
    assert cli(settings, "contacts", "import", str(tmp_path / "a.csv")).returncode == 0
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        # Ticks every 0.5 s: the outage below lasts a few seconds and must meet several.
        [*engine_argv(settings), "--now", when(), "run", "--interval", "0.5"],
        env={**os.environ, "PYTHONPATH": str(ROOT), "ENGINE_TRACKING_LISTEN": f"127.0.0.1:{port}"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        smtp_sink.wait_for(1, timeout=30)
        first = smtp_sink.messages[0].message
        pixel = link(first, "/o/").replace("https://t.example.com", base)
        click = link(first, "/c/").replace("https://t.example.com", base)
        wait(lambda: httpx.get(f"{base}/healthz").status_code == 200, 15, "the app")

        pg.halt()
        time.sleep(3)  # several ticks fail meanwhile
        assert proc.poll() is None, "run ended during the outage"
        wait(lambda: httpx.get(f"{base}/healthz").status_code == 503, 15, "healthz 503")
        for _ in range(3):
            assert httpx.get(pixel).status_code == 200
            answer = httpx.get(click)
            assert answer.status_code == 302 and answer.headers["location"].startswith("https://")
            time.sleep(0.5)
        health = httpx.get(f"{base}/healthz").json()
        assert health["status"] == "database unreachable" and health["pending_hits"] >= 2
        assert proc.poll() is None, "run ended during the outage"

        pg.resume()
        wait(lambda: httpx.get(f"{base}/healthz").status_code == 200, 30, "healthz back")
        wait(lambda: httpx.get(f"{base}/healthz").json()["pending_hits"] == 0, 30, "hits written")
        (tmp_path / "b.csv").write_text(HEADER + ROWS.format(email="bo@example.com"))
        assert cli(settings, "contacts", "import", str(tmp_path / "b.csv")).returncode == 0
        smtp_sink.wait_for(2, timeout=60)  # the scheduler resumed
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "database_unavailable" in out and "database_back" in out, out
    assert "Traceback" not in out, out
    engine = create_engine(url)
    with engine.connect() as conn:
        kinds = conn.execute(text("SELECT type, count(*) FROM events GROUP BY type")).all()
    engine.dispose()
    counts = dict(kinds)
    assert counts.get("opened", 0) >= 1 and counts.get("clicked", 0) >= 1, counts
    assert [m.rcpt_tos[0] for m in smtp_sink.messages] == ["ana@example.com", "bo@example.com"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_service_that_crashes_is_restarted_with_backoff_and_reported(
    project: Project, caplog: pytest.LogCaptureFixture
) -> None:
    from engine.scheduler import run

    starts: list[float] = []

    async def flaky_mailbox(stop: asyncio.Event) -> None:
        starts.append(time.monotonic())
        if len(starts) < 3:
            raise ConnectionResetError("the mailbox went away")
        stop.set()  # the third start holds: end the test

    engine = project.engine()
    try:
        asyncio.run(asyncio.wait_for(run(engine, interval=0.1, services=[flaky_mailbox]), 30))
    finally:
        engine.close()
    assert len(starts) == 3
    assert starts[1] - starts[0] >= 0.7 and starts[2] - starts[1] >= 1.5  # 1 s, then 2 s
    crashes = [r.getMessage() for r in caplog.records if "service_crashed" in r.getMessage()]
    assert len(crashes) == 2 and "service=flaky_mailbox" in crashes[0], crashes
    assert "the mailbox went away" in crashes[0]
