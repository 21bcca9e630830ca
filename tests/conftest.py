"""Shared fixtures: a database per test on SQLite and on PostgreSQL, a project folder with
settings pointing at a real SMTP sink, an injected clock, and the CLI run in-process."""

from __future__ import annotations

import io
import os
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rich.console import Console

from engine.base.clock import FixedClock
from engine.cli import main
from engine.program.settings import Settings, load_settings
from engine.wiring import Engine
from tests.support.pg import PostgresServer, find_bin_dir
from tests.support.smtp_server import SmtpSink, smtp_sink  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parent.parent
# A Monday, 10:00 UTC: inside the default send window for contacts in UTC.
MONDAY = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        if os.environ.get("ENGINE_REQUIRE_POSTGRES"):
            pytest.fail("PostgreSQL is required (ENGINE_REQUIRE_POSTGRES) but initdb is missing")
        pytest.skip("PostgreSQL not installed (make test installs it)")
    server = PostgresServer(bin_dir)
    server.start()
    try:
        server.prepare_template()
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'engine.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.new_database()


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(MONDAY)


@dataclass
class Project:
    """A folder with settings.toml, sequences/ and templates/, ready for the CLI."""

    dir: Path
    settings_path: Path
    sink: SmtpSink
    clock: FixedClock

    @property
    def settings(self) -> Settings:
        return load_settings(self.settings_path, env={})

    def engine(self) -> Engine:
        return Engine.build(self.settings, self.clock)

    def write(self, relative: str, content: str) -> Path:
        path = self.dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(content).lstrip(), encoding="utf-8")
        return path

    def contacts(self, csv_text: str, name: str = "contacts.csv") -> Path:
        return self.write(name, csv_text)

    def cli(self, *args: str) -> tuple[int, str]:
        """Run `python -m engine ...` in-process at the project's clock; (exit code, output)."""
        out = io.StringIO()
        console = Console(file=out, width=220, color_system=None, force_terminal=False)
        code = main(
            ["--settings", str(self.settings_path), "--now", self.clock.now().isoformat(), *args],
            console=console,
        )
        return code, out.getvalue()


def write_settings(
    folder: Path,
    db_url: str,
    smtp_port: int,
    *,
    sequences: str | Path,
    templates: str | Path,
    extra: str = "",
) -> Path:
    path = folder / "settings.toml"
    path.write_text(
        textwrap.dedent(f"""
        [database]
        url = "{db_url}"
        [smtp]
        port = {smtp_port}
        retry_base_seconds = 60
        [tracking]
        base_url = "https://t.example.com"
        secret = "test-secret-0123456789abcdef"
        [sender]
        from_name = "Acme Team"
        from_email = "team@acme.example"
        reply_to = "hello@acme.example"
        postal_address = "Acme Inc., 1 Main St, Springfield"
        feedback_id = "acme"
        [paths]
        sequences = "{sequences}"
        templates = "{templates}"
        [schedule]
        timezone = "UTC"
        days = ["mon", "tue", "wed", "thu", "fri"]
        hours = "09:00-17:00"
        lease_seconds = 300
    """).lstrip()
        + textwrap.dedent(extra),
        encoding="utf-8",
    )
    return path


@pytest.fixture
def make_project(
    tmp_path: Path,
    db_url: str,
    smtp_sink: SmtpSink,  # noqa: F811
    clock: FixedClock,
) -> Callable[..., Project]:
    """A project using the shipped sequences and templates, or the test's own (shipped=False)."""

    def make(*, shipped: bool = True, extra: str = "") -> Project:
        folder = tmp_path / "project"
        folder.mkdir(exist_ok=True)
        sequences = ROOT / "sequences" if shipped else folder / "sequences"
        templates = ROOT / "templates" if shipped else folder / "templates"
        (folder / "sequences").mkdir(exist_ok=True)
        (folder / "templates").mkdir(exist_ok=True)
        path = write_settings(
            folder, db_url, smtp_sink.port, sequences=sequences, templates=templates, extra=extra
        )
        return Project(folder, path, smtp_sink, clock)

    return make


@pytest.fixture
def project(make_project: Callable[..., Project]) -> Project:
    return make_project()
