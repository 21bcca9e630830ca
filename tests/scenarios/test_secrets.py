"""Secrets never appear in any output: every failure path we can reach is run with known
secrets at -vv, and stdout, stderr and the logs are searched for them."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable, Iterator

import pytest

from engine.program.settings import load_settings
from tests.conftest import ROOT, Project
from tests.support.scenario import contacts, engine_command, setup

SECRETS = {
    "ENGINE_SMTP_USERNAME": "mailer",
    "ENGINE_SMTP_PASSWORD": "smtp-pw-S3CRET-1111",
    "ENGINE_IMAP_USERNAME": "replies@acme.example",
    "ENGINE_IMAP_PASSWORD": "imap-pw-S3CRET-2222",
    "ENGINE_TRACKING_SECRET": "tracking-S3CRET-3333-abcdefgh",
    "ENGINE_TRACKING_OLD_SECRETS": '["old-S3CRET-4444-abcdefgh"]',
    "ENGINE_TRACKING_API_TOKEN": "api-S3CRET-5555-abcdefgh",
    "ENGINE_WEBHOOKS_SECRET": "hook-S3CRET-6666-abcdefgh",
}
PG_PASSWORD = "pg-S3CRET-7777"
ANA_ROW = "ana@example.com,Ana,Lima,Lima Co,UTC,10,2026-01-01,2025-01-01,,en,customer"
# The secrets go through the same code on either database: SQLite is enough.
pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
MARKERS = ["S3CRET", *(v.strip('[]"') for k, v in SECRETS.items() if "USERNAME" not in k)]


def closed_port() -> int:
    """A port nothing listens on (bound, then closed): connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield int(s.getsockname()[1])


@pytest.fixture
def program(make_project: Callable[..., Project]) -> Project:
    project = setup(make_project(shipped=False))
    contacts(project, ANA_ROW)
    return project


def engine(
    project: Project, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> tuple[int, str]:
    """Run ``python -m engine -vv ARGS`` with the known secrets; (exit code, all output)."""
    cmd, base = engine_command(project, "-vv", *args)
    full = {**base, **SECRETS, "ENGINE_IMAP_PORT": str(closed_port()), **(env or {})}
    try:
        done = subprocess.run(
            cmd, env=full, cwd=ROOT, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() + (exc.stderr or b"").decode()  # type: ignore[union-attr]
        pytest.fail(f"{' '.join(args)} did not end within {timeout} s:\n{out[-3000:]}")
    return done.returncode, done.stdout + done.stderr


def assert_no_secret(output: str) -> None:
    for marker in MARKERS:
        assert marker not in output, output[-3000:]


def test_run_on_a_busy_port_stops_with_one_line_and_no_secret(
    program: Project, busy_port: int
) -> None:
    code, out = engine(program, "run", env={"ENGINE_TRACKING_LISTEN": f"127.0.0.1:{busy_port}"})
    assert code == 2, out
    assert_no_secret(out)
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"{busy_port}" in errors[0], out
    assert "Traceback" not in out


def test_failure_paths_print_no_secret(program: Project) -> None:
    smtp_down = {"ENGINE_SMTP_PORT": str(closed_port())}
    code, out = engine(program, "tick", env=smtp_down)
    # An unreachable relay pauses sending (issue 13): no email is charged an attempt.
    assert code == 0 and "sending paused: relay down" in out, out
    assert_no_secret(out)

    code, out = engine(program, "replies", "poll")  # IMAP refused
    assert code == 2, out
    assert_no_secret(out)

    pg_down = f"postgresql+psycopg://postgres:{PG_PASSWORD}@127.0.0.1:{closed_port()}/engine"
    code, out = engine(program, "report", env={"ENGINE_DATABASE_URL": pg_down})
    assert code == 2 and "cannot open" in out and "Traceback" not in out, out
    assert_no_secret(out)
    assert PG_PASSWORD not in out

    missing = f"sqlite:///{program.dir / 'no' / 'such' / 'engine.db'}"
    code, out = engine(program, "report", env={"ENGINE_DATABASE_URL": missing})
    assert code == 2 and "does not exist" in out, out
    assert not (program.dir / "no").exists()
    assert_no_secret(out)

    for bad in (
        {"ENGINE_SMTP_PORT": "abc"},
        {"ENGINE_WEBHOOKS_URLS": "https://u:url-S3CRET-8888@hooks.example/in"},
        {"ENGINE_TRACKING_API_TOKEN": "S3CRET short"},
        {"ENGINE_TRACKING_SECRET": "S3CRET"},
    ):
        code, out = engine(program, "tick", env=bad)
        assert code == 2 and "error: settings:" in out, (bad, out)
        assert_no_secret(out)


def test_a_secret_of_the_wrong_type_is_named_not_shown(program: Project) -> None:
    program.settings_path.write_text(
        program.settings_path.read_text() + '\n[imap]\npassword = ["S3CRET-9999"]\n'
    )
    code, out = program.cli("tick")
    assert code == 2 and "imap.password" in out
    assert "S3CRET" not in out


def test_settings_repr_hides_every_secret(program: Project) -> None:
    settings = load_settings(
        program.settings_path,
        env={
            **SECRETS,
            "ENGINE_DATABASE_URL": f"postgresql+psycopg://u:{PG_PASSWORD}@h/db",
            "ENGINE_WEBHOOKS_URLS": "https://hooks.example/in",
        },
    )
    assert settings.smtp.password == SECRETS["ENGINE_SMTP_PASSWORD"]
    assert settings.tracking.old_secrets == ("old-S3CRET-4444-abcdefgh",)
    shown = repr(settings) + str(settings)
    assert "S3CRET" not in shown
    assert "smtp-pw" not in shown
