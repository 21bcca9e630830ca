"""`init`: a project folder for a first real program, that works as it is and overwrites
nothing; a settings file others can read is warned about when it holds a secret."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from engine.cli import main
from engine.program.settings import load_settings
from tests.conftest import ROOT
from tests.support.smtp_server import SmtpSink

ROW = "ana@example.com,Ana,Lima,Lima Co,UTC,10,2026-01-01,2025-01-01,,en,customer"
HEADER = (
    "email,first_name,last_name,company,timezone,nps_score,nps_at,customer_since,"
    "last_complaint_at,locale,kind\n"
)


def cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(args), console=Console(file=out, width=300, color_system=None))
    return code, out.getvalue()


def test_init_makes_a_project_that_validates_and_sends(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    folder = tmp_path / "acme"
    code, out = cli("init", str(folder))
    assert code == 0, out
    settings_file = folder / "settings.toml"
    assert stat.S_IMODE(settings_file.stat().st_mode) == 0o600
    assert "var/" in (folder / ".gitignore").read_text()
    assert (folder / "sequences" / "referral-ask.yaml").is_file()
    assert (folder / "templates" / "referral-ask.mjml").is_file()
    settings = load_settings(settings_file, env={})
    assert len(settings.tracking.secret) >= 32 and settings.tracking.secret != "change-me"
    assert settings.database_url == f"sqlite:///{folder / 'var' / 'engine.db'}"
    assert (settings.smtp.host, settings.smtp.port) == ("127.0.0.1", 1025)
    assert "#" in settings_file.read_text()  # commented
    # It works as it is: validate, import, and a tick sending to a local sink.
    now = "2026-03-02T10:00:00+00:00"
    common = ["--settings", str(settings_file), "--now", now]
    assert cli(*common, "validate")[0] == 0
    (tmp_path / "c.csv").write_text(HEADER + ROW + "\n")
    assert cli(*common, "contacts", "import", str(tmp_path / "c.csv"))[0] == 0
    os.environ["ENGINE_SMTP_PORT"] = str(smtp_sink.port)
    try:
        code, out = cli(*common, "tick")
    finally:
        del os.environ["ENGINE_SMTP_PORT"]
    # The only warnings: the [notify] roles the shipped sequences use, left for the user to fill.
    warnings = [line for line in out.splitlines() if "warning" in line]
    assert code == 0 and all("[notify]" in line for line in warnings), out
    assert len(smtp_sink.messages) == 1
    assert (folder / "var" / "engine.db").is_file()


def test_init_overwrites_nothing_and_says_what_is_there(tmp_path: Path) -> None:
    (tmp_path / "settings.toml").write_text("# mine\n")
    code, out = cli("init", str(tmp_path))
    assert code == 2 and "settings.toml" in out and "nothing written" in out
    assert (tmp_path / "settings.toml").read_text() == "# mine\n"
    assert not (tmp_path / "sequences").exists()


def validate_process(settings: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", "--settings", str(settings), "validate"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_settings_file_readable_by_others_with_a_secret_is_warned_about(
    tmp_path: Path,
) -> None:
    cli("init", str(tmp_path))
    settings = tmp_path / "settings.toml"
    done = validate_process(settings)
    assert done.returncode == 0 and "readable_by_others" not in done.stderr
    settings.chmod(0o644)
    done = validate_process(settings)
    assert done.returncode == 0 and "readable_by_others" not in done.stdout  # on stderr
    assert "tracking.secret" in done.stderr and "chmod 600" in done.stderr, done.stderr
    # The shipped placeholder is no secret: no warning for it.
    text = settings.read_text()
    start = text.index('secret = "', text.index("[tracking]"))
    end = text.index("\n", start)
    settings.write_text(text[:start] + 'secret = "change-me"' + text[end:])
    assert "readable_by_others" not in validate_process(settings).stderr


def test_commands_refuse_a_folder_without_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ENGINE_SETTINGS", raising=False)
    code, out = cli("report")
    assert code == 2 and "no settings file" in out and "init" in out
    assert list(tmp_path.iterdir()) == []  # no database made anywhere here
